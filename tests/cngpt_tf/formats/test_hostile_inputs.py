"""Hostile weight files and release zips, crafted here opcode by opcode (no torch needed).

The issue's target: any input of 10 MB or less ends (loads or fails with its one-line error) within
10 s and under 1 GB above the process's baseline. Each file is read in a fresh interpreter that
measures its own wall time and peak RSS growth (ru_maxrss before and after the read), under an
address-space limit, so that a regression fails the test rather than the machine. Then the
in-process checks: a refused file leaves the process as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from cngpt_tf.errors import CheckpointError, short_repr
from cngpt_tf.formats import torch_pickle
from cngpt_tf.formats.torch_pickle import (
    MAX_PICKLE_BYTES,
    load_state_dict,
    save_state_dict,
)
from tests.pickle_asm import (
    Member,
    get,
    glob,
    ints,
    num,
    ordered_dict,
    pickled,
    pid,
    put,
    raw_zip,
    shared_tuple,
    state_dict,
    tensor,
    text,
    torch_zip,
    zip_bomb_member,
)

# The child: import the readers (never torch or TensorFlow), note ru_maxrss, read, report.
CHILD = r"""
import json, resource, sys, time
sys.modules["torch"] = sys.modules["tensorflow"] = None
kind, path = sys.argv[1:]
from cngpt_tf.formats.pytorch import read_pytorch
from cngpt_tf.formats.source import open_source

try:  # 4 GiB above what is mapped now: a runaway read fails here instead of swapping
    mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (4 << 30),) * 2)
except (OSError, ValueError):
    pass
peak_kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base, start = peak_kib(), time.monotonic()
try:
    if kind == "source":
        with open_source(path, progress=False) as files:
            result = "ok " + files.weights.name
    else:
        result = "ok " + ",".join(f"{k}{list(v.shape)}" for k, v in read_pytorch(path).items())
except Exception as e:
    result = f"{type(e).__name__}: {e}"
print(json.dumps({"result": result, "seconds": time.monotonic() - start,
                  "mib": (peak_kib() - base) / 1024}))
"""


def read_in_child(kind: str, path: Path) -> str:
    """Read `path` in a fresh interpreter; assert the bounds; return 'ok ...' or 'Error: message'."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=path.parent, env=env)
    assert proc.returncode == 0, f"the reader crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 10, report
    assert report["mib"] < 1024, report
    assert path.stat().st_size <= 10 << 20  # the target speaks of inputs of 10 MB or less
    return report["result"]


# ---------------------------------------------------------------- crafted files
# Each returns (path, the read's kind, a regex its result must match).

ZEROS = b"\0" * 16


def exponential_persistent_id(tmp):
    # t[80] = (t[79], t[79]), ...: its full repr has 2**80 leaves. Formerly the message built it.
    bad = pickled(pickle.EMPTY_DICT, text("w"), shared_tuple(80), pickle.BINPERSID, pickle.SETITEM)
    return torch_zip(tmp / "pid.bin", bad), "unexpected persistent id"


def exponential_dict_key(tmp):
    bad = pickled(pickle.EMPTY_DICT, shared_tuple(80), pickle.NONE, pickle.SETITEM)  # a hash of 2**80 steps
    return torch_zip(tmp / "key.bin", bad), "key is a tuple"


def deep_dict_key(tmp):
    # a tuple nested 300000 deep: hashing it overflowed the C stack (a segfault, not an error)
    bad = pickled(pickle.EMPTY_DICT, pickle.EMPTY_TUPLE + pickle.TUPLE1 * 300_000, pickle.NONE, pickle.SETITEM)
    return torch_zip(tmp / "deep.bin", bad), "key is a tuple"


def huge_memo_index(tmp):
    # 11 bytes of pickle: the C unpickler sized its memo by the index, 16 GiB here
    return torch_zip(tmp / "memo.bin", pickled(pickle.NONE, pickle.LONG_BINPUT + struct.pack("<I", 2**31 - 1))), \
        "top object is NoneType"


def zero_stride_view(tmp):
    # one float viewed 2**29 times: materialised, 2 GiB from a file of a few hundred bytes
    bad = state_dict(w=tensor("0", 1, (1 << 29,), (0,)))
    return torch_zip(tmp / "stride.bin", bad, {"0": ZEROS[:4]}), "536870912 elements, more than the 1 of its storage"


