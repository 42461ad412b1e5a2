"""cngpt_tf.native: the panel layout, the kernel against numpy under XLA, the model and the generator
on panels equal to XLA's dot, and the fallback when the kernel cannot be built."""

from __future__ import annotations

import logging
import re
import threading

import numpy as np
import pytest
import tensorflow as tf

from cngpt_tf import model, native
from cngpt_tf.config import GPT2Config
from cngpt_tf.formats import names
from cngpt_tf.generator import Generator
from cngpt_tf.demo import demo_weights

CONFIG = GPT2Config(n_vocab=97, n_ctx=32, n_embd=32, n_head=4, n_layer=2)  # 97: a part-filled last panel

needs_kernel = pytest.mark.skipif(not native.available(), reason="the native kernel needs an AVX2 / AVX-512 CPU and g++")


@pytest.mark.parametrize("k, n", [(5, 32), (7, 40), (3, 97), (1, 1)])
def test_panels_hold_each_column_once_and_zero_past_n(k, n):
    w = np.random.default_rng(n).standard_normal((k, n)).astype(np.float32)
    panels = native.to_panels(w)
    assert panels.shape == (-(-n // 32), k, 32)
    for column in range(n):  # column c is column c % 32 of panel c // 32
        np.testing.assert_array_equal(panels[column // 32, :, column % 32], w[:, column])
    assert not panels.reshape(-1, k, 32).transpose(1, 0, 2).reshape(k, -1)[:, n:].any()  # zero past n
    np.testing.assert_array_equal(native.from_panels(panels, n), w)
    assert panels.ctypes.data % 64 == 0 and panels.flags.c_contiguous


@pytest.mark.parametrize("k, n", [(5, 32), (7, 40), (3, 97), (1, 1), (4, 64)])
def test_panels_with_a_bias_row_equal_panels_of_the_stacked_matrix(k, n):
    rng = np.random.default_rng(k * n)
    w, b = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(native.to_panels(w, b), native.to_panels(np.concatenate([w, b[None]])))


@pytest.mark.parametrize("dtype", [np.float32, np.int8, tf.bfloat16.as_numpy_dtype])
def test_variable_takes_an_aligned_array_without_a_copy(dtype):
    array = native.aligned_empty((3, 5, 32), dtype)
    array[...] = np.arange(array.size).reshape(array.shape) % 100
    v = native.variable(array, "w")
    assert v.dtype.as_numpy_dtype == dtype and v.shape == array.shape and not v.trainable
    np.testing.assert_array_equal(v.numpy(), array)
    array[0, 0, 0] = 7  # one buffer: the packed weights are the generator's own, never changed
    assert float(v[0, 0, 0]) == 7


def test_variable_copies_what_it_cannot_take():
    base = native.aligned_empty((65,), np.float32)
    base[...] = 1
    unaligned = base[1:]  # 4 bytes past a 64-byte boundary
    v = native.variable(unaligned, "w")
    unaligned[0] = 7
    assert float(v[0]) == 1 and v.shape == (64,)
    strided = native.variable(np.ones((4, 4), np.float32)[:, ::2], "s")
    assert strided.shape == (4, 2)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows, depth, n", [(1, 65, 64), (8, 33, 96), (11, 769, 40), (17, 7, 97), (3, 1, 1)])
def test_kernel_equals_numpy(rows, depth, n, threads):
    rng = np.random.default_rng(rows * depth + n)
    x = rng.standard_normal((rows, depth)).astype(np.float32)
    w = rng.standard_normal((depth, n)).astype(np.float32)
    panels = tf.constant(native.to_panels(w))
    out = tf.function(lambda x: native.panel_matmul(x, panels, n, threads), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-4 * np.sqrt(depth))


@needs_kernel
def test_kernel_is_right_when_two_callers_share_its_thread_pool():
    # The pool serves one caller at a time; a concurrent one computes on its own thread instead.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 512)).astype(np.float32)
    panels = tf.constant(native.to_panels(w))
    product = tf.function(lambda x: native.panel_matmul(x, panels, 512, 2), jit_compile=True)
    xs = [rng.standard_normal((8, 300)).astype(np.float32) for _ in range(4)]
    product(xs[0])  # compile once, before the threads race
    errors = []

    def work(x):
        for _ in range(20):
            if not np.allclose(product(x).numpy(), x @ w, rtol=1e-4, atol=1e-3):
                errors.append("mismatch")

    threads = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pack_params_with_panels_replaces_every_conv1d_and_the_output_embedding():
    tf1 = names.convert(demo_weights(CONFIG, seed=1), names.PT, names.TF1, CONFIG)
    packed = model.pack_params(tf1, threads=2, panels=True)
    for scope in model.CONV1D_SCOPES:
        w, b = tf1[f"model/h0/{scope}/w"][0], tf1[f"model/h0/{scope}/b"]
        wb = native.from_panels(packed[f"model/h0/{scope}/panels"], w.shape[1])
        np.testing.assert_array_equal(wb, np.concatenate([w, b[None, :]]))  # [nx + 1, nf]: bias as the last row
    np.testing.assert_array_equal(native.from_panels(packed["model/wte/panels"], CONFIG.n_vocab), tf1["model/wte"].T)
    assert "model/wte" not in packed and not any("/wb/" in k for k in packed)


@needs_kernel
def test_logits_on_panels_equal_logits_on_row_blocks():
    tf1 = names.convert(demo_weights(CONFIG, seed=2), names.PT, names.TF1, CONFIG)
    ids = np.random.default_rng(0).integers(0, CONFIG.n_vocab, size=(3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    panels = model.pack_params(tf1, threads=2, panels=True)
    on_panels = tf.function(lambda ids, mask: model.logits(panels, CONFIG, ids, mask), jit_compile=True)(ids, mask)
    plain = model.logits(model.pack_params(tf1, threads=2), CONFIG, ids, mask)
    np.testing.assert_allclose(on_panels.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_generator_ids_do_not_depend_on_the_kernel():
    weights = demo_weights(CONFIG, seed=3)
    ids = np.array([[101 % 97, 5, 6, 7], [0, 0, 8, 9]], np.int32)
    mask = (np.arange(4) >= np.array([[0], [2]])).astype(np.int32)
    outs = []
    for native_kernel in (True, False):
        gen = Generator(weights, CONFIG, native_kernel=native_kernel)
        greedy = gen.generate_ids(ids, mask, max_new_tokens=12, min_new_tokens=12)
        sampled = gen.generate_ids(ids, mask, max_new_tokens=12, do_sample=True, top_k=5, seed=7)
        outs.append((greedy, sampled))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_generator_refuses_the_kernel_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    with pytest.raises(ValueError, match="native_kernel=True"):
        Generator(demo_weights(CONFIG, seed=0), CONFIG, native_kernel=True)
    assert Generator(demo_weights(CONFIG, seed=0), CONFIG).native_kernel is False


def test_opt_out_variable_disables_the_kernel(monkeypatch):
    monkeypatch.setenv("CNGPT_TF_NATIVE", "0")
    assert native.enabled() is False


def test_a_failed_build_falls_back_and_leaves_nothing_behind(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CNGPT_TF_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cngpt_tf.native"):
            assert native._load() is None
    finally:
        native._load.cache_clear()  # later tests load the real (cached) library again
    assert "native kernel unavailable" in caplog.text and "no-such-compiler" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library


@needs_kernel
def test_a_compiler_error_names_the_source(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CNGPT_TF_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "g++ -x c")  # compiles the C++ sources as C: fails
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cngpt_tf.native"):
            assert native._load() is None
    finally:
        native._load.cache_clear()
    assert re.search(r"kernels_\w+\.cc: compiler exited", caplog.text)
    assert list(tmp_path.iterdir()) == []


OLD_COMPILER = """#!/bin/sh
# g++ as a compiler older than AMX (GCC < 11) answers its flags
for arg in "$@"; do case "$arg" in -mamx-*) echo "g++: error: unrecognized command-line option '$arg'" >&2; exit 1;; esac; done
exec g++ "$@"
"""

WITHOUT_AMX = """
import logging, sys
import numpy as np, tensorflow as tf
from cngpt_tf import native, quantize
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
assert native.available()  # builds and loads the library: cpu_isas() is then what it confirms
print("isas", " ".join(native.cpu_isas()), "bf16-on", native.isa("bf16"))
x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((40, 70)).astype(np.float32)
packed = quantize.pack(w, "bf16", 128)
out = tf.function(lambda x: native.panel_matmul(x, tf.constant(packed["panels"]), 70, 2), jit_compile=True)(x)
expected = x.astype(np.float64) @ quantize.dequantize(packed["panels"], 70, None, 128)[:40].astype(np.float64)
print("bf16 product max error", float(np.abs(out.numpy() - expected).max()))
"""


@needs_kernel
@pytest.mark.skipif("avx512" not in native.cpu_isas(), reason="the optional variants need AVX-512")
def test_a_compiler_too_old_for_an_optional_variant_builds_the_others(tmp_path):
    # A fresh process (a second library in this one would register the custom calls twice) builds
    # with a compiler that refuses AMX's flags: logged, built without that variant, and bf16 runs
    # on another one, right.
    import os
    import subprocess
    import sys

    compiler = tmp_path / "old-g++"
    compiler.write_text(OLD_COMPILER)
    compiler.chmod(0o755)
    env = {**os.environ, "CXX": str(compiler), "CNGPT_TF_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(native.ISA_VARIABLE, None)
    run = subprocess.run([sys.executable, "-c", WITHOUT_AMX], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "built without its amxbf16 variant: kernels_amxbf16.cc: compiler exited 1" in run.stdout
    isas = re.search(r"^isas (.*) bf16-on (\S+)$", run.stdout, re.M)
    assert "avx512" in isas.group(1).split() and "amxbf16" not in isas.group(1).split()
    assert isas.group(2) != "amxbf16"
    assert float(re.search(r"max error (\S+)", run.stdout).group(1)) < 1e-3
    assert len(list((tmp_path / "cache").glob("panel_matmul-*.so"))) == 1
