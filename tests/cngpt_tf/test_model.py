"""cngpt_tf.model: the packed weight layout, the KV cache's layout, and decoding through it equal to a full
forward pass."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cngpt_tf import model
from cngpt_tf.config import GPT2Config
from cngpt_tf.formats import names
from cngpt_tf.demo import demo_weights

CONFIG = GPT2Config(n_vocab=97, n_ctx=32, n_embd=32, n_head=4, n_layer=2)
WIDE = GPT2Config(n_vocab=50, n_ctx=16, n_embd=768, n_head=12, n_layer=1)  # GPT-2 small's layer widths


def test_row_blocks_balance_the_matrix_vector_tasks_over_the_threads():
    # GPT-2 small on 2 threads: mlp c_fc [3072, 769] and c_proj [768, 3073] get 5 XLA tasks as one
    # block (the fifth runs alone), 2 per block as 3 blocks; c_attn (4 tasks) and attn c_proj (2) stay whole
    assert [model.row_blocks(r, c, 2) for r, c in [(3072, 769), (768, 3073), (2304, 769), (768, 769)]] == [3, 3, 1, 1]
    assert model.row_blocks(3072, 769, 1) == 1  # one thread: nothing to balance
    assert model.row_blocks(3072, 769, 8) == 1  # 5 tasks run in one round of 8 threads
    assert model.row_blocks(3 * 64, 65, 2) == 1  # tiny layers: one task, one block
    for rows, cols in [(3072, 769), (768, 3073), (4096, 1025), (1000, 3000)]:
        for threads in (2, 3, 4, 6):
            blocks = model.row_blocks(rows, cols, threads)
            assert rows % blocks == 0 and (rows // blocks) % 8 == 0 or blocks == 1


def test_pack_params_stores_row_blocks_that_concatenate_to_w_transposed_and_b():
    tf1 = names.convert(demo_weights(WIDE, seed=1), names.PT, names.TF1, WIDE)
    packed = model.pack_params(tf1, threads=2)
    for scope, n_blocks in [("attn/c_attn", 1), ("attn/c_proj", 1), ("mlp/c_fc", 3), ("mlp/c_proj", 3)]:
        blocks = model.weight_blocks(packed, f"model/h0/{scope}")
        assert len(blocks) == n_blocks, scope
        w, b = tf1[f"model/h0/{scope}/w"][0], tf1[f"model/h0/{scope}/b"]
        np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate([w.T, b[:, None]], axis=1))
    one = model.pack_params(tf1, threads=1)
    assert len(model.weight_blocks(one, "model/h0/mlp/c_fc")) == 1
    conv1d = [k for k in one if any(f"/{scope}/" in k for scope in model.CONV1D_SCOPES)]
    assert conv1d and all("/wb/" in k for k in conv1d)  # no unpacked Conv1D w or b left behind


def test_logits_do_not_depend_on_the_row_blocks():
    tf1 = names.convert(demo_weights(WIDE, seed=2), names.PT, names.TF1, WIDE)
    ids = np.random.default_rng(0).integers(0, WIDE.n_vocab, size=(2, 5)).astype(np.int32)
    mask = np.ones_like(ids)
    blocked = model.logits(model.pack_params(tf1, threads=2), WIDE, ids, mask).numpy()
    whole = model.logits(model.pack_params(tf1, threads=1), WIDE, ids, mask).numpy()
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)


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
        return model.lm_head(params, CONFIG, hidden[:, -1]), cache

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
