"""The one table of GPT-2 weight names: PyTorch (HF `GPT2Model`) <-> TF1 (openai/gpt-2) <-> HF-TF.

Every converter direction and every shape check goes through `convert()`, which reads `TABLE`.
No transposes are ever needed: GPT-2 uses `Conv1D` (weight [nx, nf], `x @ w`) in all three
layouts; only leading unit axes differ (TF1 stores Conv1D weights as [1, nx, nf], HF-TF stores
Conv1D biases as [1, nf]). Unknown, missing or mis-shaped tensors fail closed, naming the tensor.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from ..config import GPT2Config
from ..errors import WeightMappingError

PT, TF1, HF_TF = "pt", "tf1", "hf_tf"
FORMATS = (PT, TF1, HF_TF)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One weight: its name in each format (`{i}` = layer index) and its shape there.

    Shapes are tuples of dimension names resolved by `_dims()`; `1` is a literal unit axis.
    """

    pt: str
    tf1: str
    hf_tf: str
    pt_shape: tuple
    tf1_shape: tuple
    hf_tf_shape: tuple

    def name(self, fmt: str, layer: int | None = None) -> str:
        template = getattr(self, fmt)
        return template.format(i=layer) if layer is not None else template

    def shape(self, fmt: str, config: GPT2Config) -> tuple[int, ...]:
        dims = _dims(config)
        return tuple(d if isinstance(d, int) else dims[d] for d in getattr(self, f"{fmt}_shape"))


def _conv1d(pt, tf1, hf_tf, nx, nf):
    """A Conv1D layer: weight [nx, nf] + bias [nf], with each format's unit axes."""
    return (
        Entry(f"{pt}.weight", f"{tf1}/w", f"{hf_tf}/weight:0", (nx, nf), (1, nx, nf), (nx, nf)),
        Entry(f"{pt}.bias", f"{tf1}/b", f"{hf_tf}/bias:0", (nf,), (nf,), (1, nf)),
    )


def _layer_norm(pt, tf1, hf_tf):
    return (
        Entry(f"{pt}.weight", f"{tf1}/g", f"{hf_tf}/gamma:0", ("E",), ("E",), ("E",)),
        Entry(f"{pt}.bias", f"{tf1}/b", f"{hf_tf}/beta:0", ("E",), ("E",), ("E",)),
    )


def _dims(config: GPT2Config) -> dict[str, int]:
    e = config.n_embd
    return {"V": config.n_vocab, "C": config.n_ctx, "E": e, "3E": 3 * e, "4E": 4 * e}


def _in_block(pt_sub: str, tf_sub: str) -> tuple[str, str, str]:
    """A block's sub-layer prefix in each format (pt, tf1, hf_tf); `{i}` is the block index."""
    return f"h.{{i}}.{pt_sub}", f"model/h{{i}}/{tf_sub}", f"transformer/h_._{{i}}/{tf_sub}"


_EMBEDDINGS = (
    Entry("wte.weight", "model/wte", "transformer/wte/embeddings:0", ("V", "E"), ("V", "E"), ("V", "E")),
    Entry("wpe.weight", "model/wpe", "transformer/wpe/embeddings:0", ("C", "E"), ("C", "E"), ("C", "E")),
)
_BLOCK = (
    *_layer_norm(*_in_block("ln_1", "ln_1")),
    *_conv1d(*_in_block("attn.c_attn", "attn/c_attn"), "E", "3E"),
    *_conv1d(*_in_block("attn.c_proj", "attn/c_proj"), "E", "E"),
    *_layer_norm(*_in_block("ln_2", "ln_2")),
    *_conv1d(*_in_block("mlp.c_fc", "mlp/c_fc"), "E", "4E"),
    *_conv1d(*_in_block("mlp.c_proj", "mlp/c_proj"), "4E", "E"),
)
_FINAL = _layer_norm("ln_f", "model/ln_f", "transformer/ln_f")
TABLE: tuple[Entry, ...] = _EMBEDDINGS + _BLOCK + _FINAL


def expand(config: GPT2Config) -> list[tuple[Entry, int | None]]:
    """Every weight of a model with `config` as (entry, block index or None), in checkpoint order."""
    blocks = [(entry, i) for i in range(config.n_layer) for entry in _BLOCK]
    return [(e, None) for e in _EMBEDDINGS] + blocks + [(e, None) for e in _FINAL]


def names(fmt: str, config: GPT2Config) -> list[str]:
    return [entry.name(fmt, layer) for entry, layer in expand(config)]


def convert(
    tensors: dict[str, np.ndarray], src: str, dst: str, config: GPT2Config, origin: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Rename and reshape every tensor from format `src` to `dst`, checking names and shapes.

    Raises WeightMappingError, naming `origin`, the tensor and both shapes, for any unknown,
    missing or mis-shaped tensor. Arrays are reshaped views: no copy of the weights is made.
    """
    _check_format(src)
    _check_format(dst)
    unknown = sorted(set(tensors) - set(names(src, config)))
    if unknown:
        raise WeightMappingError(
            f"{origin}: cannot map tensor {unknown[0]!r} ({len(unknown)} unknown name(s); "
            f"expected {src} names of a {config.n_layer}-layer GPT-2)"
        )
    out = {}
    for entry, layer in expand(config):
        name = entry.name(src, layer)
        if name not in tensors:
            raise WeightMappingError(f"{origin}: missing tensor {name!r}")
        array = np.asarray(tensors[name])
        expected = entry.shape(src, config)
        if array.shape != expected:
            raise WeightMappingError(
                f"{origin}: tensor {name!r} has shape {list(array.shape)}, expected {list(expected)}"
            )
        out[entry.name(dst, layer)] = array.reshape(entry.shape(dst, config))
    return out


def check(tensors: dict[str, np.ndarray], fmt: str, config: GPT2Config, origin: str) -> None:
    """Raise WeightMappingError naming `origin` unless `tensors` are exactly `config`'s `fmt` weights."""
    convert(tensors, fmt, fmt, config, origin)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {FORMATS}")
