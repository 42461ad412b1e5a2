"""Logits processors and samplers alone, on hand-made logits (no model), eager and under XLA.

Each check runs twice: as plain eager TF and inside `tf.function(jit_compile=True)`, the way the
decode loop runs them. Nucleus (top-p) filtering is compared against a NumPy transcription of HF's
`TopPLogitsWarper` rule on hypothesis-drawn logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cngpt_tf.generation_config import SEED_MAX, GenerationConfig, Strategy
from cngpt_tf.sampling import (
    GreedySampler,
    RandomSampler,
    apply_repetition_penalty,
    apply_temperature,
    check_seed,
    make_sampler,
    require,
    suppress,
    top_k_filter,
    top_p_filter,
)

INF = np.inf


@pytest.fixture(params=["eager", "xla"])
def mode(request):
    return request.param


def call(mode, fn, *args):
    """fn(*args) eagerly, or compiled by XLA (python-level arguments of fn stay static via closure)."""
    tensors = [tf.constant(a) for a in args]
    if mode == "xla":
        return tf.function(fn, jit_compile=True, autograph=False)(*tensors).numpy()
    return fn(*tensors).numpy()


def softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----- NumPy references, transcribed from HF's warpers -------------------------------------------


def ref_top_k(logits, k):
    """HF TopKLogitsWarper: remove scores < the k-th largest (ties with it are kept)."""
    logits = np.asarray(logits, np.float64)
    if k == 0:
        return logits.copy()
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -INF, logits)


def ref_top_p(logits, top_p):
    """HF TopPLogitsWarper: sort ascending, remove tokens whose cumulative probability is
    <= 1 - top_p, but always keep the last (most likely) one."""
    logits = np.asarray(logits, np.float64)
    out = logits.copy()
    for row_in, row_out in zip(logits, out):
        order = np.argsort(row_in, kind="stable")
        cumulative = np.cumsum(softmax(row_in[order]))
        remove = cumulative <= 1.0 - top_p
        remove[-1] = False
        row_out[order[remove]] = -INF
    return out


def boundary_margin(logits, top_p):
    """Distance of HF's cumulative sums from the cut 1 - top_p: tiny -> float32 rounding decides."""
    logits = np.asarray(logits, np.float64)
    margins = []
    for row in logits:
        cumulative = np.cumsum(softmax(np.sort(row)))
        margins.append(np.min(np.abs(cumulative - (1.0 - top_p))))
    return min(margins)


# ----- top-k --------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest(mode):
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    out = call(mode, lambda x: top_k_filter(x, 2), logits)
    np.testing.assert_array_equal(out, [[-INF, 3.0, -INF, 2.0, -INF], [5.0, 4.0, -INF, -INF, -INF]])


def test_top_k_keeps_ties_at_the_kth_value(mode):
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [1.0, 2.0, 2.0, 0.0, -1.0]], np.float32)
    out = call(mode, lambda x: top_k_filter(x, 2), logits)
    np.testing.assert_array_equal(out, [[-INF, 3.0, 3.0, -INF, 3.0], [-INF, 2.0, 2.0, -INF, -INF]])
    np.testing.assert_array_equal(out, ref_top_k(logits, 2))


def test_top_k_equal_to_vocab_keeps_everything(mode):
    logits = np.array([[0.3, -2.0, 1.0]], np.float32)
    np.testing.assert_array_equal(call(mode, lambda x: top_k_filter(x, 3), logits), logits)


def test_top_k_1_is_argmax_only(mode):
    logits = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    out = call(mode, lambda x: top_k_filter(x, 1), logits)
    assert (np.isfinite(out).sum(-1) == 1).all()
    np.testing.assert_array_equal(np.argmax(out, -1), np.argmax(logits, -1))


# ----- top-p --------------------------------------------------------------------------------------


def test_top_p_hand_made(mode):
    # probabilities 0.5, 0.3, 0.15, 0.05 (shuffled columns)
    probs = np.array([[0.15, 0.5, 0.05, 0.3]])
    logits = np.log(probs).astype(np.float32)
    cases = {
        0.4: [False, True, False, False],  # the argmax alone already reaches 0.4
        0.49: [False, True, False, False],
        0.51: [False, True, False, True],  # the argmax's 0.5 falls just short: one more
        0.85: [True, True, False, True],  # 0.5 + 0.3 = 0.8 < 0.85: one more
        0.96: [True, True, True, True],
        1e-6: [False, True, False, False],  # the most likely token is always kept
    }
    for top_p, kept in cases.items():
        out = call(mode, lambda x, p: top_p_filter(x, p), logits, np.float32(top_p))
        assert np.isfinite(out[0]).tolist() == kept, top_p
        np.testing.assert_array_equal(out[np.isfinite(out)], logits[np.isfinite(out)])


