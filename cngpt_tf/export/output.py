"""Write output folders all-or-nothing, and never over an input.

Before any work, `check_output` refuses an OUT_DIR that would destroy data: one that is, holds or
lies inside an input (compared by real path, symbolic links resolved), the current folder or one
holding it, a dangling link or a file, and -- even with --overwrite -- a folder holding anything a
conversion does not write. It returns OUT_DIR's real path, which the rest works on.

The work happens in a temp folder `.{OUT}.tmp-{pid}-{random}` beside OUT_DIR, so the final rename is
atomic (same filesystem); it is removed whatever happens, so a failure, Ctrl-C, SIGTERM or SIGHUP
leaves no half-written OUT_DIR. A replaced OUT_DIR is first renamed to `.{OUT}.old-{pid}-{random}`,
then removed. Stale folders: a machine killed outright (SIGKILL, power loss) cannot clean up, so each
run first removes the `.{OUT}.tmp-*` and `.{OUT}.old-*` siblings whose process is no longer alive on
this machine, or which are more than a day old (a pid from another machine on a shared disk) -- but
only folders that hold our MARKER file (a folder a user named like ours is never touched) and that
are none of the run's inputs, nor hold one or lie inside one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from .. import interrupts
from ..errors import OutputExistsError

STALE_AFTER_S = 24 * 3600
MARKER = ".cngpt-partial"  # in every temp or replaced folder of ours, until it is renamed into place


def real_path(path: str | Path) -> Path:
    """The absolute path with every symbolic link resolved (also when the path does not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_not_an_input(out_dir: str | Path, inputs: Iterable[str | Path]) -> Path:
    """Refuse an OUT_DIR that is a dangling link or a file, or that is, holds or lies inside one of
    `inputs`; return OUT_DIR's real path. Raises OutputExistsError."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.is_symlink() and not out_dir.exists():
        raise OutputExistsError(f"{out_dir}: is a symbolic link to {os.readlink(out_dir)}, which does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder")
    real = real_path(out_dir)
    for item in inputs:
        why = _overlap(real, real_path(item))
        if why:
            raise OutputExistsError(f"{out_dir}: {why} {item}; choose an output folder apart from the input")
    return real


def _overlap(path: Path, source: Path) -> str | None:
    """How real path `path` overlaps real path `source`, or None."""
    if path == source:
        return "is the input"
    if path in source.parents:
        return "holds the input"
    if source in path.parents:
        return "lies inside the input"
    return None


def check_output(out_dir: str | Path, overwrite: bool, produced: Iterable[str],
                 inputs: Iterable[str | Path] = (), flag: str = "--overwrite", tool: str = "a conversion") -> Path:
    """Everything `check_not_an_input` refuses, plus: the current folder or one holding it, a non-empty
    folder without `overwrite`, and one holding an entry not in `produced` (what `tool` writes) even
    with it. `flag` is the CLI flag that allows a non-empty OUT_DIR (finetune's is --resume). Return
    OUT_DIR's real path. Raises OutputExistsError."""
    real = check_not_an_input(out_dir, inputs)
    if real == Path.cwd() or real in Path.cwd().parents:
        raise OutputExistsError(f"{out_dir}: is the current folder or holds it; give a new folder's name")
    if real.is_dir() and any(real.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out_dir}: exists and is not empty (pass {flag} to use it, or give a "
                                    "new folder)")
        foreign = sorted(p.name for p in real.iterdir() if p.name not in set(produced))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputExistsError(f"{out_dir}: holds {shown}, which {tool} does not write; {flag} only "
                                    f"works on a previous {tool.split()[-1]}'s output")
    return real


@contextlib.contextmanager
def workspace(out_dir: Path, inputs: Iterable[str | Path] = ()):
    """A temp folder beside out_dir (same filesystem, so the final rename is atomic), always removed.
    Stale temp folders of earlier runs into the same out_dir are removed first (never an input)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, inputs)
    work = None
    try:
        with interrupts.deferred():  # no signal between making the folder and knowing its name
            work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
            (work / MARKER).touch()
            # mkdtemp makes it 0700: give the output the permissions a new folder gets (a model
            # server often runs as another user)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(work, 0o777 & ~umask)
        yield work
    finally:
        if work is not None:
            with interrupts.deferred():  # nor in the middle of removing it
                shutil.rmtree(work, ignore_errors=True)


def move_into_place(work: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished work folder; an old out_dir is removed only after the rename.
    Nothing moves if an interrupt arrived, even one whose KeyboardInterrupt was swallowed."""
    interrupts.check()
    with interrupts.deferred():  # the two renames go together
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            out_dir.rename(old)
            (old / MARKER).touch()  # a previous output, now ours to remove
        (work / MARKER).unlink(missing_ok=True)
        work.rename(out_dir)  # atomic: same parent folder
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_stale(out_dir: Path, inputs: Iterable[str | Path] = ()) -> list[Path]:
    """Remove `.{OUT}.tmp-{pid}-*` / `.{OUT}.old-{pid}-*` beside out_dir that hold our MARKER, whose
    pid is not alive or that are older than STALE_AFTER_S, and that overlap none of `inputs`;
    return what was removed."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)-.+")
    sources = [real_path(item) for item in inputs]
    removed = []
    with contextlib.suppress(OSError):
        for path in out_dir.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if not (match and path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()):
                continue
            if any(_overlap(real_path(path), source) for source in sources):
                continue
            if _is_stale(path, int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _is_stale(path: Path, pid: int) -> bool:
    try:
        if time.time() - path.stat().st_mtime > STALE_AFTER_S:
            return True
    except OSError:
        return False
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