def overflowing_view(tmp):
    bad = state_dict(w=tensor("0", 4, (2, 2), (2**62, 1)))  # its last element lies far past the storage
    return torch_zip(tmp / "overflow.bin", bad, {"0": ZEROS}), "bad size, stride or offset"


def deflate_bomb_record(tmp):
    # a 1 MB record that inflates to 1 GiB, all of it wanted by a tensor: refused before reading
    bad = state_dict(w=tensor("0", 1 << 28, (1 << 28,), (1,)))
    return torch_zip(tmp / "bomb.bin", bad, {"0": zip_bomb_member("", 1024)}), "reading its storage records would take over"


def deflate_bomb_record_small_tensor(tmp):
    # the same record, but the tensor needs its first 16 bytes only: read those, not the GiB
    good = state_dict(w=tensor("0", 1 << 28, (4,), (1,)))
    return torch_zip(tmp / "bomb_ok.bin", good, {"0": zip_bomb_member("", 1024)}), r"^ok w\[4\]$"


def data_pkl_bomb(tmp):
    members = [zip_bomb_member("archive/data.pkl", 1024), Member("archive/byteorder", b"little")]
    return raw_zip(tmp / "pkl_bomb.bin", members), f"over the {MAX_PICKLE_BYTES}-byte limit for a pickle"


def largest_pickle(tmp):
    # data.pkl at its size limit, every byte an opcode: the slowest pickle the reader accepts
    ops = pickled(pickle.EMPTY_LIST, pickle.MARK, pickle.NONE * (MAX_PICKLE_BYTES - 16), pickle.APPENDS)
    return torch_zip(tmp / "big_pkl.bin", ops), "top object is list"


def views_of_one_storage(tmp):
    # 100 tensors over one 1 MiB storage: 100 MiB materialised from a 1 MB file
    views = {f"w{i}": tensor("0", 1 << 18, (1 << 18,), (1,)) for i in range(100)}
    return torch_zip(tmp / "views.bin", state_dict(**views), {"0": bytes(1 << 20)}), "its tensors would take over"


def _legacy(*pickles: bytes, data: bytes = b"") -> bytes:
    head = [pickled(num(0x1950A86A20F9469CFC6C)), pickled(num(1001)), pickled(pickle.EMPTY_DICT)]
    return b"".join(head) + b"".join(pickles) + data


def legacy_zero_stride_view(tmp):
    keys = pickled(pickle.EMPTY_LIST, text("0"), pickle.APPEND)
    path = tmp / "legacy.bin"
    path.write_bytes(_legacy(state_dict(w=tensor("0", 1, (1 << 29,), (0,))), keys, data=struct.pack("<q", 1) + ZEROS[:4]))
    return path, "536870912 elements, more than the 1 of its storage"


def _safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def safetensors_float8(tmp):
    header = {"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}
    return _safetensors(tmp / "f8.safetensors", header, ZEROS[:4]), "tensor 'w' has dtype 'F8_E4M3'"


def safetensors_int64(tmp):
    header = {"h.0.attn.c_attn.weight": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}
    return _safetensors(tmp / "i64.safetensors", header, ZEROS), "tensor 'h.0.attn.c_attn.weight' is int64"


def safetensors_lying_offsets(tmp):
    header = {"w": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}}
    return _safetensors(tmp / "lie.safetensors", header, ZEROS), "tensor 'w' has a bad shape or data range"


def safetensors_absurd_header_length(tmp):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    return _safetensors(tmp / "len.safetensors", header, ZEROS, length=2**60), "header length 1152921504606846976"


