"""Training on several machines: fine-tuning's `--strategy` and what a worker of a cluster needs.

`--strategy multiworker` runs `tf.distribute.MultiWorkerMirroredStrategy`: one process per machine
(a "worker"), all started with the same command line and each with its own `TF_CONFIG`, TensorFlow's
standard description of the cluster and of the process' place in it. On two machines:

    # on host0 (the chief)                               # on host1: the same, with "index": 1
    export TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
    python -m cngpt_tf.finetune MODEL_DIR CORPUS OUT_DIR --strategy multiworker --batch_size 64

MODEL_DIR and CORPUS must hold the same files on every machine (a shared disk, or copies); the
workers reach each other on the listed ports (gRPC). The chief is worker 0, or the one task of a
"chief" job when the cluster lists one (TF's rule). Each step, every replica (a GPU, or the CPU) of
every worker computes the gradient of its share of the global batch and the gradients are
all-reduced, so all workers hold the same weights. What each process writes: the chief, OUT_DIR
(checkpoints/, logs/, pytorch/, converted/, finetune_report.json); every other worker, nothing
there: the checkpoint and log copies Keras has every worker save go into a temp folder of its own,
`cngpt-finetune-worker<i>-*` in the system temp folder, removed when it ends (`worker_out_dir`).
Before training the chief's weights and optimizer state, a restored checkpoint's included, are
copied to every worker (`broadcast_from_chief`): all start equal and at the chief's step, and
--resume needs OUT_DIR on the chief only. Every worker returns once the chief has written OUT_DIR;
a worker that fails (the chief refusing OUT_DIR included) ends the others: TF's coordination service
notices within seconds and aborts their collectives.

Kubernetes: a StatefulSet of N pods (or one Job per worker) behind a headless Service, each pod
building TF_CONFIG from its ordinal, e.g. `"index": ${HOSTNAME##*-}` with the workers
`NAME-0.SERVICE:2222` ... `NAME-(N-1).SERVICE:2222`; OUT_DIR on a volume the chief (pod 0) keeps.
TPU pods train with `TPUStrategy`, which this command does not offer. Only two CPU processes on one
machine have been run (tests/cngpt_tf/test_finetune_multiworker.py); no cluster, GPU or TPU run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError, short_repr

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "mirrored", "multiworker")
JOBS = ("chief", "worker")  # the jobs MultiWorkerMirroredStrategy trains with
EXAMPLE_TF_CONFIG = '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'


class Role(NamedTuple):
    """This process' place in the cluster TF_CONFIG describes."""

    task_type: str  # "chief" or "worker"
    index: int  # within its job
    num_workers: int  # processes in the cluster, the chief included
    chief: bool  # writes OUT_DIR


