"""Tests of the safetensors reader in cngpt_tf.formats.pytorch: real files, and broken or hostile ones.

The reader is ours (safetensors' numpy loader has no bfloat16 and fails on float8 with a bare
AttributeError), so it is checked against the library's own reader and writer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cngpt_tf.errors import CheckpointError
from cngpt_tf.formats.pytorch import _read_safetensors, read_pytorch

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "f16": np.linspace(-2, 2, 5, dtype=np.float16),
    "f64": np.array([1e-300, 2.0]), "i64": np.array([-(2**40), 7]), "i8": np.array([-128, 127], dtype=np.int8),
    "u8": np.array([0, 255], dtype=np.uint8), "bool": np.array([True, False]),
    "scalar": np.array(1.25, dtype=np.float32), "empty": np.zeros((2, 0, 3), dtype=np.float32),
}


def test_reads_what_safetensors_writes(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(ARRAYS, str(path), metadata={"format": "pt"})
    got, want = _read_safetensors(path), load_file(str(path))
    assert got.keys() == want.keys() == ARRAYS.keys()
    for key, arr in want.items():
        assert got[key].dtype == arr.dtype and got[key].shape == arr.shape, key
        np.testing.assert_array_equal(got[key], arr, err_msg=key)


def test_bfloat16(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    x = torch.linspace(-3, 3, 6).reshape(2, 3).bfloat16()
    path = tmp_path / "bf16.safetensors"
    save_torch({"h.0.mlp.c_fc.weight": x}, str(path))
    got = read_pytorch(path)["h.0.mlp.c_fc.weight"]  # upcast to float32 on the way
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.float().numpy())
    raw = _read_safetensors(path)["h.0.mlp.c_fc.weight"]
    assert raw.dtype == ml_dtypes.bfloat16


def _write(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BROKEN = {  # name -> (header, data, length or None, what the message says)
    "empty": (b"", b"", 0, "not a safetensors file"),
    "huge_length": ({"w": _entry()}, bytes(8), 2**60, "header length 1152921504606846976"),
    "length_past_end": ({"w": _entry()}, bytes(8), 1000, "header length 1000"),
    "bad_json": (b"{not json", b"", None, "bad JSON header"),
    "deep_json": (b"[" * 100_000 + b"]" * 100_000, b"", None, "bad JSON header"),
    "not_object": ([1, 2], b"", None, "header is a list"),
    "no_offsets": ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "'w': header entry lacks"),
    "float8": ({"w": _entry("F8_E5M2", (8,))}, bytes(8), None, "tensor 'w' has dtype 'F8_E5M2'"),
    "complex": ({"w": _entry("C64", (1,))}, bytes(8), None, "tensor 'w' has dtype 'C64'"),
    "unknown_dtype": ({"w": _entry(["F32"])}, bytes(8), None, r"tensor 'w' has dtype \['F32'\]"),
    "negative_dim": ({"w": _entry(shape=(-2,))}, bytes(8), None, "'w' has a bad shape or data range"),
    "bool_dim": ({"w": _entry(shape=(True, 2))}, bytes(8), None, "'w' has a bad shape or data range"),
    "past_end": ({"w": _entry(offsets=(0, 1 << 40))}, bytes(8), None, "'w' has a bad shape or data range"),
    "reversed": ({"w": _entry(offsets=(8, 0))}, bytes(8), None, "'w' has a bad shape or data range"),
    "size_mismatch": ({"w": _entry(shape=(3,))}, bytes(8), None, r"'w': shape \[3\] of F32 does not fit its 8"),
    "overflow": ({"w": _entry(shape=(2**61, 2**61))}, bytes(8), None, "does not fit"),
    "empty_but_huge": ({"w": _entry(shape=(0, 2**61, 2**61), offsets=(0, 0))}, b"", None, "does not fit"),
    "empty_but_huge_bytes": ({"w": _entry(shape=(2**31, 2**31, 0), offsets=(0, 0))}, b"", None, "does not fit"),
    "overlap": ({"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(12), None, "tensors 'a' and 'b' overlap"),
    "long_name": ({"x" * 100_000: _entry("F8_E4M3")}, bytes(8), None, r"tensor 'x{10,}\.\.\."),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_is_one_line_checkpoint_error(tmp_path, case):
    header, data, length, says = BROKEN[case]
    path = _write(tmp_path / "model.safetensors", header, data, length)
    with pytest.raises(CheckpointError, match=says) as e:
        read_pytorch(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 500, msg


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_pytorch(tmp_path / "model.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="cannot read it"):
        read_pytorch(tmp_path / "dir.safetensors")


def test_arrays_own_their_memory(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones(4, np.float32)}, str(path))
    w = _read_safetensors(path)["w"]
    w[0] = 5  # writable, and not a view of a file that may be deleted
    assert w.tolist() == [5, 1, 1, 1]


def test_nan_in_a_tied_embedding_is_not_called_untied():
    """lm_head.weight is wte.weight (tied); a NaN in it is not an untied embedding: NaN != NaN in
    np.array_equal, so the tie is compared with equal_nan and the NaN left to names.check_values."""
    from cngpt_tf.formats import names
    from cngpt_tf.formats.pytorch import normalise_state_dict

    wte = np.ones((4, 2), np.float32)
    wte[0, 0] = np.nan
    state = normalise_state_dict({"transformer.wte.weight": wte, "lm_head.weight": wte.copy()}, "m.bin")
    with pytest.raises(CheckpointError, match="'wte.weight' has 1 NaN"):
        names.check_values(state, "m.bin")


def test_float64_beyond_float32_is_upcast_to_inf_without_a_warning():
    """The upcast of 1e300 gives Inf, which names.check_values reports in one line; numpy's overflow
    RuntimeWarning would print two more lines before it."""
    import warnings

    from cngpt_tf.formats.pytorch import normalise_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = normalise_state_dict({"wte.weight": np.array([1e300, 1.0])}, "m.bin")
    assert np.isinf(state["wte.weight"][0])
