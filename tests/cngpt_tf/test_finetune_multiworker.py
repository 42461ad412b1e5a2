"""Multi-worker fine-tuning: two worker processes on this machine train as one process with the same
global batch, and resume together; TF_CONFIG is checked, its errors are one-line usage errors.

The two workers are `python -m cngpt_tf.finetune --strategy multiworker` processes on localhost
(MultiWorkerMirroredStrategy, collectives over gRPC, CPU only), each with its own TF_CONFIG. The
model is the tiny GPT-2 with dropout off (see `without_dropout`); all runs stay within the warm-up,
where the learning rate does not depend on --max_steps, so 4 steps and a resume to 8 must be the
single-process 8-step run, loss for loss.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cngpt_tf.errors import ConfigError
from cngpt_tf.finetune import FINETUNE_WRITES, main
from cngpt_tf.multiworker import Role, role_from_env, role_from_tf_config
from tests.cngpt_tf.test_finetune import without_dropout
from tests.conftest import corpus_head

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240  # per two-worker run; both are killed after it
# The same run settings for the workers (as flags) and the single-process reference.
SETTINGS = {"block_size": 32, "batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 10}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_head(tmp_path_factory.mktemp("corpus"), 300)


def free_ports(n: int) -> list[int]:
    """n ports the system has free now (each bound to port 0 at the same time, so all differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_processes(tmp: Path, name: str, envs: list[dict], argv: list[str]) -> list[str]:
    """Run `python -m cngpt_tf.finetune *argv --quiet` once per entry of `envs` (added to the
    environment), all at once, on the CPU; return each one's output. Fails (after killing them all)
    when one exits non-zero or RUN_TIMEOUT_S passes."""
    procs, logs = [], []
    for i, extra in enumerate(envs):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp / "tmp"),
                   TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",  # the processes share the CPUs
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)
        logs.append(tmp / f"{name}-{i}.log")
        with logs[-1].open("wb") as log:  # the child holds its own copy of the file
            procs.append(subprocess.Popen([sys.executable, "-m", "cngpt_tf.finetune", *argv, "--quiet"],
                                          env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 0.1)) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [path.read_text(encoding="utf-8", errors="replace") for path in logs]
    tails = "\n".join(f"--- process {i} ---\n{out[-3000:]}" for i, out in enumerate(outputs))
    assert codes is not None, f"{name}: not finished in {RUN_TIMEOUT_S} s\n{tails}"
    assert codes == [0] * len(procs), f"{name}: exit codes {codes}\n{tails}"
    return outputs


def run_workers(tmp: Path, name: str, argv: list[str], n: int = 2) -> list[str]:
    """`run_processes` as the n workers of a cluster on localhost (--strategy multiworker, a TF_CONFIG each)."""
    workers = [f"localhost:{port}" for port in free_ports(n)]
    envs = [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
            for i in range(n)]
    return run_processes(tmp, name, envs, [*argv, "--strategy", "multiworker"])


