"""Choosing the next token: logits processors and samplers, as small pure TF functions.

Everything here works on a [B, V] float32 logits tensor inside the XLA decode loop, with static
shapes. The loop (`cngpt_tf.decoding`) owns iteration, the cache and stopping; a `Sampler` only
turns one step's logits into token ids, so each strategy is tested alone with a fake model.
"""

from __future__ import annotations

import tensorflow as tf

from .generation_config import SEED_MAX, Strategy, check_int

NEG_INF = float("-inf")


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
    """The seed rule of `GenerationConfig.validate`: an integer in [0, SEED_MAX]. A Python seed comes
    back as an int (ValueError otherwise, the same words); a seed tensor (any shape, e.g. the
    SavedModel's int64 [batch]) gets an assert op."""
    if tf.is_symbolic_tensor(seed):
        return require((seed >= 0) & (seed <= SEED_MAX), f"seed must be an integer in [0, {SEED_MAX}]")
    return check_int("seed", seed, 0, SEED_MAX)


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
    """Turns one step's logits into next-token ids. Subclasses override only `choose`.

    strategy: what is compiled in (`GenerationConfig.strategy`); the values of temperature, top_p
    and the penalty arrive with each call as tensors."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def __call__(self, logits, seen, seed, temperature, top_p, penalty):
        """logits [B, V] -> ids [B]. temperature/top_p/penalty are scalar tensors (runtime values)."""
        return self.choose(self.process(logits, seen, temperature, top_p, penalty), seed)

    def process(self, logits, seen, temperature, top_p, penalty):
        """The strategy's processors in HF's order: penalty, then (sampling only) temperature,
        top-k, top-p."""
        s = self.strategy
        if s.penalty:
            logits = apply_repetition_penalty(logits, seen, penalty)
        if not s.do_sample:
            return logits  # greedy: temperature and filters cannot change the argmax
        logits = apply_temperature(logits, temperature)
        if s.top_k:
            logits = top_k_filter(logits, s.top_k)
        if s.top_p:
            logits = top_p_filter(logits, top_p, candidates=s.top_k or None)
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


def make_sampler(strategy: Strategy) -> Sampler:
    """The sampler of a `Strategy` (a `GenerationConfig` stands for its `.strategy`)."""
    strategy = getattr(strategy, "strategy", strategy)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"make_sampler takes a Strategy (GenerationConfig.strategy), got {type(strategy).__name__}")
    return RandomSampler(strategy) if strategy.do_sample else GreedySampler(strategy)
