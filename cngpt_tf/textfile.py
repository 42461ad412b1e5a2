"""Read the small text inputs (config.json, hparams.json, vocab.txt, a fine-tuning corpus) safely.

One rule for all of them: a regular file (a FIFO or a device such as /dev/zero is refused before it
is read, so nothing blocks or streams forever), at most `limit` bytes (checked on the size and while
reading, as a file may grow), decoded as UTF-8 with universal newlines ("\r\n" and "\r" read as
"\n", as Python's and HF's text mode read them). Failures raise the caller's error type with one line
naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_text(path: str | Path, limit: int, error: type[Exception], what: str, shown: str | None = None) -> str:
    """The UTF-8 text of `path`; `error(f"{shown}: ...")` for a missing, special, oversized,
    unreadable or non-UTF-8 file. `what` names the file's role in messages ("vocab", "corpus")."""
    shown = shown or str(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{shown}: file not found") from None
    except OSError as e:
        raise error(f"{shown}: cannot read {what} ({e.strerror or e})") from None
    try:
        size = os.fstat(fd)
        if not stat.S_ISREG(size.st_mode):  # checked on the descriptor: Python's open() of a folder raises
            raise error(f"{shown}: {what} is not a regular file")
        if size.st_size > limit:
            raise error(f"{shown}: {what} is larger than {_mib(limit)}")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{shown}: cannot read {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{shown}: {what} is larger than {_mib(limit)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{shown}: {what} is not UTF-8 (byte {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % 2**20 == 0 else f"{n} bytes"
