"""A tiny pickle assembler and zip writer, to craft hostile checkpoints without torch.

Pickles are written opcode by opcode (`pickled(text("w"), num(3), pickle.TUPLE2)`), so a test can
build what no pickler would: shared references, lying persistent ids, BUILD on a global. Zips are
written byte by byte (`raw_zip`), so a member's payload and the size its headers claim are the
test's to choose: a deflate bomb of a GiB fits in a MiB.
"""

from __future__ import annotations

import functools
import pickle
import struct
import zlib
from pathlib import Path

def text(s: str) -> bytes:
    data = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def num(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def put(i: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", i)


def get(i: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", i)


def ints(values) -> bytes:
    return pickle.MARK + b"".join(map(num, values)) + pickle.TUPLE


def pickled(*ops: bytes) -> bytes:
    """A protocol-2 pickle (what torch.save writes) of `ops`, then STOP."""
    return pickle.PROTO + b"\x02" + b"".join(ops) + pickle.STOP


def ordered_dict() -> bytes:
    """Opcodes that push `collections.OrderedDict()`, as torch writes it."""
    return glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE


def pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """Opcodes that push torch's persistent id of a storage: ('storage', type, key, 'cpu', numel)."""
    return (pickle.MARK + text("storage") + glob("torch", storage) + text(key) + text("cpu")
            + num(numel) + pickle.TUPLE)


def tensor(key: str, numel: int, size, stride, offset: int = 0, storage: str = "FloatStorage") -> bytes:
    """Opcodes that push `_rebuild_tensor_v2(<storage key>, offset, size, stride, False, OrderedDict())`."""
    args = (pid(key, numel, storage) + pickle.BINPERSID + num(offset) + ints(size) + ints(stride)
            + pickle.NEWFALSE + ordered_dict())
    return glob("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + args + pickle.TUPLE + pickle.REDUCE


def state_dict(**entries: bytes) -> bytes:
    """A pickled dict of name -> the object each entry's opcodes push."""
    items = b"".join(text(k) + v for k, v in entries.items())
    return pickled(pickle.EMPTY_DICT, pickle.MARK, items, pickle.SETITEMS)


def shared_tuple(depth: int, first_memo: int = 0) -> bytes:
    """Opcodes that push t[depth], where t[0] = () and t[i] = (t[i-1], t[i-1]): 13 bytes a level,
    2**depth leaves, so its repr, hash or equality takes exponential time."""
    ops = [pickle.EMPTY_TUPLE, put(first_memo), pickle.POP]
    for i in range(first_memo + 1, first_memo + depth + 1):
        ops += [get(i - 1), get(i - 1), pickle.TUPLE2, put(i), pickle.POP]
    return b"".join(ops) + get(first_memo + depth)


# ---------------------------------------------------------------- zips


class Member:
    """One zip member as `raw_zip` writes it: `payload` goes in as is (raw deflate for method 8),
    and `size` / `crc` are what the headers claim, true or not."""

    def __init__(self, name: str, data: bytes = b"", *, payload: bytes | None = None,
                 method: int = 0, size: int | None = None, crc: int | None = None):
        self.name, self.method = name.encode(), method
        self.payload = data if payload is None else payload
        self.size = len(data) if size is None else size
        self.crc = zlib.crc32(data) if crc is None else crc


def raw_zip(path: Path, members: list[Member]) -> Path:
    """Write `members` as a zip archive (no zip64: every size below 4 GiB)."""
    out, central = bytearray(), bytearray()
    for m in members:
        sizes = (m.crc, len(m.payload), m.size, len(m.name), 0)
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, m.method, 0, 0x21,
                               *sizes, 0, 0, 0, 0, len(out)) + m.name
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, m.method, 0, 0x21, *sizes) + m.name
        out += m.payload
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(out), 0)
    Path(path).write_bytes(bytes(out + central + end))
    return Path(path)


@functools.cache
def deflated_zeros(mib: int) -> tuple[bytes, int]:
    """(raw deflate stream, crc32) of `mib` MiB of zero bytes: one compressed MiB repeated (a full
    flush makes the blocks independent), so a GiB costs ~1 MB and about a second (the CRC)."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return block * mib + c.flush(), crc


def zip_bomb_member(name: str, mib: int) -> Member:
    """A deflated member that inflates to `mib` MiB of zeros, its headers telling the truth."""
    payload, crc = deflated_zeros(mib)
    return Member(name, payload=payload, method=8, size=mib << 20, crc=crc)


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes | Member] | None = None) -> Path:
    """A torch-layout zip: archive/data.pkl, archive/byteorder, then archive/data/<key> records
    (bytes stored as is, or a ready `Member`, e.g. a bomb, renamed into place)."""
    members = [Member("archive/data.pkl", data_pkl), Member("archive/byteorder", b"little")]
    for key, rec in (records or {}).items():
        if isinstance(rec, Member):
            rec.name = f"archive/data/{key}".encode()
            members.append(rec)
        else:
            members.append(Member(f"archive/data/{key}", rec))
    return raw_zip(path, members + [Member("archive/version", b"3\n")])
