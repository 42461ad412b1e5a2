"""XLA's compiled programs kept on disk, so that a fresh process skips most of the first call's compile.

TensorFlow's XLA writes every program it compiles into `--tf_xla_persistent_cache_directory` and
reads it back in the next process whose program is the same (its file name is a hash of the HLO and
the signature, and XLA checks both on load). On GPT-12L-CN's shape that takes the first
`generate` call from ~5.9 s to ~4.2 s on the 2-core machine (benchmarks/cold_start.py measures it);
what remains is tracing the Python graph and converting it to HLO, which no cache skips.

What XLA does not do, this module does:
  - A folder per TensorFlow version, kernel sources and CPU (the flags /proc/cpuinfo lists):
    XLA warns, and may run into SIGILL, when a program compiled for another CPU is loaded, and a
    cached program calls the native kernel by name, so a changed kernel must not meet an old program.
  - XLA trusts its files: a truncated or damaged one fails the whole call ("Failed to parse
    serialized CpuAotCompilationResult") rather than compiling again. So every file is recorded in
    `index.json` (size, mtime, sha256) once a call that wrote it succeeded (`record`, which the
    Generator calls after each generation where the cache is on), and `enable`
    deletes any file the index does not vouch for (unrecorded, or changed in size or mtime) before
    XLA can read it. A file changed in place keeping its size and mtime is not detected: only
    deliberate tampering does that, and the folder is the user's own (0700), as the kernel library's.
  - Bounded: the oldest programs go once the folder exceeds MAX_BYTES; nothing is enabled where the
    folder is not writable or the disk has less than MIN_FREE_BYTES free (XLA fails a call whose
    program it cannot save).
  - Private: XLA runs the machine code it reads there, so the folder must be this user's own, not
    a link, writable by nobody else (a shared CNGPT_TF_XLA_CACHE such as a 0777 folder is refused,
    with a warning, and the cache stays off).

The flag must be in TF_XLA_FLAGS before XLA first reads its flags (its first compile in the
process): `python -m cngpt_tf.generate` calls `enable()` before it loads a model; a Python program
may call it first thing. CNGPT_TF_XLA_CACHE=0 turns it off, CNGPT_TF_XLA_CACHE=FOLDER moves it (the
tests point it at a temporary folder); a persistent-cache folder the user put in TF_XLA_FLAGS is left
alone. Imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

FLAG = "--tf_xla_persistent_cache_directory"
VARIABLE = "CNGPT_TF_XLA_CACHE"
INDEX = "index.json"
MAX_BYTES = 1 << 30  # ~350 programs of GPT-12L-CN's shape (2.8 MB each)
MIN_FREE_BYTES = 256 << 20
STALE_SECONDS = 3600  # XLA's temporary files older than this are from a process that died writing
MAX_INDEX_BYTES = 16 << 20


def cache_root() -> Path:
    """$CNGPT_TF_CACHE, default ~/.cache/cngpt_tf: the kernel library and the compiled programs."""
    return Path(os.environ.get("CNGPT_TF_CACHE", Path.home() / ".cache" / "cngpt_tf"))


def directory() -> Path:
    """This machine's folder: ($CNGPT_TF_XLA_CACHE or cache_root()/xla)/<key of the TF version, the
    kernel's sources, the CPU>."""
    key = hashlib.sha256()
    try:
        key.update(metadata.version("tensorflow").encode())
    except metadata.PackageNotFoundError:
        key.update(b"tensorflow ?")
    csrc = Path(__file__).parent / "csrc"
    for path in sorted(csrc.glob("*")):
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    key.update(_cpu_identity().encode())
    base = os.environ.get(VARIABLE, "")
    return (Path(base) if base not in ("", "0", "1") else cache_root() / "xla") / key.hexdigest()[:16]


def enabled_directory() -> Path | None:
    """The folder XLA was told to use, from TF_XLA_FLAGS (ours or the user's); None if none."""
    for flag in os.environ.get("TF_XLA_FLAGS", "").split():
        if flag.startswith(FLAG + "="):
            return Path(flag.split("=", 1)[1])
    return None


