"""Reading TFRecord files record by record from any file object (so from any Beam filesystem).

The framing, as TensorFlow writes it: uint64 length, masked CRC-32C of the length, the data, masked
CRC-32C of the data (all little-endian). Each record is checked; a record longer than the caller's
limit is skipped unread (an error for that record, not a failed file). A damaged length header or a
truncated file ends the file: past it the framing cannot be trusted.

CRC-32C is computed here in Python (table-driven): Beam's own reader needs python-snappy,
google-crc32c or crcmod, none of which TensorFlow or Beam install; at ~10 MB/s it is far from the
bottleneck of a pipeline that runs a language model on every record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(f, limit: int) -> Iterator[tuple[bytes | None, str | None]]:
    """(data, None) per good record, (None, why) per bad one; stops after a damaged header."""
    while True:
        header = _read_exactly(f, 12)
        if not header:
            return
        if len(header) < 12:
            yield None, "truncated TFRecord file (a partial record header)"
            return
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            yield None, "corrupt TFRecord file (length checksum mismatch); the rest of the file is skipped"
            return
        if length > limit:
            if not _skip(f, length + 4):
                yield None, "truncated TFRecord file (a partial record)"
                return
            yield None, f"record of {length} bytes exceeds --max_line_bytes={limit}"
            continue
        body = _read_exactly(f, length + 4)
        if len(body) < length + 4:
            yield None, "truncated TFRecord file (a partial record)"
            return
        data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
        if masked_crc32c(data) != data_crc:
            yield None, "corrupt TFRecord record (data checksum mismatch)"
            continue
        yield data, None


def _read_exactly(f, n: int) -> bytes:
    """Up to n bytes: fewer only at the end of the file (file objects may return short reads)."""
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _skip(f, n: int, chunk: int = 1 << 20) -> bool:
    """Read past n bytes without keeping them; False if the file ends first."""
    while n:
        part = f.read(min(n, chunk))
        if not part:
            return False
        n -= len(part)
    return True
