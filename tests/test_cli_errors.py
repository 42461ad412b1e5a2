"""Every CLI failure is one line: `cli.run_main` maps each kind of error to `error: ...` and an exit code,
signals to 128 + their number (also when their KeyboardInterrupt was swallowed), and restores the
signal handlers; CLIs reject flags that cannot work before they read any weights.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
from pathlib import Path

import pytest

from cngpt_tf import cli, generate, interrupts
from cngpt_tf.errors import SourceError, VerificationError

# Signals are raised in-process: heed them even where the suite was started with them ignored
# (nohup: SIGHUP; a shell's background job: SIGINT). See conftest.heeded_signals.
pytestmark = pytest.mark.usefixtures("heeded_signals")


def run(fn, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = cli.run_main(fn)
    return rc, capsys.readouterr().err.splitlines()


def raising(error: BaseException):
    def fn():
        raise error
    return fn


@pytest.mark.parametrize("error, code, text", [
    (SourceError("model/: missing vocab.txt"), 2, "error: model/: missing vocab.txt"),
    (VerificationError("verification failed\n  tf1: 0.5"), 3, "error: verification failed tf1: 0.5"),
    (OSError(errno.ENOSPC, "No space left on device", "out/.out.tmp-1-x/tf1"), 1,
     "error: [Errno 28] No space left on device: 'out/.out.tmp-1-x/tf1'"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), 1,
     "error: [Errno 13] Permission denied: '/ro/out'"),
    (ValueError("bad\nvalue"), 1, "error: bad value"),
    (MemoryError(), 1, "error: out of memory"),
    (RuntimeError("deep\n  inside"), 1, "error: RuntimeError: deep inside (rerun with --verbose for the traceback)"),
    (KeyboardInterrupt(), 130, "error: interrupted by SIGINT"),
])
def test_each_error_is_one_line_with_its_code(error, code, text, capsys):
    rc, lines = run(raising(error), capsys)
    assert (rc, lines) == (code, [text])


def test_tensorflow_error_is_one_line(capsys):
    import tensorflow as tf

    rc, lines = run(raising(tf.errors.DataLossError(None, None, "truncated record at 123\n\t[[node x]]")), capsys)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: DataLossError: truncated record at 123")


def test_very_long_message_is_cut(capsys):
    rc, lines = run(raising(ValueError("x" * 100_000)), capsys)
    assert rc == 1 and len(lines) == 1 and len(lines[0]) < 2100


def test_verbose_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_verbose", True)
    rc, lines = run(raising(OSError(errno.ENOSPC, "No space left on device")), capsys)
    assert rc == 1 and lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "error: [Errno 28] No space left on device"


def test_usage_errors_pass_through():
    with pytest.raises(SystemExit) as info:
        cli.run_main(raising(SystemExit(2)))
    assert info.value.code == 2


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_becomes_its_exit_code_and_handlers_are_restored(signum, code, capsys):
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    reached = []

    def fn():
        try:
            signal.raise_signal(signum)
        finally:
            reached.append("finally")  # cleanup runs as for Ctrl-C
        reached.append("after")

    rc, lines = run(fn, capsys)
    assert (rc, lines, reached) == (code, [f"error: interrupted by {signal.Signals(signum).name}"], ["finally"])
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before
    assert interrupts.received() is None  # the record does not outlive the run


def test_swallowed_interrupt_still_fails_the_run(capsys):
    def fn():
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # what a __del__, a callback or TensorFlow's cleanup does to it

    rc, lines = run(fn, capsys)
    assert (rc, lines) == (143, ["error: interrupted by SIGTERM"])


def test_ignored_signal_stays_ignored(capsys):
    """`nohup` ignores SIGHUP: the run must not end on a hang-up."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        rc, lines = run(lambda: signal.raise_signal(signal.SIGHUP), capsys)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
    assert (rc, lines) == (0, [])


def test_deferred_block_is_not_cut_and_raises_after():
    done = []
    with interrupts.handled():
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                signal.raise_signal(signal.SIGTERM)
                done.append("rest of the block")
        assert done == ["rest of the block"] and interrupts.received() == signal.SIGTERM


# ----- flags checked before any weights are read -----------------------------------------------------


@pytest.mark.parametrize("flag", [["--max_new_tokens", "0"], ["--max_length", "0"], ["--num_return_sequences", "0"],
                                  ["--min_new_tokens", "-1"], ["--seed", "-1"]])
