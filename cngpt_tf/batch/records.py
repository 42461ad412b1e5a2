"""What flows through the pipeline: an input line, a line ready for the model, and the output record.

A line's id is `<file>:<line number>` (1-based; the record number for TFRecord input), with the file
as the input pattern matched it. It is stable across runs, and everything that must not depend on
how Beam splits the work is derived from it with SHA-256 (never Python's per-process `hash`): the
line's sampling seed (`line_seed`), its output shard (`shard_of`) and its place in a batch (sorted
by `(file, line)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ..generation_config import SEED_MAX

SHOWN_CHARS = 1000  # how much of a line that could not be used an error record still shows


@dataclasses.dataclass(frozen=True)
class Line:
    """One input line. text is None when it could not be read (error says why); shown is what the
    output's `input` field holds then (the start of the line, undecodable bytes replaced)."""

    source: str
    number: int
    text: str | None
    error: str | None = None
    shown: str = ""

    @property
    def id(self) -> str:
        return f"{self.source}:{self.number}"

    @property
    def sort_key(self) -> tuple[str, int]:
        return self.source, self.number

    @property
    def input(self) -> str:
        return self.text if self.text is not None else self.shown


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A line the model can take: its ids ([CLS] first) and its length bucket (the padded length
    its batch runs at; lines of one bucket share one compiled shape)."""

    line: Line
    ids: tuple[int, ...]
    bucket: int


def line_seed(seed: int, line_id: str) -> int:
    """The sampling seed of a line: SHA-256 of `seed` and the id, folded into [0, SEED_MAX]."""
    digest = hashlib.sha256(f"{seed}\n{line_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (SEED_MAX + 1)


def shard_of(line_id: str, num_shards: int) -> int:
    """The output shard of a line: a stable hash of its id (balanced, independent of the workers)."""
    digest = hashlib.sha256(f"shard\n{line_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def group_of(line_id: str, groups: int) -> int:
    """Which batching group of its bucket a line joins (see `batching`)."""
    digest = hashlib.sha256(f"group\n{line_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % groups


def output_record(line: Line, result: dict) -> str:
    """One JSON Lines record: id, input, then the result's fields (or `error`)."""
    return json.dumps({"id": line.id, "input": line.input, **result}, ensure_ascii=False)
