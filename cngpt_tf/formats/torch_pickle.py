"""Read and write PyTorch `.bin` checkpoints (`torch.save(state_dict)`) without importing torch.

Hugging Face GPT-2 checkpoints often ship only as `pytorch_model.bin`. That file is a pickle, and
a pickle can run arbitrary code, so the reader uses an unpickler that admits only the globals
needed to rebuild tensors (the same idea as torch's `weights_only=True`) and maps them to local
stand-ins; anything else raises `UnsafePickleError` before it is called. Both layouts are read:
the zip archive torch >= 1.6 writes, and the older "legacy" stream of consecutive pickles. The
writer produces the zip layout, which `torch.load(weights_only=True)` and `from_pretrained` read.
"""

import collections
import functools
import io
import math
import os
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, UnsafePickleError

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


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Return the tensors of a torch checkpoint as name -> C-contiguous numpy array."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            is_zip = zipfile.is_zipfile(f)  # this moves the file position
            f.seek(0)
            if is_zip:
                return _read_zip(f, name)
            elif head.startswith(b"PK"):
                raise CheckpointError(f"{name}: truncated or corrupt zip archive")
            elif not head:
                raise CheckpointError(f"{name}: empty file, not a torch checkpoint")
            else:
                return _read_legacy(f, name)
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
# Tuples, so a BUILD opcode cannot alter them. A _Storage views the bytes of `key` as `dtype`.
_Storage = collections.namedtuple("_Storage", "key dtype offset numel")
_Tensor = collections.namedtuple("_Tensor", "storage offset size stride")


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "UntypedStorage"): np.dtype(np.uint8),  # torch 2.x's name for byte storages
    **{("torch", n): d for n, d in _STORAGES.items()},
    **{("torch", d.name): d for d in _STORAGES.values()},  # dtype objects, e.g. torch.float32
}


