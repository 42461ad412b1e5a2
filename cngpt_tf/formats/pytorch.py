"""Read and write HF PyTorch GPT-2 weights (`pytorch_model.bin` / `model.safetensors`) without torch.

Reading returns float32 numpy arrays under `GPT2Model` names (`wte.weight`, `h.0.attn.c_attn.weight`),
the canonical side of the name table. It accepts `GPT2LMHeadModel` state dicts (`transformer.` prefix,
`lm_head.weight` tied to `wte`) and `GPT2Model` ones, drops the causal-mask buffers older checkpoints
saved, and upcasts fp16/bf16 to fp32, logging that it did.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, WeightMappingError
from . import torch_pickle

log = logging.getLogger(__name__)

BIN, SAFETENSORS = "pytorch_model.bin", "model.safetensors"
# Buffers (not weights) that GPT2Attention registered and older transformers saved.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_PREFIX = "transformer."
_LM_HEAD = "lm_head.weight"


def read_pytorch(path: str | Path) -> dict[str, np.ndarray]:
    """Load `path` (.bin or .safetensors) into float32 arrays under GPT2Model names."""
    path = Path(path)
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else torch_pickle.load_state_dict(path)
    return normalise_state_dict(raw, str(path))


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
            raise WeightMappingError(f"{origin}: tensor {name!r} appears both with and without {_PREFIX!r}")
        state[name] = value
    if lm_head is not None and "wte.weight" in state and not np.array_equal(lm_head, state["wte.weight"]):
        raise WeightMappingError(
            f"{origin}: lm_head.weight differs from wte.weight (an untied output embedding); the TF1 "
            f"layout and TFGPT2LMHeadModel tie them and cannot hold it"
        )
    upcast = sorted({str(v.dtype) for v in state.values() if v.dtype != np.float32})
    if upcast:
        bad = [n for n, v in state.items() if not np.issubdtype(v.dtype, np.floating) and str(v.dtype) != "bfloat16"]
        if bad:
            raise CheckpointError(f"{origin}: tensor {bad[0]!r} is {state[bad[0]].dtype}, expected floating point")
        log.info("%s: upcasting %s tensors to float32", origin, "/".join(upcast))
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
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
