"""`weights="fp32" | "bf16" | "int8"` on the three faces that load a model: Generator.from_pretrained,
cngpt_tf.pipeline and `python -m cngpt_tf.generate --weights`. The kernel's arithmetic in each mode is
tested in test_native_precision.py; here: what each face accepts, refuses, and that it loads what it
was asked for."""

from __future__ import annotations

import pytest
import tensorflow as tf

from cngpt_tf import generate, native, pipeline
from cngpt_tf.generator import Generator

needs_kernel = pytest.mark.skipif(not native.available(), reason="the native kernel needs an AVX2 / AVX-512 CPU and g++")
PROMPTS = ["明月几时有，", "春眠不觉晓，"]
PANEL_DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16, "int8": tf.int8}


@pytest.fixture(scope="module")
def fp32_texts(converted):
    return Generator.from_pretrained(converted, weights="fp32").generate(PROMPTS, max_new_tokens=12, min_new_tokens=12)


@needs_kernel
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_from_pretrained_holds_the_weights_it_was_asked_for(converted, fp32_texts, mode):
    generator = Generator.from_pretrained(converted, weights=mode)
    assert generator.weights == mode and generator.native_kernel
    panels = {k: v for k, v in generator.params.items() if k.endswith("/panels")}
    # every Conv1D of both layers and the tied embedding
    assert len(panels) == 4 * generator.config.n_layer + 1
    assert {v.dtype for v in panels.values()} == {PANEL_DTYPES[mode]}
    assert any(k.endswith("/scales") for k in generator.params) == (mode == "int8")
    assert "model/wte" not in generator.params  # the input side reads the same quantised table
    # greedy text of the tiny model agrees with fp32's (the errors are far below its logit gaps)
    assert generator.generate(PROMPTS, max_new_tokens=12, min_new_tokens=12) == fp32_texts


def test_an_unknown_mode_is_refused_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"weights='int4': one of fp32, bf16, int8"):
        Generator.from_pretrained(tmp_path / "no such folder", weights="int4")


def test_reduced_precision_refuses_xla_dot(converted):
    with pytest.raises(ValueError, match=r"weights='int8' needs the native kernel; native_kernel=False"):
        Generator.from_pretrained(converted, weights="int8", native_kernel=False)


def test_reduced_precision_refuses_a_machine_without_the_kernel(converted, monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "enabled", lambda: False)
    with pytest.raises(ValueError, match=r"weights='bf16' needs the native kernel, which cannot run here \("):
        Generator.from_pretrained(converted, weights="bf16")
    assert not Generator.from_pretrained(converted).native_kernel  # fp32 falls back to XLA's dot


@needs_kernel
def test_pipeline_loads_or_checks_the_mode(converted):
    assert pipeline("text-generation", converted, weights="int8").generator.weights == "int8"
    assert pipeline("text-generation", converted).generator.weights == "fp32"
    loaded = Generator.from_pretrained(converted)
    assert pipeline("text-generation", loaded, weights="fp32").generator is loaded
    with pytest.raises(ValueError, match=r"weights='int8', but the Generator given was loaded with weights='fp32'"):
        pipeline("text-generation", loaded, weights="int8")


@needs_kernel
def test_cli_weights_flag(converted, fp32_texts, capsys):
    argv = [str(converted), *PROMPTS, "--max_new_tokens", "12", "--min_new_tokens", "12"]
    assert generate.main(argv + ["--weights", "int8"]) == 0
    assert capsys.readouterr().out.splitlines() == fp32_texts


def test_cli_refuses_a_bad_mode_and_a_machine_without_the_kernel(converted, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        generate.main([str(converted), "x", "--weights", "int4"])
    assert exit_info.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    monkeypatch.setattr(native, "available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        generate.main([str(converted), "x", "--weights", "bf16"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then one error line
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert last.startswith("python -m cngpt_tf.generate: error: weights='bf16' needs the native kernel, which cannot run here")
