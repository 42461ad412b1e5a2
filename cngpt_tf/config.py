"""The one frozen description of a GPT-2 model's shape, read from `config.json` or `hparams.json`.

`config.json` is HF's format (the PyTorch release and `tf2/`); `hparams.json` is openai/gpt-2's
(`tf1/`). Both are read into `GPT2Config`, and written back from it, so no other module parses
either file or assumes a vocab size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from .errors import ConfigError, short_repr
from .textfile import read_text

log = logging.getLogger(__name__)

# Activations that equal the tanh approximation of GELU that openai/gpt-2 (and our TF model) uses.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")

# Upper bounds on the sizes, far above any GPT-2 released (GPT-2 XL: 48 layers, n_embd 1600, 1024
# positions, 50257 tokens) so that no config can ask for absurd work. Memory is bounded separately:
# the weights' shapes are compared with the config before anything is built per layer.
LIMITS = {"n_vocab": 1 << 24, "n_ctx": 1 << 20, "n_embd": 1 << 16, "n_head": 1 << 16, "n_layer": 1024}
# Each size's name in HF's config.json (`n_ctx` stands in for `n_positions` in old configs).
HF_NAMES = {"n_vocab": "vocab_size", "n_ctx": "n_positions", "n_embd": "n_embd", "n_head": "n_head",
            "n_layer": "n_layer"}
# The model computes in float32: an epsilon it rounds to 0 or inf would give NaN or constant outputs.
EPSILON_RANGE = (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))
MAX_JSON_BYTES = 1 << 20  # a GPT-2 config.json is about 1 KB


# The precisions a model's weights may be held in for generation (`Generator(weights=...)`;
# `cngpt_tf.quantize` packs them). Here, without TensorFlow, so the CLIs can check a flag first.
WEIGHT_MODES = ("fp32", "bf16", "int8")


def check_weight_mode(weights: str) -> str:
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights={weights!r}: one of {', '.join(WEIGHT_MODES)}")
    return weights


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    n_vocab: int
    n_ctx: int  # number of learned positions (HF `n_positions`): the longest sequence
    n_embd: int
    n_head: int
    n_layer: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    # Special ids come from the vocab ([PAD]/[CLS]/[SEP]), never from GPT-2's 50256 defaults.
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        """Check every field's type and range: JSON gives strings, floats, lists, null or bools as
        readily as ints, and `True` is an int to Python. Integral floats (768.0) are refused too."""
        for name, limit in LIMITS.items():
            _size(name, getattr(self, name), limit)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        object.__setattr__(self, "layer_norm_epsilon", _epsilon(self.layer_norm_epsilon))
        if not isinstance(self.activation_function, str) or self.activation_function not in TANH_GELU:
            raise ConfigError(
                f"activation_function={short_repr(self.activation_function)} is not supported: the TF1 "
                f"layout and our TF model compute the tanh GELU ({' / '.join(TANH_GELU)})"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and 0 <= value < self.n_vocab):
                raise ConfigError(f"{name}={short_repr(value)} is not an id in the vocab of {self.n_vocab} tokens")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # ----- HF config.json ---------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "GPT2Config":
        """Read HF's config.json fields; a ConfigError names `source` and the field as the file spells it."""
        try:
            keys = dict(HF_NAMES)
            if "n_positions" not in d and "n_ctx" in d:
                keys["n_ctx"] = "n_ctx"
            sizes = _sizes(d, keys)
            _refuse_unsupported(d, sizes["n_embd"])
            return cls(
                **sizes,
                layer_norm_epsilon=_epsilon(d.get("layer_norm_epsilon", 1e-5)),
                activation_function=d.get("activation_function", "gelu_new"),
                **_special_ids_in_vocab(d, sizes["n_vocab"], source),
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict:
        """A `config.json` that `GPT2Config.from_pretrained` / `TFGPT2LMHeadModel` read."""
        d = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.n_vocab,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
            "n_inner": None,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation_function,
            "tokenizer_class": "BertTokenizer",
        }
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    # ----- openai/gpt-2 hparams.json ----------------------------------------------------------

    @classmethod
    def from_hparams_dict(cls, d: dict, source: str = "hparams.json") -> "GPT2Config":
        try:
            return cls(
                **_sizes(d, {name: name for name in LIMITS}),
                # openai/gpt-2 hard-codes 1e-5; we write it only when it differs.
                layer_norm_epsilon=_epsilon(d.get("layer_norm_epsilon", 1e-5)),
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hparams_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")}
        if self.layer_norm_epsilon != 1e-5:
            d["layer_norm_epsilon"] = self.layer_norm_epsilon
        return d

    # ----- files ------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, source: str | None = None) -> "GPT2Config":
        """Read `config.json` (HF) or `hparams.json` (openai), told apart by their keys.

        source: how messages name the file, if not by `path` (e.g. "release.zip:model/config.json").
        """
        path = Path(path)
        source = source or str(path)
        d = _read_json(path, source)
        if "vocab_size" in d:
            return cls.from_hf_dict(d, source)
        if "n_vocab" in d:
            return cls.from_hparams_dict(d, source)
        raise ConfigError(f"{source}: neither an HF config.json (vocab_size) nor hparams.json (n_vocab)")


def with_vocab(config: GPT2Config, vocab_path: str | Path) -> tuple[GPT2Config, dict[str, int]]:
    """Check `vocab.txt` against the config's vocab size; set pad/bos/eos from its [PAD]/[CLS]/[SEP].

    Returns the updated config and the vocab's special-token ids.
    """
    from .errors import VocabError
    from .vocab import CLS, PAD, SEP, read_vocab, special_token_ids

    tokens = read_vocab(vocab_path)
    if len(tokens) != config.n_vocab:
        raise VocabError(f"{vocab_path}: {len(tokens)} tokens, but the model config says vocab_size={config.n_vocab}")
    ids = special_token_ids(tokens, vocab_path)
    return dataclasses.replace(config, pad_token_id=ids[PAD], bos_token_id=ids[CLS], eos_token_id=ids[SEP]), ids


def write_json(path: str | Path, d: dict) -> None:
    Path(path).write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path, source: str) -> dict:
    """Parse a small JSON object; anything else (huge, nested past Python's recursion limit, an int of
    thousands of digits, not a regular file such as a FIFO that would block) is a ConfigError."""
    text = read_text(path, MAX_JSON_BYTES, ConfigError, "config", source)
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{source}: not a readable JSON file ({str(e)[:200]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    return d


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(field: str, value, limit: int) -> int:
    if not _is_int(value):
        raise ConfigError(f"{field} must be an integer, got {short_repr(value)}")
    if not 1 <= value <= limit:
        raise ConfigError(f"{field}={short_repr(value)} is outside the supported range 1..{limit}")
    return value


def _sizes(d: dict, keys: dict[str, str]) -> dict[str, int]:
    """Our size fields from `d`, where `keys` maps each to its name in the file."""
    for key in keys.values():
        if key not in d:
            raise ConfigError(f"missing field {key!r}")
    return {ours: _size(theirs, d[theirs], LIMITS[ours]) for ours, theirs in keys.items()}


def _epsilon(value) -> float:
    low, high = EPSILON_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN fails too
        raise ConfigError(f"layer_norm_epsilon must be a finite number > 0 that float32 holds, got {short_repr(value)}")
    return float(value)


def _flag(d: dict, key: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {short_repr(value)}")
    return value


def _special_ids_in_vocab(d: dict, n_vocab: int, source: str) -> dict:
    """The config's pad/bos/eos ids that lie inside its vocab; others (GPT-2's 50256 in a 21128-token
    Chinese vocab, as some releases carry) are dropped with a warning: the vocab's own win."""
    ids = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = d.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise ConfigError(f"{name} must be an integer or null, got {short_repr(value)}")
        if 0 <= value < n_vocab:
            ids[name] = value
        else:
            log.warning("%s: ignoring %s=%s, outside the %s-token vocab", source, name, short_repr(value), n_vocab)
    return ids


def _refuse_unsupported(d: dict, n_embd: int) -> None:
    """Refuse HF GPT-2 options that the TF1 layout / our TF model would silently compute differently."""
    model_type = d.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(f"model_type={short_repr(model_type)}, expected 'gpt2'")
    n_inner = d.get("n_inner")
    if n_inner is not None and not (_is_int(n_inner) and n_inner == 4 * n_embd):
        raise ConfigError(f"n_inner={short_repr(n_inner)} is not 4*n_embd={4 * n_embd}, which the TF1 layout assumes")
    if not _flag(d, "scale_attn_weights", True):
        raise ConfigError("scale_attn_weights=false is not supported")
    if _flag(d, "scale_attn_by_inverse_layer_idx", False):
        raise ConfigError("scale_attn_by_inverse_layer_idx=true is not supported")
    if _flag(d, "add_cross_attention", False):
        raise ConfigError("add_cross_attention=true (an encoder-decoder GPT-2) is not supported")
