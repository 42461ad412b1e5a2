"""Choosing the next token: logits processors and samplers, as small pure TF functions.

Everything here works on a [B, V] float32 logits tensor inside the XLA decode loop, with static
shapes. The loop (`cngpt_tf.decoding`) owns iteration, the cache and stopping; a `Sampler` only
turns one step's logits into token ids, so each strategy is tested alone with a fake model.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import tensorflow as tf

from .errors import short_repr

NEG_INF = float("-inf")


# Accepted ranges of the float settings (validate()). logits / temperature must stay finite in
# float32 and the softmax meaningful: at 1e-2 a logit of 1e3 becomes 1e5 and sampling is already
# practically greedy; lower values only approach overflow (1e-38 turns logits into +-inf, and the
# softmax into NaN). At 1e2 the distribution is practically uniform. The repetition penalty
# divides or multiplies seen logits: the same bounds for the same reasons.
TEMPERATURE_RANGE = (1e-2, 1e2)
PENALTY_RANGE = (1e-2, 1e2)
# top_p is compared in float32 with a probability mass: a value that rounds to 0 there (below ~1e-45)
# would keep no token at all. 1e-6 keeps only the most likely token in any vocab, as any smaller would.
TOP_P_RANGE = (1e-6, 1.0)
# Seeds: a non-negative int32, the width of the sampler's seed. One rule for the Python API and the
# SavedModel (`check_seed`): anything else is refused, never wrapped.
SEED_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. Checked by `validate()` before anything is traced or compiled."""

    do_sample: bool = False
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    temperature: float = 1.0  # in TEMPERATURE_RANGE
    repetition_penalty: float = 1.0  # in PENALTY_RANGE; 1.0: off; CTRL's rule, as HF applies it

    def validate(self, n_vocab: int | None = None) -> "SamplingConfig":
        """Raise ValueError naming the first bad field; n_vocab (when given) bounds top_k. Returns the
        config with plain Python values (a Fraction or a numpy scalar would reach TensorFlow as is)."""
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise ValueError(f"do_sample must be True or False, got {short_repr(self.do_sample)}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {short_repr(self.top_k)}")
        if n_vocab is not None and self.top_k > n_vocab:
            raise ValueError(f"top_k={self.top_k} exceeds the vocab of {n_vocab} tokens")
        for name, (low, high) in (("top_p", TOP_P_RANGE), ("temperature", TEMPERATURE_RANGE),
                                  ("repetition_penalty", PENALTY_RANGE)):
            if not low <= _real(name, getattr(self, name)) <= high:  # NaN fails too
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {short_repr(getattr(self, name))}")
        return dataclasses.replace(self, do_sample=bool(self.do_sample), top_k=int(self.top_k),
                                   top_p=float(self.top_p), temperature=float(self.temperature),
                                   repetition_penalty=float(self.repetition_penalty))

    @property
    def trace_key(self) -> tuple:
        """What changes the compiled graph. temperature/top_p/penalty values are runtime inputs."""
        return (self.do_sample, self.top_k if self.do_sample else 0,
                self.do_sample and self.top_p < 1.0, self.repetition_penalty != 1.0)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    return float(value)


def require(condition, message: str):
    """One rule, two callers: eagerly (the Python API) a false `condition` raises ValueError(message);
    in a traced graph (the SavedModel) it is an assert op that fails the request with
    InvalidArgumentError(message). condition: a bool or boolean tensor (all must hold)."""
    if tf.is_symbolic_tensor(condition):
        return tf.debugging.Assert(tf.reduce_all(condition), [message])  # "assertion failed: [message]"
    if not bool(tf.reduce_all(condition)):
        raise ValueError(message)
    return None


def check_seed(seed):
    """The seed rule: an integer in [0, SEED_MAX]. A Python seed comes back as an int (ValueError
    otherwise); a seed tensor (any shape, e.g. the SavedModel's int64 [batch]) gets an assert op."""
    rule = f"seed must be an integer in [0, {SEED_MAX}]"
    if tf.is_symbolic_tensor(seed):
        return require((seed >= 0) & (seed <= SEED_MAX), rule)
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{rule}, got {short_repr(seed)}")
    return int(seed)


