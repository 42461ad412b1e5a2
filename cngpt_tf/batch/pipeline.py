"""The Beam pipeline of the three commands:

    files -> Read (numbered lines) -> Reshuffle -> Prepare (tokenize, bucket; bad lines aside)
          -> LengthBatches (deterministic, one bucket each) -> RunInference (our ModelHandler)
          -> + the bad lines' error records -> Records (counters, progress) -> WriteShards

Counters (Beam metrics, namespace `cngpt_tf.batch`): `lines` (records written), `tokens` (scored
or generated), `errors` (records with an `error` field). Each worker logs a line every
`log_every` records it writes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from .batching import LengthBatches
from .handler import BatchModelHandler, failed, worker_setup
from .inputs import read_lines
from .outputs import WriteShards
from .records import Line, output_record

NAMESPACE = "cngpt_tf.batch"
log = logging.getLogger("cngpt_tf.batch")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run needs, checked before the pipeline starts (`command`)."""

    task: object  # a `tasks` object: Score, Generate or Poem
    files: tuple[str, ...]
    output: str
    model: str
    input_format: str = "auto"
    max_line_bytes: int = 1 << 20
    batch_size: int = 16
    num_shards: int = 1
    log_every: int = 1000
    threads: int | None = None  # TensorFlow intra-op threads per worker process; None: its default
    verbose: bool = False  # workers keep TensorFlow's native log


def build(pipeline: beam.Pipeline, plan: Plan):
    """Add the run to `pipeline`; returns the PCollection of the written shard paths."""
    lines = (pipeline
             | "Files" >> beam.Create(plan.files)
             | "Read" >> beam.FlatMap(read_lines, plan.input_format, plan.max_line_bytes)
             | "SpreadLines" >> beam.Reshuffle())
    prepared = (lines | "Prepare" >> beam.ParDo(PrepareFn(plan.model, plan.task, plan.verbose))
                .with_outputs("failed", main="ready"))
    handler = BatchModelHandler(plan.model, plan.task, plan.batch_size, plan.threads, plan.verbose)
    results = (prepared.ready
               | "Batch" >> LengthBatches(plan.batch_size)
               | "Model" >> RunInference(handler.with_no_batching()))
    return ((results, prepared.failed)
            | "Merge" >> beam.Flatten()
            | "Records" >> beam.ParDo(RecordFn(plan.log_every, plan.verbose))
            | "Write" >> WriteShards(plan.output, plan.num_shards))


class PrepareFn(beam.DoFn):
    """Line -> `Prepared` (main output), or its error record (output "failed")."""

    def __init__(self, model: str, task, verbose: bool = False):
        self.model, self.task, self.verbose = model, task, verbose

    def setup(self):
        worker_setup(self.verbose)
        self.tokenizer, self.config = _tokenizer(self.model)

    def process(self, line: Line):
        if line.error is not None:
            yield beam.pvalue.TaggedOutput("failed", failed(line, line.error))
            return
        prepared = self.task.prepare(line, self.tokenizer, self.config)
        if isinstance(prepared, str):
            yield beam.pvalue.TaggedOutput("failed", failed(line, prepared))
        else:
            yield prepared


_tokenizer_lock = threading.Lock()


def _tokenizer(model: str):
    """(tokenizer, config) of the model, once per process."""
    with _tokenizer_lock:
        return _load_tokenizer(model)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model: str):
    from .modelinfo import read_model_info

    info = read_model_info(model)
    return info.tokenizer(), info.config


class RecordFn(beam.DoFn):
    """(line, fields, tokens) -> (line id, sort key, JSON text); counts and logs progress."""

    def __init__(self, log_every: int, verbose: bool = False):
        self.log_every, self.verbose = log_every, verbose
        self.lines = Metrics.counter(NAMESPACE, "lines")
        self.tokens = Metrics.counter(NAMESPACE, "tokens")
        self.errors = Metrics.counter(NAMESPACE, "errors")

    def setup(self):
        worker_setup(self.verbose)

    def process(self, item):
        line, fields, tokens = item
        self.lines.inc()
        self.tokens.inc(tokens)
        if "error" in fields:
            self.errors.inc()
        done = next(_written)
        if self.log_every and done % self.log_every == 0:
            log.info("%d lines written by this worker", done)
        yield line.id, line.sort_key, output_record(line, fields)


_written = itertools.count(1)  # records written by this process (next() is atomic under the GIL)


def counters(result) -> dict[str, int]:
    """The run's `lines`, `tokens` and `errors` counters (0 where the runner reports none)."""
    from apache_beam.metrics.metric import MetricsFilter

    totals = {"lines": 0, "tokens": 0, "errors": 0}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError):  # a runner without metrics queries
        return totals
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals
