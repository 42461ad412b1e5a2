"""Reduced-precision weights for the native kernel: bf16 and int8 panels, packed from float32 at load.

Modes (`WEIGHT_MODES`), for a weight W [K, N] (a Conv1D's [[w], [b]] or the output embedding):
  - "fp32": `native.to_panels(W)`, [P, K, 32] float32 (P = ceil(N / 32)).
  - "bf16": W rounded to nearest-even bfloat16, stored [P, ceil(K / 2), 32, 2]: rows in pairs, each
    column's two values side by side (the layout of AVX512-BF16's pair dot product; a zero row
    pads an odd K). Half of fp32's bytes; relative error <= 2**-8 per weight.
  - "int8": symmetric int8 per block of `group` rows (default `INT8_GROUP`) and column:
    scale = max |W| over the block / 127, q = round(W / scale); panels [P, K, 32] int8 and scales
    [P, ceil(K / group), 32] float32, the kernel multiplying by float32(q) * scale (on AVX512-VNNI,
    x quantised the same way per row and block: csrc/kernels_avx512vnni.cc). With the bias as the
    extra last row K - 1 and `group` dividing K - 1, the bias is a block of its own: exact.
`dequantize` gives back the float32 weights the kernel multiplies by: the reference of the tests.
Everything is vectorised NumPy; benchmarks/precision.py reports the seconds for GPT-12L-CN's shape.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import native
from .config import WEIGHT_MODES, check_weight_mode  # noqa: F401  (re-exported)

# Rows per int8 scale block. On the trained demo model (benchmarks/accuracy.py, 2026-11-30) every
# block size tried kept the held-out perplexity within 0.012% of fp32 (blocks of 32 rows: +0.006%,
# 128: +0.010%, one scale per column: +0.012%); greedy runs identical to fp32's over 64 tokens: 25,
# 19 and 14 of 32. 128 costs 3% more bytes than the int8 weights alone (32: 12.5%), and as it
# divides n_embd (768, 256) and 4 * n_embd, each Conv1D's bias row is a block of its own: exact.
INT8_GROUP = 128
BFLOAT16 = tf.bfloat16.as_numpy_dtype  # ml_dtypes.bfloat16, what TF stores tf.bfloat16 as


def pack(w: np.ndarray, weights: str, group: int | None = None) -> dict[str, np.ndarray]:
    """W [K, N] float32 -> {"panels": ...} (and "scales" for int8) in mode `weights`; group: int8's
    rows per scale block (default `INT8_GROUP`, read at the call)."""
    check_weight_mode(weights)
    if weights == "bf16":
        return {"panels": bf16_panels(w)}
    if weights == "int8":
        panels, scales = int8_panels(w, group)
        return {"panels": panels, "scales": scales}
    return {"panels": native.to_panels(np.asarray(w, np.float32))}


def bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> the uint16 bits of bfloat16, rounded to nearest, ties to even (finite values)."""
    bits = np.ascontiguousarray(w, np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def bf16_panels(w: np.ndarray) -> np.ndarray:
    """W [K, N] -> [P, ceil(K / 2), 32, 2] bfloat16 (see the module docstring)."""
    k, n = w.shape
    pairs, n_panels = -(-k // 2), -(-n // native.PANEL)
    padded = np.zeros((2 * pairs, n_panels * native.PANEL), np.uint16)
    padded[:k, :n] = bf16_bits(w)
    # [K2, 2, P, 32] -> [P, K2, 32, 2]
    stored = padded.reshape(pairs, 2, n_panels, native.PANEL).transpose(2, 0, 3, 1)
    out = native.aligned_empty(stored.shape, np.uint16)  # aligned: handed to TF without a copy
    out[...] = stored
    return out.view(BFLOAT16)


def int8_panels(w: np.ndarray, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] -> (q [P, K, 32] int8, scales [P, ceil(K / group), 32] float32)."""
    group = INT8_GROUP if group is None else group
    if group < 1:
        raise ValueError(f"group={group}: the rows per int8 scale block must be >= 1")
    k, n = w.shape
    blocks = -(-k // group)
    padded = np.zeros((blocks * group, n), np.float32)
    padded[:k] = w
    by_block = padded.reshape(blocks, group, n)
    scales = np.abs(by_block).max(axis=1) / np.float32(127)  # [blocks, N]
    inverse = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)  # 0 for an all-zero block
    q = np.rint(by_block * inverse[:, None, :]).clip(-127, 127).astype(np.int8).reshape(-1, n)[:k]
    return native.to_panels(q), native.to_panels(scales)


def dequantize(panels: np.ndarray, n: int, scales: np.ndarray | None = None, group: int | None = None) -> np.ndarray:
    """Any mode's panels -> the float32 W [K, n] the kernel multiplies by (K: the rows of x; bf16
    gives the stored pairs' rows, the last of them zero for an odd K)."""
    if panels.dtype == BFLOAT16:
        n_panels, pairs = panels.shape[:2]
        bits = panels.view(np.uint16).transpose(1, 3, 0, 2).reshape(2 * pairs, n_panels * native.PANEL)
        return (bits.astype(np.uint32) << 16).view(np.float32)[:, :n]
    if panels.dtype == np.int8:
        group = INT8_GROUP if group is None else group
        q = native.from_panels(panels, n).astype(np.float32)  # [K, n]
        per_row = np.repeat(native.from_panels(scales, n), group, axis=0)[: q.shape[0]]  # [K, n]
        return q * per_row
    return native.from_panels(panels, n)
