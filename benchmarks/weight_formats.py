"""Would smaller weights or another XLA dot library make generation faster on this CPU? Measured.

Runs the "floor" of benchmarks/generation.py (the 49 weight matrix products of a decode step, 63
steps in one XLA loop, GPT-12L-CN's shape) with the weights stored as float32 (what the generator
uses), bfloat16 or int8 (per-row scales, converted to float32 inside the loop), and float32 under
XLA flags that route dots to other libraries. Each flag set runs in its own process (XLA reads
XLA_FLAGS once); within a process the contenders alternate, median of --rounds runs.

    python benchmarks/weight_formats.py                  # ~3 min on 2 cores
    python benchmarks/weight_formats.py --flags ""       # the weight formats only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

FLAG_SETS = [  # XLA_FLAGS values tried; "" is the default
    "",
    "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
]


def measure_here(weights: list[str], batches: list[int], rounds: int) -> list[dict]:
    """Time the floor for each weight format and batch in this process; one row per pair."""
    from benchmarks.generation import NEW_TOKENS, PROMPT_LEN, SHAPE, matmul_floor
    from cngpt_tf import model
    from cngpt_tf.config import GPT2Config
    from cngpt_tf.demo import demo_weights

    config = GPT2Config(**SHAPE)
    params = model.params_from_pt(demo_weights(config, seed=0), config)
    runs = {w: matmul_floor(params, w) for w in weights}
    rows = []
    for batch in batches:
        ids = np.zeros((batch, PROMPT_LEN), np.int32)
        times = {w: [] for w in weights}
        for run in runs.values():
            run(ids)  # compile
        for _ in range(rounds):
            for w, run in runs.items():
                start = time.perf_counter()
                run(ids)
                times[w].append(time.perf_counter() - start)
        for w in weights:
            median = statistics.median(times[w])
            rows.append(dict(weights=w, batch=batch, median=median, tokens=batch * NEW_TOKENS / median))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flags", nargs="*", default=FLAG_SETS[1:], help="XLA_FLAGS sets to try with float32")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: one process's share of the work
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(measure_here(job["weights"], args.batch, args.rounds)))
        return
    jobs = [("", ["float32", "bfloat16", "int8"])] + [(f, ["float32"]) for f in args.flags if f]
    rows = []
    for flags, weights in jobs:
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps({"weights": weights}),
               "--rounds", str(args.rounds), "--batch", *map(str, args.batch)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows += [dict(row, flags=flags or "(default)") for row in json.loads(out.strip().splitlines()[-1])]
        print(f"  done: {flags or 'default flags'}", file=sys.stderr, flush=True)
    print("| weights  | XLA_FLAGS | batch | median s | tokens/s |")
    print("|----------|-----------|-------|----------|----------|")
    for r in sorted(rows, key=lambda r: (r["batch"], r["flags"] != "(default)")):
        print(f"| {r['weights']:8s} | {r['flags']} | {r['batch']} | {r['median']:.3f} | {r['tokens']:.1f} |")


if __name__ == "__main__":
    main()