def role_from_tf_config(text: str | None) -> Role:
    """Check a TF_CONFIG value (TF's format: a cluster of chief/worker jobs, each a list of
    "host:port", and this task's type and index) and return the role it gives. Raises ConfigError."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"TF_CONFIG {why}; --strategy multiworker needs one per process, e.g. {EXAMPLE_TF_CONFIG}")

    if not text or not text.strip():
        raise bad("is not set")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise bad(f"is not JSON ({str(e)[:100]})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(cluster.get("worker"), list) or not cluster["worker"]:
        raise bad('has no "cluster" with a non-empty "worker" list')
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise bad(f"names job {short_repr(job)}: MultiWorkerMirroredStrategy trains with chief and worker only")
        if not isinstance(addresses, list) or not all(_is_address(a) for a in addresses):
            raise bad(f'cluster "{job}" is not a list of "host:port" strings: {short_repr(addresses)}')
    if len(cluster.get("chief", [None])) != 1:
        raise bad('cluster "chief" must list exactly one address')
    task = config.get("task")
    task_type = task.get("type") if isinstance(task, dict) else None
    index = task.get("index") if isinstance(task, dict) else None
    if task_type not in cluster:
        raise bad(f'"task" type {short_repr(task_type)} is not a job of the cluster ({", ".join(cluster)})')
    if index is None:
        raise bad('"task" has no "index"')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise bad(f'"task" index {short_repr(index)} is out of range: "{task_type}" has '
                  f'{len(cluster[task_type])} address(es)')
    chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return Role(task_type, index, sum(len(a) for a in cluster.values()), chief)


def _is_address(value) -> bool:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    return bool(host) and port.isdigit()


def role_from_env(strategy: str) -> Role | None:
    """The role TF_CONFIG gives with --strategy multiworker (ConfigError when it is missing or
    malformed); None with the others, which train on this machine only, whatever TF_CONFIG says."""
    text = os.environ.get("TF_CONFIG")
    if strategy == "multiworker":
        return role_from_tf_config(text)
    if text and text.strip():
        log.warning("TF_CONFIG is set but --strategy is %s: training on this machine only "
                    "(pass --strategy multiworker to join the cluster)", strategy)
    return None


def make_strategy(strategy: str, gpus: list):
    """The tf.distribute strategy named by --strategy. `auto`: MirroredStrategy over the GPUs when
    there are several, else the default (one device); `mirrored`: MirroredStrategy over this
    machine's GPUs (or its CPU); `multiworker`: MultiWorkerMirroredStrategy from TF_CONFIG. That one
    must be made before TensorFlow runs any op (it configures collective ops at program start)."""
    import tensorflow as tf

    if strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG; starts this worker's gRPC server
    if strategy == "mirrored" or len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def broadcast_from_chief(strategy, root) -> int:
    """Set every variable `root` tracks (what its checkpoint holds: for a compiled Keras model the
    weights and the optimizer's state and step) to the chief's value on every replica of every worker.
    Each worker loaded the model from its own files and only the chief restored a checkpoint, so this
    is what makes them start equal. All workers must call it (a collective). Returns the count."""
    import tensorflow as tf

    seen, variables = set(), []
    for item in tf.train.TrackableView(root).descendants():
        if isinstance(item, tf.Variable) and id(item) not in seen:
            seen.add(id(item))
            variables.append(item)

    # Integers (step counters) travel as float64: exact below 2**53, and every collective sums it.
    wide = [tf.float64 if v.dtype.is_integer else v.dtype for v in variables]
    groups = {dtype: [i for i, w in enumerate(wide) if w == dtype] for dtype in set(wide)}  # one all-reduce each

    @tf.function
    def chief_values():  # per replica; global replica 0 is the chief's first device (GPU, or the CPU)
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        values = [tf.cast(v, w) for v, w in zip(variables, wide)]
        own = [tf.where(first, x, tf.zeros_like(x)) for x in values]  # the chief's values, zeros elsewhere
        return {dtype.name: context.all_reduce(tf.distribute.ReduceOp.SUM, [own[i] for i in indices])
                for dtype, indices in groups.items()}

    summed = strategy.experimental_local_results(strategy.run(chief_values))[0]  # equal on every replica
    for dtype, indices in groups.items():
        for i, value in zip(indices, summed[dtype.name]):
            variables[i].assign(tf.cast(value, variables[i].dtype))
    return len(variables)


def barrier(strategy) -> None:
    """Return once every worker has called this: an all-reduce of one number."""
    import tensorflow as tf

    @tf.function
    def one():
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0))

    strategy.experimental_local_results(strategy.run(one))[0].numpy()  # .numpy(): wait for it


@contextlib.contextmanager
def worker_out_dir(out_dir: Path, role: Role | None) -> Iterator[Path]:
    """Where this process writes its checkpoints and logs: OUT_DIR on the chief (and without a
    cluster); on another worker a temp folder of its own, removed on the way out, so OUT_DIR (maybe
    the same folder, on a shared disk) is written by the chief alone."""
    if role is None or role.chief:
        yield out_dir
        return
    folder = Path(tempfile.mkdtemp(prefix=f"cngpt-finetune-{role.task_type}{role.index}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
