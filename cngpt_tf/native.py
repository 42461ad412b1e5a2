"""The panel matmul: a small C++ XLA:CPU kernel for the weight products, built on first use.

At batch 8 XLA runs every weight product through Eigen, which repacks the whole weight on each
call (~14 GB/s on a 2-core machine); `csrc/panel_matmul.cc` reads a weight stored pre-packed as
column panels [P, K, 32] once, in order, at the memory's speed, and is faster than XLA's own
matrix-vector code at batch 1 too (benchmarks/generation.py measures both paths).

It is an XLA custom call, so it runs only inside `tf.function(jit_compile=True)` on the CPU. The
generator uses it where `enabled()`; everything else (the conversion check, the SavedModel for TF
Serving, GPUs) keeps the plain XLA dot. `enabled()` is False, and the plain path is used, when:
  - CNGPT_TF_NATIVE=0 is set, or TF sees a GPU, or the CPU lacks AVX-512F;
  - the kernel cannot be built (no C++ compiler: `CXX`, default g++) — logged once as a warning.
The shared library is cached under $CNGPT_TF_CACHE (default ~/.cache/cngpt_tf), keyed by the source,
the TF version and the compiler command; building takes about 10 s on 2 cores, once per machine.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

PANEL = 32  # columns per panel; must match kPanel in csrc/panel_matmul.cc
TARGET = "cngpt_panel_matmul"
SOURCE = Path(__file__).parent / "csrc" / "panel_matmul.cc"


def enabled() -> bool:
    """Whether the generator should store its weights as panels and call the kernel by default."""
    return os.environ.get("CNGPT_TF_NATIVE", "1") != "0" and available()


def available() -> bool:
    """Whether the kernel can run here: no GPU for TF to place the products on, an AVX-512F CPU, and
    a library that builds and loads."""
    if tf.config.list_physical_devices("GPU"):
        return False
    return cpu_supported() and _load() is not None


def cpu_supported() -> bool:
    """AVX-512F, read from /proc/cpuinfo (Linux; elsewhere the kernel is not used)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " avx512f" in flags


def to_panels(w: np.ndarray) -> np.ndarray:
    """W [K, N] -> panels [ceil(N / 32), K, 32], zero past column N."""
    k, n = w.shape
    n_panels = -(-n // PANEL)
    padded = np.zeros((k, n_panels * PANEL), w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, n_panels, PANEL).transpose(1, 0, 2))


def from_panels(panels: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `to_panels`: panels [P, K, 32] -> W [K, n]."""
    n_panels, k, _ = panels.shape
    return np.ascontiguousarray(panels.transpose(1, 0, 2).reshape(k, n_panels * PANEL)[:, :n])


def panel_matmul(x, panels, n: int, threads: int):
    """x [M, K] @ W [K, n] for W stored as `panels` [ceil(n / 32), K, 32]; float32, under XLA only.

    threads: the CPU threads to split the panels over (the caller's and threads - 1 pooled ones)."""
    from tensorflow.compiler.tf2xla.python import xla

    rows, depth = x.shape
    if rows is None:
        raise ValueError("panel_matmul: the number of rows must be known when tracing (XLA shapes are static)")
    if panels.shape[1] != depth or panels.shape[0] * PANEL < n:
        raise ValueError(f"panel_matmul: x {x.shape} does not fit panels {panels.shape} for {n} columns")
    config = f"{rows} {depth} {n} {threads}"
    (out,) = xla.custom_call_v2(TARGET, [x, panels], [tf.TensorSpec([rows, n], tf.float32)], backend_config=config)
    return out


def compile_command(output: Path) -> list[str]:
    """The compiler call that builds the kernel against this TensorFlow's headers and library."""
    tf_dir = Path(tf.__file__).parent
    return [
        *shlex.split(os.environ.get("CXX", "g++")),
        "-O3", "-mavx512f", "-mfma", "-shared", "-fPIC",
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE), "-o", str(output),
        f"-L{tf_dir}", "-l:libtensorflow_cc.so.2", f"-Wl,-rpath,{tf_dir}",
    ]  # fmt: skip


def cache_dir() -> Path:
    return Path(os.environ.get("CNGPT_TF_CACHE", Path.home() / ".cache" / "cngpt_tf"))


@functools.cache
def _load():
    """Build (once per machine) and load the kernel, registering it with XLA; None if that fails."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(tf.__version__.encode())
    key.update(" ".join(compile_command(Path("out"))).encode())
    library = cache_dir() / f"panel_matmul-{key.hexdigest()[:16]}.so"
    try:
        if not library.is_file():
            _build(library)
        return ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)  # its static initializer registers TARGET
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native kernel unavailable, using XLA's dot for the weight products: %s", e)
        return None


def _build(library: Path) -> None:
    """Compile into a temporary file beside `library`, then rename: never a half-written library."""
    library.parent.mkdir(parents=True, exist_ok=True)
    log.info("building %s (once per machine)", library.name)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        run = subprocess.run(compile_command(Path(tmp)), capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise subprocess.SubprocessError(f"{SOURCE.name}: compiler exited {run.returncode}: {last}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
