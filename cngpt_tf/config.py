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

from .errors import ConfigError

log = logging.getLogger(__name__)

# Activations that equal the tanh approximation of GELU that openai/gpt-2 (and our TF model) uses.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


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
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in TANH_GELU:
            raise ConfigError(
                f"activation_function={self.activation_function!r} is not supported: the TF1 layout "
                f"and our TF model compute the tanh GELU ({' / '.join(TANH_GELU)})"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.n_vocab:
                raise ConfigError(f"{name}={value} lies outside the vocab of {self.n_vocab} tokens")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # ----- HF config.json ---------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "GPT2Config":
        _refuse_unsupported(d, source)
        try:
            n_ctx = d.get("n_positions", d.get("n_ctx"))
            return cls(
                n_vocab=d["vocab_size"],
                n_ctx=n_ctx,
                n_embd=d["n_embd"],
                n_head=d["n_head"],
                n_layer=d["n_layer"],
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
                activation_function=d.get("activation_function", "gelu_new"),
                **_special_ids_in_vocab(d, source),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None
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
                n_vocab=d["n_vocab"],
                n_ctx=d["n_ctx"],
                n_embd=d["n_embd"],
                n_head=d["n_head"],
                n_layer=d["n_layer"],
                # openai/gpt-2 hard-codes 1e-5; we write it only when it differs.
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None
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
        d = _read_json(path)
        if "vocab_size" in d:
            return cls.from_hf_dict(d, source or str(path))
        if "n_vocab" in d:
            return cls.from_hparams_dict(d, source or str(path))
        raise ConfigError(f"{path}: neither an HF config.json (vocab_size) nor hparams.json (n_vocab)")


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


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _special_ids_in_vocab(d: dict, source: str) -> dict:
    """The config's pad/bos/eos ids that lie inside its vocab; others (GPT-2's 50256 in a 21128-token
    Chinese vocab, as some releases carry) are dropped with a warning: the vocab's own win."""
    ids = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = d.get(name)
        if isinstance(value, int) and 0 <= value < d.get("vocab_size", 0):
            ids[name] = value
        elif value is not None:
            log.warning("%s: ignoring %s=%r, outside the %s-token vocab", source, name, value, d.get("vocab_size"))
    return ids


def _refuse_unsupported(d: dict, source: str) -> None:
    """Refuse HF GPT-2 options that the TF1 layout / our TF model would silently compute differently."""
    model_type = d.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(f"{source}: model_type={model_type!r}, expected 'gpt2'")
    n_embd = d.get("n_embd")
    n_inner = d.get("n_inner")
    if n_inner is not None and n_embd is not None and n_inner != 4 * n_embd:
        raise ConfigError(f"{source}: n_inner={n_inner} != 4*n_embd; the TF1 layout assumes 4*n_embd")
    if d.get("scale_attn_weights", True) is not True:
        raise ConfigError(f"{source}: scale_attn_weights=false is not supported")
    if d.get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(f"{source}: scale_attn_by_inverse_layer_idx=true is not supported")
    if d.get("add_cross_attention", False):
        raise ConfigError(f"{source}: add_cross_attention=true (an encoder-decoder GPT-2) is not supported")