def test_top_p_1_keeps_everything(mode):
    logits = np.array([[2.0, 1.0, 0.0, -3.0]], np.float32)
    out = call(mode, lambda x, p: top_p_filter(x, p), logits, np.float32(1.0))
    np.testing.assert_array_equal(out, logits)


_TOP_P_XLA = tf.function(lambda x, p: top_p_filter(x, p), jit_compile=True, autograph=False)
# Distinct values on a 0.01 grid: no ties and no subnormals (which XLA/oneDNN flush to 0, making ties)
_LOGITS = hnp.arrays(np.int32, (3, 20), elements=st.integers(-800, 800), unique=True).map(
    lambda a: (a / 100).astype(np.float32))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=_LOGITS, scale=st.sampled_from([0.1, 1.0, 3.0]), top_p=st.floats(0.01, 1.0))
def test_top_p_matches_hf_rule(logits, scale, top_p):
    logits = (logits * scale).astype(np.float32)
    assume(boundary_margin(logits, top_p) > 1e-4)
    expected = ref_top_p(logits, top_p)
    for fn in (top_p_filter, _TOP_P_XLA):
        out = fn(tf.constant(logits), tf.constant(top_p, tf.float32)).numpy()
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
        np.testing.assert_array_equal(out[np.isfinite(out)], logits[np.isfinite(out)])
        # the most likely token always survives
        assert np.isfinite(out[np.arange(3), np.argmax(logits, -1)]).all()


_PROCESS_XLA = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    logits=_LOGITS,
    top_k=st.sampled_from([0, 1, 3, 10]),
    top_p=st.floats(0.05, 0.99),
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
)
def test_sampler_process_chain_matches_hf_order(logits, top_k, top_p, temperature):
    """temperature -> top-k -> top-p (top-p then sorts only the k candidates) as HF chains them."""
    scaled = ref_top_k(logits.astype(np.float64) / temperature, top_k)
    assume(boundary_margin(scaled, top_p) > 1e-4)
    expected = ref_top_p(scaled, top_p)

    sampler = make_sampler(Strategy(do_sample=True, top_k=top_k, top_p=True))
    seen = tf.zeros(logits.shape, tf.bool)
    args = (tf.constant(logits), seen, tf.constant(temperature, tf.float32), tf.constant(top_p, tf.float32),
            tf.constant(1.0))
    if top_k not in _PROCESS_XLA:
        _PROCESS_XLA[top_k] = tf.function(sampler.process, jit_compile=True, autograph=False)
    # the compiled function belongs to one sampler object, but only top_k is static in it
    for out in (sampler.process(*args).numpy(), _PROCESS_XLA[top_k](*args).numpy()):
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
        np.testing.assert_allclose(out[np.isfinite(out)], expected[np.isfinite(expected)], rtol=1e-6)


# ----- repetition penalty, temperature, suppress ----------------------------------------------------


def test_repetition_penalty_is_ctrl_for_positive_and_negative_logits(mode):
    logits = np.array([[2.0, -2.0, 0.5, -1.0, 0.0], [3.0, 1.0, -4.0, 2.0, -0.5]], np.float32)
    seen = np.array([[True, True, False, False, True], [False, True, True, False, False]])
    out = call(mode, apply_repetition_penalty, logits, seen, np.float32(2.0))
    np.testing.assert_allclose(out, [[1.0, -4.0, 0.5, -1.0, 0.0], [3.0, 0.5, -8.0, 2.0, -0.5]])
    # a seen negative logit becomes more negative, a seen positive one smaller: both less likely
    assert out[0, 1] < logits[0, 1] and out[0, 0] < logits[0, 0]


def test_repetition_penalty_below_1_favours_seen_tokens(mode):
    logits = np.array([[2.0, -2.0, 1.0]], np.float32)
    seen = np.array([[True, True, False]])
    out = call(mode, apply_repetition_penalty, logits, seen, np.float32(0.5))
    np.testing.assert_allclose(out, [[4.0, -1.0, 1.0]])