def test_generate_rejects_lengths_below_one_before_loading(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:  # the model does not exist: a load would be an "error:" line
        generate.main([str(tmp_path / "no_model"), "春", *flag])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and f"error: {flag[0][2:]} must be an integer" in err, err


@pytest.mark.parametrize("argv, text", [
    (["--form", "五言绝句", "--max_new_tokens", "8"], "--max_new_tokens: a poem's form fixes its length"),
    (["--acrostic", "明月几时", "--min_new_tokens", "2"], "--min_new_tokens: a poem's form fixes its length"),
    (["--form", "七言"], "form: use one of"),
    (["--num_return_sequences", "2"], "num_return_sequences > 1 needs do_sample=True"),
    (["--max_length", "9", "--max_new_tokens", "8"], "not allowed with argument"),
])
def test_generate_refuses_settings_that_cannot_work_before_loading(argv, text, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        generate.main([str(tmp_path / "no_model"), "春", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and text in err.splitlines()[-1], err


def test_generate_poem_samples_several_without_do_sample(capsys, monkeypatch):
    """A poem samples by default, so --num_return_sequences needs no --do_sample there."""
    import cngpt_tf.generator

    calls = []

    class Fake:
        def poem(self, prompt, **kwargs):
            calls.append((prompt, kwargs))
            return ["床前明月光，\n疑是地上霜。"]

    monkeypatch.setattr(cngpt_tf.generator.Generator, "from_pretrained", staticmethod(lambda path, weights: Fake()))
    assert generate.main(["model", "春", "--form", "5,2", "--num_return_sequences", "2", "--top_k", "8"]) == 0
    assert calls == [("春", {"form": "5,2", "num_return_sequences": 2, "top_k": 8})]  # only what was given


class _FakeGenerator:
    def __init__(self, error):
        self.error = error

    def generate(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error, usage", [(ValueError("max_new_tokens=60: prompt (9 tokens) + 60 new tokens exceed "
                                                      "n_positions=64"), True),
                                          (SourceError("model/: missing vocab.txt"), False)])
def test_generate_library_value_error_is_a_usage_error(error, usage, capsys, monkeypatch):
    import cngpt_tf.generator

    monkeypatch.setattr(cngpt_tf.generator.Generator, "from_pretrained",
                        staticmethod(lambda path, weights: _FakeGenerator(error)))
    if usage:  # a setting that only the model can refuse
        with pytest.raises(SystemExit) as info:
            generate.main(["model", "春", "--max_new_tokens", "60"])
        assert info.value.code == 2 and "exceed n_positions=64" in capsys.readouterr().err
    else:  # our typed errors stay `error:` lines with their code
        assert generate.main(["model", "春"]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == "error: model/: missing vocab.txt"


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "0"),
                                         ("--repetition_penalty", "inf"), ("--top_p", "nan"), ("--top_p", "1e-46"),
                                         ("--atol", "nan"), ("--atol", "-1"), ("--atol", "inf"),
                                         ("--saved_model_version", str(2**63))])
def test_pt2tf_rejects_sampling_flags_that_cannot_work_at_once(flag, value, tmp_path, capsys):
    from converters import pt2tf

    with pytest.raises(SystemExit) as info:  # the model does not exist: reading it would be an "error:" line
        pt2tf.main([str(tmp_path / "no_model"), str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and flag[2:] in err.splitlines()[-1], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, text", [("--max_new_tokens", "64", "max_new_tokens"),
                                               ("--top_k", "100000", "top_k=100000")])
def test_pt2tf_rejects_flags_the_config_cannot_honour_before_reading_weights(flag, value, text, tiny_pt_dir,
                                                                              tmp_path, capsys):
    from converters import pt2tf

    model = Path(shutil.copytree(tiny_pt_dir, tmp_path / "model"))
    (model / "pytorch_model.bin").write_bytes(b"not a checkpoint")  # reading it would fail otherwise
    with pytest.raises(SystemExit) as info:
        pt2tf.main([str(model), str(tmp_path / "out"), flag, value, "-q"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and text in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("flag", [["--seed", "1"], ["--num_return_sequences", "2"], ["--form", "五言绝句"],
                                  ["--max_length", "20"], ["--min_new_tokens", "2"]])
def test_pt2tf_refuses_per_request_settings(flag, tmp_path, capsys):
    """A SavedModel takes its seed per request and writes one text per prompt; poems have their own
    signature: these flags would do nothing in an export, so they are refused, saying why (and --form
    is not taken for an abbreviation of --formats)."""
    from converters import pt2tf

    with pytest.raises(SystemExit) as info:
        pt2tf.main([str(tmp_path / "no_model"), str(tmp_path / "out"), *flag])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"error: {flag[0]}: not an export setting; " in err.splitlines()[-1], err
    with pytest.raises(SystemExit):  # and --help does not offer them
        pt2tf.main(["--help"])
    assert flag[0] + " " not in capsys.readouterr().out


def test_pt2tf_disk_full_is_one_line_and_leaves_nothing(tiny_pt_dir, tmp_path, capsys, monkeypatch):
    from cngpt_tf.export import convert as library
    from converters import pt2tf

    def full(fmt, work, *args):
        (work / fmt).mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(work / fmt / "model.ckpt"))

    monkeypatch.setattr(library, "_write", full)
    rc = pt2tf.main([str(tiny_pt_dir), str(tmp_path / "out"), "--formats", "tf1", "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: [Errno 28] No space left on device"), err
    assert list(tmp_path.iterdir()) == []  # no OUT_DIR, no temp folder


def test_control_characters_in_messages_and_log_lines_are_escaped(capsys):
    """A member or file name from a hostile zip must not retitle the terminal, clear it or split a line."""
    import logging

    hostile = "release.zip: member 'a\x1b]0;pwned\x07\u202eb\u2028c' is bad"
    rc, lines = run(raising(SourceError(hostile)), capsys)
    # controls escaped; U+2028 is whitespace, so the one-line join makes it a space
    assert rc == 2 and lines == ["error: release.zip: member 'a\\x1b]0;pwned\\x07\\u202eb c' is bad"]
    cli.setup_logging(False)
    logging.getLogger("cngpt_tf.test").warning("%s", "x\x1b[2Jy\nz")
    assert capsys.readouterr().err.splitlines() == ["WARNING cngpt_tf.test: x\\x1b[2Jy\\nz"]


def test_pt2tf_converts_each_format_once(tiny_pt_dir, tmp_path, capsys):
    from converters import pt2tf

    rc = pt2tf.main([str(tiny_pt_dir), str(tmp_path / "out"), "--formats", "tf1,tf1, tf1", "-q"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text(encoding="utf-8"))
    assert list(report["formats"]) == ["tf1"] and list(report["seconds"]) == ["read", "tf1", "verify"]
