"""The decode loop: prefill the prompt, then one token per step, all inside one XLA computation.

Model-agnostic: it drives any `step_fn(ids [B, T], positions [B, T], cache, index, key_mask [B, S])
-> (logits [B, V] of the last position, cache)`, so tests run it with a fake model. The cache has a
fixed number of slots S = P + N (prompt bucket + new-token bucket); each step writes one slot in place.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

from . import model
from .model import positions_from_mask, shape_of
from .sampling import Sampler, require, suppress


BUCKET = 16  # prompt lengths and new-token buffers are padded up to multiples of this ...
SHORT = 8  # ... except 1..SHORT, which get one smaller bucket: most prompts here are a poem's first
# line and [CLS] ("明月几时有，" is 7 tokens); at batch 8 that halves the prefill and gives +4% tokens/s


def round_up(n):
    """n's bucket: SHORT for 1 <= n <= SHORT, else n rounded up to a multiple of BUCKET.

    n is a Python int or a scalar int tensor (the SavedModel buckets in-graph)."""
    rounded = (n + BUCKET - 1) // BUCKET * BUCKET
    if not tf.is_tensor(n):
        return rounded if n > SHORT else min(rounded, SHORT)
    return tf.where(n > SHORT, rounded, tf.minimum(rounded, SHORT))


def check_prompts(input_ids, attention_mask, n_vocab: int) -> list:
    """The rules for prompts given as ids: [B, P] ids and a same-shaped left-padded 0/1 mask (0s,
    then 1s, ending in a real token), ids in [0, n_vocab) at real positions (XLA's gather would
    clamp others silently). An empty batch ([0, P], any P) is a valid request: every face answers
    it with an empty result. Eagerly (numpy or tensors) a broken rule raises ValueError; in a graph
    it returns the assert ops (InvalidArgumentError when run), see `sampling.require`."""
    ids, mask = tf.convert_to_tensor(input_ids), tf.convert_to_tensor(attention_mask)
    rule = "input_ids and attention_mask must have one shape [batch, length], length >= 1 unless batch is 0"
    if ids.shape.rank != 2 or mask.shape.rank != 2:  # static, also in a graph
        raise ValueError(f"{rule}, got {ids.shape} and {mask.shape}")
    same = tf.reduce_all(tf.equal(tf.shape(ids), tf.shape(mask)))
    shape = require(same & ((tf.shape(ids)[1] > 0) | tf.equal(tf.shape(ids)[0], 0)), rule)
    with tf.control_dependencies([shape]):  # the checks below index ids and mask together
        real = tf.equal(mask, 1)
        # real[:, -1:] rather than real[:, -1]: an empty batch [0, 0] has no last column to index
        checks = [shape, require(real | tf.equal(mask, 0), "attention_mask must hold only 0s and 1s"),
                  require(tf.reduce_all(mask[:, 1:] >= mask[:, :-1]) & tf.reduce_all(real[:, -1:]),
                          "attention_mask must be left-padded: 0s then 1s in each row, ending in a real token"),
                  require(~real | ((ids >= 0) & (ids < n_vocab)),
                          f"input_ids: an id at a real position (attention_mask 1) is outside the vocab of "
                          f"{n_vocab} tokens")]
    return checks


def generate_bucketed(decoder, input_ids, attention_mask, max_new, *, min_new, eos, pad, seed, temperature,
                      top_p, penalty, constraint=()):
    """Run a `compile_decoder` decoder on left-padded [B, P] prompts; return [B, P + new] (TF ops).

    The prompt gets extra left padding and the new-token buffer is rounded up (both by `round_up`),
    so that few distinct shapes reach the XLA compiler. `constraint` inputs must be sized for
    round_up(max_new) steps. Used by the Python Generator (eagerly) and the SavedModel (in-graph).
    """
    extra = round_up(tf.shape(input_ids)[1]) - tf.shape(input_ids)[1]
    ids = tf.pad(input_ids, [[0, 0], [extra, 0]], constant_values=pad)
    mask = tf.pad(attention_mask, [[0, 0], [extra, 0]])
    buffer = tf.fill([tf.shape(ids)[0], round_up(max_new)], tf.cast(pad, tf.int32))
    scalars = [tf.cast(v, tf.int32) for v in (max_new, min_new, eos, pad, seed)]
    scalars += [tf.cast(v, tf.float32) for v in (temperature, top_p, penalty)]
    tokens, steps = decoder(ids, mask, buffer, *scalars, *constraint)
    return tf.concat([input_ids, tokens[:, :steps]], axis=1)


def compile_decoder(params, config, sampler, make_constraint=None):
    """The GPT-2 decode loop over `params` as one XLA computation.

    Returns fn(ids [B, P], mask [B, P], buffer [B, N], max_new, min_new, eos, pad, seed,
    temperature, top_p, penalty, *constraint_inputs) -> (tokens [B, N], steps); P and N should be
    bucketed by the caller. sampler: a `Sampler` (seed: a scalar), or a function of the `seed` input
    returning (the Sampler, the scalar seed the loop passes it) -- e.g. one seed per row
    (`cngpt_tf.batch.seeded`). make_constraint(*constraint_inputs) -> (constraint, initial state)
    adds a logits constraint (e.g. `cngpt_tf.poetry.PoemConstraint`) whose data are runtime inputs.
    """

    def step_fn(ids, positions, cache, index, key_mask):
        hidden, cache = model.forward(params, config, ids, positions, cache, index, key_mask)
        return model.lm_head(params, config, hidden[:, -1]), cache  # logits of the last position only

    @tf.function(jit_compile=True, autograph=False)  # the loops are explicit tf.while_loop
    def run(ids, mask, buffer, max_new, min_new, eos, pad, seed, temperature, top_p, penalty, *constraint_inputs):
        (batch, prompt_len), n_new = shape_of(ids), shape_of(buffer)[1]
        slots = prompt_len + n_new
        stacked = model.layers_as_loop(params)  # the blocks as one loop over the layers: one stacked cache
        cache = model.empty_cache(config, batch, slots, params["model/wpe"].dtype, stacked=stacked)
        constraint, constraint_state = make_constraint(*constraint_inputs) if make_constraint else (None, ())
        step_sampler, seed = (sampler, seed) if isinstance(sampler, Sampler) else sampler(seed)
        return decode(
            step_fn, cache, step_sampler, ids, mask, buffer,
            max_new_tokens=max_new, min_new_tokens=min_new, eos_token_id=eos, pad_token_id=pad,
            seed=seed, temperature=temperature, top_p=top_p, penalty=penalty, vocab_size=config.n_vocab,
            constraint=constraint, constraint_state=constraint_state,
        )

    return run


def decode(
    step_fn,
    cache,
    sampler: Sampler,
    input_ids,
    attention_mask,
    new_tokens,
    *,
    max_new_tokens,
    min_new_tokens,
    eos_token_id,
    pad_token_id,
    seed,
    temperature,
    top_p,
    penalty,
    vocab_size: int,
    constraint=None,
    constraint_state=(),
):
    """Generate up to `max_new_tokens` tokens after left-padded prompts.

    input_ids, attention_mask: [B, P] int32; new_tokens: [B, N] int32 buffer (N bounds
    max_new_tokens, a runtime scalar); eos_token_id: scalar, -1 never stops. Rows that emit
    end-of-text get `pad_token_id` afterwards. Returns (tokens [B, N], number of steps taken).
    constraint: an object with apply(logits, step, state) -> logits and update(token, step, state)
    -> state, applied before sampling at every step; constraint_state is its initial state.
    """
    # Static sizes where tracing knows them (fixed loop shapes); a SavedModel signature traces this
    # with an unknown batch and prompt length, and then they are runtime values.
    (batch, prompt_len), n_new = shape_of(input_ids), shape_of(new_tokens)[1]
    key_mask = tf.concat([attention_mask, tf.zeros([batch, n_new], tf.int32)], axis=1)  # [B, S]
    positions = positions_from_mask(attention_mask)
    logits, cache = step_fn(input_ids, positions, cache, 0, key_mask)  # prefill
    seen = _one_hot_any(input_ids, attention_mask, vocab_size)  # [B, V] tokens in each sequence
    state = dict(
        step=tf.constant(0),
        logits=logits,
        cache=cache,
        key_mask=key_mask,
        position=positions[:, -1] + 1,  # [B] position of the next token
        seen=seen,
        finished=tf.zeros([batch], tf.bool),
        tokens=new_tokens,
        constraint=constraint_state,
    )

    def choose(s):
        """Pick each row's next token from s["logits"] and record it (no model call)."""
        step = s["step"]
        early = tf.logical_and(step < min_new_tokens, eos_token_id >= 0)
        logits = suppress(s["logits"], tf.maximum(eos_token_id, 0), tf.fill([batch], early))
        if constraint is not None:
            logits = constraint.apply(logits, step, s["constraint"])
        token = sampler(logits, s["seen"], tf.stack([seed, step]), temperature, top_p, penalty)  # [B]
        token = tf.where(s["finished"], pad_token_id, token)
        return dict(
            s,
            constraint=constraint.update(token, step, s["constraint"]) if constraint is not None else (),
            step=step + 1,
            token=token,
            key_mask=_set_column(s["key_mask"], prompt_len + step, tf.ones([batch], tf.int32)),
            seen=tf.logical_or(s["seen"], tf.one_hot(token, vocab_size, on_value=True, off_value=False)),
            finished=tf.logical_or(s["finished"], token == eos_token_id),
            tokens=_set_column(s["tokens"], step, token),
        )

    def choose_and_forward(s):
        s = choose(s)
        slot = prompt_len + s["step"] - 1
        s["logits"], s["cache"] = step_fn(s["token"][:, None], s["position"][:, None], s["cache"], slot, s["key_mask"])
        s["position"] = s["position"] + 1
        return (s,)

    def unfinished(s):
        return tf.logical_not(tf.reduce_all(s["finished"]))

    # Every token but the last is fed back through the model; the last needs no forward pass, so it
    # is chosen after the loop (a tf.cond around the forward pass would copy the cache each step).
    (s,) = tf.while_loop(
        lambda s: tf.logical_and(s["step"] < max_new_tokens - 1, unfinished(s)),
        choose_and_forward,
        (dict(state, token=tf.zeros([batch], tf.int32)),),
        maximum_iterations=n_new,
    )
    rest = {k: v for k, v in s.items() if k != "cache"}
    final = tf.cond(unfinished(s), lambda: choose(rest), lambda: rest)
    return final["tokens"], final["step"]


def _set_column(matrix, column, values):
    """matrix[:, column] = values, as an in-place dynamic-update-slice under XLA."""
    return dynamic_update_slice(matrix, values[:, None], tf.stack([tf.constant(0), tf.cast(column, tf.int32)]))


def _one_hot_any(ids, mask, vocab_size):
    """[B, V] bool: which vocab ids occur in each row's real (mask = 1) tokens."""
    hot = tf.one_hot(ids, vocab_size, on_value=True, off_value=False)  # [B, P, V]
    return tf.reduce_any(tf.logical_and(hot, tf.cast(mask, tf.bool)[:, :, None]), axis=1)