CONFIG = json.dumps({"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}).encode()


def release_config_bomb(tmp):
    members = [zip_bomb_member("m/config.json", 1024), Member("m/vocab.txt", b"a\n"),
               Member("m/pytorch_model.bin", b"x")]
    return raw_zip(tmp / "release.zip", members), "over the 1048576-byte limit for config.json"


def release_config_bomb_lying_header(tmp):
    bomb = zip_bomb_member("m/config.json", 1024)
    bomb.size = 100  # the headers claim 100 bytes; the stream holds a GiB
    members = [bomb, Member("m/vocab.txt", b"a\n"), Member("m/pytorch_model.bin", b"x")]
    return raw_zip(tmp / "release.zip", members), r"CheckpointError: .*m/config.json"


def release_weights_over_config(tmp):
    # the config describes a model of a few KB; the weights member would unpack to 1 GiB
    members = [Member("m/config.json", CONFIG), Member("m/vocab.txt", b"a\n"),
               zip_bomb_member("m/pytorch_model.bin", 1024)]
    return raw_zip(tmp / "release.zip", members), "UnsafeArchiveError: .*limit for pytorch_model.bin"


CASES = [exponential_persistent_id, exponential_dict_key, deep_dict_key, huge_memo_index,
         zero_stride_view, overflowing_view, deflate_bomb_record, deflate_bomb_record_small_tensor,
         data_pkl_bomb, largest_pickle, views_of_one_storage, legacy_zero_stride_view,
         safetensors_float8, safetensors_int64, safetensors_lying_offsets,
         safetensors_absurd_header_length, release_config_bomb, release_config_bomb_lying_header,
         release_weights_over_config]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_hostile_file_ends_fast_and_small(tmp_path, make):
    path, expected = make(tmp_path)
    result = read_in_child("source" if path.suffix == ".zip" else "weights", path)
    assert re.search(expected, result), result
    assert "\n" not in result and len(result) < 1000, result
    if not result.startswith("ok"):
        assert result.split(":")[0].endswith("Error") and path.name in result, result


# ---------------------------------------------------------------- the process stays as it was


def _dtype_state():
    d = np.dtype(np.float32)
    return (d.str, d.itemsize, d.alignment, d.byteorder, d.flags, d.metadata, d.names, d.descr,
            np.frombuffer(np.float32(1.5).tobytes(), np.float32).tolist())


GOOD = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "f16": np.linspace(-2, 2, 5, dtype=np.float16),
        "bf16": np.linspace(-3, 3, 6).astype(ml_dtypes.bfloat16), "i64": np.array([-(2**40), 7]),
        "u8": np.array([0, 255], dtype=np.uint8), "bool": np.array([True, False])}

# Opcodes aimed at the object a GLOBAL pushed: each would change it for the whole process if it
# were the real function, class or np.dtype (e.g. BUILD sets a function's __defaults__).
ATTACKS = {
    "build_dict": pickle.EMPTY_DICT + text("__defaults__") + pickle.NONE + pickle.SETITEM + pickle.BUILD,
    "build_slots": pickle.NONE + pickle.EMPTY_DICT + text("__defaults__") + pickle.NONE + pickle.SETITEM
                   + pickle.TUPLE2 + pickle.BUILD,
    "build_dtype_state": ints([3]) + pickle.BUILD,  # np.dtype's __setstate__ takes a tuple
    "setitem": text("k") + num(1) + pickle.SETITEM,
    "setitems": pickle.MARK + text("k") + num(1) + pickle.SETITEMS,
    "append": num(1) + pickle.APPEND,
    "appends": pickle.MARK + num(1) + pickle.APPENDS,
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_opcodes_on_allowed_globals_change_nothing(tmp_path, attack):
    good = tmp_path / "good.bin"
    save_state_dict(GOOD, good)
    before = _dtype_state(), dict(torch_pickle._ALLOWED), torch_pickle._rebuild_tensor_v2.__defaults__
    for module, name in torch_pickle._ALLOWED:
        bad = torch_zip(tmp_path / "bad.bin", pickled(glob(module, name), ATTACKS[attack]))
        with pytest.raises(CheckpointError):
            load_state_dict(bad)
        # also when the attacked global sits inside an otherwise fine state dict
        inner = pickled(pickle.EMPTY_DICT, text("w"), tensor("0", 4, (4,), (1,)), pickle.SETITEM,
                        glob(module, name), ATTACKS[attack], pickle.POP)
        try:
            load_state_dict(torch_zip(tmp_path / "bad2.bin", inner, {"0": ZEROS}))
        except CheckpointError:
            pass
        got = load_state_dict(good)
        assert got.keys() == GOOD.keys(), (module, name)
        for key, want in GOOD.items():
            assert got[key].dtype == want.dtype, (module, name, key)
            np.testing.assert_array_equal(got[key], want, err_msg=f"{module}.{name}")
    after = _dtype_state(), dict(torch_pickle._ALLOWED), torch_pickle._rebuild_tensor_v2.__defaults__
    assert after == before


def test_build_on_a_rebuilt_tensor_or_storage_is_refused(tmp_path):
    for target in (tensor("0", 4, (4,), (1,)), pid("0", 4) + pickle.BINPERSID):
        bad = pickled(pickle.EMPTY_DICT, text("w"), target, pickle.EMPTY_DICT, pickle.BUILD, pickle.SETITEM)
        with pytest.raises(CheckpointError, match="BUILD on a _(Tensor|Storage)"):
            load_state_dict(torch_zip(tmp_path / "bad.bin", bad, {"0": ZEROS}))


def test_torch_metadata_build_still_loads(tmp_path):
    # torch's state dicts are OrderedDicts with a `_metadata` attribute, set by BUILD
    meta = pickle.EMPTY_DICT + text("_metadata") + ordered_dict() + pickle.SETITEM
    data = pickled(ordered_dict(), text("w"), tensor("0", 4, (2, 2), (2, 1)), pickle.SETITEM, meta, pickle.BUILD)
    got = load_state_dict(torch_zip(tmp_path / "m.bin", data, {"0": np.arange(4, dtype="<f4").tobytes()}))
    np.testing.assert_array_equal(got["w"], [[0, 1], [2, 3]])


def test_legacy_pickles_share_one_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_BYTES", 1000)
    padded_magic = pickled(pickle.NONE * 300, pickle.POP * 300, num(0x1950A86A20F9469CFC6C))
    path = tmp_path / "legacy.bin"
    path.write_bytes(padded_magic + pickled(pickle.NONE * 300, pickle.POP * 300, num(1001)))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):  # the second stops short
        load_state_dict(path)
    path.write_bytes(padded_magic + pickled(num(1001)) + pickled(pickle.EMPTY_DICT) + pickled(pickle.NONE)
                     + pickled(pickle.EMPTY_LIST))
    with pytest.raises(CheckpointError, match="top object is NoneType"):  # within the limit
        load_state_dict(path)


def test_legacy_reader_leaves_each_pickle_where_it_ends(tmp_path):
    """The legacy stream is read pickle by pickle through a bounded window: the file position after
    each must be exactly where the next begins (the storages' bytes follow the last one)."""
    keys = pickled(pickle.EMPTY_LIST, text("7"), pickle.APPEND)
    data = struct.pack("<q", 3) + np.array([1.5, -2, 4], dtype="<f4").tobytes()
    path = tmp_path / "legacy.bin"
    path.write_bytes(_legacy(state_dict(w=tensor("7", 3, (3,), (1,))), keys, data=data))
    np.testing.assert_array_equal(load_state_dict(path)["w"], [1.5, -2, 4])


# ---------------------------------------------------------------- bounded messages


def test_short_repr_is_bounded_for_anything_a_pickle_can_build():
    shared = pickle.loads(pickled(shared_tuple(200)))  # 2**200 leaves
    listed = pickle.loads(pickled(pickle.EMPTY_LIST, put(0), pickle.MARK, *[get(0)] * 50, pickle.APPENDS))
    values = [shared, listed, OrderedDict(a=shared), {i: shared for i in range(10**6)}, set(range(10**6)),
              2**100_000, b"\xff" * 10**7, "x" * 10**7, torch_pickle._Call("rebuild_tensor"),
              torch_pickle._Tensor(shared, shared, shared, shared)]
    start = time.monotonic()
    for value in values:
        shown = short_repr(value)
        assert len(shown) < 400 and "\n" not in shown, shown[:400]
    assert time.monotonic() - start < 2
    assert short_repr("storage") == "'storage'" and short_repr((1, 2)) == "(1, 2)"


def test_long_global_names_are_clipped(tmp_path):
    bad = torch_zip(tmp_path / "g.bin", pickled(glob("os" + "x" * 100_000, "system")))
    with pytest.raises(CheckpointError, match="refusing to unpickle") as e:
        load_state_dict(bad)
    assert len(str(e.value)) < 400
