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

from ..decoding import compile_decoder
from ..generation_config import Strategy
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
    """`decoding.compile_decoder` with `seed` a [B] int32 vector of row seeds; `constrained` adds
    `PoemConstraint` (its inputs from `PoemPlan.inputs`). Use with `decoding.generate_bucketed`."""

    def row_seeded(row_seeds):  # the loop's own (scalar) seed is unused: each row has its own
        return RowSeededSampler(strategy, row_seeds), tf.constant(0)

    return compile_decoder(params, config, row_seeded, PoemConstraint.from_inputs if constrained else None)
