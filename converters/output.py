"""Write output folders all-or-nothing: work in a temp folder beside OUT_DIR, rename it into place.

The temp folder sits in OUT_DIR's parent, so the final rename is atomic (same filesystem); it is
removed whatever happens, so a failure or Ctrl-C leaves no half-written OUT_DIR.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from cngpt_tf.errors import OutputExistsError


def check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def workspace(out_dir: Path):
    """A temp folder beside out_dir (same filesystem, so the final rename is atomic), always removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_into_place(work: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished work folder; an old out_dir is removed only after the rename."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(old)
    work.rename(out_dir)  # atomic: same parent folder
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