def enable(folder: Path | None = None) -> Path | None:
    """Point XLA's persistent cache at `folder` (default `directory()`), after deleting what the
    index does not vouch for; return the folder, or None where it stays off (CNGPT_TF_XLA_CACHE=0,
    not writable, a full disk). A folder already in TF_XLA_FLAGS is kept: the user's choice."""
    if os.environ.get(VARIABLE, "1") == "0":
        return None
    if enabled_directory() is not None:
        return enabled_directory()
    folder = Path(folder) if folder is not None else directory()
    if any(c.isspace() or c in "'\"" for c in str(folder)):  # TF_XLA_FLAGS splits at whitespace
        log.debug("XLA compile cache off: TF_XLA_FLAGS cannot hold the folder %r", str(folder))
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stat = folder.lstat()
        if not _private(stat):  # XLA runs the machine code it finds there: nobody else may write it
            log.warning("XLA compile cache off: %s is not a folder of this user's that only it may write", folder)
            return None
        if shutil.disk_usage(folder).free < MIN_FREE_BYTES or not os.access(folder, os.W_OK | os.X_OK):
            log.debug("XLA compile cache off: %s is not writable or its disk is nearly full", folder)
            return None
        _tidy(folder)
    except OSError as e:
        log.debug("XLA compile cache off: %s", e)
        return None
    os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {FLAG}={folder}".strip()
    log.debug("XLA compile cache: %s", folder)
    return folder


def record(folder: Path | None = None) -> None:
    """Vouch for the programs now in `folder` (default: the enabled one) that the index lacks: call
    after a compiled call succeeded, so that a file XLA wrote and then ran is what gets recorded."""
    folder = folder if folder is not None else enabled_directory()
    if folder is None:
        return
    try:
        # Called after every generation: one stat when XLA added or renamed nothing since last time.
        seen = (str(folder), folder.stat().st_mtime_ns)
        if _last_recorded.get("folder") == seen:
            return
        index = _read_index(folder)
        for path in _programs(folder):
            stat = path.stat()
            if index.get(path.name, {}).get("stamp") != _stamp(stat):
                index[path.name] = {"stamp": _stamp(stat), "sha256": _sha256(path)}
        _write_index(folder, {name: entry for name, entry in index.items() if (folder / name).is_file()})
        _last_recorded["folder"] = (str(folder), folder.stat().st_mtime_ns)  # after our own index write
    except OSError as e:  # a cache that cannot be written is only slower
        log.debug("XLA compile cache: not recorded: %s", e)


_last_recorded: dict = {}  # "folder": (path, the folder's mtime when `record` last finished)


def _tidy(folder: Path) -> None:
    """Delete programs the index does not vouch for, stale temporaries, and the oldest past MAX_BYTES."""
    index = _read_index(folder)
    kept = []
    for path in _programs(folder):
        stat = path.stat()
        if index.get(path.name, {}).get("stamp") == _stamp(stat):
            kept.append((stat.st_mtime, stat.st_size, path))
        else:
            log.debug("XLA compile cache: removing %s (not recorded as complete)", path.name)
            path.unlink(missing_ok=True)
    now = time.time()
    for path in folder.iterdir():  # XLA writes NAME.pb via a temporary name, then renames
        if path.is_symlink():  # never ours, and XLA would follow it
            path.unlink(missing_ok=True)
        elif path.name != INDEX and path.suffix != ".pb" and now - path.lstat().st_mtime > STALE_SECONDS:
            path.unlink(missing_ok=True)
    total = sum(size for _, size, _ in kept)
    for _, size, path in sorted(kept, key=lambda k: k[0]):  # oldest first
        if total <= MAX_BYTES:
            break
        path.unlink(missing_ok=True)
        total -= size


def _private(stat: os.stat_result) -> bool:
    """A real folder (not a link), owned by this user, that neither group nor others may write."""
    import stat as modes

    owner = os.getuid() if hasattr(os, "getuid") else stat.st_uid
    return modes.S_ISDIR(stat.st_mode) and stat.st_uid == owner and not stat.st_mode & 0o022


def _programs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.pb") if p.is_file() and not p.is_symlink())


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_index(folder: Path) -> dict:
    """The index ({} when missing, unreadable or not what we write: then no file is vouched for)."""
    path = folder / INDEX
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            return {}
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {name: entry for name, entry in index.items()
            if isinstance(entry, dict) and isinstance(entry.get("stamp"), list)}


def _write_index(folder: Path, index: dict) -> None:
    temporary = folder / f".{INDEX}.{os.getpid()}"
    temporary.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, folder / INDEX)


def _cpu_identity() -> str:
    """The CPU's model name and flags (what a compiled program may use); "" off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    wanted = ("vendor_id", "model name", "flags")
    first = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in wanted and name.strip() not in first:
            first[name.strip()] = value.strip()
    return "\n".join(f"{name}: {first.get(name, '')}" for name in wanted)
