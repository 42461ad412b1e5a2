"""Reduced-precision weights in the native kernel: speed and bytes read of fp32 / bf16 / int8.
Their accuracy (logits, greedy agreement, perplexity against fp32, peers' reduced precisions beside
them) is benchmarks/accuracy.py's.

    python benchmarks/precision.py                          # every part
    python benchmarks/precision.py --parts speed --batch 1 8 --rounds 5
    python benchmarks/precision.py --parts speed --isa avx2 avx512   # kernel variants as extra contenders
    python benchmarks/precision.py --parts speed --xla_attention     # + each with XLA's attention
    python benchmarks/precision.py --parts speed --unrolled          # + each with the layers unrolled

Parts:
  probe     the machine's read bandwidth: a NumPy sum over a 1 GiB float32 array on 2 threads, best of 5
            (run again after the speed part: the table shows both).
  pack      seconds to pack GPT-12L-CN's shape (12 layers, 768, vocab 21128) into each mode's panels,
            from float32 (`cngpt_tf.model.params_from_pt`, quantisation included), and the bytes stored.
  speed     tokens/s of the generator's decode loop on that shape (random init, `demo_weights`), an
            8-token prompt, 64 new tokens, greedy forced to full length, median of `--rounds`, the
            contenders alternating within each round; "floor" rows run only the 49 weight products of
            a step (63 steps in one XLA loop). Bytes/token are the weights a decode step reads; GB/s is
            those bytes times the steps over the median time: compare with the probe.
The generator runs `cngpt_tf.decoding.compile_decoder` on `model.params_from_pt(..., panels=True,
weights=mode)` held as tf.Variables, as `cngpt_tf.generator.Generator` does. Every part prints the
1-minute load average before and after it: a timing taken at a load >= 0.5 on a 2-core machine is
marked unreliable. The benchmark's own threads raise that average too, so the timed rounds are judged
by the CPU time the *other* processes took meanwhile (/proc/stat's busy time minus this process's),
in cores: the "others" column, unreliable at >= 0.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.generation import NEW_TOKENS, PROMPT_LEN, SHAPE, cpu_name  # noqa: E402
from cngpt_tf.config import GPT2Config  # noqa: E402
from cngpt_tf.demo import demo_weights  # noqa: E402

MODES = ("fp32", "bf16", "int8")
BUSY = 0.5  # 1-minute load average at or above which a timing on 2 cores is not trusted


def load_average() -> float:
    with open("/proc/loadavg", encoding="utf-8") as f:
        return float(f.read().split()[0])


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process): /proc/stat's
    non-idle time and os.times()."""
    with open("/proc/stat", encoding="utf-8") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def note_load(what: str) -> float:
    load = load_average()
    flag = "" if load < BUSY else f"  (>= {BUSY}: timings unreliable)"
    print(f"[load] {what}: 1-min load {load:.2f}{flag}", file=sys.stderr, flush=True)
    return load


# ----- probe ---------------------------------------------------------------------------------------


def read_bandwidth(gib: float = 1.0, threads: int = 2, repeats: int = 5) -> float:
    """GB/s of NumPy summing a float32 array of `gib` GiB, split over `threads` threads, best of
    `repeats` (the sum of rows is SIMD adds, memory-bound; NumPy releases the GIL)."""
    a = np.ones(int(gib * 2**28), np.float32)
    parts = np.array_split(a.reshape(-1, 4096), threads)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(p,), kwargs={"axis": 0}) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best / 1e9


# ----- packing -------------------------------------------------------------------------------------


def pack(weights, config, mode: str) -> tuple[dict, float]:
    from cngpt_tf import model

    start = time.perf_counter()
    packed = model.params_from_pt(weights, config, panels=True, weights=mode)
    return packed, time.perf_counter() - start


def step_bytes(packed: dict) -> int:
    """The weight bytes one decode step reads: every panel and scale (the embeddings' gathers and
    LayerNorms are noise)."""
    return sum(v.nbytes for k, v in packed.items() if k.endswith(("/panels", "/scales")))


# ----- speed ---------------------------------------------------------------------------------------


