"""The parts of benchmarks/cold_start.py that run no model: the commands it times and how it times one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.cold_start import PROMPT, commands, run_once


def test_the_rows_are_the_users_command_with_the_cache_on_and_off(tmp_path):
    rows = commands(Path("OUT"), None, tmp_path / "xla")
    generate = [sys.executable, "-m", "cngpt_tf.generate", "OUT", PROMPT]
    assert rows["cngpt_tf generate fp32, compile cache off"] == (generate, {"CNGPT_TF_XLA_CACHE": "0"})
    assert rows["cngpt_tf generate int8, compile cache warm"] == (
        [*generate, "--weights", "int8"], {"CNGPT_TF_XLA_CACHE": str(tmp_path / "xla")})
    assert not any(name.startswith("HF") for name in rows)  # no PyTorch release given: no HF row
    assert any(name.startswith("HF") for name in commands(Path("OUT"), Path("PT"), tmp_path))


def test_run_once_times_the_first_line_and_the_exit():
    text_at, exit_at, line = run_once([sys.executable, "-c", "import time; print('明月', flush=True); time.sleep(0.5)"], {})
    assert line == "明月" and exit_at - text_at >= 0.4


def test_a_failed_command_is_an_error_naming_its_exit():
    with pytest.raises(RuntimeError, match="exited 3: boom"):
        run_once([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], {})
