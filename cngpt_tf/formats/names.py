"""The one table of GPT-2 weight names: PyTorch (HF `GPT2Model`) <-> TF1 (openai/gpt-2) <-> HF-TF.

Every converter direction goes through `convert()`, which reads `TABLE`; `check()` is what a converter
runs right after reading (names, shapes, then NaN / Inf), in time and memory O(number of tensors)
whatever the config claims.

No transposes are ever needed: GPT-2 uses `Conv1D` (weight [nx, nf], `x @ w`) in all three
layouts; only leading unit axes differ (TF1 stores Conv1D weights as [1, nx, nf], HF-TF stores
Conv1D biases as [1, nf]). Unknown, missing or mis-shaped tensors fail closed, naming the tensor.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from ..config import GPT2Config
from ..errors import CheckpointError, WeightMappingError, short_repr

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
    """Every weight of a model with `config` as (entry, block index or None), in checkpoint order.

    O(n_layer): for a config already checked against the weights (`check_shapes`)."""
    return list(_expand(config))


def _expand(config: GPT2Config):
    yield from ((e, None) for e in _EMBEDDINGS)
    for i in range(config.n_layer):
        yield from ((entry, i) for entry in _BLOCK)
    yield from ((e, None) for e in _FINAL)


def names(fmt: str, config: GPT2Config) -> list[str]:
    return [entry.name(fmt, layer) for entry, layer in expand(config)]


# ----- reading names back: each tensor's (entry, layer) from its own name ------------------------

_GLOBALS = {fmt: {e.name(fmt): e for e in _EMBEDDINGS + _FINAL} for fmt in FORMATS}
# Per format: the block names' common prefix before the layer index ("h.", "model/h",
# "transformer/h_._") and each entry by the rest of its name after the index.
_BLOCK_PREFIX = {fmt: _BLOCK[0].name(fmt).split("{i}")[0] for fmt in FORMATS}
_BLOCK_REST = {fmt: {e.name(fmt).split("{i}")[1]: e for e in _BLOCK} for fmt in FORMATS}
assert all(e.name(fmt).startswith(_BLOCK_PREFIX[fmt] + "{i}") for fmt in FORMATS for e in _BLOCK)
_LAYER = re.compile(r"0|[1-9][0-9]{0,17}")  # canonical digits only ("h.01" is unknown); fits int64


def parse(name: str, fmt: str) -> tuple[Entry, int | None] | None:
    """The table entry and block index that `name` spells in `fmt`, or None for an unknown name.

    Reading the layer from the name (instead of listing every expected name) keeps every check
    O(number of tensors) whatever `n_layer` a config claims."""
    if not isinstance(name, str):
        return None
    entry = _GLOBALS[fmt].get(name)
    if entry is not None:
        return entry, None
    prefix = _BLOCK_PREFIX[fmt]
    if not name.startswith(prefix):
        return None
    match = _LAYER.match(name, len(prefix))
    entry = match and _BLOCK_REST[fmt].get(name[match.end():])
    return (entry, int(match.group())) if entry else None


def check_shapes(shapes: dict[str, tuple], fmt: str, config: GPT2Config, origin: str = "checkpoint") -> None:
    """Raise WeightMappingError naming `origin` unless `shapes` ({name: shape}) are exactly the names
    and shapes of `config`'s weights in `fmt`.

    Takes shapes, not arrays, so readers can check a file's index before reading any tensor data.
    The layer count and the embeddings' shapes are compared first, so a config claiming 10**9 layers
    or a 10**9-token vocab fails at once, and nothing here costs more than O(len(shapes)).
    """
    _check_format(fmt)
    parsed = {name: parse(name, fmt) for name in shapes}
    # A block index that the config does not have is an unknown name too ("h.1.*" in a 1-layer model).
    unknown = [name for name, found in parsed.items()
               if found is None or (found[1] is not None and found[1] >= config.n_layer)]
    if unknown:
        raise WeightMappingError(
            f"{origin}: cannot map tensor {short_repr(unknown[0], 100)} ({len(unknown)} unknown name(s); "
            f"expected {fmt} names of a {config.n_layer}-layer GPT-2)"
        )
    layers = {layer for _, layer in parsed.values() if layer is not None}
    top = max(layers, default=-1)
    if top < config.n_layer - 1:
        raise WeightMappingError(
            f"{origin}: the config says n_layer={config.n_layer}, but the weights hold {len(layers)} layer(s) "
            f"(no tensor {_BLOCK[0].name(fmt, top + 1)!r})"
        )
    # Every (entry, layer) in order; each step before the first missing name is a present tensor,
    # so this loop ends after at most len(shapes) + 1 steps.
    for entry, layer in _expand(config):
        name = entry.name(fmt, layer)
        if name not in shapes:
            raise WeightMappingError(f"{origin}: missing tensor {name!r}")
        shape, expected = _shape(shapes[name]), entry.shape(fmt, config)
        if shape != expected:
            raise WeightMappingError(
                f"{origin}: tensor {name!r} has shape {short_repr(list(shape), 100)}, expected {list(expected)}"
            )


def check_values(tensors: dict[str, np.ndarray], origin: str = "checkpoint") -> None:
    """Raise CheckpointError naming `origin` and each tensor that is not floating point or holds NaN
    or Inf: converted, such a weight gives NaN logits (or a file PyTorch cannot load), not an error.

    Cheap: min and max propagate NaN and reach +-Inf, so no temporary array is made for the good
    tensors (about 0.1 s for the 400 MB model); only the bad ones are counted in detail.
    """
    bad = []
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise CheckpointError(f"{origin}: tensor {short_repr(name, 100)} is {array.dtype}, expected floating point")
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            bad.append(name)
    if not bad:
        return
    first = np.asarray(tensors[bad[0]])
    message = (f"{origin}: tensor {short_repr(bad[0], 100)} has {int(np.isnan(first).sum())} NaN and "
               f"{int(np.isinf(first).sum())} Inf values")
    if len(bad) > 1:
        more = ", ".join(short_repr(n, 100) for n in bad[1:4]) + (", ..." if len(bad) > 4 else "")
        message += f" (and {len(bad) - 1} more tensor(s): {more})"
    raise CheckpointError(message)


def check(tensors: dict[str, np.ndarray], fmt: str, config: GPT2Config, origin: str = "checkpoint") -> None:
    """Everything a converter checks right after reading, before writing anything: names and shapes
    (WeightMappingError), then floating-point dtypes and finite values (CheckpointError)."""
    check_shapes({name: np.shape(value) for name, value in tensors.items()}, fmt, config, origin)
    check_values(tensors, origin)


def convert(
    tensors: dict[str, np.ndarray], src: str, dst: str, config: GPT2Config, origin: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Rename and reshape every tensor from format `src` to `dst`, checking names and shapes.

    Raises WeightMappingError, naming `origin`, the tensor and both shapes, for any unknown,
    missing or mis-shaped tensor. Arrays are reshaped views: no copy of the weights is made.
    Values are not looked at here: `check()` does that once, right after reading.
    """
    _check_format(dst)
    check_shapes({name: np.shape(value) for name, value in tensors.items()}, src, config, origin)
    return {
        entry.name(dst, layer): np.asarray(tensors[entry.name(src, layer)]).reshape(entry.shape(dst, config))
        for entry, layer in _expand(config)
    }


def _shape(shape) -> tuple:
    """A shape as a tuple of ints (TF's readers give lists; h5py and numpy give tuples)."""
    return tuple(int(d) for d in shape)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {FORMATS}")