class _Unpickler(pickle.Unpickler):
    """Admits only `_ALLOWED` globals and resolves storage persistent ids to `_Storage`s."""

    def __init__(self, file, name, sizes):
        super().__init__(file)
        self.name, self.sizes = name, sizes  # sizes: storage key -> (dtype, numel) first seen

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"{self.name}: unsupported storage type 'torch.{name}'")
        raise UnsafePickleError(f"{self.name}: refusing to unpickle global '{module}.{name}' "
                                "(only tensor-rebuilding globals are allowed)")

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], np.dtype) and isinstance(pid[4], int) and pid[4] >= 0):
            raise CheckpointError(f"{self.name}: unexpected persistent id {pid!r:.80}")
        dtype, key, numel = pid[1], str(pid[2]), pid[4]
        self.sizes.setdefault(key, (dtype, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # (view_key, offset, numel); only written by torch < 1.0
            return _Storage(key, dtype, int(view[1]), int(view[2]))
        return _Storage(key, dtype, 0, numel)


def _state_dict(name, obj, blob, swap) -> dict[str, np.ndarray]:
    """Check that `obj` maps names to tensors and build each one from its storage's bytes."""
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # {"state_dict": {...}} / {"model": {...}}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: top object is {type(obj).__name__}, "
                              "expected a mapping of name -> tensor")
    for key, t in obj.items():
        if not (isinstance(key, str) and isinstance(t, _Tensor)
                and isinstance(t.storage, _Storage)):
            raise CheckpointError(
                f"{name}: entry {key!r:.60} is {type(t).__name__}, expected a tensor")
    # Views of one storage in a row, so `blob` need only keep the latest storage's bytes.
    out = {k: _materialize(name, k, obj[k], blob(obj[k].storage.key), swap)
           for k in sorted(obj, key=lambda k: obj[k].storage.key)}
    return {k: out[k] for k in obj}


def _materialize(name, key, t, raw, swap) -> np.ndarray:
    """numpy's as_strided over the storage, bounds-checked first, then copied C-contiguous."""
    s, item = t.storage, t.storage.dtype.itemsize
    ok = isinstance(t.size, tuple) and isinstance(t.stride, tuple) and len(t.size) == len(t.stride)
    if not ok or not all(isinstance(v, int) and v >= 0 for v in (*t.size, *t.stride, t.offset)):
        raise CheckpointError(f"{name}: tensor {key!r} has a bad size, stride or offset")
    if 0 in t.size:
        return np.zeros(t.size, s.dtype)
    avail = min(len(raw) // item - s.offset, s.numel)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    if last >= avail:
        raise CheckpointError(f"{name}: storage of {key!r} too short: needs {last + 1} "
                              f"elements of {s.dtype}, has {max(avail, 0)}")
    start = (s.offset + t.offset) * item
    flat = np.frombuffer(raw, s.dtype, count=last - t.offset + 1, offset=start)
    if swap:  # through an unsigned-integer view, which works for bfloat16 too
        flat = flat.view(f"u{item}").byteswap().view(s.dtype)
    strides = [st * item for st in t.stride]
    view = np.lib.stride_tricks.as_strided(flat, t.size, strides, writeable=False)
    return np.array(view, order="C")  # a copy: owns its memory, never aliases the file's bytes


def _read_zip(f, name) -> dict[str, np.ndarray]:
    zf = zipfile.ZipFile(f)
    members = set(zf.namelist())
    # torch names the archive folder after the file it saved to, so find it from data.pkl
    pkls = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{name}: zip archive has no <archive>/data.pkl (not a torch file)")
    prefix = pkls[0][: -len("data.pkl")]
    order = zf.read(prefix + "byteorder") if prefix + "byteorder" in members else b"little"
    if order not in (b"little", b"big"):
        raise CheckpointError(f"{name}: unknown byteorder record {order[:20]!r}")
    obj = _Unpickler(io.BytesIO(zf.read(pkls[0])), name, {}).load()

    @functools.lru_cache(maxsize=1)  # see _state_dict: views of one storage come in a row
    def blob(key):
        if prefix + "data/" + key not in members:
            raise CheckpointError(f"{name}: storage record '{prefix}data/{key}' is missing")
        return zf.read(prefix + "data/" + key)

    return _state_dict(name, obj, blob, swap=order.decode() != sys.byteorder)


def _read_legacy(f, name) -> dict[str, np.ndarray]:
    sizes = {}  # storage key -> (dtype, numel), filled in while the data pickle is read
    for expected in (_LEGACY_MAGIC, 1001):  # magic number, then protocol version
        try:
            found = _Unpickler(f, name, sizes).load()
        except UnsafePickleError:
            raise
        except Exception:
            found = None
        if found != expected:
            raise CheckpointError(f"{name}: not a torch checkpoint (neither zip nor legacy format)")
    _Unpickler(f, name, sizes).load()  # sys_info: its little_endian flag does not apply (below)
    obj = _Unpickler(f, name, sizes).load()
    raws, file_size = {}, os.fstat(f.fileno()).st_size
    # Then each listed storage: int64 element count and the elements. torch writes both
    # little-endian whatever the host (it byte-swaps on big-endian ones), so sys_info is moot.
    for key in map(str, _Unpickler(f, name, sizes).load()):
        if key not in sizes:
            raise CheckpointError(f"{name}: storage {key!r} is listed but never used")
        dtype, numel = sizes[key]
        head = f.read(8)
        count = struct.unpack("<q", head)[0] if len(head) == 8 else -1
        # check the size before reading, so a forged count cannot make us allocate a huge buffer
        if count != numel or f.tell() + numel * dtype.itemsize > file_size:
            raise CheckpointError(f"{name}: storage {key!r} truncated or of the wrong size")
        raws[key] = f.read(numel * dtype.itemsize)

    def blob(key):
        if key not in raws:
            raise CheckpointError(f"{name}: storage {key!r} has no data")
        return raws[key]

    return _state_dict(name, obj, blob, swap=sys.byteorder != "little")


def _one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


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
