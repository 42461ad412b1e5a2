"""A newcomer's first screen: the README's demo command and a generate call print only our own lines.

TensorFlow's native code writes start-up lines straight to stderr (absl's "before InitializeLog"
banner, oneDNN's notice, "E… failed call to cuInit: CUDA error" on a machine without a GPU);
`cli.quiet_tensorflow` holds them back unless --verbose. Each command runs in a fresh process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What our CLIs print on stderr at the default verbosity: log lines of our own loggers, the progress
# bar (tqdm redraws it with "\r"), and nothing else.
OUR_LINE = re.compile(r"(INFO|WARNING) (cngpt_tf|converters)[\w.]*: .*|pt2tf: +\d+%\|.*")


def run(*argv: str, tmp: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS")}  # a user's shell
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", *argv], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)


def foreign_lines(stderr: str) -> list[str]:
    pieces = [p.strip() for line in stderr.split("\n") for p in line.split("\r")]
    return [p for p in pieces if p and not OUR_LINE.fullmatch(p)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first_screen")
    return tmp, run("converters.pt2tf", "--demo", "demo_out", tmp=tmp)


def test_demo_conversion_prints_only_our_lines(demo_run):
    tmp, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert foreign_lines(proc.stderr) == [], proc.stderr[-2000:]
    assert "INFO cngpt_tf.export.convert: wrote" in proc.stderr and "done: demo_out" in proc.stdout


def test_generate_prints_only_the_text(demo_run):
    tmp, _ = demo_run
    proc = run("cngpt_tf.generate", "demo_out", "明月几时有，", "--max_new_tokens", "16", tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert proc.stdout.startswith("明月几时有，") and len(proc.stdout.strip()) > len("明月几时有，")


def test_verbose_brings_tensorflow_lines_back(demo_run):
    tmp, _ = demo_run
    proc = run("cngpt_tf.generate", "demo_out", "明月", "--max_new_tokens", "4", "--verbose", tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    native = [p for p in foreign_lines(proc.stderr) if re.match(r"[IWE]\d{4} |WARNING: All log messages", p)]
    assert native, "with --verbose, TensorFlow's native log lines are shown"


def test_a_second_run_reads_the_compiled_program_back(demo_run):
    """The second run of a command reads XLA's program from the compile cache (no file written)
    and prints the same text and nothing else, the native kernel's call included (TF 2.21 leaves the
    read-back call's result layout flag uninitialised: this crashed with SIGSEGV on the demo model
    until the kernel learned to tell; fp32 runs the kernel too where it is built, and int8 crashed
    the same way). A damaged program is dropped and compiled again."""
    from cngpt_tf import compile_cache

    tmp, _ = demo_run
    cache = tmp / "xla"
    # batch 1: where the read-back flag came out true (batch 2 happened to run)
    argv = ("cngpt_tf.generate", "demo_out", "明月几时有，", "--max_new_tokens", "8")
    first = run(*argv, tmp=tmp, CNGPT_TF_XLA_CACHE=str(cache))
    assert first.returncode == 0 and first.stderr == "", first.stderr[-2000:]
    (folder,) = cache.iterdir()
    programs = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pb")}
    assert programs and set(json.loads((folder / compile_cache.INDEX).read_text())) == set(programs)

    second = run(*argv, tmp=tmp, CNGPT_TF_XLA_CACHE=str(cache))
    assert (second.returncode, second.stdout, second.stderr) == (0, first.stdout, ""), second.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pb")} == programs  # read, not rewritten
    damaged = folder / next(iter(programs))
    damaged.write_bytes(damaged.read_bytes()[:1000])  # XLA alone fails the whole call on this
    third = run(*argv, tmp=tmp, CNGPT_TF_XLA_CACHE=str(cache))
    assert (third.returncode, third.stdout, third.stderr) == (0, first.stdout, ""), third.stderr[-2000:]
