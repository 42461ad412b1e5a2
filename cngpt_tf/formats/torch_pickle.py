"""Read and write PyTorch `.bin` checkpoints (`torch.save(state_dict)`) without importing torch.

Hugging Face GPT-2 checkpoints often ship only as `pytorch_model.bin`. That file is a pickle, and
a pickle can run arbitrary code, so the reader uses an unpickler that admits only the globals
needed to rebuild tensors (the same idea as torch's `weights_only=True`) and maps them to immutable
local stand-ins; anything else raises `UnsafePickleError` before it is called. Both layouts are
read: the zip archive torch >= 1.6 writes, and the older "legacy" stream of consecutive pickles.
The writer produces the zip layout, which `torch.load(weights_only=True)` and `from_pretrained` read.

The input may be hostile, so what a file can cost is bounded by its size: each pickle is capped
(`MAX_PICKLE_BYTES`), each tensor by its storage, each storage record is read only as far as its
tensors reach, and every message built from the file's contents uses a bounded repr.
"""

import collections
import io
import math
import os
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, UnsafePickleError, short_repr

# torch storage class name <-> numpy dtype. One table serves both the reader and the writer.
_STORAGES = {
    "FloatStorage": np.dtype(np.float32), "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_OF = {dtype: name for name, dtype in _STORAGES.items()}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_ALIGN = 64  # torch pads storage records so they can be mmapped (torch.load(mmap=True))

# A GPT-2 data.pkl takes ~160 bytes a tensor (24 KB for GPT-2 small): this holds ~26k tensors, and
# the pure-Python unpickler gets through it in about a second.
MAX_PICKLE_BYTES = 4 << 20
_MAX_DIMS = 64  # numpy's limit
_MAX_INDEX = 1 << 62  # bound on sizes, strides, offsets, element counts: Python ints, no overflow
_SLACK = 32 << 20  # bytes any file may cost beyond its budget (see _Budget)
_CHUNK = 1 << 20


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Return the tensors of a torch checkpoint as name -> C-contiguous numpy array."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            is_zip = zipfile.is_zipfile(f)  # this moves the file position
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            if is_zip:
                return _read_zip(f, name, size)
            elif head.startswith(b"PK"):
                raise CheckpointError(f"{name}: truncated or corrupt zip archive")
            elif not head:
                raise CheckpointError(f"{name}: empty file, not a torch checkpoint")
            else:
                return _read_legacy(f, name, size)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: file not found") from None
    except CheckpointError:
        raise
    # Hostile or damaged input can make zipfile/pickle/numpy raise almost anything; report it
    # as one line naming the file rather than letting a raw BadZipFile or EOFError escape.
    except Exception as e:
        raise CheckpointError(f"{name}: corrupt torch checkpoint ({_one_line(e)})") from e


def save_state_dict(state: dict[str, np.ndarray], path) -> None:
    """Write `state` as a zip-format torch checkpoint; the file appears only once complete."""
    arrays = {}
    for key, arr in state.items():
        arr = np.asarray(arr)
        if not isinstance(key, str) or arr.dtype.newbyteorder("=") not in _STORAGE_OF:
            raise CheckpointError(f"{path}: cannot save {key!r} of dtype {arr.dtype}")
        arrays[key] = arr.astype(arr.dtype.newbyteorder("="), order="C", copy=False)
    tensors = {k: _TensorRef(i, a) for i, (k, a) in enumerate(arrays.items())}
    pkl = io.BytesIO()
    _Writer(pkl, protocol=2).dump(tensors)  # protocol 2 is what torch.save uses

    tmp = os.fspath(path) + ".tmp"
    try:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            # The records torch writes, in its order (it also adds a random serialization id).
            records = [("data.pkl", pkl.getvalue()), (".format_version", b"1"),
                       (".storage_alignment", str(_ALIGN).encode()),
                       ("byteorder", sys.byteorder.encode()),
                       *((f"data/{i}", a) for i, a in enumerate(arrays.values())),
                       ("version", b"3\n")]
            for rec, data in records:
                info = zipfile.ZipInfo(f"archive/{rec}", date_time=(1980, 1, 1, 0, 0, 0))
                if isinstance(data, np.ndarray):  # one copy at a time, not the whole model
                    data = data.tobytes()
                    info.extra = _padding(f.tell(), info.filename, len(data))
                zf.writestr(info, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------- reading


# What the rebuild stand-ins return; turned into arrays once every storage's bytes are at hand.
# Tuples, so a BUILD opcode cannot alter them. A _Storage views the bytes of `key` as `dtype`
# from element `offset` on (non-zero only for torch < 1.0's views), `numel` elements long.
_Storage = collections.namedtuple("_Storage", "key dtype offset numel")
_Tensor = collections.namedtuple("_Tensor", "storage offset size stride")


class _DType(collections.namedtuple("_DType", "name")):
    """find_class's stand-in for a torch storage type or dtype (`name`: numpy's). np.dtype itself
    cannot be handed to a pickle: it has a __setstate__ for BUILD to call, on a process-wide object."""

    __slots__ = ()


class _Call(collections.namedtuple("_Call", "name")):
    """find_class's stand-in for an allowed callable. Immutable, so BUILD, SETITEM or APPEND aimed
    at it fails, where on the function or class itself it would change what later loads use."""

    __slots__ = ()

    def __call__(self, *args):
        return _CALLS[self.name](*args)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data


def _ordered_dict(items=()):
    """OrderedDict(items) with the keys checked first (see _Unpickler)."""
    out = collections.OrderedDict()
    for key, value in items:
        out[_scalar_key(key)] = value
    return out


_CALLS = {"OrderedDict": _ordered_dict, "rebuild_tensor": _rebuild_tensor_v2,
          "rebuild_parameter": _rebuild_parameter}
_NUMPY = {d.name: d for d in _STORAGES.values()}  # _DType.name -> numpy dtype
_ALLOWED = {
    ("collections", "OrderedDict"): _Call("OrderedDict"),
    ("torch._utils", "_rebuild_tensor"): _Call("rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"): _Call("rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"): _Call("rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call("rebuild_parameter"),
    ("torch", "UntypedStorage"): _DType("uint8"),  # torch 2.x's name for byte storages
    **{("torch", n): _DType(d.name) for n, d in _STORAGES.items()},
    **{("torch", d.name): _DType(d.name) for d in _STORAGES.values()},  # e.g. torch.float32
}
# Dict and set keys: types whose hash is cheap and cannot recurse. A tuple key's hash recurses
# through its items, so a deep one crashes the interpreter and a shared one takes exponential time.
_SCALARS = (str, bytes, int, float, bool, type(None))


def _scalar_key(key):
    if type(key) not in _SCALARS:
        raise pickle.UnpicklingError(f"a dict or set key is a {type(key).__name__}, not a scalar")
    return key


class _Unpickler(pickle._Unpickler):
    """Admits only `_ALLOWED` globals and resolves storage persistent ids to `_Storage`s.

    The pure-Python unpickler, because the C one sizes its memo by the largest PUT index (an
    11-byte pickle makes it allocate GiBs). Keys must be scalars (see _SCALARS), BUILD applies only
    to dicts the pickle made itself (torch sets `_metadata` on its OrderedDict), and BYTEARRAY8,
    which allocates the length it declares before reading, is refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, name, sizes):
        super().__init__(file)
        self.name, self.sizes = name, sizes  # sizes: storage key -> (dtype, numel)

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"{self.name}: unsupported storage type '{_clip('torch.' + name)}'")
        raise UnsafePickleError(f"{self.name}: refusing to unpickle global '{_clip(module + '.' + name)}' "
                                "(only tensor-rebuilding globals are allowed)")

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        ok = (type(pid) is tuple and len(pid) in (5, 6) and type(pid[0]) in (str, bytes)
              and pid[0] in ("storage", b"storage") and type(pid[1]) is _DType
              and type(pid[2]) is str and _is_index(pid[4]))
        if not ok:
            raise CheckpointError(f"{self.name}: unexpected persistent id {short_repr(pid)}")
        dtype, key, numel = _NUMPY[pid[1].name], pid[2], pid[4]
        if self.sizes.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise CheckpointError(f"{self.name}: storage {short_repr(key)} is declared twice, differently")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _Storage(key, dtype, 0, numel)
        # (view_key, offset, numel) into the storage; only written by torch < 1.0
        if not (type(view) is tuple and len(view) == 3 and _is_index(view[1]) and _is_index(view[2])
                and view[1] + view[2] <= numel):
            raise CheckpointError(f"{self.name}: bad storage view {short_repr(view)}")
        return _Storage(key, dtype, view[1], view[2])

    def load_build(self):
        if not isinstance(self.stack[-2], dict):
            raise pickle.UnpicklingError(f"BUILD on a {type(self.stack[-2]).__name__}")
        pickle._Unpickler.load_build(self)

    def load_setitem(self):
        _scalar_key(self.stack[-2])
        pickle._Unpickler.load_setitem(self)

    def load_setitems(self):
        self._check_keys(slice(None, None, 2))
        pickle._Unpickler.load_setitems(self)

    def load_dict(self):
        self._check_keys(slice(None, None, 2))
        pickle._Unpickler.load_dict(self)

    def load_additems(self):
        self._check_keys(slice(None))
        pickle._Unpickler.load_additems(self)

    def load_frozenset(self):
        self._check_keys(slice(None))
        pickle._Unpickler.load_frozenset(self)

    def load_bytearray8(self):
        raise pickle.UnpicklingError("BYTEARRAY8 is not used by torch")

    def _check_keys(self, which):
        for key in self.stack[which]:  # the items since the last MARK
            _scalar_key(key)

    for _op, _fn in [(pickle.BUILD, load_build), (pickle.SETITEM, load_setitem),
                     (pickle.SETITEMS, load_setitems), (pickle.DICT, load_dict),
                     (pickle.ADDITEMS, load_additems), (pickle.FROZENSET, load_frozenset),
                     (pickle.BYTEARRAY8, load_bytearray8)]:
        dispatch[_op[0]] = _fn
    del _op, _fn


class _Budget:
    """Bytes a file may make us read or build: `factor` times its size, plus `_SLACK`. A legit file
    stays well inside (torch stores records uncompressed, and tensors repeat a storage at most once,
    as a tied lm_head does); a crafted one is stopped before the allocation, not after."""

    def __init__(self, name, what, file_size, factor):
        self.name, self.what, self.file_size = name, what, file_size
        self.limit = self.left = factor * file_size + _SLACK

    def spend(self, nbytes):
        self.left -= nbytes
        if self.left < 0:
            raise CheckpointError(f"{self.name}: {self.what} would take over {self.limit} bytes, "
                                  f"more than a file of {self.file_size} bytes can hold")


def _state_dict(name, obj, read, swap, budget) -> dict[str, np.ndarray]:
    """Check that `obj` maps names to tensors and build each one from its storage's bytes.

    read(key, nbytes) returns at least the first `nbytes` bytes of storage `key`; each storage is
    read once, only as far as its tensors reach, and its tensors are built before the next is read.
    """
    obj = _tensor_entries(name, obj)
    ends = {k: _extent(name, k, t) for k, t in obj.items()}  # every check before any read
    views = collections.defaultdict(list)  # storage key -> names of the tensors viewing it
    for k, t in obj.items():
        views[t.storage.key].append(k)
    out = {}
    for key, names in views.items():
        raw = read(key, max(ends[k] * obj[k].storage.dtype.itemsize for k in names))
        for k in names:
            t = obj[k]
            budget.spend(math.prod(t.size) * t.storage.dtype.itemsize)
            out[k] = _materialize(t, raw, swap)
        del raw
    return {k: out[k] for k in obj}


def _tensor_entries(name, obj) -> dict:
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # {"state_dict": {...}} / {"model": {...}}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: top object is {type(obj).__name__}, "
                              "expected a mapping of name -> tensor")
    for key, t in obj.items():
        if not (isinstance(key, str) and type(t) is _Tensor and type(t.storage) is _Storage):
            raise CheckpointError(
                f"{name}: entry {short_repr(key)} is {type(t).__name__}, expected a tensor")
    return obj


def _extent(name, key, t) -> int:
    """Check `t`'s size, stride and offset; return how many elements of its storage it reaches
    into (0 if empty). A tensor may not hold more elements than its storage: a legit state dict
    never expands one, and a zero stride could otherwise turn a 4-byte storage into GiBs."""
    s = t.storage
    ok = type(t.size) is tuple and type(t.stride) is tuple and len(t.size) == len(t.stride)
    if not (ok and len(t.size) <= _MAX_DIMS and all(map(_is_index, (*t.size, *t.stride, t.offset)))):
        raise CheckpointError(f"{name}: tensor {short_repr(key)} has a bad size, stride or offset")
    numel = math.prod(t.size)
    if numel > s.numel:
        raise CheckpointError(f"{name}: tensor {short_repr(key)} has {numel} elements, "
                              f"more than the {s.numel} of its storage")
    if numel == 0:
        return 0
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    if last >= s.numel:
        raise CheckpointError(f"{name}: storage of {short_repr(key)} too short: needs {last + 1} "
                              f"elements of {s.dtype}, has {s.numel}")
    return s.offset + last + 1


def _materialize(t, raw, swap) -> np.ndarray:
    """numpy's as_strided over the storage's bytes (checked by _extent), copied C-contiguous."""
    s, item = t.storage, t.storage.dtype.itemsize
    if 0 in t.size:
        return np.zeros(t.size, s.dtype)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    flat = np.frombuffer(raw, s.dtype, count=last - t.offset + 1, offset=(s.offset + t.offset) * item)
    if swap:  # through an unsigned-integer view, which works for bfloat16 too
        flat = flat.view(f"u{item}").byteswap().view(s.dtype)
    strides = [st * item for st in t.stride]
    view = np.lib.stride_tricks.as_strided(flat, t.size, strides, writeable=False)
    return np.array(view, order="C")  # a copy: owns its memory, never aliases the file's bytes


def _read_zip(f, name, file_size) -> dict[str, np.ndarray]:
    zf = zipfile.ZipFile(f)
    infos = {info.filename: info for info in zf.infolist()}
    # torch names the archive folder after the file it saved to, so find it from data.pkl
    pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{name}: zip archive has no <archive>/data.pkl (not a torch file)")
    prefix = pkls[0][: -len("data.pkl")]
    order = _read_record(zf, infos[prefix + "byteorder"], 8) if prefix + "byteorder" in infos else b"little"
    if order not in (b"little", b"big"):
        raise CheckpointError(f"{name}: unknown byteorder record {short_repr(bytes(order))}")
    if infos[pkls[0]].file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{name}: {_clip(pkls[0])} holds {infos[pkls[0]].file_size} bytes, "
                              f"over the {MAX_PICKLE_BYTES}-byte limit for a pickle")
    sizes = {}  # storage key -> (dtype, numel), from the persistent ids
    obj = _Unpickler(io.BytesIO(_read_record(zf, infos[pkls[0]], MAX_PICKLE_BYTES)), name, sizes).load()
    budget = _Budget(name, "reading its storage records", file_size, 8)

    def read(key, nbytes):
        rec = f"{prefix}data/{key}"
        if rec not in infos:
            raise CheckpointError(f"{name}: storage record '{_clip(rec)}' is missing")
        dtype, numel = sizes[key]
        if infos[rec].file_size < numel * dtype.itemsize:
            raise CheckpointError(f"{name}: storage record '{_clip(rec)}' holds {infos[rec].file_size} "
                                  f"bytes, its storage needs {numel * dtype.itemsize}")
        budget.spend(nbytes)
        raw = _read_record(zf, infos[rec], nbytes)
        if len(raw) < nbytes:  # its header lied about its size
            raise CheckpointError(f"{name}: storage record '{_clip(rec)}' ends after {len(raw)} bytes")
        return raw

    tensors = _Budget(name, "its tensors", file_size, 2)
    return _state_dict(name, obj, read, order.decode() != sys.byteorder, tensors)


def _read_record(zf, info, nbytes) -> bytearray:
    """The first `nbytes` bytes of a zip member (fewer if it is shorter), inflated in chunks: never
    further than asked, whatever its header claims."""
    buf = bytearray(min(nbytes, info.file_size))
    got = 0
    with zf.open(info) as member, memoryview(buf) as view:
        while got < len(buf) and (chunk := member.read(min(_CHUNK, len(buf) - got))):
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
    del buf[got:]
    return buf


def _read_legacy(f, name, file_size) -> dict[str, np.ndarray]:
    sizes = {}  # storage key -> (dtype, numel), filled in while the data pickle is read
    end = MAX_PICKLE_BYTES  # the five pickles share one limit: they are not read past it
    for expected in (_LEGACY_MAGIC, 1001):  # magic number, then protocol version
        try:
            found = _load_pickle(f, name, sizes, end)
        except UnsafePickleError:
            raise
        except Exception:
            found = None
        if type(found) is not int or found != expected:
            raise CheckpointError(f"{name}: not a torch checkpoint (neither zip nor legacy format)")
    _load_pickle(f, name, sizes, end)  # sys_info: its little_endian flag does not apply (below)
    obj = _load_pickle(f, name, sizes, end)
    keys = _load_pickle(f, name, sizes, end)
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise CheckpointError(f"{name}: the storage list is a {type(keys).__name__}, not a list of keys")
    raws = {}
    # Then each listed storage: int64 element count and the elements. torch writes both
    # little-endian whatever the host (it byte-swaps on big-endian ones), so sys_info is moot.
    for key in keys:
        if key not in sizes:
            raise CheckpointError(f"{name}: storage {short_repr(key)} is listed but never used")
        dtype, numel = sizes[key]
        head = f.read(8)
        count = struct.unpack("<q", head)[0] if len(head) == 8 else -1
        # check the size before reading, so a forged count cannot make us allocate a huge buffer
        if count != numel or f.tell() + numel * dtype.itemsize > file_size:
            raise CheckpointError(f"{name}: storage {short_repr(key)} truncated or of the wrong size")
        raws[key] = f.read(numel * dtype.itemsize)

    def read(key, nbytes):
        raw = raws.get(key, b"")
        if len(raw) < nbytes:
            raise CheckpointError(f"{name}: storage {short_repr(key)} has no data")
        return raw

    tensors = _Budget(name, "its tensors", file_size, 2)
    return _state_dict(name, obj, read, sys.byteorder != "little", tensors)


def _load_pickle(f, name, sizes, end):
    """Unpickle the pickle at `f`'s position, reading no further than offset `end`; leave `f` after it."""
    start = f.tell()
    window = io.BytesIO(f.read(max(end - start, 0)))
    try:
        return _Unpickler(window, name, sizes).load()
    finally:
        f.seek(start + window.tell())


def _is_index(v) -> bool:
    return type(v) is int and 0 <= v < _MAX_INDEX


def _clip(text, n=100):
    return text if len(text) <= n else text[:n] + "..."


def _one_line(e):
    plain = all(type(a) is str or (type(a) is int and abs(a) < 1 << 64) for a in e.args)
    text = str(e) if plain else " ".join(map(short_repr, e.args))
    return " ".join(f"{type(e).__name__}: {text or 'the data ends early'}".split())[:200]


# ---------------------------------------------------------------- writing


class _Global:
    """A global named by module and name, pickled as a GLOBAL opcode without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce__(self):
        return self.name  # a str makes the pickler call save_global(), which _Writer overrides

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise TypeError("stand-in only")


_REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_GLOBALS = {d: _Global("torch", n) for d, n in _STORAGE_OF.items()}


class _TensorRef:
    """A numpy array pickled the way torch pickles a contiguous tensor with its own storage."""

    def __init__(self, index, arr):
        self.index, self.arr = index, arr

    def __reduce__(self):
        shape = self.arr.shape
        # torch's contiguous strides treat empty dims as size 1, e.g. (2, 0, 3) -> (3, 3, 1)
        stride = tuple(math.prod(max(n, 1) for n in shape[i + 1:]) for i in range(len(shape)))
        storage = _StorageRef(self.index, self.arr)
        return (_REBUILD_V2, (storage, 0, shape, stride, False, collections.OrderedDict()))


# A tensor's storage: pickled as a persistent id; its bytes go to the record data/<index>.
_StorageRef = collections.namedtuple("_StorageRef", "index arr")


class _Writer(pickle._Pickler):
    """The pure-Python pickler, because the C one's save_global would import torch to check
    that `torch._utils._rebuild_tensor_v2` exists; here such stand-ins are written verbatim."""

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):  # the storage: ('storage', type, key, location, numel)
            a = obj.arr
            return ("storage", _STORAGE_GLOBALS[a.dtype], str(obj.index), "cpu", a.size)
        return None

    def save_global(self, obj, name=None):
        if not isinstance(obj, _Global):
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)


def _padding(offset, filename, size):
    """Local-header extra field that puts the record's data on a 64-byte boundary, as torch does."""
    # zipfile adds a 20-byte zip64 extra to the local header of very large records
    header = 30 + len(filename.encode()) + 4 + (20 if size * 1.05 > zipfile.ZIP64_LIMIT else 0)
    pad = -(offset + header) % _ALIGN
    return struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 0x4246 = "FB", torch's padding id
