"""Accuracy of reduced-precision weights against cngpt_tf's fp32 on the same weights: cngpt_tf's
bf16 / int8 panels, and the peers' reduced precisions beside them.

Model A is the trained demo release (`cngpt_tf/data`: GPT-2, 4 layers, n_embd 256, vocab 8064; its
fp16-stored weights upcast by the reader). Every row is compared with cngpt_tf fp32 on it:
  max rel logits err   max |dlogit| / max |logit| over every position of the prompts
  greedy = fp32        runs whose 64 new greedy tokens equal cngpt_tf fp32's (forced to full length:
                       EOS suppressed, as each peer does it), and the mean tokens before a run's first
                       difference (64 for an identical run)
  perplexity           over the held-out text (the last 5% of tests/data/tang_regular_poems.tsv, as
                       scripts/train_demo.py holds it out) in blocks of n_ctx tokens, from each engine's
                       own logits; "vs fp32" is its relative change, judged against the bars: bf16
                       within 0.2%, int8 (any engine's 8-bit weights) within 1%.
Peers (benchmarks/peers.py's loaders, run in a venv that has them; a peer that cannot run gets a row
saying why): HF PyTorch fp32 (one more fp32 reference), llama.cpp F32 / BF16 / Q8_0 (a GGUF written
by benchmarks/peers_gguf.py), ONNX Runtime fp32 / dynamic int8 (optimum), CTranslate2 float32 /
int8_float32. --shape12 adds cngpt_tf's modes on the random GPT-12L-CN shape (no perplexity there).

    /tmp/peersvenv/bin/python benchmarks/accuracy.py               # all rows
    python benchmarks/accuracy.py --only cngpt --no-shape12        # cngpt_tf's rows only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# benchmarks.peers sets the environment (TF, OMP_WAIT_POLICY=PASSIVE, offline hub) before anything starts
from benchmarks.peers import Setup, attempt, select, versions  # noqa: E402
from benchmarks.generation import NEW_TOKENS, PROMPT_LEN, SHAPE, cpu_name  # noqa: E402

BARS = {"bf16": 0.002, "int8": 0.01}  # |perplexity / fp32's - 1| a precision may reach
LOGITS_BATCH = 16  # held-out blocks per logits call
CLS = 101  # [CLS]: the demo's vocab is a prefix of BERT's, as GPT-12L-CN's is


# ----- pure parts (tests/benchmarks/test_accuracy.py) -------------------------------------------------

def token_log_probs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log p(ids[:, t + 1] | ids[:, :t + 1]) from logits [B, T, V] of ids [B, T]: [B, T - 1], float64
    (a float32 log-softmax over 8064 words would cost the digits the bars are about)."""
    x = np.asarray(logits, np.float64)[:, :-1]
    top = x.max(-1, keepdims=True)
    log_norm = top[..., 0] + np.log(np.exp(x - top).sum(-1))
    return np.take_along_axis(x, ids[:, 1:, None].astype(np.int64), -1)[..., 0] - log_norm


def perplexity(log_probs: np.ndarray) -> float:
    """exp of the mean negative log-likelihood per predicted token."""
    return float(np.exp(-np.mean(log_probs)))


def relative_error(out: np.ndarray, reference: np.ndarray) -> float:
    """max |out - reference| / max |reference|: one number per engine, on the logits' own scale."""
    out, reference = np.asarray(out, np.float64), np.asarray(reference, np.float64)
    if out.shape != reference.shape:
        raise ValueError(f"logits of shape {out.shape}, not {reference.shape}")
    return float(np.abs(out - reference).max() / np.abs(reference).max())


