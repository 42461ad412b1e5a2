"""Read and write HF PyTorch GPT-2 weights (`pytorch_model.bin` / `model.safetensors`) without torch.

Reading returns float32 numpy arrays under `GPT2Model` names (`wte.weight`, `h.0.attn.c_attn.weight`),
the canonical side of the name table. It accepts `GPT2LMHeadModel` state dicts (`transformer.` prefix,
`lm_head.weight` tied to `wte`) and `GPT2Model` ones, drops the causal-mask buffers older checkpoints
saved, and upcasts fp16/bf16 to fp32, logging that it did.

Both readers take hostile input: `.bin` through `torch_pickle`, `.safetensors` through a parser of
its own here (safetensors' numpy loader has no bfloat16, and fails on float8 with a bare
AttributeError), which checks the whole header before reading a byte of data.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, WeightMappingError, short_repr
from . import torch_pickle

log = logging.getLogger(__name__)

BIN, SAFETENSORS = "pytorch_model.bin", "model.safetensors"
# Buffers (not weights) that GPT2Attention registered and older transformers saved.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_PREFIX = "transformer."
_LM_HEAD = "lm_head.weight"
# safetensors dtype -> numpy (little-endian, as the format stores). Integer and bool tensors load,
# so that normalise_state_dict can drop buffers and name any other one it refuses.
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": ml_dtypes.bfloat16, "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
MAX_SAFETENSORS_HEADER = 8 << 20  # GPT-2 small's header is ~15 KB


def read_pytorch(path: str | Path, origin: str | None = None) -> dict[str, np.ndarray]:
    """Load `path` (.bin or .safetensors) into float32 arrays under GPT2Model names.

    origin: how log lines name the file, if not by `path` (e.g. "release.zip:model/pytorch_model.bin")."""
    path = Path(path)
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else torch_pickle.load_state_dict(path)
    return normalise_state_dict(raw, origin or str(path))


def normalise_state_dict(raw: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Strip the LM-head prefix, drop buffers, check the tie of `lm_head`, upcast to float32."""
    state = {}
    lm_head = raw.get(_LM_HEAD)
    for name, value in raw.items():
        if name == _LM_HEAD:
            continue
        name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
        if _BUFFER.fullmatch(name):
            continue
        if name in state:
            raise WeightMappingError(f"{origin}: tensor {short_repr(name)} appears both with and without {_PREFIX!r}")
        state[name] = value
    if lm_head is not None and "wte.weight" in state and not np.array_equal(
            lm_head, state["wte.weight"], equal_nan=True):  # a NaN is reported as such, by names.check_values
        raise WeightMappingError(
            f"{origin}: lm_head.weight differs from wte.weight (an untied output embedding); the TF1 "
            f"layout and TFGPT2LMHeadModel tie them and cannot hold it"
        )
    upcast = sorted({str(v.dtype) for v in state.values() if v.dtype != np.float32})
    if upcast:
        bad = [n for n, v in state.items() if not np.issubdtype(v.dtype, np.floating) and str(v.dtype) != "bfloat16"]
        if bad:
            raise CheckpointError(f"{origin}: tensor {short_repr(bad[0])} is {state[bad[0]].dtype}, expected floating point")
        log.info("%s: upcasting %s tensors to float32", origin, "/".join(upcast))
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes Inf, which names.check_values names
        return {name: np.asarray(value, dtype=np.float32) for name, value in state.items()}


def write_pytorch(folder: str | Path, state: dict[str, np.ndarray], safetensors: bool = False) -> Path:
    """Write GPT2Model-named tensors as a `GPT2LMHeadModel` checkpoint; return the weights path."""
    folder = Path(folder)
    full = {f"{_PREFIX}{name}": np.ascontiguousarray(value) for name, value in state.items()}
    if safetensors:
        from safetensors.numpy import save_file

        # No lm_head.weight: HF ties it to wte on load, and safetensors refuses shared tensors.
        path = folder / SAFETENSORS
        save_file(full, str(path), metadata={"format": "pt"})
    else:
        full[_LM_HEAD] = full[f"{_PREFIX}wte.weight"]  # as HF's own .bin writer stores the tie
        path = folder / BIN
        torch_pickle.save_state_dict(full, path)
    return path


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a .safetensors file: u64 header length, JSON header, then the tensors' bytes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
                raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError) as e:
                raise CheckpointError(f"{path}: not a safetensors file (bad JSON header: {_clip(str(e))})") from None
            entries = _safetensors_entries(path, header, size - 8 - n)
            out = {}
            for name, (dtype, shape, begin, end) in entries.items():
                f.seek(8 + n + begin)
                buf = bytearray(end - begin)
                if f.readinto(buf) != len(buf):
                    raise CheckpointError(f"{path}: tensor {short_repr(name)} is truncated")
                out[name] = np.frombuffer(buf, dtype).reshape(shape)
            return out
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def _safetensors_entries(path: Path, header, data_size: int) -> dict[str, tuple]:
    """Check the whole header: name -> (numpy dtype, shape, begin, end), the data's byte range.
    Ranges must lie in the data and not overlap, so the tensors never take more than the file."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is a {type(header).__name__}, expected an object")
    entries = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        shown = f"{path}: tensor {short_repr(name)}"
        if not (isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)):
            raise CheckpointError(f"{shown}: header entry lacks shape or data_offsets")
        if not isinstance(e.get("dtype"), str) or e["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{shown} has dtype {short_repr(e.get('dtype'))}, which is "
                                  f"not supported (supported: {', '.join(_SAFETENSORS_DTYPES)})")
        dtype, shape, offsets = np.dtype(_SAFETENSORS_DTYPES[e["dtype"]]), e["shape"], e["data_offsets"]
        ok = len(shape) <= 64 and len(offsets) == 2 and all(type(v) is int and 0 <= v < 2**62 for v in shape + offsets)
        if not ok or not offsets[0] <= offsets[1] <= data_size:
            raise CheckpointError(f"{shown} has a bad shape or data range (the file holds {data_size} bytes of data)")
        # numpy refuses a huge shape even when a 0 makes it empty; no real tensor nears 2**48 bytes
        too_big = math.prod(d or 1 for d in shape) * dtype.itemsize > 2**48
        if math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0] or too_big:
            raise CheckpointError(f"{shown}: shape {_clip(str(shape))} of {e['dtype']} does not fit "
                                  f"its {offsets[1] - offsets[0]} bytes")
        entries[name] = (dtype, tuple(shape), *offsets)
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {short_repr(first)} and {short_repr(second)} overlap")
    return entries


def _clip(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n] + "..."
