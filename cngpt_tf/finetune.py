"""`python -m cngpt_tf.finetune`: fine-tune a converted Chinese GPT-2 with Keras, then export it.

HF's `TFGPT2LMHeadModel` (Keras 2), loaded from a pt2tf OUT_DIR's `tf2/`, is trained with `model.fit`
on a causal-LM loss over a corpus of one document a line, each encoded as the models were trained
(`[CLS] text [SEP]`) and packed end to end into fixed blocks; the last lines are held out for
perplexity. The weights then go back through the one name table to a PyTorch folder, which
`converters.pt2tf` converts and verifies like any release. OUT_DIR then holds:

    checkpoints/   Keras weights + optimizer state after each epoch (`--resume` continues there)
    logs/          TensorBoard: `tensorboard --logdir OUT_DIR/logs`
    pytorch/       pytorch_model.bin, config.json, vocab.txt (GPT2LMHeadModel.from_pretrained)
    converted/     tf1/, tf2/, saved_model/1/, conversion_report.json (as pt2tf writes them)
    finetune_report.json   perplexities, steps, steps/s, this run's loss per step, the strategy

`--batch_size` is the GLOBAL batch: the blocks of one optimizer step over all replicas (GPUs, or
the CPU) of all workers; each of N replicas computes batch_size / N of them (it must divide evenly),
so a step computes the same mean loss and update on any number of devices and machines.

Several machines (`--strategy multiworker`, `tf.distribute.MultiWorkerMirroredStrategy`): one process
per machine runs this same command, each with its own TF_CONFIG (`cngpt_tf.multiworker` says how,
and how on Kubernetes). Every worker builds the same shuffled, globally batched dataset and TF gives
each its slice of every batch (AutoShardPolicy.DATA), so per step the union of the workers' blocks
is the one-process batch. The chief (worker 0) checks and writes OUT_DIR as above; the others write
nothing there (their Keras checkpoint and log copies go to a temp folder of their own, removed when
they end). With --resume the chief restores its checkpoint and sends its weights, optimizer state
and step to every worker. A resumed run (one or many workers) takes up the stream of batches where
the checkpoint left it.

Before training (on the chief) `check_out_dir` refuses an OUT_DIR that would destroy data: one that is, holds or lies
inside anything fine-tuning reads (MODEL_DIR, the tf2/ folder used, each model file, the corpus: real
paths, links resolved), a file, a dangling link, the current folder or one holding it; a non-empty one
without --resume; and with it, one holding anything but FINETUNE_WRITES, or a link anywhere inside, or
a hard link to a file it reads (writes go through both). The corpus must be a regular file of at most
MAX_CORPUS_BYTES: it is read and tokenized whole, in memory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from . import cli, multiworker
from .config import GPT2Config, with_vocab, write_json
from .errors import ConfigError, CorpusError, OutputExistsError
from .formats import names
from .formats.pytorch import write_pytorch
from .formats.registry import detect
from .textfile import read_text

IGNORE_INDEX = -100  # label of positions the loss skips (padding), as in HF
MAX_CORPUS_BYTES = 1 << 30  # 1 GiB: the whole corpus is read, decoded and tokenized in memory
FINETUNE_WRITES = ("checkpoints", "logs", "pytorch", "converted", "finetune_report.json")  # OUT_DIR's entries
# What is read from the tf2/ folder (this module, ChineseTokenizer, HF's from_pretrained).
MODEL_FILES = ("tf_model.h5", "config.json", "generation_config.json", "vocab.txt", "tokenizer_config.json",
               "special_tokens_map.json")

EXAMPLE = """\
example:
  python -m converters.pt2tf --demo demo_out/
  python -m cngpt_tf.finetune demo_out/ corpus.txt ft_out/ --block_size 64 --max_steps 500
  python -m cngpt_tf.finetune demo_out/ corpus.txt ft_out/ --max_steps 1000 --resume   # continue
  # two machines: the same command on each, with its own TF_CONFIG (task index 0 on host0, 1 on host1)
  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}' \
    python -m cngpt_tf.finetune demo_out/ corpus.txt ft_out/ --strategy multiworker --batch_size 16
  # -> ft_out/converted/ is a verified pt2tf OUT_DIR: cngpt_tf.pipeline(..., model="ft_out/converted")
