"""The XLA decode loop of `cngpt_tf.decoding` with one sampling seed per row.

The Python API samples a whole batch from one seed, so a row's text depends on its batch-mates and
its place among them; a corpus run needs each line's text to follow from the line alone (its seed
comes from `--seed` and its id). Here row b draws its token at step t from
`stateless_categorical(logits[b], seed=(seeds[b], t))`: exactly what `Generator.generate` draws for
a single prompt with `seed=seeds[b]` (same logits processors, same random stream), so a line can be
reproduced with the Python API from the `seed` its record carries.

Everything else -- the loop, the KV cache, stopping, the poem constraint -- is `cngpt_tf.decoding`'s
`decode` and the model's functions, unchanged; only the sampler differs.
"""

from __future__ import annotations

import tensorflow as tf

from .. import model
from ..decoding import decode
from ..generation_config import Strategy
from ..model import shape_of
from ..poetry import PoemConstraint
from ..sampling import Sampler


class RowSeededSampler(Sampler):
    """A `Sampler` whose rows sample from their own seeds [B] (greedy: argmax, seeds unused)."""

    def __init__(self, strategy: Strategy, row_seeds):
        super().__init__(strategy)
        self.row_seeds = row_seeds

    def choose(self, logits, seed):
        """logits [B, V] processed; seed: (unused, step) as the loop passes it."""
        if not self.strategy.do_sample:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        step = seed[1]

        def draw(args):
            row, row_seed = args
            return tf.random.stateless_categorical(row[None], 1, seed=tf.stack([row_seed, step]),
                                                   dtype=tf.int32)[0, 0]

        return tf.map_fn(draw, (logits, self.row_seeds), fn_output_signature=tf.int32)


def compile_row_seeded(params: dict, config, strategy: Strategy, constrained: bool = False):
    """Like `decoding.compile_decoder`, with `seed` a [B] int32 vector of row seeds; `constrained`
    adds `PoemConstraint` (its inputs from `PoemPlan.inputs`). Use with `decoding.generate_bucketed`.
    Traced and compiled once per shape (the native kernel needs static shapes when traced)."""

    def step_fn(ids, positions, cache, index, key_mask):
        hidden, cache = model.forward(params, config, ids, positions, cache, index, key_mask)
        return model.lm_head(params, config, hidden[:, -1]), cache

    def run(ids, mask, buffer, max_new, min_new, eos, pad, row_seeds, temperature, top_p, penalty, *constraint_inputs):
        (batch, prompt_len), n_new = shape_of(ids), shape_of(buffer)[1]
        cache = model.empty_cache(config, batch, prompt_len + n_new, params["model/wpe"].dtype)
        constraint, state = PoemConstraint.from_inputs(*constraint_inputs) if constrained else (None, ())
        return decode(
            step_fn, cache, RowSeededSampler(strategy, row_seeds), ids, mask, buffer,
            max_new_tokens=max_new, min_new_tokens=min_new, eos_token_id=eos, pad_token_id=pad,
            seed=tf.constant(0), temperature=temperature, top_p=top_p, penalty=penalty,
            vocab_size=config.n_vocab, constraint=constraint, constraint_state=state,
        )

    return tf.function(run, jit_compile=True, autograph=False)
