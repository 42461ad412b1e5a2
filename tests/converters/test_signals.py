"""Ctrl-C, SIGTERM and SIGHUP in the middle of a conversion: exit 128 + the signal, one `error:` line, and
nothing left beside OUT_DIR or in TMPDIR (the zip's extraction folder); an interrupt whose
KeyboardInterrupt is swallowed still stops the output from being moved into place.

In-process runs raise the signal from inside a conversion step (deterministic, no TensorFlow import);
one subprocess gets a real SIGTERM from outside while it converts the demo model.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cngpt_tf import interrupts
from cngpt_tf.export import convert as library
from converters import pt2tf

# Signals are raised in-process: heed them even where the suite was started with them ignored
# (nohup: SIGHUP; a shell's background job: SIGINT). See conftest.heeded_signals.
pytestmark = pytest.mark.usefixtures("heeded_signals")

REPO = Path(__file__).resolve().parents[2]
# our log lines, and TensorFlow's native ones (printed at import whatever TF_CPP_MIN_LOG_LEVEL says)
LOG_LINE = re.compile(r"^((DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
                      r"|[IWEF]\d{4} |WARNING: All log messages before absl)")


def error_lines(err: str) -> list[str]:
    """stderr without log lines: what the user sees as the error."""
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.fixture
def release(tiny_pt_dir, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A zip of the tiny model, and an empty folder that TMPDIR points to for this test."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    return Path(shutil.make_archive(str(tmp_path / "release"), "zip", tiny_pt_dir)), tmpdir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_mid_conversion_cleans_up(signum, release, tmp_path, capsys, monkeypatch):
    archive, tmpdir = release
    during = []

    def write(fmt, work, *args):
        during.append(sorted(p.name[:10] for p in tmpdir.iterdir()) + sorted(p.name[:9] for p in tmp_path.iterdir()))
        assert signal.getsignal(signum) is interrupts._handler  # else the signal would end pytest itself
        signal.raise_signal(signum)
        raise AssertionError("the signal raised nothing")

    monkeypatch.setattr(library, "_write", write)
    capsys.readouterr()
    rc = pt2tf.main([str(archive), str(tmp_path / "out"), "--formats", "tf1", "-q"])
    err = capsys.readouterr().err
    assert during == [["cngpt_src_", ".out.tmp-", "release.z", "tmpdir"]]  # the signal came mid-way
    assert rc == 128 + signum
    assert error_lines(err) == [f"error: interrupted by {signum.name}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.zip", "tmpdir"]
    assert list(tmpdir.iterdir()) == []


def test_swallowed_interrupt_moves_nothing_into_place(release, tmp_path, capsys, monkeypatch):
    archive, tmpdir = release
    real_write = library._write

    def write(*args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # lost, as in a __del__ or TensorFlow's cleanup; the conversion goes on
        return real_write(*args)

    monkeypatch.setattr(library, "_write", write)
    capsys.readouterr()
    rc = pt2tf.main([str(archive), str(tmp_path / "out"), "--formats", "tf1", "-q"])
    assert rc == 130
    assert error_lines(capsys.readouterr().err) == ["error: interrupted by SIGINT"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.zip", "tmpdir"]
    assert list(tmpdir.iterdir()) == []


def _default_signals():
    for signum in interrupts.SIGNALS:  # as from an interactive shell, whatever started pytest
        signal.signal(signum, signal.SIG_DFL)


def test_sigterm_from_outside_cleans_up(tmp_path):
    tmpdir, out = tmp_path / "tmpdir", tmp_path / "out"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "converters.pt2tf", "--demo", str(out), "-q"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "the conversion never started its work"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and error_lines(err) == ["error: interrupted by SIGTERM"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmpdir"]  # no OUT_DIR, no .out.tmp-*
    assert list(tmpdir.iterdir()) == []  # the zip's extraction folder is gone too
