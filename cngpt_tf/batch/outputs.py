"""OUTPUT: sharded JSON Lines, `OUTPUT-00000-of-000NN.jsonl`, the same bytes on every run.

Beam's WriteToText spreads records over shards at random and in arrival order; here a record's
shard is a hash of its line id (`records.shard_of`) and each shard is sorted by (file, line), so a
rerun, or a retried bundle, writes identical files. Every shard is written, an empty one too, to a
`.incomplete` file first that is then renamed (a reader never sees half a shard). A shard is held
in one worker's memory while it is sorted: `num_shards` keeps them small (`default_num_shards`).
"""

from __future__ import annotations

import math

import apache_beam as beam

from .records import shard_of

SHARD_INPUT_BYTES = 64 << 20  # input bytes per output shard by default
MAX_SHARDS = 10_000


def default_num_shards(input_bytes: int) -> int:
    """One shard per 64 MiB of input, at least 1."""
    return max(1, min(MAX_SHARDS, math.ceil(input_bytes / SHARD_INPUT_BYTES)))


def shard_path(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.jsonl"


class WriteShards(beam.PTransform):
    """PCollection of (line id, sort key, JSON text) -> the shard files; outputs their paths."""

    def __init__(self, prefix: str, num_shards: int):
        super().__init__()
        self.prefix, self.num_shards = prefix, num_shards

    def expand(self, records):
        n = self.num_shards
        keyed = records | "Shard" >> beam.Map(lambda r: (shard_of(r[0], n), (r[1], r[2])))
        every = records.pipeline | "EveryShard" >> beam.Create([(i, None) for i in range(n)])
        return ((keyed, every) | "All" >> beam.Flatten() | "ByShard" >> beam.GroupByKey()
                | "Write" >> beam.Map(write_shard, self.prefix, n))


def write_shard(shard: tuple, prefix: str, num_shards: int) -> str:
    """Write one shard (index, its items), the records sorted by (file, line); return its path."""
    from apache_beam.io.filesystems import FileSystems

    index, items = shard
    lines = sorted(item for item in items if item is not None)
    path = shard_path(prefix, index, num_shards)
    partial = path + ".incomplete"
    with FileSystems.create(partial, mime_type="application/jsonl") as f:
        for _, text in lines:
            f.write(text.encode("utf-8") + b"\n")
    if FileSystems.exists(path):  # a rerun: rename does not replace a file on every filesystem
        FileSystems.delete([path])
    FileSystems.rename([partial], [path])
    return path