def read_report(out: Path) -> dict:
    return json.loads((out / "finetune_report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_two_workers_train_as_one_process_and_resume_together(tmp_path, converted, corpus):
    model = without_dropout(converted, tmp_path / "model")
    (tmp_path / "tmp").mkdir()
    flags = [f"--{k}={v}" for k, v in SETTINGS.items()]
    # The reference: one plain process, this one (on the CPU too, in float32 like the workers), 8 steps.
    assert main([str(model), str(corpus), str(tmp_path / "one"), *flags, "--max_steps=8", "--no_export", "--quiet"]) == 0
    reference = read_report(tmp_path / "one")
    assert (reference["strategy"], reference["num_replicas"], len(reference["losses"])) == ("auto", 1, 8)
    out = tmp_path / "two"
    args = [str(model), str(corpus), str(out), *flags]

    # 4 steps on two workers: each computes 4 of the 8 blocks of a step; the loss of the global batch
    # equals the single process' (the same blocks per step, the same update).
    outputs = run_workers(tmp_path, "first", [*args, "--max_steps=4", "--no_export"])
    report = read_report(out)
    assert (report["strategy"], report["num_workers"], report["num_replicas"], report["chief"]) == (
        "multiworker", 2, 2, True)
    assert (report["first_step"], report["last_step"]) == (0, 4)
    np.testing.assert_allclose(report["losses"], reference["losses"][:4], rtol=1e-4)
    assert "worker 0 of 2: training from" in outputs[0] and "worker 1 of 2: training from" in outputs[1]
    assert "done (the chief wrote OUT_DIR)" in outputs[1]
    # Only the chief wrote OUT_DIR; worker 1's checkpoint copies went to a temp folder, now removed.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "finetune_report.json", "logs"]
    assert not [p for p in out.rglob("*") if "workertemp" in p.name]
    assert not list((tmp_path / "tmp").glob("cngpt-finetune-*"))

    # Resume to 8 steps: the chief restores its checkpoint and sends it to worker 1; both continue at
    # step 4 with the next batches, and the chief exports.
    outputs = run_workers(tmp_path, "resume", [*args, "--max_steps=8", "--resume"])
    assert f"worker 0 of 2: resuming from {out / 'checkpoints' / 'ckpt-0001'} at step 4" in outputs[0]
    assert "worker 1 of 2: resuming from the chief's checkpoint at step 4" in outputs[1]
    resumed = read_report(out)
    assert (resumed["first_step"], resumed["last_step"], len(resumed["losses"])) == (4, 8, 4)
    np.testing.assert_allclose(resumed["losses"], reference["losses"][4:], rtol=1e-4)
    assert resumed["perplexity_before"] == pytest.approx(report["perplexity_after"], rel=1e-6)
    assert np.log(resumed["perplexity_after"]) == pytest.approx(np.log(reference["perplexity_after"]), rel=1e-4)
    conversion = json.loads((out / "converted" / "conversion_report.json").read_text(encoding="utf-8"))
    assert conversion["passed"] and (out / "pytorch" / "pytorch_model.bin").is_file()
    assert {p.name for p in out.iterdir()} == set(FINETUNE_WRITES)
    assert not list((tmp_path / "tmp").glob("cngpt-finetune-*"))


WORKERS = ["localhost:2222", "localhost:2223"]


@pytest.mark.parametrize("tf_config, message", [
    (None, "TF_CONFIG is not set"),
    ("", "TF_CONFIG is not set"),
    ('{"cluster": ', "TF_CONFIG is not JSON"),
    ('["localhost:2222"]', 'has no "cluster" with a non-empty "worker" list'),
    ({"task": {"type": "worker", "index": 0}}, 'has no "cluster"'),
    ({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}, 'non-empty "worker" list'),
    ({"cluster": {"worker": WORKERS, "ps": ["localhost:2224"]}, "task": {"type": "worker", "index": 0}},
     "names job 'ps'"),
    ({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}, '"host:port" strings'),
    ({"cluster": {"worker": WORKERS, "chief": []}, "task": {"type": "worker", "index": 0}}, "exactly one"),
    ({"cluster": {"worker": WORKERS}}, '"task" type None is not a job of the cluster (worker)'),
    ({"cluster": {"worker": WORKERS}, "task": {"type": "evaluator", "index": 0}}, "'evaluator' is not a job"),
    ({"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": 2}},
     '"task" index 2 is out of range: "worker" has 2 address(es)'),
    ({"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": -1}}, "index -1 is out of range"),
    ({"cluster": {"worker": WORKERS}, "task": {"type": "worker"}}, '"task" has no "index"'),
    ({"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": "0"}}, "index '0' is out of range"),
])
def test_bad_tf_config_is_a_one_line_usage_error(tmp_path, converted, corpus, monkeypatch, capsys, tf_config,
                                                 message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str) else json.dumps(tf_config))
    out = tmp_path / "out"
    assert main([str(converted), str(corpus), str(out), "--strategy", "multiworker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TF_CONFIG ") and message in err and "\n" not in err, err
    assert "--strategy multiworker needs one per process" in err
    assert not out.exists()  # refused before anything was written (or a cluster joined)


def test_the_chief_is_worker_0_or_the_chief_task():
    workers = {"worker": WORKERS}
    config = {"cluster": workers, "task": {"type": "worker", "index": 0}}
    assert role_from_tf_config(json.dumps(config)) == Role("worker", 0, 2, True)
    config["task"]["index"] = 1
    assert role_from_tf_config(json.dumps(config)) == Role("worker", 1, 2, False)
    with_chief = {"cluster": {**workers, "chief": ["localhost:2221"]}, "task": {"type": "worker", "index": 0}}
    assert role_from_tf_config(json.dumps(with_chief)) == Role("worker", 0, 3, False)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert role_from_tf_config(json.dumps(with_chief)) == Role("chief", 0, 3, True)


def test_other_strategies_ignore_tf_config_and_say_so(monkeypatch, caplog):
    config = {"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="cngpt_tf.multiworker"):
        assert role_from_env("auto") is None
    assert "TF_CONFIG is set but --strategy is auto" in caplog.text
    assert role_from_env("multiworker") == Role("worker", 1, 2, False)
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ConfigError, match="TF_CONFIG is not set"):
        role_from_env("multiworker")