def test_repetition_penalty_matches_hf_processor():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 12)).astype(np.float32) * 3
    history = rng.integers(0, 12, size=(3, 5))
    seen = np.zeros((3, 12), bool)
    np.put_along_axis(seen, history, True, axis=1)
    ours = apply_repetition_penalty(tf.constant(logits), tf.constant(seen), tf.constant(1.3)).numpy()
    hf = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(history), torch.tensor(logits)).numpy()
    np.testing.assert_allclose(ours, hf, rtol=1e-6)


def test_temperature_scales_logits(mode):
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    np.testing.assert_allclose(call(mode, apply_temperature, logits, np.float32(0.5)), [[4.0, -2.0, 1.0]])
    np.testing.assert_allclose(call(mode, apply_temperature, logits, np.float32(2.0)), [[1.0, -0.5, 0.25]])


def test_sampler_process_applies_temperature_only_when_sampling():
    logits = tf.constant([[2.0, -1.0, 0.5]])
    seen = tf.zeros([1, 3], tf.bool)
    args = (seen, tf.constant(0.5), tf.constant(1.0), tf.constant(1.0))
    sampled = make_sampler(Strategy(do_sample=True)).process(logits, *args)
    greedy = make_sampler(Strategy()).process(logits, *args)
    np.testing.assert_allclose(sampled.numpy(), [[4.0, -2.0, 1.0]])
    np.testing.assert_allclose(greedy.numpy(), logits.numpy())


def test_suppress(mode):
    logits = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0]], np.float32)
    when = np.array([True, False, True])
    out = call(mode, lambda x, w: suppress(x, 1, w), logits, when)
    np.testing.assert_array_equal(out, [[1.0, -INF, 3.0], [4.0, 5.0, 6.0], [0.0, -INF, 0.0]])


# ----- samplers -----------------------------------------------------------------------------------


def sampler_args(logits, seed=(0, 0), temperature=1.0, top_p=1.0, penalty=1.0):
    logits = tf.constant(logits, tf.float32)
    return (logits, tf.zeros(logits.shape, tf.bool), tf.constant(seed, tf.int32), tf.constant(temperature),
            tf.constant(top_p), tf.constant(penalty))


def test_greedy_sampler_is_argmax(mode):
    sampler = GreedySampler(Strategy())
    logits = np.random.default_rng(2).normal(size=(5, 17)).astype(np.float32)
    fn = sampler if mode == "eager" else tf.function(sampler, jit_compile=True, autograph=False)
    out = fn(*sampler_args(logits)).numpy()
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.argmax(logits, -1))


def test_greedy_sampler_with_penalty_moves_off_a_seen_argmax():
    sampler = make_sampler(Strategy(penalty=True))
    logits = tf.constant([[3.0, 2.0, -1.0]])
    seen = tf.constant([[True, False, False]])
    out = sampler(logits, seen, tf.constant([0, 0]), tf.constant(1.0), tf.constant(1.0), tf.constant(2.0))
    assert out.numpy().tolist() == [1]


def test_random_sampler_fixed_seed_is_deterministic(mode):
    sampler = RandomSampler(Strategy(do_sample=True))
    logits = np.zeros((64, 10), np.float32)
    fn = sampler if mode == "eager" else tf.function(sampler, jit_compile=True, autograph=False)
    a = fn(*sampler_args(logits, seed=(7, 3))).numpy()
    b = fn(*sampler_args(logits, seed=(7, 3))).numpy()
    c = fn(*sampler_args(logits, seed=(8, 3))).numpy()
    d = fn(*sampler_args(logits, seed=(7, 4))).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != d).any()
    assert a.dtype == np.int32 and ((0 <= a) & (a < 10)).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_random_sampler_distribution_matches_softmax(temperature):
    probs = np.array([0.5, 0.25, 0.15, 0.10])
    logits = np.tile(np.log(probs), (25, 1)).astype(np.float32)  # 25 draws per seed
    sampler = RandomSampler(Strategy(do_sample=True))
    draw = tf.function(sampler, jit_compile=True, autograph=False)
    args = list(sampler_args(logits, temperature=temperature))
    samples = []
    for seed in range(400):
        args[2] = tf.constant([seed, 0])
        samples.append(draw(*args).numpy())
    counts = np.bincount(np.concatenate(samples), minlength=4)
    expected = softmax(np.log(probs) / temperature) * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, (counts, expected.round())  # 3 degrees of freedom, p = 0.001


def test_random_sampler_never_picks_a_filtered_token(mode):
    logits = np.array([[-INF, 0.0, -INF, 0.0], [0.0, -INF, -INF, -INF]] * 16, np.float32)
    sampler = RandomSampler(Strategy(do_sample=True))
    fn = sampler if mode == "eager" else tf.function(sampler, jit_compile=True, autograph=False)
    picks = np.stack([fn(*sampler_args(logits, seed=(s, 0))).numpy() for s in range(20)])
    assert set(picks[:, 0::2].ravel()) == {1, 3}
    assert set(picks[:, 1::2].ravel()) == {0}


def test_random_sampler_with_top_k_stays_in_the_top_k():
    logits = np.tile(np.array([[0.0, 1.0, 0.9, -0.5, 0.95, 0.2]], np.float32), (200, 1))
    sampler = make_sampler(Strategy(do_sample=True, top_k=2))
    picks = sampler(*sampler_args(logits, seed=(3, 1))).numpy()
    assert set(picks.tolist()) == {1, 4}


def test_make_sampler():
    assert type(make_sampler(Strategy())) is GreedySampler
    assert type(make_sampler(Strategy(do_sample=True))) is RandomSampler
    # a GenerationConfig stands for its strategy: what compiles, not the runtime values
    sampler = make_sampler(GenerationConfig(do_sample=True, top_k=4, top_p=0.9, temperature=0.5))
    assert type(sampler) is RandomSampler and sampler.strategy == Strategy(True, 4, True, False)
    with pytest.raises(TypeError, match="Strategy"):
        make_sampler({"do_sample": True})


# ----- the accepted extremes (the ranges themselves: test_generation_config.py) ------------------------


@pytest.mark.parametrize("temperature, penalty", [(1e-2, 1e-2), (1e-2, 1e2), (1e2, 1e-2), (1e2, 1e2)])
def test_accepted_extremes_keep_logits_finite_and_masks_intact(mode, temperature, penalty):
    """At the edges of the accepted ranges, large logits stay finite under XLA and -inf (a masked
    token) stays -inf: the softmax stays a distribution over the allowed tokens only."""
    logits = np.array([[300.0, -300.0, 0.0, -np.inf, 5.0]], np.float32)
    seen = np.array([[True, True, True, True, False]])
    config = GenerationConfig(do_sample=True, temperature=temperature, repetition_penalty=penalty).validate()
    out = call(mode, lambda x, s: config_process(config, x, s, temperature, penalty), logits, seen)
    assert np.isfinite(out[:, [0, 1, 2, 4]]).all() and out[0, 3] == -np.inf
    probs = call(mode, lambda x: tf.nn.softmax(x), out)
    assert np.isfinite(probs).all() and probs[0, 3] == 0 and abs(probs.sum() - 1) < 1e-5


def config_process(config, logits, seen, temperature, penalty):
    return make_sampler(config.strategy).process(logits, seen, temperature, 1.0, penalty)


# ----- seeds and the shared rule helper ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**63, pytest.param(10**5000, id="10**5000"), 1.0, 2.5, "7",
                                  True, None, np.float64(3)])
def test_check_seed_refuses_what_is_not_a_small_non_negative_integer(seed):
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2147483647\\]") as info:
        check_seed(seed)
    assert len(str(info.value)) < 120  # a bounded message, even for 10**5000


def test_check_seed_returns_accepted_seeds_as_int():
    assert SEED_MAX == 2**31 - 1
    for seed in (0, 7, SEED_MAX, np.int64(SEED_MAX), np.uint8(3)):
        assert check_seed(seed) == int(seed) and type(check_seed(seed)) is int


def test_check_seed_in_a_graph_fails_the_call_with_invalid_argument():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)], autograph=False)
    def first(seeds):
        with tf.control_dependencies([check_seed(seeds)]):
            return tf.identity(seeds[0])

    assert first(tf.constant([SEED_MAX, 0], tf.int64)).numpy() == SEED_MAX
    for bad in ([SEED_MAX + 1], [0, -1], [2**62]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="seed must be an integer in"):
            first(tf.constant(bad, tf.int64))


def test_require_raises_value_error_eagerly_and_asserts_in_a_graph():
    assert require(np.array([True, True]), "fine") is None
    with pytest.raises(ValueError, match="^broken$"):
        require(np.array([True, False]), "broken")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.bool)], autograph=False)
    def checked(x):
        with tf.control_dependencies([require(x, "broken in a graph")]):
            return tf.identity(x)

    checked(tf.constant([True]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken in a graph"):
        checked(tf.constant([True, False]))
