"""The decode-step attention kernel (csrc/decode_attention.h): every ISA variant against NumPy, its
edges (slots past the cache, no slot, NaN, large scores), its checks, and the model's decode step on
it equal to the same step by XLA's attention."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cngpt_tf import model, native
from cngpt_tf.config import GPT2Config
from cngpt_tf.demo import demo_weights
from cngpt_tf.errors import ConfigError
from cngpt_tf.formats import names

needs_kernel = pytest.mark.skipif(not native.available(), reason="the native kernel needs an AVX2 / AVX-512 CPU and g++")
VARIANTS = ("avx2", "avx512")  # the attention's own code; avx512bf16 / avx512vnni run avx512's


def variant(name):
    return pytest.param(name, marks=pytest.mark.skipif(name not in native.cpu_isas(), reason=f"this CPU lacks {name}"))


def attend(q, keys, values, key_mask, n, n_head, threads=2, isa_name=None):
    fn = tf.function(lambda *a: native.decode_attention(*a, n_head, threads, isa_name=isa_name), jit_compile=True,
                     autograph=False)
    return fn(q, keys, values, key_mask, np.int32(n)).numpy()


def reference(q, keys, values, key_mask, n, n_head):
    """softmax over the slots s < n with key_mask 1, in float64; zeros for a row with no such slot."""
    rows, slots, depth = keys.shape
    scores = np.einsum("rd,rsd->rs", q.astype(np.float64), keys) / np.sqrt(depth)
    allowed = (key_mask[np.arange(rows) // n_head] == 1) & (np.arange(slots)[None] < n)
    scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, axis=1, keepdims=True)
    p = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = p.sum(axis=1, keepdims=True)
    return np.einsum("rs,rsd->rd", p / np.where(total > 0, total, 1), np.where(allowed[..., None], values, 0))


def case(batch, n_head, slots, depth, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((batch * n_head, depth)) * scale).astype(np.float32)
    keys, values = (rng.standard_normal((batch * n_head, slots, depth)).astype(np.float32) for _ in range(2))
    key_mask = (rng.random((batch, slots)) > 0.3).astype(np.int32)
    return q, keys, values, key_mask


@needs_kernel
@pytest.mark.parametrize("isa_name", [variant(name) for name in VARIANTS])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch, n_head, slots, depth, n", [
    (1, 12, 72, 64, 9),  # GPT-12L-CN's heads, a short prompt's first step
    (8, 12, 72, 64, 72),  # every slot in use
    (3, 2, 16, 32, 5),
    (2, 3, 10, 7, 10),  # head_dim no multiple of a vector: the scalar tail
    (1, 1, 3, 17, 2),  # one row: the caller's thread only
])
def test_kernel_equals_numpy(isa_name, threads, batch, n_head, slots, depth, n):
    q, keys, values, key_mask = case(batch, n_head, slots, depth, seed=slots * depth + n)
    key_mask[:, n - 1] = 1  # the step's own slot, as in decoding
    keys[:, n:] = values[:, n:] = np.nan  # slots past n are never read
    out = attend(q, keys, values, key_mask, n, n_head, threads, isa_name)
    np.testing.assert_allclose(out, reference(q, keys, values, key_mask, n, n_head), rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("isa_name", [variant(name) for name in VARIANTS])
def test_edges_slots_past_the_cache_no_slot_nan_and_large_scores(isa_name):
    q, keys, values, key_mask = case(2, 2, 6, 16, seed=1)
    key_mask[:, -1] = 1
    expected = reference(q, keys, values, key_mask, 6, 2)
    np.testing.assert_allclose(attend(q, keys, values, key_mask, 99, 2, isa_name=isa_name), expected, rtol=1e-5, atol=1e-6)
    assert not attend(q, keys, values, key_mask, 0, 2, isa_name=isa_name).any()  # no slot in use: zeros
    assert not attend(q, keys, values, key_mask, -3, 2, isa_name=isa_name).any()
    empty = key_mask.copy()
    empty[1] = 0  # sequence 1 masks every slot: its rows are zeros, sequence 0's untouched
    out = attend(q, keys, values, empty, 6, 2, isa_name=isa_name)
    assert not out[2:].any()
    np.testing.assert_allclose(out[:2], expected[:2], rtol=1e-5, atol=1e-6)
    poisoned = keys.copy()
    poisoned[3, 2] = np.nan  # a NaN key in a slot row 3 reads: row 3 is NaN, as XLA's softmax makes it
    key_mask[1, 2] = 1
    out = attend(q, poisoned, values, key_mask, 6, 2, isa_name=isa_name)
    assert np.isnan(out[3]).all() and np.isfinite(out[:3]).all()
    big_q = q * 1e4  # scores of ~1e4: softmax of one slot, no overflow (exp after subtracting the max)
    out = attend(big_q, keys, values, key_mask, 6, 2, isa_name=isa_name)
    np.testing.assert_allclose(out, reference(big_q, keys, values, key_mask, 6, 2), rtol=1e-4, atol=1e-5)


@needs_kernel
def test_checks_name_the_mismatch():
    q, keys, values, key_mask = case(2, 2, 6, 16)
    with pytest.raises(ValueError, match="keys .* do not fit q"):
        attend(q, keys[:, :, :8], values, key_mask, 3, 2)
    with pytest.raises(ValueError, match="key_mask .* does not fit"):
        attend(q, keys, values, key_mask[:, :5], 3, 2)
    with pytest.raises(ValueError, match="multiple of 3 heads"):
        attend(q, keys, values, key_mask, 3, 3)
    with pytest.raises(ConfigError, match="isa_name='sse9'"):
        attend(q, keys, values, key_mask, 3, 2, isa_name="sse9")


CONFIG = GPT2Config(n_vocab=97, n_ctx=32, n_embd=32, n_head=4, n_layer=2)


@needs_kernel
@pytest.mark.parametrize("weights", ["fp32", "int8"])
@pytest.mark.parametrize("stacked", [False, True], ids=["layer by layer", "layers as one loop"])
def test_a_decode_step_by_the_kernel_equals_the_step_by_xla(monkeypatch, stacked, weights):
    tf1 = names.convert(demo_weights(CONFIG, seed=5), names.PT, names.TF1, CONFIG)
    params = model.pack_params(tf1, panels=True, weights=weights)
    assert model.native_attention(params) and model.layers_as_loop(params)
    ids = np.array([[3, 4, 5, 6], [0, 0, 7, 8]], np.int32)
    mask = (np.arange(4) >= np.array([[0], [2]])).astype(np.int32)
    key_mask = np.concatenate([mask, np.zeros((2, 4), np.int32)], axis=1)  # 8 slots, 4 of them free

    def steps():  # prefill, then three decode steps writing slots 4, 5, 6
        positions = model.positions_from_mask(mask)
        cache = model.empty_cache(CONFIG, 2, 8, stacked=stacked and model.layers_as_loop(params))
        _, cache = model.forward(params, CONFIG, ids, positions, cache, 0, key_mask)
        outs, k_mask = [], tf.constant(key_mask)
        for step in range(3):
            k_mask = tf.tensor_scatter_nd_update(k_mask, [[0, 4 + step], [1, 4 + step]], [1, 1])
            token = tf.constant([[10 + step], [20 + step]], tf.int32)
            hidden, cache = model.forward(params, CONFIG, token, positions[:, -1:] + 1 + step, cache, 4 + step, k_mask)
            outs.append(model.lm_head(params, CONFIG, hidden[:, -1]))
        return tf.stack(outs), cache

    by_kernel, cache = tf.function(steps, jit_compile=True, autograph=False)()
    assert tf.is_tensor(cache[0]) == stacked  # the layers ran as one loop over a stacked cache, or not
    monkeypatch.setenv(model.NATIVE_ATTENTION_VARIABLE, "0")
    assert not model.native_attention(params) and not model.layers_as_loop(params)
    by_xla, cache = tf.function(steps, jit_compile=True, autograph=False)()
    assert not tf.is_tensor(cache[0])
    np.testing.assert_allclose(by_kernel.numpy(), by_xla.numpy(), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_panel_matmul_by_layer_index_reads_that_layers_weight(weights):
    from cngpt_tf import quantize

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    layers = [quantize.pack(rng.standard_normal((40, 64)).astype(np.float32), weights) for _ in range(3)]
    panels = [tf.constant(layer["panels"]) for layer in layers]
    scales = [tf.constant(layer["scales"]) for layer in layers] if weights == "int8" else None

    @tf.function(jit_compile=True, autograph=False)
    def product(x, i, one_panels, one_scales):
        by_index = native.panel_matmul(x, panels, 64, 2, scales, group=quantize.INT8_GROUP, layer=i)
        alone = native.panel_matmul(x, one_panels, 64, 2, one_scales, group=quantize.INT8_GROUP)
        return by_index, alone

    for i in range(3):
        by_index, alone = product(x, np.int32(i), panels[i], scales and scales[i])
        np.testing.assert_array_equal(by_index.numpy(), alone.numpy())  # the same weight, the same sums
    with pytest.raises(ValueError, match="one shape and dtype"):
        native.panel_matmul(x, [panels[0], panels[0][:1]], 64, 2, layer=0)
