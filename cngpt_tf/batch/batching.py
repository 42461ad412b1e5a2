"""Batches of lines of one length bucket, the same batches on every run.

Why not Beam's `BatchElements` (what RunInference does by default, `batch_elements_kwargs`): its
batches follow bundle boundaries and a batch size tuned from timings, so they differ between runs,
and a row's float32 result depends on the batch it runs in (XLA's products tile by batch size: a
row's logits move by ~6e-6 between batch 1 and batch 4 on the demo model) -- enough to change a
sampled token or the last digits of a perplexity. Beam 2.77's length-bucketed variant
(`batch_length_fn`) has the same timing-dependence and needs a stateful, timer-driven step.

So the batches are made from the data alone: the lines of a bucket are split into groups by a hash
of their id (`records.group_of`; enough groups for ~GROUP_BATCHES full batches each, from the
bucket's line count, so the groups spread over the workers), each group is sorted by (file, line)
and cut into batches of `batch_size`. Only the last batch of a group is partial. A batch's lines
share one padded length (the bucket), so a bucket costs XLA one compile per batch size.
"""

from __future__ import annotations

import math

import apache_beam as beam

from .records import Prepared, group_of

GROUP_BATCHES = 16  # full batches per group: fewer groups fill batches better, more spread the work


class LengthBatches(beam.PTransform):
    """PCollection of `Prepared` -> PCollection of lists of `Prepared` (one bucket per list)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def expand(self, prepared):
        counts = (prepared | "Bucket" >> beam.Map(lambda p: (p.bucket, 1))
                  | "CountPerBucket" >> beam.CombinePerKey(sum))
        return (prepared
                | "KeyByGroup" >> beam.Map(_keyed, self.batch_size, beam.pvalue.AsDict(counts))
                | "ByGroup" >> beam.GroupByKey()
                | "Cut" >> beam.FlatMap(_cut, self.batch_size)
                | "Spread" >> beam.Reshuffle())


def groups_for(count: int, batch_size: int) -> int:
    return max(1, math.ceil(count / (batch_size * GROUP_BATCHES)))


def _keyed(p: Prepared, batch_size: int, counts: dict) -> tuple:
    return (p.bucket, group_of(p.line.id, groups_for(counts[p.bucket], batch_size))), p


def _cut(group: tuple, batch_size: int):
    """A group's lines in (file, line) order, in batches of batch_size."""
    ordered = sorted(group[1], key=lambda p: p.line.sort_key)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]
