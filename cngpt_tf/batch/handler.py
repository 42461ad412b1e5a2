"""The RunInference `ModelHandler`: one model per worker process, shared by its threads.

Beam keeps what `load_model` returns in `apache_beam.utils.shared` (a per-process cache keyed by
the transform), so each worker process loads the weights once and all its DoFn threads use that
copy. We leave `share_model_across_processes` off on purpose: it keeps one model per machine in a
separate process and sends every batch to it over IPC (`multi_process_shared`), which suits models
too large to load once per worker process; a GPT-2 of this size fits once per process, and each
worker then runs its own copy with no proxy between them.

Batches arrive made (`batching.LengthBatches`), so the handler is used `with_no_batching()`: each
`run_inference` call gets one batch of lines of one length bucket.
"""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from .records import Line, Prepared

log = logging.getLogger("cngpt_tf.batch")


class LoadedModel:
    """What a worker holds: the weights (as the Generator loads them), the tokenizer, and the
    compiled functions, made on first use (thread-safe; XLA then compiles per shape)."""

    def __init__(self, generator):
        self.config, self.tokenizer, self.params = generator.config, generator.tokenizer, generator.params
        self._lock = threading.Lock()
        self._made = {}

    def _once(self, key, make):
        with self._lock:
            if key not in self._made:
                self._made[key] = make()
            return self._made[key]

    def scorer(self):
        from .scoring import Scorer

        return self._once("scorer", lambda: Scorer(self.params, self.config))

    def poem_vocab(self):
        from ..poetry import PoemVocab

        return self._once("poem_vocab", lambda: PoemVocab(self.tokenizer.tokens, self.config.eos_token_id))

    def decode(self, g, prompts: list, seeds: list[int], max_new: int, rows: int, plan=None) -> np.ndarray:
        """New tokens [len(prompts), <= round_up(max_new)] of left-padded prompts, row b sampled
        from seeds[b]; run as `rows` rows (extra rows repeat the first and are dropped)."""
        import tensorflow as tf

        from ..decoding import generate_bucketed, round_up
        from .seeded import compile_row_seeded

        decoder = self._once(("decoder", g.strategy, plan is not None),
                             lambda: compile_row_seeded(self.params, self.config, g.strategy, plan is not None))
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        ids = np.full((rows, width), pad, np.int32)
        mask = np.zeros((rows, width), np.int32)
        for r in range(rows):
            prompt = prompts[r if r < len(prompts) else 0]
            ids[r, width - len(prompt):], mask[r, width - len(prompt):] = prompt, 1
        row_seeds = np.array(seeds + [0] * (rows - len(seeds)), np.int32)
        out = generate_bucketed(
            decoder, tf.constant(ids), tf.constant(mask), max_new, min_new=g.min_new_tokens,
            eos=self.config.eos_token_id, pad=pad, seed=tf.constant(row_seeds), temperature=g.temperature,
            top_p=g.top_p, penalty=g.repetition_penalty,
            constraint=plan.inputs(round_up(max_new)) if plan is not None else ())
        return out.numpy()[: len(prompts), width:]


def worker_setup(verbose: bool = False) -> None:
    """What every worker process does before its first element (idempotent): TensorFlow imported
    with its native start-up lines held back (`cli.quiet_tensorflow`; a worker's stderr is the
    user's terminal on the DirectRunner), its "excessive retracing" warning dropped (our functions
    are traced once per length bucket on purpose), and our progress lines kept at INFO under
    Beam's worker log level."""
    from .. import _keras_env, cli

    if not verbose and "tensorflow" not in sys.modules:
        _keras_env.USER_TF_LOG_LEVEL = None  # inherited from the launcher, not set by the user
        cli.quiet_tensorflow(False)
    logging.getLogger("cngpt_tf.batch").setLevel(logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _Retracing) for f in logger.filters):
        logger.addFilter(_Retracing())


class _Retracing(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


class BatchModelHandler(ModelHandler):
    """task: a `tasks` object; batch_size: lines per model call; threads: TensorFlow's intra-op
    threads in each worker process (None: TensorFlow's default, all cores); verbose: keep
    TensorFlow's native log."""

    def __init__(self, model_path: str, task, batch_size: int, threads: int | None = None, verbose: bool = False):
        super().__init__()
        self.model_path, self.task, self.batch_size, self.threads = model_path, task, batch_size, threads
        self.verbose = verbose

    def load_model(self) -> LoadedModel:
        worker_setup(self.verbose)
        import tensorflow as tf

        from ..generator import Generator
        from .staging import local_model

        if self.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            except RuntimeError:  # TensorFlow already running in this process (e.g. in-memory runs)
                log.debug("intra-op threads already set; --worker_threads ignored here")
        return LoadedModel(Generator.from_pretrained(local_model(self.model_path)))

    def run_inference(self, batch: list[Prepared], model: LoadedModel, inference_args=None):
        """-> (line, result fields, tokens) per line of the batch, in its order."""
        results = self.task.run(model, list(batch), self.batch_size)
        return [(p.line, fields, tokens) for p, (fields, tokens) in zip(batch, results)]

    def get_num_bytes(self, batch) -> int:  # the default pickles the whole batch to measure it
        return sum(4 * len(p.ids) for p in batch)

    def get_metrics_namespace(self) -> str:
        return "cngpt_tf.batch.RunInference"


def failed(line: Line, message: str) -> tuple:
    """The (line, fields, tokens) of a line that never reached the model."""
    return line, {"error": message}, 0