"""


class TextData(NamedTuple):
    train: tf.data.Dataset  # (input_ids, labels), int32 [batch, block]; shuffled, full batches only
    held_out: tf.data.Dataset  # the same, in order; padded positions labelled IGNORE_INDEX


@dataclasses.dataclass
class FinetuneResult:
    perplexity_before: float
    perplexity_after: float
    first_step: int  # the optimizer step this run started at (> 0 when resumed)
    last_step: int
    steps_per_second: float
    losses: list[float]  # this run's loss per step (the global batch's mean)
    strategy: str  # --strategy
    num_workers: int  # processes training together (1 unless multiworker)
    num_replicas: int  # devices over all workers; each computes batch_size / num_replicas blocks a step
    chief: bool  # this process wrote OUT_DIR (False on the other workers of a cluster)
    out_dir: Path
    report: dict | None  # conversion_report.json of OUT_DIR/converted
    model: tf.keras.Model = dataclasses.field(repr=False)


def text_dataset(corpus_path, tokenizer, block_size: int, batch_size: int, shuffle_seed: int = 0,
                 held_out_fraction: float = 0.05) -> TextData:
    """Encode `corpus_path` (one document a line) and pack it into blocks; hold out the last lines."""
    text = _read_corpus(corpus_path)
    # One document per "\n"-terminated line. Not str.splitlines(): it also breaks at U+2028, U+0085
    # and other separators that can sit inside a document of Chinese web text.
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        raise CorpusError(f"{corpus_path}: {'the corpus is empty' if not lines else 'one line'}; need at least 2 "
                          f"non-blank lines (training + held-out)")
    n_held = min(max(1, round(held_out_fraction * len(lines))), len(lines) - 1)
    # One stream of ids, [CLS] doc [SEP] [CLS] doc [SEP] ...: a block may span documents, as in training.
    ids = [np.array(tokenizer.encode(line, add_cls=True, add_sep=True), np.int32) for line in lines]
    train_x, train_y = _pack(np.concatenate(ids[:-n_held]), block_size)
    held_x, held_y = _pack(np.concatenate(ids[-n_held:]), block_size, pad_id=tokenizer.pad_token_id)
    if len(train_x) < batch_size:
        raise CorpusError(f"{corpus_path}: only {len(train_x)} training block(s) of {block_size} tokens; "
                          f"need at least batch_size={batch_size}")
    # Batched at the GLOBAL size. A distribution strategy splits each batch over its replicas; across
    # workers (each builds this same dataset, same seed) DATA sharding gives each its slice of every
    # batch, so one step sees the same blocks on any number of workers. (The default, AUTO, would first
    # try to shard by file, and warn: there are none.)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
             .shuffle(len(train_x), seed=shuffle_seed, reshuffle_each_iteration=True)
             .batch(batch_size, drop_remainder=True)  # fixed shapes: one trace, even splits on replicas
             .prefetch(tf.data.AUTOTUNE)
             .with_options(options))
    held_out = tf.data.Dataset.from_tensor_slices((held_x, held_y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return TextData(train, held_out)


def causal_lm_loss(labels, logits):
    """Mean next-token cross-entropy over labels that are not IGNORE_INDEX.

    labels: int [batch, seq], the token after each input; logits: [batch, seq, vocab]."""
    keep = tf.not_equal(labels, IGNORE_INDEX)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(  # float32 even under mixed precision
        labels=tf.where(keep, labels, 0), logits=tf.cast(logits, tf.float32))
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(nll * keep) / tf.maximum(tf.reduce_sum(keep), 1.0)


def perplexity(model, dataset: tf.data.Dataset) -> float:
    """exp(mean next-token NLL) of `model` (logits out) over every non-ignored label of `dataset`."""

    @tf.function(reduce_retracing=True)  # the last batch may be smaller: at most one more trace
    def nll_sum(inputs, labels):
        out = model(inputs, training=False)
        count = tf.reduce_sum(tf.cast(tf.not_equal(labels, IGNORE_INDEX), tf.float32))
        return causal_lm_loss(labels, getattr(out, "logits", out)) * count, count

    # Summed in float64 on the host: no drift over many batches.
    total, count = np.sum([[float(v) for v in nll_sum(x, y)] for x, y in dataset], axis=0, dtype=np.float64)
    return math.exp(total / count)


def load_model(model_dir):
    """HF `TFGPT2LMHeadModel` (Keras 2) of a pt2tf OUT_DIR or a tf2/ folder."""
    from transformers import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(str(_tf2_folder(Path(model_dir))))
    model.config.use_cache = False  # training and scoring never reuse keys/values: do not return them
    return model


def export(model, config: GPT2Config, model_folder, out_dir) -> dict:
    """Write OUT_DIR/pytorch/ from the Keras weights, then pt2tf it into OUT_DIR/converted/; return the report."""
    from .export.convert import convert

    out_dir, model_folder = Path(out_dir), Path(model_folder)
    # Keras names are "<model name>/transformer/h_._0/...:0"; the name may be suffixed (_1) per instance.
    hf_tf = {w.name.split("/", 1)[1]: w.numpy() for w in model.weights}
    state = names.convert(hf_tf, names.HF_TF, names.PT, config, origin="the fine-tuned Keras model")
    pt_dir = out_dir / "pytorch"
    pt_dir.mkdir(parents=True, exist_ok=True)
    write_pytorch(pt_dir, state)
    write_json(pt_dir / "config.json", config.to_hf_dict())
    for name in ("vocab.txt", "tokenizer_config.json"):  # tokenizer_config keeps do_lower_case
        if (model_folder / name).is_file():
            shutil.copyfile(model_folder / name, pt_dir / name)
    return convert(str(pt_dir), out_dir / "converted", overwrite=True, progress=False)


def finetune(model_dir, corpus, out_dir, *, epochs: int = 1, batch_size: int = 8, block_size: int = 128,
             learning_rate: float = 5e-4, warmup_steps: int = 100, max_steps: int | None = None,
             weight_decay: float = 0.01, held_out_fraction: float = 0.05, resume: bool = False,
             seed: int = 0, strategy: str = "auto", verbose: int = 1, export_model: bool = True) -> FinetuneResult:
    """Fine-tune, print held-out perplexity before/after and steps/s, export (see the module docstring).

    `max_steps` (optimizer steps in all, resumed ones included) overrides `epochs`, as in HF's Trainer;
    `batch_size` is the global batch (split over the GPUs and workers); `strategy` is one of
    `multiworker.STRATEGIES`. multiworker reads TF_CONFIG (ConfigError when it is missing or bad) and
    must come before TensorFlow has run anything in the process (it configures collective ops), as
    in the CLI; a process joins one cluster, once."""
    from .tokenizer import ChineseTokenizer

    if strategy not in multiworker.STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(multiworker.STRATEGIES)}, got {strategy!r}")
    role = multiworker.role_from_env(strategy)  # None: this machine alone
    chief = role is None or role.chief
    out_dir, folder = Path(out_dir), _tf2_folder(Path(model_dir))
    config, _ = with_vocab(GPT2Config.from_file(folder / "config.json"), folder / "vocab.txt")
    if block_size > config.n_ctx:
        raise ConfigError(f"block_size={block_size} exceeds the model's n_positions={config.n_ctx}")
    gpus = tf.config.list_physical_devices("GPU")
    distribute = multiworker.make_strategy(strategy, gpus)  # before any TF op (multiworker needs that)
    # The chief checks OUT_DIR once in the cluster: its refusal then ends the other workers (TF notices
    # the chief is gone), where before joining it would leave them waiting for it. The others never write it.
    if chief:
        check_out_dir(out_dir, resume, [model_dir, folder, *(folder / name for name in MODEL_FILES), corpus])
    replicas = distribute.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"batch_size={batch_size} (the global batch) does not split evenly over {replicas} "
                          "replicas; give a multiple")
    ckpt_dir = out_dir / "checkpoints"
    # Only the chief reads OUT_DIR; it sends what it restored to the other workers (below).
    latest = tf.train.latest_checkpoint(str(ckpt_dir)) if chief and ckpt_dir.is_dir() else None  # only with resume
    # The shuffle order depends on `seed` alone: the dataset is made with TF's global seed unset, as in a
    # fresh process (how the shipped demo was trained), whatever ran before in this one.
    tf.random.set_seed(None)
    data = text_dataset(corpus, ChineseTokenizer.from_pretrained(folder), block_size, batch_size, seed,
                        held_out_fraction)
    tf.keras.utils.set_random_seed(seed)  # dropout and the rest repeat run to run
    batches = int(data.train.cardinality())  # full batches in one pass over the training blocks
    total = max_steps or epochs * batches
    per_epoch = min(batches, total)  # a Keras epoch; checkpoints are written at its end

    policy = tf.keras.mixed_precision.global_policy()
    # float16 compute only pays (and is only exact enough to be worth it) on GPU tensor cores.
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if gpus else "float32")
    try:
        with distribute.scope():  # variables (model and optimizer) must be created under the strategy
            model = load_model(folder)
            # compile() wraps the optimizer in a LossScaleOptimizer when the model is mixed_float16.
            model.compile(optimizer=_optimizer(learning_rate, warmup_steps, total, weight_decay), loss=causal_lm_loss)
            # Each replica's loss metric is already the mean over the global batch (Keras syncs it);
            # Keras 2's default ("auto" = "sum" off TPU) would log it times the number of replicas.
            model.distribute_reduction_method = "first"
            getattr(model.optimizer, "inner_optimizer", model.optimizer).build(model.trainable_variables)
            if latest:  # slots exist now (built above), so every optimizer value is restored at once
                model.load_weights(latest).assert_existing_objects_matched()
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    if role:  # every worker loaded its own MODEL_DIR; all now take the chief's weights, optimizer and step
        multiworker.broadcast_from_chief(distribute, model)
    first = int(model.optimizer.iterations.numpy())
    who = f"{role.task_type} {role.index} of {role.num_workers}: " if role else ""
    if latest:
        print(f"{who}resuming from {latest} at step {first}")
    elif first:  # another worker of a cluster: the chief restored it
        print(f"{who}resuming from the chief's checkpoint at step {first}")
    else:
        print(f"{who}training from {folder}")
    before = perplexity(model, data.held_out)
    print(f"held-out perplexity before: {before:.2f}")
    progress = _Progress(total)
    with multiworker.worker_out_dir(out_dir, role) as write_dir:  # a temp folder on the other workers
        if first < total:  # else the checkpoint is already at max_steps: only score and export
            callbacks = [
                tf.keras.callbacks.ModelCheckpoint(str(write_dir / "checkpoints" / "ckpt-{epoch:04d}"),
                                                   save_weights_only=True),
                tf.keras.callbacks.TensorBoard(str(write_dir / "logs"), update_freq=10, profile_batch=0), progress]
            # skip(first): a resumed run takes up the stream of batches where the checkpointed run left it.
            model.fit(data.train.repeat().skip(first), epochs=math.ceil(total / per_epoch),
                      steps_per_epoch=per_epoch, initial_epoch=first // per_epoch, callbacks=callbacks,
                      verbose=verbose)
    last = int(model.optimizer.iterations.numpy())
    after = perplexity(model, data.held_out)
    print(f"held-out perplexity after: {after:.2f} ({last - first} steps, {progress.steps_per_second():.2f} steps/s)")
    report = export(model, config, folder, out_dir) if export_model and chief else None
    result = FinetuneResult(before, after, first, last, progress.steps_per_second(), progress.losses, strategy,
                            role.num_workers if role else 1, replicas, chief, out_dir, report, model)
    if chief:
        write_json(out_dir / "finetune_report.json",
                   {k: v for k, v in vars(result).items() if isinstance(v, (int, float, str, list))})
    if role:  # every worker returns once the chief has written OUT_DIR (if the chief fails, TF ends the others)
        multiworker.barrier(distribute)
    return result


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m cngpt_tf.finetune",
        "Fine-tune a converted Chinese GPT-2 with Keras; export PyTorch and verified TF formats.", EXAMPLE)
    parser.add_argument("model_dir", help="a pt2tf OUT_DIR (its tf2/ is used) or a tf2/ folder")
    parser.add_argument("corpus", help="UTF-8 text file, one document a line")
    parser.add_argument("out_dir", help="checkpoints/, logs/, pytorch/, converted/ are written here")
    for flag, kind, default, text in (
        ("--epochs", int, 1, "passes over the training blocks"),
        ("--batch_size", int, 8, ("the GLOBAL batch: blocks per step over all GPUs and workers (each of N "
                                  "replicas computes batch_size/N)")),
        ("--block_size", int, 128, "tokens per block, at most the model's n_positions"),
        ("--learning_rate", float, 5e-4, "peak learning rate of AdamW"),
        ("--warmup_steps", int, 100, "linear warm-up steps, then cosine decay to 0"),
        ("--max_steps", int, None, "stop after this many optimizer steps in all (overrides --epochs)"),
        ("--weight_decay", float, 0.01, "AdamW decoupled weight decay (not on biases and LayerNorms)"),
        ("--held_out_fraction", float, 0.05, "fraction of lines, from the end, held out for perplexity"),
        ("--seed", int, 0, "shuffle and dropout seed"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT_DIR")
    parser.add_argument("--no_export", dest="export_model", action="store_false",
                        help="train and checkpoint only: no pytorch/ or converted/ (a later --resume run exports)")
    parser.add_argument("--strategy", choices=multiworker.STRATEGIES, default="auto",
                        help="auto: this machine (MirroredStrategy over several GPUs); mirrored: always "
                             "MirroredStrategy; multiworker: MultiWorkerMirroredStrategy, one process per "
                             "machine, each with its TF_CONFIG (default %(default)s)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "block_size", "learning_rate", "max_steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.warmup_steps < 0 or not 0 < args.held_out_fraction < 1:
        parser.error("--warmup_steps must be >= 0 and --held_out_fraction between 0 and 1")
    cli.setup_logging(args.verbose)

    def run():
        options = {k: v for k, v in vars(args).items() if k not in ("model_dir", "corpus", "out_dir", "quiet")}
        options["verbose"] = 0 if args.quiet else 1  # Keras' progress bar, not our -v (logging)
        result = finetune(args.model_dir, args.corpus, args.out_dir, **options)
        if not result.chief:
            print("done (the chief wrote OUT_DIR)")
        else:
            print(f"done: {result.out_dir / 'converted' if result.report else result.out_dir}")

    return cli.run_main(run)


def check_out_dir(out_dir, resume: bool, reads) -> Path:
    """Refuse an OUT_DIR fine-tuning could destroy data in (see the module docstring); `reads`: every
    path it reads. Return OUT_DIR's real path. Raises OutputExistsError."""
    from .export.output import check_output

    # OUT_DIR is added to (--resume) and its converted/ replaced: never where anything read lies.
    real = check_output(out_dir, resume, FINETUNE_WRITES, reads, flag="--resume", tool="a fine-tune")
    if not real.is_dir():
        return real
    read_files = set()
    for path in reads:
        try:
            st = os.stat(path)
        except OSError:
            continue
        read_files.add((st.st_dev, st.st_ino))
    for root, dirs, files in os.walk(real):  # links are listed, not followed
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise OutputExistsError(f"{out_dir}: {path.relative_to(real)} is a symbolic link, which a "
                                        "fine-tune does not write (it would write through it)")
            if (st.st_dev, st.st_ino) in read_files:
                raise OutputExistsError(f"{out_dir}: {path.relative_to(real)} is a hard link to a file the "
                                        "fine-tune reads")
    return real


