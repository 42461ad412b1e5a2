"""cngpt_tf.model: the KV cache's layout, and decoding through it equal to a full forward pass."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cngpt_tf import model
from cngpt_tf.config import GPT2Config
from converters.demo import demo_weights

CONFIG = GPT2Config(n_vocab=97, n_ctx=32, n_embd=32, n_head=4, n_layer=2)


def test_cache_is_n_layer_pairs_of_past_shape():
    cache = model.empty_cache(CONFIG, batch_size=3, cache_len=10)
    assert len(cache) == CONFIG.n_layer
    for keys, values in cache:
        assert keys.shape == values.shape == (3 * CONFIG.n_head, 10, CONFIG.head_dim)
    assert model.past_shape(CONFIG, 3, 10) == [3 * CONFIG.n_head, 10, CONFIG.head_dim]


def test_split_and_merge_heads_are_inverse_and_keep_rows_apart():
    x = tf.reshape(tf.range(2 * 5 * CONFIG.n_embd, dtype=tf.float32), [2, 5, CONFIG.n_embd])
    heads = model.split_heads(x, CONFIG.n_head)  # [B * H, T, D]
    assert heads.shape == (2 * CONFIG.n_head, 5, CONFIG.head_dim)
    # row b * H + h is head h of sequence b: columns h * D ... (h + 1) * D of x[b]
    np.testing.assert_array_equal(heads[1 * CONFIG.n_head + 2], x[1, :, 2 * CONFIG.head_dim : 3 * CONFIG.head_dim])
    np.testing.assert_array_equal(model.merge_heads(heads, CONFIG.n_head), x)


def test_decoding_through_the_cache_equals_the_full_forward_pass():
    """Prefill 4 slots, then feed one token per call under XLA: each call's logits equal the logits
    of the whole left-padded sequence at that position, for two rows with different padding."""
    params = {k: tf.constant(v) for k, v in model.params_from_pt(demo_weights(CONFIG, seed=3), CONFIG).items()}
    rng = np.random.default_rng(0)
    ids = rng.integers(1, CONFIG.n_vocab, size=(2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # row 1 is left-padded by two
    ids[1, :2] = 0
    full = model.logits(params, CONFIG, ids, mask).numpy()  # [B, 9, V]

    @tf.function(jit_compile=True)
    def call(new_ids, positions, cache, index, key_mask):
        hidden, cache = model.forward(params, CONFIG, new_ids, positions, cache, index, key_mask)
        return model.lm_head(params, hidden[:, -1]), cache

    prefill = 4
    positions = model.positions_from_mask(mask).numpy()
    key_mask = np.concatenate([mask[:, :prefill], np.zeros((2, 9 - prefill), np.int32)], axis=1)
    cache = model.empty_cache(CONFIG, 2, 9)
    last, cache = call(ids[:, :prefill], positions[:, :prefill], cache, 0, key_mask)
    np.testing.assert_allclose(last, full[:, prefill - 1], atol=1e-4)
    for slot in range(prefill, 9):
        key_mask[:, slot] = mask[:, slot]
        last, cache = call(ids[:, slot : slot + 1], positions[:, slot : slot + 1], cache, slot, key_mask)
        np.testing.assert_allclose(last, full[:, slot], atol=1e-4, err_msg=f"slot {slot}")
