"""Cold start: seconds from launching a fresh process to its generated text, on GPT-12L-CN's shape.

    python benchmarks/cold_start.py                      # builds the model (random init) in a temp folder
    python benchmarks/cold_start.py --model OUT --pt PT_DIR --rounds 5

Each row is a command run in a fresh process `--rounds` times, the rows alternating within a round;
"text" is when its first line of output arrived (median), "exit" when the process ended. The command
is what a user types: `python -m cngpt_tf.generate OUT "明月几时有，"` (50 new tokens, greedy), with
XLA's compile cache on (cngpt_tf/compile_cache.py; one untimed run first fills it: "second run on
the machine, caches warm") or off (CNGPT_TF_XLA_CACHE=0), in each weight mode. Beside them: Python
importing TensorFlow and printing (the floor no TensorFlow program starts under), and HF PyTorch
loading the same release and generating the same 50 tokens (`--pt`, the PyTorch files; built here
when no --model is given). The load other processes put on the machine meanwhile (/proc/stat's busy
time minus what the timed commands used, in cores) is printed: >= 0.5 on 2 cores flags the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "明月几时有，"
BUSY = 0.5

HF_SCRIPT = """
import sys, torch
from transformers import BertTokenizer, GPT2LMHeadModel
torch.set_num_threads(2)
tok = BertTokenizer.from_pretrained(sys.argv[1])
model = GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
ids = tok.encode(sys.argv[2], add_special_tokens=False)
with torch.no_grad():
    out = model.generate(torch.tensor([[tok.cls_token_id] + ids]), max_new_tokens=50, do_sample=False,
                         pad_token_id=0)
print(tok.decode(out[0, 1:]).replace(" ", ""), flush=True)
"""


def commands(model: Path, pt: Path | None, cache: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, environment additions)."""
    generate = [sys.executable, "-m", "cngpt_tf.generate", str(model), PROMPT]
    on = {"CNGPT_TF_XLA_CACHE": str(cache)}
    rows = {
        "python: import tensorflow; print": ([sys.executable, "-c", "import tensorflow; print('ok', flush=True)"], {}),
        "cngpt_tf generate fp32, compile cache off": (generate, {"CNGPT_TF_XLA_CACHE": "0"}),
        "cngpt_tf generate fp32, compile cache warm": (generate, on),
        "cngpt_tf generate bf16, compile cache warm": ([*generate, "--weights", "bf16"], on),
        "cngpt_tf generate int8, compile cache warm": ([*generate, "--weights", "int8"], on),
    }
    if pt is not None:
        rows["HF PyTorch generate fp32 (BertTokenizer + GPT2LMHeadModel)"] = ([sys.executable, "-c", HF_SCRIPT, str(pt), PROMPT], {})
    return rows


def run_once(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds to the first line of stdout, seconds to exit, that line); RuntimeError if it failed."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    line = process.stdout.readline()
    text_at = time.perf_counter() - start
    rest, err = process.communicate()
    exit_at = time.perf_counter() - start
    if process.returncode != 0 or not line:
        raise RuntimeError(f"{argv[1:3]} exited {process.returncode}: {err.decode(errors='replace')[-500:]}")
    return text_at, exit_at, line.decode("utf-8", "replace").strip()


def busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process's finished
    children): /proc/stat's non-idle time and os.times()."""
    with open("/proc/stat", encoding="utf-8") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.children_user + own.children_system


def build_model(workdir: Path) -> tuple[Path, Path]:
    from benchmarks.full_size import make_model
    from converters import pt2tf

    pt = make_model(workdir / "pt")
    out = workdir / "out"
    if pt2tf.main([str(pt), str(out)]) != 0:
        raise SystemExit("pt2tf failed")
    return out, pt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a pt2tf OUT folder (default: build GPT-12L-CN's shape here)")
    parser.add_argument("--pt", type=Path, help="the PyTorch release for the HF row (default: none with --model)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cold_start_") as tmp:
        tmp = Path(tmp)
        model, pt = (args.model, args.pt) if args.model else build_model(tmp)
        rows = commands(model, pt, tmp / "xla")
        for name, (argv_, env) in rows.items():  # untimed: fills the compile cache, warms the page cache
            _, _, line = run_once(argv_, env)
            print(f"[warm-up] {name}: {line[:60]}", file=sys.stderr, flush=True)
        times = {name: [] for name in rows}
        others = []
        for r in range(args.rounds):
            busy0, ours0, wall0 = *busy_seconds(), time.perf_counter()
            for name, (argv_, env) in rows.items():
                text_at, exit_at, _ = run_once(argv_, env)
                times[name].append((text_at, exit_at))
            busy1, ours1, wall1 = *busy_seconds(), time.perf_counter()
            others.append(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall1 - wall0))
            print(f"round {r + 1}/{args.rounds} done (other processes: {others[-1]:.2f} cores)", file=sys.stderr,
                  flush=True)
    worst = max(others)
    flag = f"; other processes used up to {worst:.2f} cores" + ("" if worst < BUSY else " (timings unreliable)")
    print(f"\nCold start, {args.rounds} fresh processes per row, median (min-max) seconds{flag}\n")
    print("| command | text printed | process exit |")
    print("|---|---|---|")
    for name, samples in times.items():
        texts, exits = [t for t, _ in samples], [e for _, e in samples]
        print(f"| {name} | {statistics.median(texts):.2f} ({min(texts):.2f}-{max(texts):.2f}) "
              f"| {statistics.median(exits):.2f} ({min(exits):.2f}-{max(exits):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