def greedy_runner(packed: dict, config, eos: int = -1):
    """run(ids) -> [B, P + NEW_TOKENS] greedy tokens, forced to full length, as the Generator runs it.
    eos -1 never stops; an id is suppressed for all the new tokens (min_new), as the peers force length."""
    import tensorflow as tf

    from cngpt_tf.decoding import compile_decoder, generate_bucketed
    from cngpt_tf.generation_config import Strategy
    from cngpt_tf.sampling import make_sampler

    params = {k: tf.Variable(v, trainable=False, name=k.replace("/", "_")) for k, v in packed.items()}
    decoder = compile_decoder(params, config, make_sampler(Strategy()))

    def run(ids, new=NEW_TOKENS):
        ids = tf.constant(ids, tf.int32)
        return generate_bucketed(decoder, ids, tf.ones_like(ids), new, min_new=new, eos=eos, pad=0, seed=0,
                                 temperature=1.0, top_p=1.0, penalty=1.0).numpy()

    return run


def floor_runner(packed: dict, config):
    """run(ids): only the decode steps' weight products (49 custom calls a step, 63 steps), for the
    bytes-read ceiling of each mode."""
    import tensorflow as tf

    from cngpt_tf import model, native, quantize

    params = {k: tf.Variable(v, trainable=False) for k, v in packed.items()}
    e = config.n_embd
    depth = {"attn/c_attn": e + 1, "attn/c_proj": e + 1, "mlp/c_fc": e + 1, "mlp/c_proj": 4 * e + 1}  # x's K
    products = [(f"model/h{i}/{s}", depth[s]) for i in range(config.n_layer) for s in model.CONV1D_SCOPES]
    products.append(("model/wte", e))
    threads = model.cpu_threads()

    @tf.function(jit_compile=True)
    def loop(x):  # x [B, E + 1]
        def step(i, x):
            h = x
            for scope, width in products:  # each input is the previous output, cut or zero-padded
                panels = params[f"{scope}/panels"]
                h = h[:, :width] if h.shape[1] >= width else tf.pad(h, [[0, 0], [0, width - h.shape[1]]])
                n = config.n_vocab if scope == "model/wte" else panels.shape[0] * native.PANEL
                h = native.panel_matmul(h, panels, n, threads, params.get(f"{scope}/scales"),
                                        group=quantize.INT8_GROUP) * 1e-3
            return i + 1, x + h[:, : x.shape[1]]

        return tf.while_loop(lambda i, x: i < NEW_TOKENS - 1, step, (0, x))[1]

    def run(ids):
        loop(tf.ones([len(ids), config.n_embd + 1])).numpy()
        return np.zeros((len(ids), PROMPT_LEN + NEW_TOKENS), np.int32)

    return run


