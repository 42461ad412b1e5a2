"""`GenerationConfig`: how to generate, defined once for every face (Python API, CLIs, SavedModel).

Field names are HF `transformers.GenerationConfig`'s, so a `generation_config.json` means the same
here as there. One `validate()` holds every rule; the Python API raises its ValueError, the CLIs turn
it into a usage error, and the SavedModel's signatures enforce the same rules on requests
(`cngpt_tf.sampling.require`: INVALID_ARGUMENT).

What compiles and what flows into XLA at run time are kept apart: `strategy` (greedy or sampling,
top_k, whether top-p and the penalty are on) picks the compiled decoder; `temperature`, `top_p`,
`repetition_penalty`, `seed` and `max_new_tokens` are runtime inputs of it and never recompile.

    config = GenerationConfig(max_new_tokens=32, do_sample=True, top_k=8, seed=0)
    config.validate(n_vocab=21128, n_ctx=1024)     # -> the same config, plain Python values
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path

import numpy as np

from .errors import short_repr

# The default number of new tokens, the one place it is written. An export fixes max_new_tokens; for
# a small context the default becomes half the context (`default_max_new_tokens`), so that a prompt
# still has room: n_positions 1024 -> 50, 128 -> 50, 40 -> 20.
DEFAULT_MAX_NEW_TOKENS = 50
DEFAULT_LENGTH_RULE = f"{DEFAULT_MAX_NEW_TOKENS}, or half of n_positions if less"  # the rule in words (--help)

# Accepted ranges of the float settings. logits / temperature must stay finite in float32 and the
# softmax meaningful: at 1e-2 a logit of 1e3 becomes 1e5 and sampling is already practically greedy;
# lower values only approach overflow (1e-38 turns logits into +-inf, and the softmax into NaN). At 1e2
# the distribution is practically uniform. The repetition penalty divides or multiplies seen logits:
# the same bounds for the same reasons.
TEMPERATURE_RANGE = (1e-2, 1e2)
PENALTY_RANGE = (1e-2, 1e2)
# top_p is compared in float32 with a probability mass: a value that rounds to 0 there (below ~1e-45)
# would keep no token at all. 1e-6 keeps only the most likely token in any vocab, as any smaller would.
TOP_P_RANGE = (1e-6, 1.0)
# Seeds: a non-negative int32, the width of the sampler's seed; anything else is refused, never wrapped.
SEED_MAX = 2**31 - 1
# The poem forms by name: (characters per line, lines).
FORMS = {"五言绝句": (5, 4), "七言绝句": (7, 4), "五言律诗": (5, 8), "七言律诗": (7, 8)}
MAX_FORM = 32  # at most 32 characters a line and 32 lines


def default_max_new_tokens(n_ctx: int) -> int:
    """The default of max_new_tokens for a model of n_ctx positions: 50, or half the context if less."""
    return max(1, min(DEFAULT_MAX_NEW_TOKENS, n_ctx // 2))


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What changes the compiled decoder: one XLA program per distinct Strategy (and shape bucket)."""

    do_sample: bool = False
    top_k: int = 0  # 0: no top-k filter (only when sampling)
    top_p: bool = False  # the nucleus filter is on (sampling with top_p < 1)
    penalty: bool = False  # the repetition penalty is on (!= 1)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Defaults: greedy, `default_max_new_tokens(n_ctx)` new tokens, no filters, no
    penalty. Frozen: `update()` makes a changed copy, `validate()` a checked one."""

    max_new_tokens: int | None = None  # None: max_length if given, else default_max_new_tokens(n_ctx)
    max_length: int | None = None  # prompt (padded) + new tokens; give this or max_new_tokens
    min_new_tokens: int = 0  # end-of-text is suppressed before this many new tokens
    do_sample: bool = False
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    temperature: float = 1.0
    repetition_penalty: float = 1.0  # 1.0: off; CTRL's rule, as HF applies it
    num_return_sequences: int = 1  # > 1 needs do_sample
    seed: int | None = None  # None: a fresh seed per call (Python API); the SavedModel takes it per request
    # poems (`Generator.poem`, the `poem` signature, `generate --form`)
    form: str | tuple[int, int] = "七言绝句"  # a FORMS name, "chars,lines" or (chars, lines)
    acrostic: str | None = None  # one character per line (藏头诗)
    rhyme: str | None = None  # None, "auto", a rhyme-group name or a character

    # ----- the rules ------------------------------------------------------------------------------

    def validate(self, n_vocab: int | None = None, n_ctx: int | None = None) -> "GenerationConfig":
        """Check every field (ValueError naming the first bad one) and return the config with plain
        Python values (a Fraction or numpy scalar would reach TensorFlow as is). n_vocab bounds top_k;
        n_ctx bounds max_new_tokens / max_length (a prompt needs at least one position)."""
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise ValueError(f"do_sample must be True or False, got {short_repr(self.do_sample)}")
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError("give max_new_tokens or max_length, not both")
        if self.max_new_tokens is not None:
            check_int("max_new_tokens", self.max_new_tokens, 1)
            if n_ctx is not None and self.max_new_tokens >= n_ctx:
                raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in "
                                 f"n_positions={n_ctx} (at most {n_ctx - 1})")
        if self.max_length is not None:
            check_int("max_length", self.max_length, 2)
            if n_ctx is not None and self.max_length > n_ctx:
                raise ValueError(f"max_length={self.max_length} exceeds n_positions={n_ctx}")
        check_int("min_new_tokens", self.min_new_tokens, 0)
        if n_ctx is not None and self.min_new_tokens >= n_ctx:
            raise ValueError(f"min_new_tokens={self.min_new_tokens} leaves no room for a prompt in n_positions={n_ctx}")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}")
        check_int("top_k", self.top_k, 0)
        if n_vocab is not None and self.top_k > n_vocab:
            raise ValueError(f"top_k={self.top_k} exceeds the vocab of {n_vocab} tokens")
        for name, (low, high) in (("top_p", TOP_P_RANGE), ("temperature", TEMPERATURE_RANGE),
                                  ("repetition_penalty", PENALTY_RANGE)):
            if not low <= _real(name, getattr(self, name)) <= high:  # NaN fails too
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {short_repr(getattr(self, name))}")
        check_int("num_return_sequences", self.num_return_sequences, 1)
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy rows would be identical)")
        if self.seed is not None:
            check_int("seed", self.seed, 0, SEED_MAX)
        form = parse_form(self.form)
        for name in ("acrostic", "rhyme"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {short_repr(value)}")
        return dataclasses.replace(
            self, do_sample=bool(self.do_sample), top_k=int(self.top_k), top_p=float(self.top_p),
            temperature=float(self.temperature), repetition_penalty=float(self.repetition_penalty),
            max_new_tokens=_int_or_none(self.max_new_tokens), max_length=_int_or_none(self.max_length),
            min_new_tokens=int(self.min_new_tokens), num_return_sequences=int(self.num_return_sequences),
            seed=_int_or_none(self.seed), form=self.form if isinstance(self.form, str) else form)

    def for_export(self, n_vocab: int, n_ctx: int) -> "GenerationConfig":
        """What an export fixes: `validate`d against the model, with a concrete max_new_tokens
        (`default_max_new_tokens(n_ctx)` when not given). max_length cannot be fixed: it counts the
        prompt, and an export's prompts vary per request."""
        if self.max_length is not None:
            raise ValueError("max_length: an export fixes max_new_tokens (its prompts' lengths vary per request)")
        fixed = self if self.max_new_tokens is not None else self.update(max_new_tokens=default_max_new_tokens(n_ctx))
        return fixed.validate(n_vocab, n_ctx)

    def update(self, **changes) -> "GenerationConfig":
        """A copy with `changes` (HF's per-call keyword arguments); an unknown name is a TypeError.
        Setting one of max_new_tokens / max_length clears the other."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(unknown)}")
        if changes.get("max_length") is not None and "max_new_tokens" not in changes:
            changes["max_new_tokens"] = None
        if changes.get("max_new_tokens") is not None and "max_length" not in changes:
            changes["max_length"] = None
        return dataclasses.replace(self, **changes)

    @property
    def strategy(self) -> Strategy:
        """What compiles (see the module docstring); filters that cannot change greedy output are off."""
        return Strategy(self.do_sample, self.top_k if self.do_sample else 0,
                        self.do_sample and self.top_p < 1.0, self.repetition_penalty != 1.0)

    def new_tokens(self, prompt_length: int, n_ctx: int | None = None) -> int:
        """max_new_tokens as asked: from max_length (which counts the prompt), or the default
        (`default_max_new_tokens(n_ctx)`; DEFAULT_MAX_NEW_TOKENS when n_ctx is not given)."""
        if self.max_length is not None:
            if self.max_length <= prompt_length:
                raise ValueError(f"max_length={self.max_length} must exceed the prompt length {prompt_length}")
            return self.max_length - prompt_length
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return DEFAULT_MAX_NEW_TOKENS if n_ctx is None else default_max_new_tokens(n_ctx)

    # ----- generation_config.json (HF's file) -----------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_file(self, path: str | Path, **model_ids) -> None:
        """Write HF's generation_config.json; model_ids: pad/bos/eos_token_id of the model."""
        data = {**self.to_dict(), **model_ids}
        if isinstance(data["form"], tuple):
            data["form"] = f"{data['form'][0]},{data['form'][1]}"
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationConfig":
        """Our fields from an HF-style dict; other HF keys (token ids, transformers_version) ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | Path, n_vocab: int | None = None, n_ctx: int | None = None,
                       ) -> "GenerationConfig":
        """Read HF's generation_config.json (our fields only) and `validate` it against the model;
        ConfigError naming the file for anything wrong in it."""
        from .config import _read_json  # one JSON rule for the model's small files (size, type, depth)
        from .errors import ConfigError

        data = _read_json(Path(path), str(path))
        try:
            return cls.from_dict(data).validate(n_vocab, n_ctx)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None


# ----- shared checks --------------------------------------------------------------------------------


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) in [minimum, maximum]: ValueError naming `name` otherwise."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        rule = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {rule}, got {short_repr(value)}")
    return int(value)


def parse_form(form) -> tuple[int, int]:
    """"七言绝句" / "5,4" / (5, 4) -> (chars per line, lines); ValueError naming `form:` otherwise
    (the words of the SavedModel's `poem` signature for the same mistake)."""
    if isinstance(form, str):
        if form in FORMS:
            return FORMS[form]
        parts = form.split(",")
        if len(parts) == 2 and all(p.strip().isascii() and p.strip().isdigit() for p in parts):
            form = (int(parts[0]), int(parts[1]))
    if (isinstance(form, (tuple, list)) and len(form) == 2 and all(_is_int(n) for n in form)
            and all(1 <= n <= MAX_FORM for n in form)):
        return int(form[0]), int(form[1])
    raise ValueError(f"form: use one of {', '.join(FORMS)} or 'chars,lines' (1..{MAX_FORM} each), "
                     f"got {short_repr(form)}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _int_or_none(value):
    return None if value is None else int(value)


def _real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    return float(value)
