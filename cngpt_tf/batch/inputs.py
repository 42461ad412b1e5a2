"""INPUT: text files (one record a line) or TFRecord files of strings, on any Beam filesystem.

Patterns are matched once, when the pipeline is built (`match_inputs`), so a run reads a fixed list
of files. Each file is read by one worker from start to end, which is what gives every line its
number (`read_lines`); the pipeline reshuffles the lines right after, so the model's work spreads
over all workers however few files there are.

Text: lines end at "\n" (a "\r" before it is dropped, so CRLF files read the same), the last line
needs no "\n"; `.gz`, `.bz2`, `.zst` and the other compressions Beam knows are read by their suffix.
Every line is a record, an empty one too. A line that is not UTF-8, or longer than
`--max_line_bytes`, becomes a record with an error (and the start of the line as its input).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .records import SHOWN_CHARS, Line
from .tfrecord import read_records

FORMATS = ("auto", "text", "tfrecord")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
DEFAULT_MAX_LINE_BYTES = 1 << 20
_CHUNK = 1 << 20


class InputError(ValueError):
    """An INPUT pattern matches nothing, or names a folder (a usage error, before the pipeline runs)."""


def match_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size in bytes) of every file the patterns match, sorted, each once."""
    from apache_beam.io.filesystems import FileSystems

    files = {}
    for pattern, result in zip(patterns, FileSystems.match(list(patterns))):
        if not result.metadata_list:
            raise InputError(f"{pattern}: no file matches")
        for meta in result.metadata_list:
            if os.path.isdir(meta.path):
                raise InputError(f"{meta.path}: a folder; give its files, e.g. {os.path.join(pattern, '*')}")
            files[meta.path] = meta.size_in_bytes
    return sorted(files.items())


def input_format(path: str, chosen: str = "auto") -> str:
    """"text" or "tfrecord": as chosen, or by the name (`.tfrecord[s]`, optionally compressed)."""
    if chosen != "auto":
        return chosen
    from apache_beam.io.filesystem import CompressionTypes

    name = path.lower()
    compression = CompressionTypes.detect_compression_type(name)
    if compression != CompressionTypes.UNCOMPRESSED:
        name = os.path.splitext(name)[0]
    return "tfrecord" if name.endswith(TFRECORD_SUFFIXES) else "text"


def read_lines(path: str, chosen_format: str = "auto", max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Line]:
    """Every record of one file as a `Line`, numbered from 1."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        if input_format(path, chosen_format) == "tfrecord":
            for number, (data, error) in enumerate(read_records(f, max_line_bytes), 1):
                yield _line(path, number, data or b"", error)
        else:
            for number, (data, length) in enumerate(split_lines(f, max_line_bytes), 1):
                error = f"line of {length} bytes exceeds --max_line_bytes={max_line_bytes}" if length > max_line_bytes else None
                yield _line(path, number, data, error)


def split_lines(f, limit: int) -> Iterator[tuple[bytes, int]]:
    """(the line's first `limit` bytes at most, its full length) per "\n"-ended line of a binary
    file object; memory stays bounded by `limit` and the read size, however long a line is."""
    kept, length = [], 0  # the current line's pieces (up to limit bytes) and its length so far
    while chunk := f.read(_CHUNK):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            yield _finish(kept, length, chunk[start:end], limit)
            kept, length, start = [], 0, end + 1
        rest = chunk[start:]
        if length < limit:
            kept.append(rest[: limit - length])
        length += len(rest)
    if length:
        yield _finish(kept, length, b"", limit)


def _finish(kept: list[bytes], length: int, tail: bytes, limit: int) -> tuple[bytes, int]:
    if length < limit:
        kept.append(tail[: limit - length])
    length += len(tail)
    data = b"".join(kept)
    if length <= limit and data.endswith(b"\r"):  # CRLF
        data, length = data[:-1], length - 1
    return data, length


def _line(path: str, number: int, data: bytes, error: str | None) -> Line:
    shown = data[: 4 * SHOWN_CHARS].decode("utf-8", "replace")[:SHOWN_CHARS]
    if error is not None:
        return Line(path, number, None, error, shown)
    try:
        return Line(path, number, data.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Line(path, number, None, f"not valid UTF-8 (byte {e.start} of the line)", shown)
