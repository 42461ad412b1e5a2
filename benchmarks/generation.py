"""Generation speed: cngpt_tf's XLA generator against HF PyTorch and HF TF `generate`, in one run.

A random-init model with the real GPT-12L-CN shape (12 layers, n_embd 768, 12 heads, vocab 21128,
1024 positions) and the same weights in every framework; prompts of 8 tokens, 64 new tokens, greedy,
forced to full length (min_new_tokens; HF TF ignores that and needs min_length). Contenders are
alternated within each round so that machine noise hits all of them alike; we report the median
run and, separately, the first call (tracing + XLA compile + one run).

    python benchmarks/generation.py                 # batch 1 and 8, 5 rounds (~6 min on 2 cores)
    python benchmarks/generation.py --batch 1 8 32 --rounds 3 --skip tf_eager

On an AVX2 / AVX-512 CPU the generator runs its weight products in the native kernel (`cngpt_tf.native`);
the row "cngpt_tf (XLA dot, no kernel)" is the same generator with `native_kernel=False`. Weights in
bf16 and int8 (`cngpt_tf.quantize`) are measured by benchmarks/precision.py.

The row "floor: weight matmuls only" is not a generator: it runs, in one XLA loop of 63 steps, only
the 49 weight matrix products a decode step must do (the same weights and layout as ours: the
kernel's panels, or XLA's dot over row blocks, see `cngpt_tf.model.row_blocks`; nothing else: no
attention, no prefill, no sampling). It is measured in the same run so that a reader can see how
close the contenders come to it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from cngpt_tf.config import GPT2Config  # noqa: E402
from cngpt_tf.demo import demo_weights  # noqa: E402

PROMPT_LEN, NEW_TOKENS = 8, 64
SHAPE = dict(n_vocab=21128, n_ctx=1024, n_embd=768, n_head=12, n_layer=12, pad_token_id=0, bos_token_id=101,
             eos_token_id=102)


def build_contenders(config, weights, skip):
    """name -> (make(batch) -> run(ids) callable). Each run generates exactly NEW_TOKENS tokens."""
    contenders = {}
    if "ours" not in skip:
        from cngpt_tf.generator import Generator

        gen = Generator(weights, config)
        name = "cngpt_tf (XLA + native kernel)" if gen.native_kernel else "cngpt_tf (XLA)"
        contenders[name] = lambda ids: gen.generate_ids(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        if "floor" not in skip:
            contenders[FLOOR] = matmul_floor(gen.params)
        if gen.native_kernel and "xla_dot" not in skip:  # the same generator without the kernel
            plain = Generator(weights, config, native_kernel=False)
            contenders["cngpt_tf (XLA dot, no kernel)"] = lambda ids: plain.generate_ids(
                ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    if "torch" not in skip:
        import torch
        from transformers import GPT2Config as HFConfig, GPT2LMHeadModel

        torch.set_num_threads(os.cpu_count())
        pt = GPT2LMHeadModel(HFConfig(**config.to_hf_dict())).eval()
        state = {f"transformer.{k}": torch.from_numpy(v) for k, v in weights.items()}
        pt.load_state_dict(state, strict=False)
        pt.tie_weights()

        def run_torch(ids):
            with torch.no_grad():
                t = torch.tensor(ids, dtype=torch.long)
                return pt.generate(t, attention_mask=torch.ones_like(t), do_sample=False, max_new_tokens=NEW_TOKENS,
                                   min_new_tokens=NEW_TOKENS, pad_token_id=0).numpy()
        contenders["HF PyTorch generate"] = run_torch
    if not {"tf_eager", "tf_xla"} <= set(skip):
        import tensorflow as tf
        from transformers import TFGPT2LMHeadModel

        from cngpt_tf.formats.hf_tf2 import write_tf2

        folder = tempfile.mkdtemp(prefix="bench_tf2_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # 400 MB of weights
        vocab = os.path.join(folder, "vocab_source.txt")
        with open(vocab, "w", encoding="utf-8") as f:
            f.write("".join(f"[tok{i}]\n" for i in range(config.n_vocab)))
        write_tf2(folder, weights, config, vocab)
        hf_tf = TFGPT2LMHeadModel.from_pretrained(folder)
        kwargs = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_length=PROMPT_LEN + NEW_TOKENS, pad_token_id=0)
        if "tf_eager" not in skip:
            contenders["HF TF generate (eager)"] = lambda ids: hf_tf.generate(tf.constant(ids), **kwargs).numpy()
        if "tf_xla" not in skip:
            xla_generate = tf.function(hf_tf.generate, jit_compile=True)
            contenders["HF TF generate (XLA)"] = lambda ids: xla_generate(tf.constant(ids), **kwargs).numpy()
    return contenders


FLOOR = "floor: weight matmuls only"


def matmul_floor(params, weights: str = "float32"):
    """run(ids) doing only the decode loop's weight matrix products (see the module docstring).

    params: the generator's, in its layout: row blocks for XLA's dot, or the native kernel's panels.
    weights: "float32" (as the generator stores them), or "bfloat16" / "int8" (per-row scales, row
    blocks only) stored that way and converted to float32 inside the loop, for
    benchmarks/weight_formats.py. The conversion is scaled by a loop-dependent 1.0: XLA would
    otherwise hoist it out of the loop and run the float32 products on a converted copy.
    """
    import tensorflow as tf

    from cngpt_tf import native
    from cngpt_tf.model import CONV1D_SCOPES, cpu_threads, weight_blocks

    layers = sorted({name.split("/")[1] for name in params if name.startswith("model/h")}, key=lambda h: int(h[1:]))
    scopes = [f"model/{h}/{scope}" for h in layers for scope in CONV1D_SCOPES]
    products = []  # (input width, fn(h, one) -> output), in the order a decode step runs them
    if "model/wte/panels" in params:  # the native kernel's layout: one custom call per product
        threads = cpu_threads()
        convs = [(params[f"{s}/panels"], params[f"{s}/panels"].shape[0] * native.PANEL) for s in scopes]
        for panels, n in convs + [(params["model/wte/panels"], SHAPE["n_vocab"])]:
            products.append((panels.shape[1], lambda h, one, p=panels, n=n: native.panel_matmul(h, p, n, threads)))
    else:
        groups = [weight_blocks(params, s) for s in scopes] + [[params["model/wte"]]]  # row blocks per product
        for group in groups:
            stored = [_store(w, weights) for w in group]
            products.append((group[0].shape[1], lambda h, one, stored=stored: _blocks_product(h, one, stored)))

    @tf.function(jit_compile=True)
    def loop(x):  # x [B, E + 1]
        def step(i, x):
            one = tf.cast(i >= 0, tf.float32)  # 1.0 that XLA cannot prove constant
            h = x
            for width, product in products:  # each input is the previous output, cut or zero-padded
                h = h[:, :width] if h.shape[1] >= width else tf.pad(h, [[0, 0], [0, width - h.shape[1]]])
                h = product(h, one) * 1e-3
            return i + 1, x + h[:, : x.shape[1]]

        return tf.while_loop(lambda i, x: i < NEW_TOKENS - 1, step, (0, x))[1]

    def run(ids):
        loop(tf.ones([len(ids), products[0][0]])).numpy()
        return np.zeros((len(ids), PROMPT_LEN + NEW_TOKENS), np.int32)  # the shape every contender returns

    return run


def _store(w, weights):
    """-> (tf.Variable, per-row scale or None), held as the generator holds weights (not constants)."""
    import tensorflow as tf

    if weights == "float32":
        return (w if isinstance(w, tf.Variable) else tf.Variable(w, trainable=False)), None
    w = np.asarray(w)
    scale = np.abs(w).max(axis=1) / 127 + 1e-12 if weights == "int8" else np.ones(w.shape[0], np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8) if weights == "int8" else tf.cast(w, weights)
    return tf.Variable(q, trainable=False), tf.Variable(scale.astype(np.float32), trainable=False)


def _blocks_product(h, one, stored):
    import tensorflow as tf

    outs = []
    for w, scale in stored:
        if scale is None:
            outs.append(tf.matmul(h, w, transpose_b=True))
        else:
            outs.append(tf.matmul(h, tf.cast(w, tf.float32) * one, transpose_b=True) * scale)
    return tf.concat(outs, axis=1) if len(outs) > 1 else outs[0]


def measure(contenders, batch, rounds, slow_rounds):
    ids = np.random.RandomState(batch).randint(200, 21000, size=(batch, PROMPT_LEN)).astype(np.int32)
    ids[:, 0] = 101
    first, times = {}, {name: [] for name in contenders}
    for name, run in contenders.items():
        start = time.perf_counter()
        out = run(ids)
        first[name] = time.perf_counter() - start
        assert out.shape == (batch, PROMPT_LEN + NEW_TOKENS), (name, out.shape)
    for r in range(rounds):
        for name, run in contenders.items():
            if "eager" in name and r >= slow_rounds:
                continue  # ~20 s a run at batch 1: 3 runs are enough for a median
            start = time.perf_counter()
            run(ids)
            times[name].append(time.perf_counter() - start)
        print(f"  batch {batch}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    rows = []
    for name in contenders:
        median = statistics.median(times[name])
        rows.append((name, batch, first[name], max(first[name] - median, 0.0), median, batch * NEW_TOKENS / median,
                     len(times[name])))
    return rows


def print_table(rows):
    header = ("contender", "batch", "first call s", "compile s", "median s", "tokens/s", "runs")
    cells = [header] + [(r[0], str(r[1]), f"{r[2]:.2f}", f"{r[3]:.2f}", f"{r[4]:.3f}", f"{r[5]:.1f}", str(r[6]))
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per contender (median reported)")
    parser.add_argument("--eager_rounds", type=int, default=3, help="timed runs of the slow eager HF TF path")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "floor", "xla_dot", "torch", "tf_eager", "tf_xla"])
    args = parser.parse_args(argv)

    import tensorflow as tf

    config = GPT2Config(**SHAPE)
    weights = demo_weights(config, seed=0)
    contenders = build_contenders(config, weights, args.skip)
    gpus = tf.config.list_physical_devices("GPU")
    gpu = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name) if gpus else "none"
    print(f"model: 12 layers, n_embd 768, 12 heads, vocab 21128 (random init); prompt {PROMPT_LEN}, "
          f"{NEW_TOKENS} new tokens, greedy")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, GPU: {gpu}; TF {tf.__version__}")
    rows = []
    for batch in args.batch:
        rows += measure(contenders, batch, args.rounds, args.eager_rounds)
    print_table(rows)


if __name__ == "__main__":
    main()