def tokens_before_difference(tokens: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per run (row), the new tokens before its first difference from the reference's: the row's
    length where it has none. A run that parted once stays parted, so later matches do not count."""
    tokens, reference = np.asarray(tokens), np.asarray(reference)
    if tokens.shape != reference.shape:
        raise ValueError(f"greedy tokens of shape {tokens.shape}, not {reference.shape}")
    same = tokens == reference
    return np.where(same.all(1), same.shape[1], np.argmin(same, axis=1))


def verdict(precision: str, change: float | None) -> str:
    """PASS / FAIL against the precision's perplexity bar; "—" where none applies (fp32, no perplexity)."""
    bar = BARS.get(precision)
    if bar is None or change is None:
        return "—"
    return "PASS" if abs(change) <= bar else "FAIL"


def compare(result: dict, reference: dict) -> dict:
    """A row's numbers from an engine's logits / tokens / perplexity against the reference's."""
    before = tokens_before_difference(result["tokens"], reference["tokens"])
    ppl = result["ppl"]
    change = None if ppl is None else ppl / reference["ppl"] - 1
    return dict(err=relative_error(result["logits"], reference["logits"]), identical=int((before == len(
        result["tokens"][0])).sum()), runs=len(before), before=float(before.mean()), ppl=ppl, change=change)


def format_table(rows: list[dict]) -> str:
    """The markdown table; a failed row shows dashes and its reason in "note"."""
    header = ["model", "engine", "weights", "max rel logits err", "greedy = fp32", "tokens before a difference",
              "perplexity", "vs fp32", "bar", "note"]
    cells = [header]
    for r in rows:
        numbers = ["—"] * 5
        if "err" in r:
            numbers = [f"{r['err']:.2e}", f"{r['identical']}/{r['runs']}", f"{r['before']:.1f}",
                       "—" if r["ppl"] is None else f"{r['ppl']:.3f}",
                       "—" if r["change"] is None else f"{r['change']:+.3%}"]
        cells.append([r["model"], r["engine"], r["weights"], *numbers,
                      verdict(r["precision"], r.get("change")), r.get("note", "")])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def footer(rows: list[dict]) -> str:
    judged = [verdict(r["precision"], r.get("change")) for r in rows]
    judged = [v for v in judged if v != "—"]
    return (f"bars: bf16 perplexity within {BARS['bf16']:.1%} of fp32, int8 within {BARS['int8']:.0%} "
            f"(|perplexity / cngpt_tf fp32's - 1|; fp32 rows have none): {judged.count('PASS')}/{len(judged)} PASS")


# ----- the models ------------------------------------------------------------------------------------

def demo_model():
    """(config, PyTorch-named weights, tokenizer) of the trained demo release."""
    from cngpt_tf.config import GPT2Config, with_vocab
    from cngpt_tf.demo import demo_release
    from cngpt_tf.formats.pytorch import read_pytorch
    from cngpt_tf.formats.source import open_source
    from cngpt_tf.tokenizer import ChineseTokenizer

    with open_source(demo_release(), progress=False) as files:
        config, _ = with_vocab(GPT2Config.from_file(files.config), files.vocab)
        return config, read_pytorch(files.weights), ChineseTokenizer.from_pretrained(files.folder)


def held_out_blocks(tokenizer, n_ctx: int, limit: int | None) -> np.ndarray:
    """The last 5% of the Tang poems as the demo's held-out text (`title：poem`, [CLS] .. [SEP] each),
    packed end to end into blocks of n_ctx ids: [blocks, n_ctx]."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "tests", "data", "tang_regular_poems.tsv"), encoding="utf-8") as f:
        rows = [r for r in f.read().split("\n") if r]
    vocab = set(tokenizer.tokens)
    lines = []
    for row in rows[-round(0.05 * len(rows)):]:
        title, _author, poem = row.split("\t")
        lines.append(f"{title}：{poem}" if set(title) <= vocab else poem)
    ids = np.concatenate([tokenizer.encode(line, add_sep=True) for line in lines])
    blocks = len(ids) // n_ctx
    return ids[: blocks * n_ctx].reshape(blocks, n_ctx)[:limit].astype(np.int32)


# ----- engines: open() yields (tokens(prompts) -> [N, NEW_TOKENS], logits(ids [B, T]) -> [B, T, V]) -----

@dataclass
class Engine:
    key: str  # --only's name ("cngpt-int8-g32", "llama-q8_0"); a family prefix picks all its rows
    engine: str
    weights: str
    precision: str  # "fp32" | "bf16" | "int8": the bar it is judged by
    open: Callable


def logits_fn(packed: dict, config):
    import tensorflow as tf

    from cngpt_tf import model

    params = {k: tf.constant(v) for k, v in packed.items()}
    return tf.function(lambda ids: model.logits(params, config, ids, tf.ones_like(ids)), jit_compile=True)


@contextlib.contextmanager
def cngpt_session(config, weights, mode: str, group: int | None):
    """cngpt_tf's panels in `mode` as the Generator runs them (benchmarks/precision.py's runner). The
    int8 scale block is a module global read when packing and when a function traces: it stays set
    until the engine is measured, every trace included."""
    from benchmarks.precision import greedy_runner, pack
    from cngpt_tf import quantize

    saved = quantize.INT8_GROUP
    quantize.INT8_GROUP = group or saved
    try:
        packed, _ = pack(weights, config, mode)
        run = greedy_runner(packed, config, eos=config.eos_token_id)  # EOS suppressed, as the peers do
        logits = logits_fn(packed, config)
        yield (lambda prompts: run(prompts)[:, prompts.shape[1]:]), (lambda ids: logits(ids).numpy())
    finally:
        quantize.INT8_GROUP = saved


def cngpt_engines(config, weights, groups: list[int]) -> list[Engine]:
    variants = [("fp32", None), ("bf16", None), ("int8", None)] + [("int8", g) for g in groups]
    return [Engine("cngpt" if mode == "fp32" else f"cngpt-{mode}" + (f"-g{g}" if g else ""), "cngpt_tf",
                   mode + (f", blocks of {g}" if g else ""), mode, partial(cngpt_session, config, weights, mode, g))
            for mode, g in variants]


@contextlib.contextmanager
def peer_session(contender, setup: Setup):
    """A benchmarks/peers.py contender: its files written, loaded, its generate and its logits."""
    contender.prepare(setup)
    contender.load()
    yield contender.generate, partial(peer_logits, contender)


def peer_logits(contender, ids: np.ndarray) -> np.ndarray:
    """Each engine's own logits of every position: llama.cpp's context (all positions flagged),
    CTranslate2's forward_batch, the HF model's forward (PyTorch, or optimum's ONNX Runtime one)."""
    from benchmarks.peers import CTranslate2, LlamaCpp

    if isinstance(contender, LlamaCpp):
        return contender.runner.logits(ids)
    if isinstance(contender, CTranslate2):
        return np.array(contender.gen.forward_batch(ids.tolist()))  # a copy: the StorageView goes
    import torch

    t = torch.from_numpy(ids.astype(np.int64))
    with torch.inference_mode():
        return contender.model(input_ids=t, attention_mask=torch.ones_like(t)).logits.float().numpy()


def peer_engines(setup: Setup) -> list[Engine]:
    from benchmarks.peers import CTranslate2, LlamaCpp, OnnxRuntime, Torch

    peers = [(Torch(), "float32", "fp32"), (LlamaCpp(), "F32", "fp32"), (LlamaCpp("bf16"), "BF16", "bf16"),
             (LlamaCpp("q8_0"), "Q8_0", "int8"), (OnnxRuntime(), "float32", "fp32"),
             (OnnxRuntime("int8"), "dynamic int8 (per channel)", "int8"), (CTranslate2(), "float32", "fp32"),
             (CTranslate2("int8"), "int8_float32", "int8")]
    return [Engine(c.key, c.name, label, precision, partial(peer_session, c, setup)) for c, label, precision in peers]


# ----- the run ---------------------------------------------------------------------------------------

def measure(engine: Engine, prompts: np.ndarray, blocks: np.ndarray | None) -> dict:
    """An engine's logits of the prompts, its greedy tokens after them, its held-out perplexity."""
    with engine.open() as (tokens, logits):
        out = dict(logits=logits(prompts), tokens=tokens(prompts), ppl=None)
        if blocks is not None:
            batches = [blocks[i:i + LOGITS_BATCH] for i in range(0, len(blocks), LOGITS_BATCH)]
            out["ppl"] = perplexity(np.concatenate([token_log_probs(logits(b), b) for b in batches]))
    return out


def model_rows(model: str, engines: list[Engine], prompts: np.ndarray, blocks) -> list[dict]:
    """One row per engine, the first (cngpt_tf fp32) the reference; a failing engine's row says why."""
    rows, reference = [], None
    for engine in engines:
        start = time.perf_counter()
        if reference is None:  # without the reference there is nothing to compare: its failure ends the run
            reference = measure(engine, prompts, blocks)
            numbers, why = compare(reference, reference), None
        else:
            numbers, why = attempt(measure_against, engine, prompts, blocks, reference)
        rows.append(dict(model=model, engine=engine.engine, weights=engine.weights, precision=engine.precision,
                         **(numbers or {}), note=why or ""))
        print(f"  {model} / {engine.key}: {why or 'done'} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    return rows


def measure_against(engine: Engine, prompts: np.ndarray, blocks, reference: dict) -> dict:
    return compare(measure(engine, prompts, blocks), reference)


def demo_rows(args, workdir: Path) -> list[dict]:
    config, weights, tok = demo_model()
    blocks = held_out_blocks(tok, config.n_ctx, args.ppl_blocks)
    prompts = blocks[: args.prompts, :PROMPT_LEN].copy()
    prompts[:, 0] = CLS  # each a prompt of its own, as a poem starts
    setup = Setup(argparse.Namespace(threads=args.threads, new_tokens=NEW_TOKENS, batches=[len(prompts)],
                                     llama_amx=False), workdir, config, weights)
    engines = cngpt_engines(config, weights, args.groups) + peer_engines(setup)
    print(f"model A: the demo release ({config.n_layer} layers, n_embd {config.n_embd}, {config.n_head} heads, "
          f"vocab {config.n_vocab}); {len(blocks)} held-out blocks of {config.n_ctx} tokens", file=sys.stderr)
    return model_rows("demo (trained, 4 layers)", chosen(engines, args.only), prompts, blocks)


def shape12_rows(args) -> list[dict]:
    from cngpt_tf.config import GPT2Config
    from cngpt_tf.demo import demo_weights

    config = GPT2Config(**SHAPE)
    prompts = np.random.RandomState(0).randint(200, 21000, size=(args.prompts, PROMPT_LEN)).astype(np.int32)
    prompts[:, 0] = CLS
    engines = chosen(cngpt_engines(config, demo_weights(config, seed=0), []), args.only)
    if len(engines) == 1:  # --only named none of its engines: the reference alone would say nothing
        return []
    return model_rows("GPT-12L-CN shape (random)", engines, prompts, None)


def chosen(engines: list[Engine], only: list[str] | None) -> list[Engine]:
    """--only's engines (a key, or a family: "llama" picks "llama-q8_0" too; main checks the names), the
    reference (cngpt_tf fp32, first) always among them."""
    def named(key: str) -> bool:
        return not only or any(key == o or key.startswith(o + "-") for o in only)

    return [e for i, e in enumerate(engines) if i == 0 or named(e.key)]


def all_keys(groups: list[int]) -> list[str]:
    """Every row's --only key, without loading a model."""
    return [e.key for e in cngpt_engines(None, None, groups) + peer_engines(None)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="greedy runs (and logits probes) per row")
    parser.add_argument("--ppl-blocks", type=int, help="held-out blocks for perplexity (default: all)")
    parser.add_argument("--groups", type=int, nargs="*", default=[32, 256, 3072],
                        help="other int8 scale blocks for cngpt_tf (3072 or more: one scale per column)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="rows by key or family: cngpt[-bf16/-int8[-gN]], torch, llama[-bf16/-q8_0], "
                             "ort[-int8], ct2[-int8]; cngpt_tf fp32, the reference, always runs")
    parser.add_argument("--shape12", action=argparse.BooleanOptionalAction, default=True,
                        help="also cngpt_tf's modes on the random GPT-12L-CN shape")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    try:
        select(all_keys(args.groups), args.only)
    except ValueError as e:
        parser.error(str(e))

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each engine traces its own functions: no retracing notes
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="accuracy_"))
    try:
        rows = demo_rows(args, workdir)
        rows += shape12_rows(args) if args.shape12 else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads; {versions()}")
    print(format_table(rows))
    from cngpt_tf import quantize

    print(f"greedy: {args.prompts} prompts of {PROMPT_LEN} tokens, {NEW_TOKENS} new tokens each, EOS suppressed; "
          f"logits error over every position of those prompts; cngpt_tf int8: a scale per {quantize.INT8_GROUP} "
          "rows (\"blocks of N\": per N)")
    print(footer(rows))
    print(f"run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
