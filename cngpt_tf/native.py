"""The panel matmul: a small C++ XLA:CPU kernel for the weight products (and a decode step's
attention), built on first use.

At batch 8 XLA runs every weight product through Eigen, which repacks the whole weight on each
call (~14 GB/s on a 2-core machine); `csrc/panel_matmul.cc` reads a weight stored pre-packed as
column panels [P, K, 32] once, in order, at the memory's speed, and is faster than XLA's own
matrix-vector code at batch 1 too (benchmarks/generation.py measures both paths).

Weights: float32 panels, or reduced precision (`cngpt_tf.quantize` packs them): bfloat16 (half the
bytes) or int8 with a float32 scale per block of `quantize.INT8_GROUP` rows and column (about a
quarter); the sums are float32 (on AVX512-VNNI, int8 sums each scale block exactly in int32 first).
The dtype of the panels picks the mode.

A second custom call, `decode_attention`, is a decode step's attention over the K/V cache
(csrc/decode_attention.h): it reads only the slots in use, where XLA's dots read every slot. Both
take every layer's weights (or cache) with a layer index when the model runs its blocks as one loop
over the layers (`cngpt_tf.model.layers_as_loop`), and read that layer's in place.

ISAs, chosen at run time for each weight mode (`isa(mode)`, `describe()`): the kernels exist for
AVX2 + FMA ("avx2"), AVX-512F ("avx512"), AVX512-BF16 ("avx512bf16": bf16 weights by its pair dot
product, x rounded to bf16; the other modes as "avx512"), AVX512-VNNI ("avx512vnni", with BW and
VBMI: int8 weights by its byte dot product, x quantised to int8 per row and scale block; the other
modes as "avx512") and AMX-BF16 ("amxbf16", with AVX512-BF16 and the OS's leave to use the tiles:
bf16 weights by tile products, x rounded to bf16 as for the dot product; the other modes as
"avx512"). fp32 runs on the best of AVX-512F / AVX2; int8 on VNNI where the CPU has it; bf16 on AMX
where the CPU has it (Intel Sapphire Rapids and later), else on the AVX512-BF16 dot product except
on Intel CPUs: on this project's Xeon the dot product ran at 39 GMAC/s a core against 55 for widening
to fp32 (batch 8; batch 1 is bound by memory either way), while AMD's Zen 4 runs 512-bit FMAs at half
the rate of its dot product; AMX's tiles were faster than both at batch 8 and in the prefill (see
csrc/kernels_amxbf16.cc). CNGPT_TF_NATIVE_ISA
names one the CPU has for every mode (tests and benchmarks run every variant on one machine).

It is an XLA custom call, so it runs only inside `tf.function(jit_compile=True)` on the CPU. The
generator uses it where `enabled()`; everything else (the conversion check, the SavedModel for TF
Serving, GPUs) keeps the plain XLA dot. `enabled()` is False, and the plain path is used, when:
  - CNGPT_TF_NATIVE=0 is set, or TF sees a GPU, or the CPU has neither AVX2 + FMA nor AVX-512F;
  - the kernel cannot be built (no C++ compiler: `CXX`, default g++) — logged once as a warning.
A compiler too old for one of OPTIONAL_ISAS builds the library without that variant (also logged).
The shared library is cached under $CNGPT_TF_CACHE (default ~/.cache/cngpt_tf), keyed by the sources,
the TF version and the compiler commands; building takes about 15 s on 2 cores, once per machine.
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

from . import compile_cache
from .errors import ConfigError

log = logging.getLogger(__name__)

PANEL = 32  # columns per panel; must match kPanel in csrc/panel_job.h
TARGET = "cngpt_panel_matmul"
ATTENTION_TARGET = "cngpt_decode_attention"
CSRC = Path(__file__).parent / "csrc"
SOURCE = CSRC / "panel_matmul.cc"  # the custom call: registration, threads, dispatch; no ISA flags
HEADERS = (CSRC / "panel_job.h", CSRC / "panel_tiles.h", CSRC / "decode_attention.h")
# ISA -> (/proc/cpuinfo flags it needs, compiler flags of csrc/kernels_<isa>.cc); weakest first.
ISAS = {
    "avx2": ({"avx2", "fma"}, ["-mavx2", "-mfma"]),
    "avx512": ({"avx512f"}, ["-mavx512f", "-mfma"]),
    "avx512bf16": ({"avx512f", "avx512_bf16"}, ["-mavx512f", "-mfma", "-mavx512bf16"]),
    "avx512vnni": ({"avx512f", "avx512bw", "avx512_vnni", "avx512vbmi"},
                   ["-mavx512f", "-mfma", "-mavx512bw", "-mavx512vnni", "-mavx512vbmi"]),
    "amxbf16": ({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"},
                ["-mavx512f", "-mfma", "-mavx512bf16", "-mamx-tile", "-mamx-bf16"]),
}
# The ISAs a compiler may not know (GCC 10 / 8 / 11 added their flags): where one fails to compile,
# the library is built without it (logged), and the CPU's other variants run its weight modes.
OPTIONAL_ISAS = ("avx512bf16", "avx512vnni", "amxbf16")
ISA_VARIABLE = "CNGPT_TF_NATIVE_ISA"
MODES = {tf.float32: "fp32", tf.bfloat16: "bf16", tf.int8: "int8"}  # panels' dtype -> the kernel's mode


def enabled() -> bool:
    """Whether the generator should store its weights as panels and call the kernel by default."""
    return os.environ.get("CNGPT_TF_NATIVE", "1") != "0" and available()


def available() -> bool:
    """Whether the kernel can run here: no GPU for TF to place the products on, an AVX2 + FMA or
    AVX-512F CPU, and a library that builds and loads."""
    if tf.config.list_physical_devices("GPU"):
        return False
    return cpu_supported() and _load() is not None


def cpu_supported() -> bool:
    """Whether this CPU has an ISA the kernels are written for (before building anything)."""
    return bool(cpu_isas())


def cpu_isas() -> tuple[str, ...]:
    """The kernel ISAs this CPU has, weakest first: those whose flags /proc/cpuinfo lists (Linux;
    elsewhere none) and, once the library is loaded, that its own cpuid check confirms."""
    isas = tuple(name for name, (flags, _) in ISAS.items() if flags <= _cpu_flags())
    library = _load.cache_info().currsize and _load()  # never builds just to answer
    if library:
        confirmed = library.cngpt_native_isas()
        isas = tuple(name for i, name in enumerate(ISAS) if name in isas and confirmed & (1 << i))
    return isas


def isa(mode: str = "fp32") -> str:
    """The ISA the kernel runs weights of `mode` on: CNGPT_TF_NATIVE_ISA where set (one this CPU
    has, else ConfigError), else the best this CPU has for the mode (see the module docstring).
    Read when a product is traced."""
    have = cpu_isas()
    chosen = os.environ.get(ISA_VARIABLE, "")
    if chosen:
        if chosen not in have:
            raise ConfigError(f"{ISA_VARIABLE}={chosen}: this CPU runs {', '.join(have) or 'none'} of "
                              f"the native kernel's ISAs ({', '.join(ISAS)})")
        return chosen
    if not have:
        raise ConfigError("the native kernel needs an AVX2 + FMA or AVX-512F CPU")
    if mode == "int8" and "avx512vnni" in have:
        return "avx512vnni"
    if mode == "bf16" and "amxbf16" in have:
        return "amxbf16"
    if mode == "bf16" and "avx512bf16" in have and _cpu_vendor() != "GenuineIntel":
        return "avx512bf16"
    return "avx512" if "avx512" in have else "avx2"


def describe() -> str:
    """One line: which kernel variant the weight products run on here, or why none."""
    if os.environ.get("CNGPT_TF_NATIVE", "1") == "0":
        return "native kernel off (CNGPT_TF_NATIVE=0): XLA's dot"
    if tf.config.list_physical_devices("GPU"):
        return "native kernel not used (TF sees a GPU): XLA's dot"
    if not cpu_supported():
        return "native kernel not used (the CPU has neither AVX2 + FMA nor AVX-512F): XLA's dot"
    if _load() is None:
        return "native kernel not used (it did not build; see the warning logged): XLA's dot"
    chosen = {mode: isa(mode) for mode in MODES.values()}
    bf16 = {"avx512bf16": "AVX512-BF16 dot products, x rounded to bf16",
            "amxbf16": "AMX tiles, x rounded to bf16"}.get(chosen["bf16"], "widened to fp32")
    int8 = ("AVX512-VNNI dot products, x quantised to int8 per block" if chosen["int8"] == "avx512vnni"
            else "widened to fp32")
    forced = f", forced by {ISA_VARIABLE}" if os.environ.get(ISA_VARIABLE) else f", {_cpu_vendor() or 'unknown vendor'}"
    return (f"native kernel: {chosen['fp32']} (this CPU: {', '.join(cpu_isas())}{forced}); fp32, "
            f"bf16 on {chosen['bf16']} ({bf16}), int8 on {chosen['int8']} ({int8}, per-block scales) weights")


def panel_matmul(x, panels, n: int, threads: int, scales=None, *, group: int | None = None,
                 isa_name: str | None = None, layer=None):
    """x [M, K] @ W [K, n] for W stored as `panels` (`to_panels`, or `cngpt_tf.quantize`'s bf16 or
    int8 panels with their `scales`); float32 result, under XLA only.

    threads: the CPU threads to split the panels over (the caller's and threads - 1 pooled ones).
    group: int8's rows per scale block (what the scales were made with: `quantize.INT8_GROUP` by
    default there). isa_name: the kernel variant (default `isa()`); one this CPU lacks is ConfigError.
    layer: a scalar int32 tensor picking one of several weights of the same shape: `panels` (and
    `scales`) are then lists, one per layer, handed to the kernel as they are (a loop over the
    layers reads each in place: no slice of a stacked tensor to copy)."""
    from tensorflow.compiler.tf2xla.python import xla

    if _load() is None:  # builds on first use; registers the custom call with XLA
        raise ConfigError("panel_matmul: the native kernel did not build here (see the warning logged)")
    layered = layer is not None  # the weights of every layer: checked below as the first one's
    every_panels = list(panels) if layered else [panels]
    every_scales = [] if scales is None else list(scales) if layered else [scales]
    if (not every_panels or len(every_scales) not in (0, len(every_panels))
            or not all(_alike(w, ws[0]) for ws in (every_panels, every_scales) for w in ws)):
        raise ValueError(f"panel_matmul: layer= needs a list of panels (and one of scales) of one shape and dtype, "
                         f"one per layer; got {len(every_panels)} panels and {len(every_scales)} scales")
    panels, scales = every_panels[0], every_scales[0] if every_scales else None
    rows, depth = x.shape
    if rows is None:
        raise ValueError("panel_matmul: the number of rows must be known when tracing (XLA shapes are static)")
    mode = MODES.get(tf.as_dtype(panels.dtype))
    if mode is None:
        raise ValueError(f"panel_matmul: panels of {panels.dtype}; the kernel reads float32, bfloat16 or int8")
    stored_rows = -(-depth // 2) if mode == "bf16" else depth  # bf16 stores the rows in pairs
    if panels.shape[1] != stored_rows or panels.shape[0] * PANEL < n or panels.shape[2] != PANEL:
        raise ValueError(f"panel_matmul: x {x.shape} does not fit {mode} panels {panels.shape} for {n} columns")
    if mode == "int8":
        if group is None or group < 1:
            raise ValueError(f"panel_matmul: int8 panels need the rows per scale block, group >= 1, got {group}")
        blocks = -(-depth // group)
        if scales is None or tuple(scales.shape) != (panels.shape[0], blocks, PANEL):
            raise ValueError(f"panel_matmul: int8 panels {panels.shape} need scales [{panels.shape[0]}, {blocks}, "
                             f"{PANEL}] (blocks of {group} rows), got {None if scales is None else scales.shape}")
    if isa_name is None:
        isa_name = isa(mode)
    elif isa_name not in cpu_isas():
        raise ConfigError(f"panel_matmul: isa_name={isa_name!r}: this CPU runs {', '.join(cpu_isas()) or 'none'}")
    config = f"{rows} {depth} {n} {threads} {isa_name} {mode} {group if mode == 'int8' else 0}"
    index = [tf.reshape(tf.cast(layer, tf.int32), [1])] if layered else []
    operands = [x, *index, *every_panels, *(every_scales if mode == "int8" else [])]
    if layered:
        config += f" {len(every_panels)}"
    (out,) = xla.custom_call_v2(TARGET, operands, [tf.TensorSpec([rows, n], tf.float32)], backend_config=config)
    return out


def _alike(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype


def decode_attention(q, keys, values, key_mask, n, n_head: int, threads: int, *, layer=None,
                     isa_name: str | None = None):
    """One decode step's attention (csrc/decode_attention.h), under XLA only: q [B * H, D] (the new
    token's queries), keys and values [B * H, S, D] (the cache, this step's K/V written in), key_mask
    [B, S] 0/1, n: scalar, the slots in use (the step's slot + 1; later slots are not read) ->
    softmax((q . keys) / sqrt(D) over the slots s < n with key_mask 1) @ values, [B * H, D] float32.
    layer: a scalar int32 tensor; keys and values are then every layer's cache [L, B * H, S, D], and
    the kernel reads layer `layer`'s in place. isa_name: as `panel_matmul`'s (its fp32 kernel: avx2
    or avx512)."""
    from tensorflow.compiler.tf2xla.python import xla

    if _load() is None:
        raise ConfigError("decode_attention: the native kernel did not build here (see the warning logged)")
    rows, depth = q.shape
    if rows is None or rows % n_head:
        raise ValueError(f"decode_attention: q {q.shape} needs a known number of rows, a multiple of {n_head} heads")
    stacked = layer is not None  # keys [L, B * H, S, D], else one layer's [B * H, S, D]
    shape = tuple(keys.shape)
    if len(shape) != 3 + stacked or None in shape or shape[-3::2] != (rows, depth) or tuple(values.shape) != shape:
        raise ValueError(f"decode_attention: keys {keys.shape} and values {values.shape} do not fit q {q.shape}"
                         + (" (layer=: every layer's [L, B * H, S, D])" if stacked else ""))
    layers, slots = (shape[0] if stacked else 1), shape[-2]
    if tuple(key_mask.shape) not in ((rows // n_head, slots), (None, slots)):
        raise ValueError(f"decode_attention: key_mask {key_mask.shape} does not fit [{rows // n_head}, {slots}]")
    if q.dtype != tf.float32 or keys.dtype != tf.float32 or values.dtype != tf.float32:
        raise ValueError("decode_attention: q, keys and values must be float32")
    if isa_name is None:
        isa_name = isa("fp32")
    elif isa_name not in cpu_isas():
        raise ConfigError(f"decode_attention: isa_name={isa_name!r}: this CPU runs {', '.join(cpu_isas()) or 'none'}")
    scale = np.float32(1.0 / np.sqrt(depth))
    config = f"{rows} {slots} {depth} {n_head} {threads} {isa_name} {float(scale)!r} {layers}"
    n_layer = tf.stack([tf.cast(n, tf.int32), tf.cast(layer if stacked else 0, tf.int32)])
    operands = [q, keys, values, tf.cast(key_mask, tf.int32), n_layer]
    (out,) = xla.custom_call_v2(ATTENTION_TARGET, operands, [tf.TensorSpec([rows, depth], tf.float32)],
                                backend_config=config)
    return out


def to_panels(w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """W [K, N] -> panels [ceil(N / 32), K, 32], zero past column N (any dtype); with `bias` [N],
    [[W], [bias]] [K + 1, N] without building it. One pass into a fresh `aligned_empty` array (the
    generator hands it to TensorFlow without a copy: `variable`)."""
    k, n = w.shape
    n_panels, whole = -(-n // PANEL), n // PANEL
    rows = k + (bias is not None)
    panels = aligned_empty((n_panels, rows, PANEL), w.dtype)
    panels[:whole, :k] = w[:, : whole * PANEL].reshape(k, whole, PANEL).transpose(1, 0, 2)
    if bias is not None:
        panels[:whole, k] = np.reshape(bias[: whole * PANEL], (whole, PANEL))
    if whole < n_panels:  # the last panel, part empty
        panels[whole] = 0
        panels[whole, :k, : n - whole * PANEL] = w[:, whole * PANEL:]
        if bias is not None:
            panels[whole, k, : n - whole * PANEL] = bias[whole * PANEL:]
    return panels


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an `align`-byte boundary (what XLA
    wants of a buffer it is handed without a copy; NumPy alone guarantees 16 bytes)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def variable(array: np.ndarray, name: str) -> tf.Variable:
    """A tf.Variable over `array`'s own memory (DLPack, no copy: packing GPT-12L-CN's 408 MB of
    fp32 panels then costs one pass instead of two) where it is C-contiguous and 64-byte aligned,
    as `to_panels` and `cngpt_tf.quantize` make them; a copy otherwise. The array must not change
    afterwards (the generator's packed weights are its own). bfloat16 goes as its uint16 bits
    (DLPack in NumPy knows no bfloat16) and is bitcast back, also without a copy."""
    if not (array.flags.c_contiguous and array.ctypes.data % 64 == 0 and array.size):
        return tf.Variable(array, trainable=False, name=name)
    bfloat16 = array.dtype == tf.bfloat16.as_numpy_dtype
    tensor = tf.experimental.dlpack.from_dlpack((array.view(np.uint16) if bfloat16 else array).__dlpack__())
    return tf.Variable(tf.bitcast(tensor, tf.bfloat16) if bfloat16 else tensor, trainable=False, name=name)


def from_panels(panels: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `to_panels`: panels [P, K, 32] -> W [K, n]."""
    n_panels, k, _ = panels.shape
    return np.ascontiguousarray(panels.transpose(1, 0, 2).reshape(k, n_panels * PANEL)[:, :n])


def compile_commands(output: Path, objects: Path, isas=tuple(ISAS)) -> list[list[str]]:
    """The compiler calls that build the kernel: each kernels_<isa>.cc into `objects` with its ISA's
    flags (run in parallel), then the custom call, without ISA flags, linked with those of `isas`
    against this TensorFlow's library into `output` (last)."""
    cxx = shlex.split(os.environ.get("CXX", "g++"))
    tf_dir = Path(tf.__file__).parent
    commands = [[*cxx, "-O3", "-std=c++17", "-fPIC", *flags, "-c", str(CSRC / f"kernels_{name}.cc"),
                 "-o", str(objects / f"kernels_{name}.o")] for name, (_, flags) in ISAS.items()]
    commands.append([
        *cxx, "-O3", "-shared", "-fPIC", *tf.sysconfig.get_compile_flags(),
        str(SOURCE), *(str(objects / f"kernels_{name}.o") for name in isas), "-o", str(output),
        f"-L{tf_dir}", "-l:libtensorflow_cc.so.2", f"-Wl,-rpath,{tf_dir}",
    ])  # fmt: skip
    return commands


def sources() -> list[Path]:
    return [SOURCE, *HEADERS, *(CSRC / f"kernels_{name}.cc" for name in ISAS)]


def cache_dir() -> Path:
    return compile_cache.cache_root()


def _cpu_flags() -> frozenset:
    return frozenset(_cpuinfo("flags").split())


def _cpu_vendor() -> str:
    return _cpuinfo("vendor_id").strip()


@functools.cache
def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo; "" where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    return next((line.partition(":")[2] for line in text.splitlines() if line.split(":")[0].strip() == field), "")


@functools.cache
def _load():
    """Build (once per machine) and load the kernel, registering it with XLA; None if that fails."""
    key = hashlib.sha256()
    for path in sources():
        key.update(path.read_bytes())
    key.update(tf.__version__.encode())
    key.update(repr(compile_commands(Path("out"), Path("objects"))).encode())
    library = cache_dir() / f"panel_matmul-{key.hexdigest()[:16]}.so"
    try:
        if not library.is_file():
            _build(library)
        loaded = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)  # its static initializer registers TARGET
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("native kernel unavailable, using XLA's dot for the weight products: %s", e)
        return None
    loaded.cngpt_native_isas.restype = ctypes.c_int
    return loaded