def measure(contenders: dict, batch: int, rounds: int) -> list:
    ids = np.random.RandomState(batch).randint(200, 21000, size=(batch, PROMPT_LEN)).astype(np.int32)
    ids[:, 0] = 101
    first, times = {}, {name: [] for name in contenders}
    for name, (run, _) in contenders.items():
        start = time.perf_counter()
        out = run(ids)
        first[name] = time.perf_counter() - start
        assert out.shape == (batch, PROMPT_LEN + NEW_TOKENS), (name, out.shape)
    note_load(f"batch {batch}, timed rounds start")
    busy0, own0, wall0 = *cpu_seconds(), time.perf_counter()
    for r in range(rounds):
        for name, (run, _) in contenders.items():
            start = time.perf_counter()
            run(ids)
            times[name].append(time.perf_counter() - start)
        print(f"  batch {batch}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    busy1, own1, wall1 = *cpu_seconds(), time.perf_counter()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)  # cores other processes used
    print(f"[load] batch {batch}: other processes used {others:.2f} cores during the timed rounds"
          + ("" if others < BUSY else f" (>= {BUSY}: timings unreliable)"), file=sys.stderr, flush=True)
    rows = []
    for name, (_, nbytes) in contenders.items():
        median = statistics.median(times[name])
        steps = NEW_TOKENS - 1  # decode steps that read every weight (+ the prefill's one pass)
        rows.append((name, batch, first[name], max(first[name] - median, 0.0), median, batch * NEW_TOKENS / median,
                     nbytes / 1e6, nbytes * (steps + 1) / median / 1e9, others))
    return rows


def speed(args, config, weights) -> None:
    from cngpt_tf import model, native

    print(f"kernel: {native.describe()}")
    bandwidth_before = read_bandwidth()
    contenders = {}
    for mode in args.modes:
        packed, _ = pack(weights, config, mode)
        for isa in [None] + list(args.isa):  # the variables are read when a runner traces (its first run)
            label = f"{mode}" + (f" ({isa})" if isa else "")
            env = {native.ISA_VARIABLE: isa}
            runner = greedy_runner(packed, config)
            floor = floor_runner(packed, config) if not args.no_floor else None
            contenders[f"cngpt_tf {label}"] = (_traced_with(runner, env), step_bytes(packed))
            if args.xla_attention:
                contenders[f"cngpt_tf {label}, XLA attention"] = (
                    _traced_with(greedy_runner(packed, config), {**env, model.NATIVE_ATTENTION_VARIABLE: "0"}), step_bytes(packed))
            if args.unrolled:
                contenders[f"cngpt_tf {label}, layers unrolled"] = (
                    _traced_with(greedy_runner(packed, config), {**env, model.LAYER_LOOP_VARIABLE: "0"}), step_bytes(packed))
            if floor is not None:
                contenders[f"floor {label}"] = (_traced_with(floor, env), step_bytes(packed))
        del packed
    rows = []
    for batch in args.batch:
        rows += measure(contenders, batch, args.rounds)
    bandwidth_after = read_bandwidth()
    header = ("contender", "batch", "first call s", "compile s", "median s", "tokens/s", "MB/token", "GB/s", "others")
    cells = [(r[0], str(r[1]), f"{r[2]:.2f}", f"{r[3]:.2f}", f"{r[4]:.3f}", f"{r[5]:.1f}", f"{r[6]:.0f}",
              f"{r[7]:.1f}", f"{r[8]:.2f}") for r in rows]
    table([header] + cells)
    print(f"read bandwidth probe (NumPy, 1 GiB, 2 threads): {bandwidth_before:.1f} GB/s before, "
          f"{bandwidth_after:.1f} GB/s after")
    if max(r[8] for r in rows) >= BUSY:
        print(f"WARNING: other processes used up to {max(r[8] for r in rows):.2f} cores (>= {BUSY}) during the "
              "timed rounds: these timings are unreliable; rerun on an idle machine")


def _traced_with(run, env: dict):
    """run, with the environment variables `env` set (None: unset) around each call: the first call
    traces, and tracing reads them."""

    def wrapped(ids):
        saved = {name: os.environ.pop(name, None) for name in env}
        os.environ.update({name: value for name, value in env.items() if value is not None})
        try:
            return run(ids)
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value

    return wrapped


# ----- output --------------------------------------------------------------------------------------


def table(cells) -> None:
    """A markdown table of rows of strings, the first the header."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines), flush=True)


# ----- main ----------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["probe", "pack", "speed"], choices=["probe", "pack", "speed"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per contender (median reported)")
    parser.add_argument("--isa", nargs="*", default=[], help="kernel variants to add as contenders (e.g. avx2)")
    parser.add_argument("--xla_attention", action="store_true",
                        help="add each contender with its decode steps' attention by XLA instead of the kernel")
    parser.add_argument("--unrolled", action="store_true",
                        help="add each contender with its blocks traced one by one instead of as a loop over the layers")
    parser.add_argument("--no_floor", action="store_true", help="skip the weight-products-only rows")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each contender and mode traces its own functions: no retracing notes
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; TF {tf.__version__}")
    config = GPT2Config(**SHAPE)
    weights = demo_weights(config, seed=0)
    if "probe" in args.parts:
        note_load("probe")
        print(f"read bandwidth (NumPy sum, 1 GiB float32, 2 threads, best of 5): {read_bandwidth():.1f} GB/s")
    if "pack" in args.parts:
        note_load("pack")
        for mode in args.modes:
            packed, seconds = pack(weights, config, mode)
            print(f"pack {mode}: {seconds:.2f} s for the 12-layer shape, {step_bytes(packed) / 1e6:.0f} MB of panels"
                  f"{' and scales' if mode == 'int8' else ''}")
            del packed
    if "speed" in args.parts:
        speed(args, config, weights)


if __name__ == "__main__":
    main()
