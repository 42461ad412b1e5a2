"""The decode loop with a fake model (no GPT-2), compiled as the Generator compiles it.

The fake `step_fn` makes the next token (last token + 1) % V: logits[v] = -((v - target) % V), so the
runner-up is target + 1 (what greedy picks when the target is suppressed). It records what the loop
passes it — positions and ids per cache slot, the key mask of every call, the number of calls — in
tf.Variables, which XLA updates in place inside the while loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

from cngpt_tf.decoding import BUCKET, SHORT, check_prompts, decode, round_up
from cngpt_tf.generation_config import Strategy
from cngpt_tf.sampling import make_sampler

V = 20
PAD = 19  # not reached by the small token walks below, so a pad in the output is unambiguous
N_NEW = 16  # the new-token buffer (a bucket); max_new_tokens is a runtime value <= it


class FakeModel:
    """step_fn(ids [B, T], positions [B, T], cache, index, key_mask [B, S]) -> (logits [B, V], cache)."""

    def __init__(self, batch, slots):
        self.positions = tf.Variable(tf.fill([batch, slots], -1))  # per slot: the position it was fed at
        self.fed = tf.Variable(tf.fill([batch, slots], -1))  # per slot: the id fed there
        self.key_masks = tf.Variable(tf.fill([slots + 2, batch, slots], -1))  # per call
        self.calls = tf.Variable(0)

    def next_logits(self, ids):
        target = (ids[:, -1] + 1) % V
        return -tf.cast((tf.range(V)[None, :] - target[:, None]) % V, tf.float32)

    def __call__(self, ids, positions, cache, index, key_mask):
        start = tf.stack([tf.constant(0), tf.cast(index, tf.int32)])
        self.positions.assign(dynamic_update_slice(self.positions.read_value(), positions, start))
        self.fed.assign(dynamic_update_slice(self.fed.read_value(), ids, start))
        call = self.calls.read_value()
        self.key_masks.assign(
            dynamic_update_slice(self.key_masks.read_value(), key_mask[None], tf.stack([call, 0, 0])))
        self.calls.assign_add(1)
        return self.next_logits(ids), cache + 1


class ConstantModel(FakeModel):
    """The same preference every step: token 3 > 4 > 5 > everything else."""

    def next_logits(self, ids):
        row = np.full([V], -1.0, np.float32)
        row[[3, 4, 5]] = [3.0, 2.0, 1.2]
        return tf.tile(tf.constant(row)[None], [tf.shape(ids)[0], 1])


class Result:
    def __init__(self, tokens, steps, model, ids, mask):
        self.buffer, self.steps, self.ids, self.mask = tokens, steps, ids, mask
        self.tokens = tokens[:, :steps]
        self.positions = model.positions.numpy()
        self.fed = model.fed.numpy()
        self.key_masks = model.key_masks.numpy()
        self.calls = int(model.calls.numpy())


def left_pad(prompts, pad=PAD):
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + list(p) for p in prompts], np.int32)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int32)
    return ids, mask


def run(prompts=None, *, max_new, min_new=0, eos=-1, pad=PAD, penalty=1.0, ids=None, mask=None,
        model_cls=FakeModel, n_new=N_NEW):
    if ids is None:
        ids, mask = left_pad(prompts, pad)
    batch, prompt_len = ids.shape
    model = model_cls(batch, prompt_len + n_new)
    sampler = make_sampler(Strategy(penalty=penalty != 1.0))

    @tf.function(jit_compile=True, autograph=False)  # as Generator._compiled_decode
    def fn(ids, mask, buffer, max_new, min_new, eos, pad, penalty):
        return decode(
            model, tf.zeros([batch]), sampler, ids, mask, buffer,
            max_new_tokens=max_new, min_new_tokens=min_new, eos_token_id=eos, pad_token_id=pad,
            seed=tf.constant(0), temperature=tf.constant(1.0), top_p=tf.constant(1.0), penalty=penalty,
            vocab_size=V,
        )

    buffer = np.full([batch, n_new], pad, np.int32)
    tokens, steps = fn(tf.constant(ids), tf.constant(mask), tf.constant(buffer), tf.constant(max_new),
                       tf.constant(min_new), tf.constant(eos), tf.constant(pad), tf.constant(penalty))
    return Result(tokens.numpy(), int(steps), model, ids, mask)


# ----- the rule, lengths, stopping ------------------------------------------------------------------


def test_greedy_follows_the_rule():
    r = run([[1, 2, 3]], max_new=5)
    assert r.tokens.tolist() == [[4, 5, 6, 7, 8]]
    assert r.steps == 5


@pytest.mark.parametrize("max_new", [1, 5, N_NEW])
def test_max_new_tokens_respected(max_new):
    r = run([[0], [6, 2]], max_new=max_new)
    assert r.steps == max_new
    assert r.tokens.tolist() == [list(range(1, 1 + max_new)), list(range(3, 3 + max_new))]
    assert (r.buffer[:, max_new:] == PAD).all()  # the rest of the buffer is untouched
    assert r.calls == max_new  # the prefill, then one forward pass per token but the last


def test_eos_stops_a_row_and_pads_it_while_others_continue():
    r = run([[3], [10]], max_new=6, eos=5)
    assert r.tokens.tolist() == [[4, 5, PAD, PAD, PAD, PAD], [11, 12, 13, 14, 15, 16]]
    assert r.steps == 6
    p = r.ids.shape[1]
    assert r.fed[0, p:p + 3].tolist() == [4, 5, PAD]  # a finished row is fed pads, as in HF


def test_loop_ends_early_when_all_rows_finished():
    r = run([[3], [0, 1], [4]], max_new=10, eos=5)
    assert r.tokens.tolist() == [[4, 5, PAD, PAD], [2, 3, 4, 5], [5, PAD, PAD, PAD]]
    assert r.steps == 4  # the longest row needed 4 of the 10 allowed
    assert r.calls <= r.steps + 1  # no forward passes after the last row finished
    assert (r.buffer[:, r.steps:] == PAD).all()


def test_eos_as_the_first_new_token():
    r = run([[4], [4]], max_new=10, eos=5)
    assert r.tokens.tolist() == [[5], [5]]
    assert r.steps == 1


def test_min_new_tokens_suppresses_eos():
    r = run([[3], [1]], max_new=8, eos=5, min_new=3)
    # row 0: the 2nd token would be 5 but eos is suppressed for 3 tokens -> runner-up 6, and the walk
    # goes on; row 1 reaches 5 as its 4th token, when eos is allowed again
    assert r.tokens.tolist() == [[4, 6, 7, 8, 9, 10, 11, 12], [2, 3, 4, 5, PAD, PAD, PAD, PAD]]
    r = run([[3]], max_new=8, eos=5, min_new=1)
    assert r.tokens.tolist() == [[4, 5]]


def test_min_new_tokens_without_eos_suppresses_nothing():
    # eos_token_id=-1 never stops; token 0 (what a clamped -1 would point at) must stay allowed
    r = run([[V - 1]], max_new=3, eos=-1, min_new=3)
    assert r.tokens.tolist() == [[0, 1, 2]]


# ----- left padding: positions, key mask, the ids fed back -----------------------------------------


PROMPTS = [[7], [1, 2, 3, 4, 5], [9, 8]]


def test_left_padded_prompts_of_different_lengths():
    r = run(PROMPTS, max_new=3)
    assert r.tokens.tolist() == [[8, 9, 10], [6, 7, 8], [9, 10, 11]]


def test_positions_start_at_0_on_the_first_real_token():
    r = run(PROMPTS, max_new=4)
    width = r.ids.shape[1]
    for b, prompt in enumerate(PROMPTS):
        n = len(prompt)
        fed_new = r.steps - 1  # the last token is not fed back
        expected = [0] * (width - n) + list(range(n)) + list(range(n, n + fed_new))
        expected += [-1] * (width + N_NEW - len(expected))
        assert r.positions[b].tolist() == expected, b
        # the ids fed at each slot: the padded prompt, then the new tokens in order
        assert r.fed[b, :width].tolist() == r.ids[b].tolist()
        assert r.fed[b, width:width + fed_new].tolist() == r.tokens[b, :fed_new].tolist()


def test_key_mask_columns_become_1_as_tokens_are_written():
    r = run(PROMPTS, max_new=5)
    assert r.calls == 5
    for call in range(r.calls):  # call 0 is the prefill; call c feeds new token c - 1
        expected = np.concatenate([r.mask, np.zeros([len(PROMPTS), N_NEW], np.int32)], axis=1)
        expected[:, r.ids.shape[1]:r.ids.shape[1] + call] = 1
        np.testing.assert_array_equal(r.key_masks[call], expected, err_msg=f"call {call}")


def test_batch_rows_are_independent_of_padding():
    together = run(PROMPTS, max_new=4, eos=9)
    for b, prompt in enumerate(PROMPTS):
        alone = run([prompt], max_new=4, eos=9)
        row = together.tokens[b, :alone.steps].tolist()
        assert row == alone.tokens[0].tolist()
        assert (together.tokens[b, alone.steps:] == PAD).all()


# ----- repetition penalty through the loop -------------------------------------------------------------


def test_repetition_penalty_counts_real_prompt_tokens_and_new_ones_but_not_pads():
    # both rows hold token 3 in their prompt slots, but only row 1's are real (row 0's are padding)
    ids = np.array([[3, 3, 7], [3, 3, 7]], np.int32)
    mask = np.array([[0, 0, 1], [1, 1, 1]], np.int32)
    r = run(ids=ids, mask=mask, pad=3, max_new=4, penalty=2.0, model_cls=ConstantModel)
    # logits 3: 3.0, 4: 2.0, 5: 1.2; once seen 3 -> 1.5, 4 -> 1.0, 5 -> 0.6
    assert r.tokens.tolist() == [[3, 4, 3, 3], [4, 3, 3, 3]]
    plain = run(ids=ids, mask=mask, pad=3, max_new=2, penalty=1.0, model_cls=ConstantModel)
    assert plain.tokens.tolist() == [[3, 3], [3, 3]]


def test_round_up_gives_short_prompts_one_small_bucket_and_the_rest_multiples_of_bucket():
    expected = {0: 0, 1: SHORT, SHORT: SHORT, SHORT + 1: BUCKET, BUCKET: BUCKET, BUCKET + 1: 2 * BUCKET,
                5 * BUCKET: 5 * BUCKET}
    assert {n: round_up(n) for n in expected} == expected
    assert {n: int(round_up(tf.constant(n))) for n in expected} == expected  # the SavedModel's in-graph path


# ----- check_prompts: one rule set, eagerly (ValueError) and in a graph (InvalidArgumentError) ----------


BAD_PROMPTS = [
    ([[5, V]], [[1, 1]], "outside the vocab of 20"),  # XLA's gather would clamp V to V - 1
    ([[5, -1]], [[1, 1]], "outside the vocab of 20"),
    ([[5, 6]], [[1, 0]], "left-padded"),
    ([[5, 6, 7]], [[1, 0, 1]], "left-padded"),
    ([[5, 6]], [[0, 0]], "left-padded"),  # no real token
    ([[5, 6]], [[-1, 1]], "only 0s and 1s"),
    ([[5, 6]], [[0, 1, 1]], "one shape"),
    ([[5, 6], [5, 6]], [[0, 1]], "one shape"),
    (np.zeros((1, 0)), np.zeros((1, 0)), "one shape"),
    (np.zeros((0, 2)), np.zeros((0, 3)), "one shape"),  # an empty batch, still of one shape
]


@pytest.fixture(scope="module")
def checked_in_a_graph():
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def checked(ids, mask):
        with tf.control_dependencies(check_prompts(ids, mask, V)):
            return tf.identity(ids)

    return checked


@pytest.mark.parametrize("ids, mask, match", BAD_PROMPTS)
def test_check_prompts_names_the_problem_eagerly_and_in_a_graph(checked_in_a_graph, ids, mask, match):
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    with pytest.raises(ValueError, match=match):
        check_prompts(ids, mask, V)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        checked_in_a_graph(ids, mask)


@pytest.mark.parametrize("shape", [(0, 0), (0, 2)])
def test_check_prompts_accepts_an_empty_batch(checked_in_a_graph, shape):
    """Every face answers an empty batch with an empty result: the rules accept it, eagerly and in a graph."""
    ids = mask = np.zeros(shape, np.int32)
    assert all(op is None for op in check_prompts(ids, mask, V))
    assert checked_in_a_graph(ids, mask).shape == shape


def test_check_prompts_accepts_left_padding_and_ignores_ids_under_it(checked_in_a_graph):
    ids = np.array([[V + 5, -3, 7], [1, 2, V - 1]], np.int32)  # bad ids only where the mask is 0
    mask = np.array([[0, 0, 1], [1, 1, 1]], np.int32)
    assert all(op is None for op in check_prompts(ids, mask, V))
    np.testing.assert_array_equal(checked_in_a_graph(ids, mask).numpy(), ids)
    with pytest.raises(ValueError, match="one shape"):  # rank is checked statically
        check_prompts(ids[0], mask[0], V)