def _read_corpus(path) -> str:
    """The corpus' text: a regular UTF-8 file of at most MAX_CORPUS_BYTES, newlines as in text mode."""
    return read_text(path, MAX_CORPUS_BYTES, CorpusError, "corpus")


def _pack(stream: np.ndarray, block_size: int, pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into (inputs, labels) [n, T]: block i is stream[i*T : i*T + T + 1], shifted by one.

    Neighbours share one token, so every next-token pair of the stream is learned exactly once.
    Without `pad_id` an incomplete tail is dropped, with it padded and labelled IGNORE_INDEX.
    """
    pairs = len(stream) - 1
    n = pairs // block_size if pad_id is None else -(-pairs // block_size)  # round down / up
    tail = max(n * block_size - pairs, 0)  # > 0 only when padding
    labels = np.concatenate([stream, np.full(tail, IGNORE_INDEX, np.int32)])
    stream = np.concatenate([stream, np.full(tail, pad_id or 0, np.int32)])
    return stream[: n * block_size].reshape(n, block_size), labels[1: n * block_size + 1].reshape(n, block_size)


def _tf2_folder(path: Path) -> Path:
    """The tf2/ folder of a pt2tf OUT_DIR, or `path` itself (`registry.detect`; SourceError otherwise)."""
    return detect(path, accept=("tf2",))[1]


def _optimizer(learning_rate: float, warmup: int, total: int, weight_decay: float):
    # Linear warm-up from 0 to `learning_rate`, then cosine decay to 0 at step `total`.
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        0.0, max(total - warmup, 1), warmup_target=learning_rate, warmup_steps=warmup)
    optimizer = tf.keras.optimizers.AdamW(schedule, weight_decay=weight_decay, beta_2=0.98, epsilon=1e-6,
                                          global_clipnorm=1.0)  # one bad batch cannot blow the weights up
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])  # LayerNorms and biases
    return optimizer


class _Progress(tf.keras.callbacks.Callback):
    """Records each step's loss and time; stops training once the optimizer has made `total` steps."""

    def __init__(self, total: int):
        super().__init__()
        self.total, self.losses, self.times, self._mean = total, [], [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports the running mean m_k of the epoch's k = batch + 1 losses; batches are equal-sized,
        # so this step's own loss is k * m_k - (k - 1) * m_(k-1).
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * (self._mean if batch else 0.0))
        self._mean = mean
        self.times.append(time.perf_counter())
        if int(self.model.optimizer.iterations.numpy()) >= self.total:
            self.model.stop_training = True

    def steps_per_second(self) -> float:  # from the first step's end: that step includes tracing the graph
        return (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0


if __name__ == "__main__":
    sys.exit(main())
