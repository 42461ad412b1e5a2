"""Corpus throughput of `python -m cngpt_tf.batch` on Beam's DirectRunner against a plain loop.

    python benchmarks/batch.py [--lines 800] [--workdir DIR] [--model OUT_DIR]

The trained demo model (`converters.pt2tf --demo`, converted into the work folder unless --model is
given) over the first --lines lines of tests/data/clue_corpus_small_sample.txt:
  score:    each line cut to its first 200 characters (up to 201 tokens: windows past 128 positions);
  generate: each line's first 16 characters as the prompt, 32 new tokens, --do_sample --top_k 8.

Each configuration runs in a fresh process tree (so imports, compiles and memory do not mix):
  plain  1 proc x 2 threads   the same work without Beam: read, tokenize, the same length-bucketed
                              batches, the same model calls (`tasks`), one JSON Lines file;
  beam   1 worker x 2 threads the command, DirectRunner multi-processing, one worker: Beam's
                              overhead at the same parallelism (target: <= 15%);
  plain  1 proc x 1 thread    the baseline of one single-threaded worker;
  beam   2 workers x 1 thread the default on 2 cores: the scaling from 1 to 2 worker processes.

Each is run twice, on all lines and on a warm-up set (the first 2 lines of each length bucket, so
that it compiles what the full run compiles); "lines/s" is the marginal rate (all - warm lines) /
(time(all) - time(warm)), which leaves out what every run pays once (Python, TensorFlow and Beam
start-up, the model load, one XLA compile per bucket); "total s" is the whole run on all lines,
start-up included. "CPU ms/line" is the same marginal difference in CPU time (user + system, summed over the
process tree): other processes on a shared machine slow the wall clock far more than they change
it. With 2 workers each compiles the buckets it meets; the warm-up run may not make
both meet all of them, so a few compiles can remain in its marginal time. Memory: peak RSS (VmHWM) per process, polled from /proc every 0.2 s; for Beam the largest
worker and the launcher. The machine's load average is printed beside the table: other processes on
a shared machine make the numbers noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
CORPUS = ROOT / "tests" / "data" / "clue_corpus_small_sample.txt"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           TF_USE_LEGACY_KERAS="1")
GENERATE = ["--max_new_tokens", "32", "--do_sample", "--top_k", "8"]
CONFIGS = (  # (name, plain or beam, processes, threads each)
    ("plain  1 proc x 2 threads", "plain", 1, 2),
    ("beam   1 worker x 2 threads", "beam", 1, 2),
    ("plain  1 proc x 1 thread", "plain", 1, 1),
    ("beam   2 workers x 1 thread", "beam", 2, 1),
)


# ----- the plain loop (run as: batch.py --plain COMMAND INPUT OUTPUT MODEL BATCH THREADS) -------------


def plain(command: str, path: str, output: str, model: str, batch_size: int, threads: int) -> None:
    """The pipeline's work in one process, no Beam: the same reading, tasks and batches."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    from cngpt_tf.batch import inputs, records
    from cngpt_tf.batch.handler import BatchModelHandler, worker_setup
    from cngpt_tf.batch.modelinfo import read_model_info

    worker_setup()
    info = read_model_info(model)
    tokenizer = info.tokenizer()
    task = make_task(command, info)
    buckets: dict[int, list] = {}
    out = []
    for line in inputs.read_lines(path):
        prepared = task.prepare(line, tokenizer, info.config) if line.error is None else line.error
        if isinstance(prepared, str):
            out.append((line.sort_key, records.output_record(line, {"error": prepared})))
        else:
            buckets.setdefault(prepared.bucket, []).append(prepared)
    loaded = BatchModelHandler(model, task, batch_size, threads).load_model()
    for bucket in sorted(buckets):
        lines = sorted(buckets[bucket], key=lambda p: p.line.sort_key)
        for start in range(0, len(lines), batch_size):
            batch = lines[start:start + batch_size]
            for p, (fields, _) in zip(batch, task.run(loaded, batch, batch_size)):
                out.append((p.line.sort_key, records.output_record(p.line, fields)))
    Path(output).write_text("".join(text + "\n" for _, text in sorted(out)), encoding="utf-8")


def make_task(command: str, info):
    """The command's task with the settings the Beam runs get from GENERATE."""
    from cngpt_tf.batch.tasks import Generate, Score

    if command == "score":
        return Score()
    settings = info.defaults.update(seed=0, do_sample=True, max_new_tokens=32, top_k=8)
    return Generate(settings.validate(info.config.n_vocab, info.config.n_ctx))


def warm_lines(command: str, lines: list[str], model: Path, per_bucket: int = 2) -> list[str]:
    """The first `per_bucket` lines of each length bucket: a run over them compiles what a run over
    all lines compiles (one shape per bucket), so the difference of the two is the marginal work."""
    from cngpt_tf.batch.modelinfo import read_model_info
    from cngpt_tf.batch.records import Line

    info = read_model_info(str(model))
    task, tokenizer = make_task(command, info), info.tokenizer()
    seen: dict[int, int] = {}
    kept = []
    for i, text in enumerate(lines):
        prepared = task.prepare(Line("x", i, text), tokenizer, info.config)
        if not isinstance(prepared, str) and seen.get(prepared.bucket, 0) < per_bucket:
            seen[prepared.bucket] = seen.get(prepared.bucket, 0) + 1
            kept.append(text)
    return kept