def _build(library: Path) -> None:
    """Compile in a temporary folder beside `library`, then rename: never a half-written library."""
    library.parent.mkdir(parents=True, exist_ok=True)
    log.info("building %s (once per machine)", library.name)
    with tempfile.TemporaryDirectory(dir=library.parent, prefix=".build-") as tmp:
        output = Path(tmp) / library.name
        failures = dict(zip(ISAS, _run_all(compile_commands(output, Path(tmp))[:-1])))
        for name, why in failures.items():
            if why and name not in OPTIONAL_ISAS:
                raise subprocess.SubprocessError(why)
            if why:
                log.warning("native kernel built without its %s variant: %s", name, why)
        built = tuple(name for name, why in failures.items() if not why)
        why = _run_all([compile_commands(output, Path(tmp), built)[-1]])[0]
        if why:
            raise subprocess.SubprocessError(why)
        os.replace(output, library)


def _run_all(commands: list[list[str]]) -> list[str]:
    """Run the compiler calls at once; for each, "" or why it failed (its source, exit status and the
    compiler's last line)."""
    runs = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for cmd in commands]
    failures = []
    for cmd, run in runs:
        try:
            _, stderr = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
            stderr, run.returncode = "timed out after 300 s", -1
        why = ""
        if run.returncode != 0:
            source = next((Path(arg).name for arg in cmd if arg.endswith(".cc")), cmd[0])
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            why = f"{source}: compiler exited {run.returncode}: {last}"
        failures.append(why)
    return failures
