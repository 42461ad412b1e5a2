"""SavedModel serving: export time of all signatures, and `serving_default` latency loaded from disk
against the in-process Python generator (`cngpt_tf.pipeline`), both measured in this run.

The SavedModel runs XLA's dot (TF Serving has no cngpt_tf kernel), so it is compared with the
pipeline on XLA's dot (`native_kernel=False`), the same computation; the last column is the pipeline
with the native kernel (`cngpt_tf.native`, where it runs), for reference.

A random-init model with the real GPT-12L-CN shape; greedy, 32 new tokens (both sides produce the
same text). Requests alternate between the two sides; medians of --rounds runs.

    python benchmarks/serving.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.full_size import make_model  # noqa: E402
PROMPTS = ["明月几时有，把酒问青天。", "床前明月光，", "春眠不觉晓，处处闻啼鸟。", "白日依山尽，",
           "慈母手中线，", "国破山河在，", "大漠孤烟直，", "海上生明月，"]


def timed(fn, rounds):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from cngpt_tf import Generator, native, pipeline
    from cngpt_tf.export.convert import convert
    from cngpt_tf.generation_config import GenerationConfig

    with tempfile.TemporaryDirectory() as tmp:
        src = make_model(Path(tmp) / "model")
        report = convert(str(src), Path(tmp) / "out", formats=("tf2", "saved_model"), progress=False,
                         generation=GenerationConfig(max_new_tokens=args.new_tokens))
        export_s = report["seconds"]["saved_model"]
        served = tf.saved_model.load(str(Path(tmp) / "out" / "saved_model" / "1"))
        serve = served.signatures["serving_default"]
        gen = pipeline("text-generation", Generator.from_pretrained(Path(tmp) / "out", native_kernel=False))
        fast = pipeline("text-generation", Generator.from_pretrained(Path(tmp) / "out")) if native.enabled() else None

        rows = []
        for batch in (1, 8):
            prompts = PROMPTS[:batch]
            text = tf.constant(prompts)
            start = time.perf_counter()
            ours = [b.decode() for b in serve(text=text)["generated_text"].numpy().tolist()]
            first_saved = time.perf_counter() - start
            start = time.perf_counter()
            theirs = [r[0]["generated_text"] for r in gen(prompts, max_new_tokens=args.new_tokens)]
            first_python = time.perf_counter() - start
            same = ours == theirs
            if fast is not None:
                same = same and [r[0]["generated_text"] for r in fast(prompts, max_new_tokens=args.new_tokens)] == ours
            saved, python, kernel = [], [], []
            for _ in range(args.rounds):  # alternate, so noise hits all sides alike
                saved.append(timed(lambda: serve(text=text)["generated_text"].numpy(), 1))
                python.append(timed(lambda: gen(prompts, max_new_tokens=args.new_tokens), 1))
                if fast is not None:
                    kernel.append(timed(lambda: fast(prompts, max_new_tokens=args.new_tokens), 1))
            s, p = statistics.median(saved), statistics.median(python)
            k = statistics.median(kernel) if kernel else float("nan")
            rows.append((batch, first_saved, s, first_python, p, (s - p) / p * 100, same, k))

    print(f"model: 12 layers, n_embd 768, vocab 21128 (random init); greedy, {args.new_tokens} new tokens; "
          f"{os.cpu_count()} CPUs")
    print(f"export of all SavedModel signatures (logits, generate_ids, serving_default + warmup): {export_s:.1f} s")
    print("| batch | SavedModel first s | SavedModel median s | pipeline (XLA dot) first s | "
          "pipeline (XLA dot) median s | SavedModel vs pipeline | same text | pipeline (native kernel) median s |")
    print("|---|---|---|---|---|---|---|---|")
    for b, fs, s, fp, p, d, same, k in rows:
        print(f"| {b} | {fs:.2f} | {s:.3f} | {fp:.2f} | {p:.3f} | {d:+.1f}% | {same} | {k:.3f} |")


if __name__ == "__main__":
    main()