# ----- measuring ------------------------------------------------------------------------------------


def tree_hwm(root: int, seen: dict[int, tuple[str, int]]) -> None:
    """Record VmHWM (KiB) and the command line of `root` and its descendants."""
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:  # the process ended
            continue
        hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        before_cmd, before_hwm = seen.get(pid, ("", 0))
        seen[pid] = (cmd or before_cmd, max(hwm, before_hwm))  # an exited (zombie) process shows neither
        for task in tasks:  # Beam starts its workers from other threads than the main one
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the thread ended
                pass


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every reaped descendant: workers too
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str]) -> tuple[float, float, dict[int, tuple[str, int]]]:
    """(wall seconds, CPU seconds of the whole process tree, peak RSS per process) of one run."""
    cpu, start = cpu_of_children(), time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        tree_hwm(proc.pid, seen)
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr.read().decode()[-3000:]}")
    return elapsed, cpu_of_children() - cpu, seen


def run_config(kind: str, procs: int, threads: int, command: str, path: Path, out: Path, model: Path,
               batch_size: int) -> tuple[float, float, dict]:
    if kind == "plain":
        argv = [sys.executable, __file__, "--plain", command, str(path), str(out), str(model), str(batch_size),
                str(threads)]
    else:
        argv = [sys.executable, "-m", "cngpt_tf.batch", command, str(path), str(out), "--model", str(model),
                "--batch_size", str(batch_size), "--direct_num_workers", str(procs), "--worker_threads",
                str(threads), *(GENERATE if command == "generate" else [])]
    return measure(argv)


def memory(kind: str, seen: dict) -> str:
    mib = {pid: kib / 1024 for pid, (cmd, kib) in seen.items() if "python" in cmd}
    if kind == "plain":
        return f"{max(mib.values()):.0f}"
    workers = [kib / 1024 for pid, (cmd, kib) in seen.items() if "sdk_worker_main" in cmd]
    launcher = max(v for pid, v in mib.items() if "sdk_worker_main" not in seen[pid][0])
    return f"{max(workers):.0f} / launcher {launcher:.0f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        command, path, output, model, batch, threads = sys.argv[2:]
        plain(command, path, output, model, int(batch), int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--model", type=Path, help="a converted model (default: convert the demo)")
    parser.add_argument("--commands", nargs="+", default=["score", "generate"])
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cngpt_batch_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or work / "demo_out"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "converters.pt2tf", "--demo", str(model)], cwd=ROOT, env=ENV,
                       check=True, stdout=subprocess.DEVNULL)
    corpus = CORPUS.read_text(encoding="utf-8").splitlines()[: args.lines]
    cut = {"score": 200, "generate": 16}
    print(f"demo model, {args.lines} corpus lines, batch {args.batch_size}, {os.cpu_count()} CPUs; "
          f"load average before: {open('/proc/loadavg').read().split()[:3]}")
    results = {}
    for command in args.commands:
        lines = [line[: cut[command]] for line in corpus]
        warm = warm_lines(command, lines, model)
        sizes = {"all": len(lines), "warm": len(warm)}
        for name, chosen in (("all", lines), ("warm", warm)):
            (work / f"{command}-{name}.txt").write_text("".join(t + "\n" for t in chosen), encoding="utf-8")
        print(f"\n{command} ({args.lines} lines; warm-up set {len(warm)}):\n"
              f"  {'':28s} lines/s | CPU ms/line | total s | peak RSS MiB (worker / launcher) | load avg")
        for name, kind, procs, threads in CONFIGS:
            times, cpus = {}, {}
            for n in ("warm", "all"):
                out = work / f"out-{command}-{kind}-{procs}x{threads}-{n}"
                times[n], cpus[n], seen = run_config(kind, procs, threads, command, work / f"{command}-{n}.txt", out,
                                                     model, args.batch_size)
            marginal = sizes["all"] - sizes["warm"]
            rate = marginal / (times["all"] - times["warm"])
            cpu_ms = 1000 * (cpus["all"] - cpus["warm"]) / marginal
            load = open("/proc/loadavg").read().split()[0]
            results[(command, name)] = dict(rate=rate, cpu_ms=cpu_ms, total=times["all"], warm=times["warm"],
                                            warm_lines=sizes["warm"], load=float(load))
            print(f"  {name:28s} {rate:7.1f} | {cpu_ms:11.1f} | {times['all']:7.1f} | {memory(kind, seen):>32s} | "
                  f"{load}", flush=True)
        plain2, beam1 = results[(command, CONFIGS[0][0])], results[(command, CONFIGS[1][0])]
        plain1, beam2 = results[(command, CONFIGS[2][0])], results[(command, CONFIGS[3][0])]
        print(f"  Beam overhead at 1 process x 2 threads: {1 - beam1['rate'] / plain2['rate']:+.1%} of the plain rate "
              f"(CPU per line {beam1['cpu_ms'] / plain2['cpu_ms'] - 1:+.1%}); 2 workers x 1 thread: "
              f"x{beam2['rate'] / plain1['rate']:.2f} the rate of 1 single-thread plain process, "
              f"x{beam2['rate'] / beam1['rate']:.2f} that of 1 Beam worker x 2 threads")
    (work / "results.json").write_text(json.dumps({f"{c}|{n}": r for (c, n), r in results.items()}, indent=1))
    print(f"\nfiles in {work}")


if __name__ == "__main__":
    main()
