"""Time and measure memory of `cngpt_tf.export.convert.convert()` on a full-size Chinese GPT-2, against the "HF route".

    python benchmarks/convert.py [--workdir DIR] [--keep]

1. Builds the GPT2-12L-CN shape (12 layers, n_embd 768, 12 heads, 21128 tokens, 1024 positions),
   random-init, written by torch `save_pretrained` (pytorch_model.bin + config.json + vocab.txt).
2. Runs, each in a fresh subprocess so that memory numbers do not mix:
   - ours: `cngpt_tf.export.convert.convert()` writing tf1 + tf2 + saved_model and verifying all three; the
     per-stage wall times are the report's "seconds" (read, tf1, tf2, saved_model, verify);
   - hf:   `TFGPT2LMHeadModel.from_pretrained(pt_dir, from_pt=True)` then
     `save_pretrained(out, saved_model=True)` (tf_model.h5 + saved_model/1, no verification).
3. Prints one table: seconds, peak RSS and RSS growth per stage, and the output size on disk.

Memory method: a background thread reads `VmRSS` from /proc/self/status every 50 ms, and the stage
boundaries are sampled synchronously too, so each stage's "peak RSS" is the largest sample taken
while it ran (a spike shorter than 50 ms can be missed). As a cross-check, when the kernel allows
writing "5" to /proc/self/clear_refs (Linux >= 4.0), the high-water mark VmHWM is reset at each stage
start and read at its end: that column is the exact per-stage peak. "RSS growth" is RSS at stage end
minus RSS at stage start (memory the stage kept). Import time of TensorFlow/transformers is shown on
its own row, not charged to the first stage. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tensorflow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
REAL_VOCAB = ROOT / "tests" / "data" / "bert_chinese_vocab.txt"
SHAPE = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
N_VOCAB = 21128
MIB = 2**20


# ----- memory ----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageMeter:
    """Per-stage wall time, sampled peak RSS, exact VmHWM peak (if resettable) and RSS growth, in bytes."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.stages: dict[str, dict] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hwm_exact = _reset_hwm()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        rss = _status_kib("VmRSS") * 1024
        with self._lock:
            if self._current is not None:
                stage = self.stages[self._current]
                stage["peak_rss"] = max(stage["peak_rss"], rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @contextlib.contextmanager
    def stage(self, name: str):
        rss = _status_kib("VmRSS") * 1024
        with self._lock:
            self.stages[name] = {"start_rss": rss, "peak_rss": rss}
            self._current = name
        if self.hwm_exact:
            _reset_hwm()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self._sample()
            with self._lock:
                stage = self.stages[name]
                stage["seconds"] = seconds
                stage["end_rss"] = _status_kib("VmRSS") * 1024
                stage["hwm"] = _status_kib("VmHWM") * 1024 if self.hwm_exact else None
                self._current = None


# ----- the model -------------------------------------------------------------------------------


def vocab_tokens() -> list[str]:
    tokens = REAL_VOCAB.read_text(encoding="utf-8").split("\n")
    return tokens[:-1] if tokens[-1] == "" else tokens


def build_model(folder: Path) -> float:
    """Write a random-init full-size GPT2LMHeadModel with torch; return the seconds it took."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    start = time.perf_counter()
    vocab = vocab_tokens()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), **SHAPE)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=False)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return time.perf_counter() - start


# ----- the two routes (each runs in its own child process) -------------------------------------


def route_ours(src: Path, out: Path) -> dict:
    with StageMeter() as meter:
        with meter.stage("import"):
            import tensorflow  # noqa: F401
            import transformers  # noqa: F401  (verify's TFGPT2LMHeadModel)

            from cngpt_tf.export import convert as pt2tf

        class MeteredSteps(pt2tf._Steps):
            """pt2tf's own step timer, also opening a memory stage per step."""

            @contextlib.contextmanager
            def __call__(self, name):
                with meter.stage(name), super().__call__(name):
                    yield

        pt2tf._Steps = MeteredSteps
        report = pt2tf.convert(str(src), out, progress=False)
    assert report["passed"], report["formats"]
    stages = meter.stages
    for name, seconds in report["seconds"].items():  # the report's own per-step times
        stages[name]["report_seconds"] = seconds
    sizes = {fmt: _du(out / fmt) for fmt in ("tf1", "tf2", "saved_model")}
    return {"stages": stages, "hwm_exact": meter.hwm_exact, "sizes": sizes,
            "max_abs_diff": {f: r["max_abs_diff"] for f, r in report["formats"].items()}}


def route_hf(src: Path, out: Path) -> dict:
    with StageMeter() as meter:
        with meter.stage("import"):
            import tensorflow  # noqa: F401
            from transformers import TFGPT2LMHeadModel
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
        with meter.stage("from_pretrained(from_pt=True)"):
            model = TFGPT2LMHeadModel.from_pretrained(str(src), from_pt=True)
        with meter.stage("save_pretrained(saved_model=True)"):
            model.save_pretrained(str(out), saved_model=True)
    sizes = {"tf_model.h5": _du(out / "tf_model.h5"), "saved_model": _du(out / "saved_model")}
    return {"stages": meter.stages, "hwm_exact": meter.hwm_exact, "sizes": sizes}


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_child(route: str, src: Path, out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", route, "--src", str(src), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{route} route failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), wall


# ----- table -----------------------------------------------------------------------------------


def table(results: dict[str, tuple[dict, float]]) -> str:
    rows = [("route", "stage", "seconds", "peak RSS MiB (sampled)", "peak RSS MiB (VmHWM)", "RSS growth MiB")]
    for route, (result, wall) in results.items():
        total = 0.0
        for name, s in result["stages"].items():
            if name != "import":
                total += s["seconds"]
            hwm = f"{s['hwm'] / MIB:.0f}" if s.get("hwm") is not None else "n/a"
            rows.append((route, name, f"{s['seconds']:.1f}", f"{s['peak_rss'] / MIB:.0f}", hwm,
                         f"{(s['end_rss'] - s['start_rss']) / MIB:+.0f}"))
        peak = max(s["peak_rss"] for s in result["stages"].values())
        hwms = [s["hwm"] for s in result["stages"].values() if s.get("hwm") is not None]
        rows.append((route, "TOTAL (excl. import)", f"{total:.1f}", f"{peak / MIB:.0f}",
                     f"{max(hwms) / MIB:.0f}" if hwms else "n/a", ""))
        rows.append((route, "process wall (incl. startup)", f"{wall:.1f}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where to build the model and outputs (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        route = route_ours if args.child == "ours" else route_hf
        print("RESULT " + json.dumps(route(Path(args.src), Path(args.out))))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cngpt_bench_"))
    try:
        src = work / "gpt2_L-12_H-768_A-12_CN"
        build_s = build_model(src)
        bin_mib = (src / "pytorch_model.bin").stat().st_size / MIB
        vocab = "real BERT Chinese vocab" if REAL_VOCAB.is_file() else "generated vocab"
        print(f"model: 12 layers, n_embd 768, 12 heads, vocab {N_VOCAB} ({vocab}), n_ctx 1024; "
              f"pytorch_model.bin {bin_mib:.0f} MiB, built with torch in {build_s:.1f} s")
        results = {"ours": run_child("ours", src, work / "out_ours"),
                   "hf": run_child("hf", src, work / "out_hf")}
        print(f"CPU cores: {os.cpu_count()}; memory: background VmRSS sampler every 50 ms"
              + ("; VmHWM reset per stage via /proc/self/clear_refs" if results["ours"][0]["hwm_exact"] else ""))
        print(table(results))
        ours, hf = results["ours"][0], results["hf"][0]
        print("output sizes MiB: ours " + ", ".join(f"{k} {v / MIB:.0f}" for k, v in ours["sizes"].items())
              + "; hf " + ", ".join(f"{k} {v / MIB:.0f}" for k, v in hf["sizes"].items()))
        print("ours, max |logits diff| per format: "
              + ", ".join(f"{k} {v:.2e}" for k, v in ours["max_abs_diff"].items()))
        print("note: ours writes 3 formats and reloads + verifies each; the HF route writes tf_model.h5 + "
              "saved_model/1 and verifies nothing.")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