# ----- logits processors: [B, V] -> [B, V] ------------------------------------------------------


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL (Keskar et al. 2019) as HF does it: a seen token's logit is divided by `penalty` when
    positive and multiplied by it when negative, so a penalty > 1 always makes it less likely.
    seen: [B, V] bool, tokens already in the sequence."""
    penalised = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen, penalised, logits)


def apply_temperature(logits, temperature):
    return logits / temperature


def top_k_filter(logits, k: int):
    """Keep the k largest logits per row (ties at the k-th value kept), -inf elsewhere. k is static."""
    kth = tf.math.top_k(logits, k=k, sorted=False).values  # [B, k]
    threshold = tf.reduce_min(kth, axis=-1, keepdims=True)
    return tf.where(logits < threshold, NEG_INF, logits)


def top_p_filter(logits, top_p, candidates: int | None = None):
    """Nucleus filter: keep the smallest set of top tokens whose probability reaches top_p.

    A token is kept when the probability mass strictly before it (in descending order) is < top_p,
    so the most likely token is always kept — HF's rule. `candidates` limits the sort to the top
    `candidates` logits (enough after a top-k filter; a full sort of the vocab otherwise).
    """
    n = candidates or logits.shape[-1]
    top = tf.math.top_k(logits, k=n, sorted=True).values  # [B, n], descending
    probs = tf.nn.softmax(top, axis=-1)
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = tf.where(mass_before < top_p, top, tf.fill(tf.shape(top), tf.constant(float("inf"), top.dtype)))
    threshold = tf.reduce_min(kept, axis=-1, keepdims=True)  # smallest kept logit
    return tf.where(logits < threshold, NEG_INF, logits)


def suppress(logits, token_id, when):
    """-inf at `token_id` in rows where `when` [B] is true (e.g. end-of-text before min_new_tokens)."""
    column = tf.one_hot(token_id, tf.shape(logits)[-1], on_value=True, off_value=False)  # [V]
    return tf.where(tf.logical_and(when[:, None], column[None, :]), NEG_INF, logits)


# ----- samplers: [B, V] -> [B] int32 ------------------------------------------------------------


class Sampler:
    """Turns one step's logits into next-token ids. Subclasses override only `choose`."""

    def __init__(self, config: SamplingConfig):
        self.config = config

    def __call__(self, logits, seen, seed, temperature, top_p, penalty):
        """logits [B, V] -> ids [B]. temperature/top_p/penalty are scalar tensors (runtime values)."""
        return self.choose(self.process(logits, seen, temperature, top_p, penalty), seed)

    def process(self, logits, seen, temperature, top_p, penalty):
        """The configured processors in HF's order: penalty, then (sampling only) temperature,
        top-k, top-p."""
        c = self.config
        if c.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, penalty)
        if not c.do_sample:
            return logits  # greedy: temperature and filters cannot change the argmax
        logits = apply_temperature(logits, temperature)
        if c.top_k:
            logits = top_k_filter(logits, c.top_k)
        if c.top_p < 1.0:
            logits = top_p_filter(logits, top_p, candidates=c.top_k or None)
        return logits

    def choose(self, logits, seed):
        raise NotImplementedError


class GreedySampler(Sampler):
    def choose(self, logits, seed):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)


class RandomSampler(Sampler):
    """Samples from softmax of the processed logits."""

    def choose(self, logits, seed):
        """seed: [2] int32 — (user seed, step): the same seed gives the same tokens on every call."""
        return tf.random.stateless_categorical(logits, 1, seed=seed, dtype=tf.int32)[:, 0]


def make_sampler(config: SamplingConfig) -> Sampler:
    return RandomSampler(config) if config.do_sample else GreedySampler(config)
