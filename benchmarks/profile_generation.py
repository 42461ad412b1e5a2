"""Where a generation step's time goes: XLA's own per-kernel trace of one `generate_ids` call.

Same model and prompts as benchmarks/generation.py (12 layers, 768, vocab 21128, 8-token prompts,
64 new tokens, greedy). XLA's CPU runtime records every kernel it runs when
XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true (set here before TensorFlow starts); the TF profiler
collects them, and this script sums them by kind, per decode step:

    python benchmarks/profile_generation.py --batch 1 8
    python benchmarks/profile_generation.py --batch 1 8 --weights int8   # bf16 / int8 panels

Kernels are told apart by XLA's optimized HLO: custom calls (the weight products in cngpt_tf's
native kernel, see `cngpt_tf.native`; its decode-step attention is the custom call of B * H rows),
or without it `MatMul*` (weight matrix products; `dot*` at batch 1, where XLA rewrites them as
matrix-vector products), and `dot*` with a batch of B * H (attention).
The profiler itself adds some time, and independent kernels (e.g. the row blocks of one weight, see
`cngpt_tf.model.row_blocks`) may run at the same time on different threads, so the per-step sums
can exceed the wall time: compare the shares, not the absolute numbers, with the benchmark.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.generation import NEW_TOKENS, PROMPT_LEN, SHAPE  # noqa: E402
from cngpt_tf.config import GPT2Config  # noqa: E402
from cngpt_tf.decoding import round_up  # noqa: E402
from cngpt_tf.demo import demo_weights  # noqa: E402

RUNTIME_EVENTS = ("ThunkExecutor::Execute", "SlinkyThreadPool::Await")  # wrappers, not kernels


def kernel_times(logdir: str) -> tuple[float, dict[str, float]]:
    """(wall seconds of the XLA call, {event name: seconds}) from the profiler's XSpace file.

    The events include TensorFlow's own (EagerExecute, ...); the caller keeps the XLA kernels.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    wall, kernels = 0.0, collections.Counter()
    for plane in (p for p in space.planes if p.name == "/host:CPU"):
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name == "BlockUntilReady":
                    wall = max(wall, event.duration_ps / 1e12)
                elif name not in RUNTIME_EVENTS and not name.startswith("end:"):
                    kernels[name] += event.duration_ps / 1e12  # the caller's thread runs kernels too
    return wall, kernels


def categorize(name: str, batch: int, n_head: int, shapes: dict[str, str]) -> str:
    shape = shapes.get(name, "")
    if not (name.startswith(("MatMul", "dot")) or shape.endswith(" custom-call")):
        return "everything else (norms, softmax, cache writes, sampling)"
    if shape.startswith(f"f32[{batch * n_head},"):
        return "attention matmuls (reading the K/V cache)"
    if shape.startswith(f"f32[{batch * round_up(PROMPT_LEN)},"):
        return f"weight matmuls of the prefill (prompt bucket of {round_up(PROMPT_LEN)})"
    return "weight matmuls of the decode steps"


def profile(batch: int, weights: str = "fp32") -> None:
    import tensorflow as tf

    from cngpt_tf.generator import Generator

    dump = tempfile.mkdtemp(prefix="xla_dump_")
    os.environ["XLA_FLAGS"] += f" --xla_dump_to={dump} --xla_dump_hlo_as_text"  # read at the first compile
    config = GPT2Config(**SHAPE)
    if weights == "fp32":
        gen = Generator(demo_weights(config, seed=0), config)
        run = lambda ids: gen.generate_ids(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)  # noqa: E731
    else:  # the generator's decode loop over reduced-precision panels (benchmarks/precision.py)
        from benchmarks.precision import greedy_runner, pack

        run = greedy_runner(pack(demo_weights(config, seed=0), config, weights)[0], config)
    ids = np.random.RandomState(batch).randint(200, 21000, size=(batch, PROMPT_LEN)).astype(np.int32)
    ids[:, 0] = 101
    for _ in range(2):  # compile, then one warm run
        run(ids)
    logdir = tempfile.mkdtemp(prefix="xla_profile_")
    tf.profiler.experimental.start(logdir)
    run(ids)
    tf.profiler.experimental.stop()
    wall, kernels = kernel_times(logdir)
    shapes = {}  # kernel name -> result shape, from the optimized HLO of this batch's program
    for path in glob.glob(f"{dump}/*after_optimizations.txt"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = re.match(r"\s*(?:ROOT )?%(\S+) = \(?(\w+\[[^\]]*\])\S* ([\w-]+)\(", line)
                if m:  # name -> "shape opcode", e.g. "f32[8,2304] custom-call"
                    shapes[m.group(1)] = f"{m.group(2)} {m.group(3)}"
    totals = collections.Counter()
    for name, seconds in kernels.items():
        name = re.sub(r"\.0$", "", name)
        if name in shapes:  # an XLA kernel of this program, not one of TensorFlow's own events
            totals[categorize(name, batch, config.n_head, shapes)] += seconds
    steps = NEW_TOKENS - 1
    print(f"\nbatch {batch}, {weights} weights: one generate_ids call, {wall * 1e3:.0f} ms in XLA (profiled), {steps} decode steps")
    print(f"| {'kind':56s} | ms/step | share |")
    print(f"|{'-' * 58}|---------|-------|")
    for kind, seconds in totals.most_common():
        print(f"| {kind:56s} | {seconds / steps * 1e3:7.2f} | {seconds / sum(totals.values()):5.0%} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--weights", default="fp32", choices=["fp32", "bf16", "int8"], help="the panels' precision")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one batch in this process
    args = parser.parse_args(argv)
    if args.one:
        profile(args.batch[0], args.weights)
        return
    for batch in args.batch:  # a process each: XLA reads its dump flags once, and kernel names repeat
        subprocess.run([sys.executable, os.path.abspath(__file__), "--one", "--batch", str(batch),
                        "--weights", args.weights], check=True)


if __name__ == "__main__":
    main()
