"""GPT-2 in pure TensorFlow functions over the openai/gpt-2 weight layout, with a fixed-size KV cache.

`params` is the dict `pack_params()` makes from the TF1 tensors (`OUT_DIR/tf1`'s names and shapes):
the same names, except that each Conv1D's `w` [1, nx, nf] and `b` [nf] become one matrix with the
bias as an extra input row, [x, 1] @ [[w], [b]], so that one product adds the bias too. It is stored
either (default) transposed, as row blocks `wb/0`, `wb/1`, ... of [nf, nx + 1] for XLA's dot (see
`row_blocks`; XLA reads `x @ w + b` at about two thirds of the speed of a plain dot against a
transposed matrix), or, for the generator on an AVX2 / AVX-512 CPU, as the column panels `panels`
[nf / 32, nx + 1, 32] of the native kernel (`cngpt_tf.native`), which also holds the output
embedding as `model/wte/panels` in place of `model/wte`. Panels may hold reduced-precision weights
(`weights="bf16"` or `"int8"`, see `cngpt_tf.quantize`; int8 adds `scales` beside each `panels`):
every Conv1D and the tied embedding, which the input side then reads dequantised too. Where the
weights are panels, a decode step's attention is the kernel's too (`native_attention`) and the blocks
run as one XLA loop over the layers (`layers_as_loop`). The same functions serve the conversion
check, the SavedModel signatures and the XLA decode loop: one GPT-2 in this project, not one per use.

Notation: B batch, T new tokens this call, S cache slots, E n_embd, H n_head, D head_dim, V n_vocab.
The sequence is left-padded: slot j of the cache holds token j of the padded sequence, so "causal"
means key slot <= query slot, and padding is masked by `key_mask`.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice  # also what HF's TF generate uses

from . import native, quantize
from .config import GPT2Config
from .formats import names

CONV1D_SCOPES = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
# "0" turns off, when tracing: a decode step's attention by the native kernel / the blocks as one loop
NATIVE_ATTENTION_VARIABLE, LAYER_LOOP_VARIABLE = "CNGPT_TF_NATIVE_ATTENTION", "CNGPT_TF_LAYER_LOOP"
NEG_INF = -1e9  # added to masked attention scores; finite so a fully masked (pad) row stays NaN-free


def params_from_pt(pt_tensors: dict, config: GPT2Config, panels: bool = False, weights: str = "fp32") -> dict:
    """PyTorch-named numpy weights (the converters' canonical form) -> packed params."""
    return pack_params(names.convert(pt_tensors, names.PT, names.TF1, config), panels=panels, weights=weights)


def pack_params(tf1: dict, threads: int | None = None, panels: bool = False, weights: str = "fp32") -> dict:
    """TF1-layout numpy weights -> the layout these functions read (see the module docstring).

    threads: the CPU threads XLA will run the products on (default `cpu_threads()`; see `row_blocks`).
    panels: store the native kernel's column panels (only for XLA on the CPU; `native.enabled()`).
    weights: "fp32", or "bf16" / "int8" (panels only): the precision of the panels, quantised here
    from the float32 weights (`cngpt_tf.quantize`). A Conv1D whose nf is not a multiple of 32 keeps
    float32 row blocks (not in GPT-2's shapes)."""
    quantize.check_weight_mode(weights)
    if weights != "fp32" and not panels:
        raise ValueError(f"weights={weights!r} needs panels=True: only the native kernel reads reduced precision")
    threads = cpu_threads() if threads is None else threads
    packed = {}
    for name, value in tf1.items():
        scope, leaf = name.rsplit("/", 1)
        if scope.endswith(CONV1D_SCOPES) and leaf == "w":
            w, b = np.asarray(value)[0], np.asarray(tf1[f"{scope}/b"])
            if panels and w.shape[1] % native.PANEL == 0:  # whole panels: conv1d reads nf off the shape
                if weights == "fp32":  # [[w], [b]] [nx + 1, nf] written straight into its panels
                    packed[f"{scope}/panels"] = native.to_panels(w.astype(np.float32, copy=False),
                                                                 b.astype(np.float32, copy=False))
                    continue
                wb = np.concatenate([w, b[None, :]]).astype(np.float32, copy=False)  # [nx + 1, nf]
                packed.update({f"{scope}/{k}": v for k, v in quantize.pack(wb, weights).items()})
                continue
            wb = np.concatenate([w.T, b[:, None]], axis=1)  # [nf, nx + 1]
            for i, block in enumerate(np.split(wb, row_blocks(*wb.shape, threads))):
                packed[f"{scope}/wb/{i}"] = np.ascontiguousarray(block)
        elif name == "model/wte" and panels:  # of [E, V]
            wte = np.asarray(value, np.float32).T
            packed.update({f"model/wte/{k}": v for k, v in quantize.pack(wte, weights).items()})
        elif not (scope.endswith(CONV1D_SCOPES) and leaf == "b"):
            packed[name] = value
    return packed


def weight_blocks(params, scope) -> list:
    """The row blocks of the Conv1D at `scope`, in order: [wb/0, wb/1, ...]."""
    blocks = []
    while f"{scope}/wb/{len(blocks)}" in params:
        blocks.append(params[f"{scope}/wb/{len(blocks)}"])
    return blocks


# XLA's CPU matrix-vector kernel (every weight product at batch 1) splits the rows of W [rows, cols]
# into min(8, ceil(rows / ceil(2**19 / cols))) equal tasks of whole 8-row tiles
# (xla/service/cpu/dot_op_emitter.cc).
GEMV_FMA_PER_TASK, GEMV_MAX_TASKS, GEMV_TILE_ROWS = 2**19, 8, 8


def row_blocks(rows: int, cols: int, threads: int) -> int:
    """Into how many row blocks to store a weight W [rows, cols], one XLA dot per block.

    A dot's tasks run in rounds of `threads`; a round with idle threads wastes their share of the
    memory bandwidth. GPT-2 small's mlp c_fc [3072, 769] and c_proj [768, 3073] get 5 tasks each, so
    on 2 threads the fifth runs alone; as 3 blocks they get 2 tasks each, and the batch-1 product
    takes 0.30 instead of 0.40 ms (c_fc) and 0.35 instead of 0.39 ms (c_proj). The estimate below is
    rounds x rows per task, summed over blocks; more blocks must win by 5% (each dot has a fixed cost;
    at batch 8, where Eigen runs the product, 3 blocks cost ~4% more).
    """
    if threads <= 1:
        return 1

    def cost(blocks):  # in the time one thread takes for one row
        block_rows = rows // blocks
        tasks = min(GEMV_MAX_TASKS, _ceil_div(block_rows, _ceil_div(GEMV_FMA_PER_TASK, cols)))
        return blocks * _ceil_div(tasks, threads) * _ceil_div(block_rows, tasks)

    best = 1
    for blocks in range(2, GEMV_MAX_TASKS + 1):
        whole_tiles = rows % blocks == 0 and (rows // blocks) % GEMV_TILE_ROWS == 0
        if whole_tiles and cost(blocks) < 0.95 * cost(best):
            best = blocks
    return best


def cpu_threads() -> int:
    """The CPU threads XLA runs the weight products on: TF's intra-op setting, else the CPUs this
    process may use; 1 (nothing to balance) where a GPU runs them."""
    if tf.config.list_physical_devices("GPU"):
        return 1
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    if configured:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def past_shape(config: GPT2Config, batch_size, cache_len) -> list:
    """The keys (or the values) of ONE layer: [B * H, S, D]; row b * H + h is head h of sequence b.

    The whole cache is a tuple of n_layer (keys, values) pairs. Two layouts that look simpler make
    XLA copy the cache every token: one stacked [2, B, H, S, D] tensor (a slice is copied out before
    each attention matmul, ~10% of a batch-8 step), and [B, H, S, D] at B = 1 (the in-place update
    goes through a bitcast that drops the unit batch axis, and XLA then copies all of it each step).
    The exception is the layers as one loop (`layers_as_loop`): there the cache is one (keys, values)
    pair of [n_layer] + past_shape, which only the native kernel reads in a decode step, in place.
    """
    return [batch_size * config.n_head, cache_len, config.head_dim]


def empty_cache(config: GPT2Config, batch_size, cache_len, dtype=tf.float32, stacked: bool = False) -> tuple:
    """n_layer (keys, values) pairs of `past_shape`, zeros; stacked: one pair of [n_layer] + past_shape."""
    shape = past_shape(config, batch_size, cache_len)
    if stacked:
        return tf.zeros([config.n_layer] + shape, dtype), tf.zeros([config.n_layer] + shape, dtype)
    return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(config.n_layer))


def positions_from_mask(attention_mask):
    """Position ids [B, T] of a left-padded batch: 0 at each row's first real token, 0 on pads."""
    mask = tf.cast(attention_mask, tf.int32)
    return tf.maximum(tf.cumsum(mask, axis=-1) - 1, 0)


def logits(params, config: GPT2Config, input_ids, attention_mask):
    """Full forward pass without a cache: [B, T] ids and 0/1 mask -> [B, T, V] float32 logits."""
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    hidden, _ = forward(
        params,
        config,
        input_ids,
        positions_from_mask(attention_mask),
        cache=None,
        cache_index=0,
        key_mask=attention_mask,
    )
    return lm_head(params, config, hidden)


def forward(params, config: GPT2Config, input_ids, positions, cache, cache_index, key_mask):
    """Run T new tokens through every block, writing their K/V into the cache at `cache_index`.

    input_ids, positions: [B, T] int32; cache: n_layer (keys, values) pairs of `past_shape` (or one
    stacked pair: `layers_as_loop`), or None to attend over the T tokens alone (then S = T,
    cache_index = 0); cache_index: scalar, the slot of the first new token; key_mask: [B, S] 1 where a
    slot holds a real token.
    Returns (hidden [B, T, E] after ln_f, the cache with this call's K/V written in).
    Writing into a cache needs XLA (`tf.function(jit_compile=True)`): it is an XLA dynamic-update-slice.
    """
    x = embed(params, input_ids) + tf.gather(params["model/wpe"], positions)  # [B, T, E]
    n_new = shape_of(input_ids)[1]
    decode_step = cache is not None and isinstance(n_new, int) and n_new == 1  # n_new: static where known
    if decode_step and native_attention(params):  # the kernel reads key_mask [B, S] itself
        mask = key_mask
    else:
        mask = _attention_bias(n_new, key_mask, cache_index, x.dtype)  # [B, 1, T, S]
    if cache is not None and tf.is_tensor(cache[0]):  # one stacked pair: the layers as one loop
        x, new_cache = _blocks_as_loop(params, config, x, cache, cache_index, mask)
    else:
        new_cache = []
        for i in range(config.n_layer):
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(params, f"model/h{i}", config, x, layer_cache, cache_index, mask)
            new_cache.append(layer_cache)
        new_cache = tuple(new_cache)
    x = layer_norm(x, params["model/ln_f/g"], params["model/ln_f/b"], config.layer_norm_epsilon)
    return x, new_cache


class Layered(NamedTuple):
    """Every layer's value of one name, as a list of tensors (weights) or one stacked tensor (the
    cache), and the layer a pass of `_blocks_as_loop` reads: the native kernel takes them whole and
    reads that layer's in place."""

    every: object
    layer: object  # scalar int32 tensor


def layers_as_loop(params) -> bool:
    """Whether `forward` runs the blocks as one XLA loop over the layers (traced and converted to HLO
    once instead of n_layer times: the first call's compile and a fresh process's start are shorter):
    where every Conv1D is the native kernel's panels and decode steps use its attention
    (`native_attention`), unless CNGPT_TF_LAYER_LOOP=0 (read when tracing; benchmarks compare)."""
    if not native_attention(params) or os.environ.get(LAYER_LOOP_VARIABLE, "1") == "0":
        return False
    return all(f"model/h0/{scope}/panels" in params for scope in CONV1D_SCOPES)


def _blocks_as_loop(params, config, x, cache, cache_index, mask):
    """x [B, T, E] through every block as one tf.while_loop over the layers; cache: one stacked
    (keys, values) pair [L, B * H, S, D] (`empty_cache(stacked=True)`). Each pass reads its layer's
    weights as `Layered` lists (the kernel picks one by index: a slice of stacked weights would be
    copied) and its LayerNorm parameters by a gather from [L, E]."""
    n_layer = config.n_layer
    weights = {f"{scope}/{leaf}": [params[f"model/h{i}/{scope}/{leaf}"] for i in range(n_layer)]
               for scope in CONV1D_SCOPES for leaf in ("panels", "scales") if f"model/h0/{scope}/{leaf}" in params}
    norms = {name: tf.stack([params[f"model/h{i}/{name}"] for i in range(n_layer)])  # [L, E]
             for name in ("ln_1/g", "ln_1/b", "ln_2/g", "ln_2/b")}

    def one_layer(i, x, keys, values):
        layer = {f"model/h/{name}": Layered(every, i) for name, every in weights.items()}
        layer.update({f"model/h/{name}": tf.gather(stacked, i) for name, stacked in norms.items()})
        x, (keys, values) = block(layer, "model/h", config, x, Layered((keys, values), i), cache_index, mask)
        return i + 1, x, keys, values

    _, x, keys, values = tf.while_loop(lambda i, *_: i < n_layer, one_layer, (tf.constant(0), x, *cache),
                                       maximum_iterations=n_layer)
    return x, (keys, values)


def embed(params, input_ids):
    """Token embeddings [B, T] -> [B, T, E], from `model/wte` or from its panels (any precision:
    the same dequantised values the output projection multiplies by)."""
    if "model/wte" in params:
        return tf.gather(params["model/wte"], input_ids)
    panels = params["model/wte/panels"]  # token v is column v % 32 of panel v // 32
    ids = tf.cast(input_ids, tf.int32)[..., None]  # [B, T, 1]
    panel, column = ids // native.PANEL, ids % native.PANEL
    if panels.dtype == tf.bfloat16:  # [P, E / 2, 32, 2]: row e is half e % 2 of pair e // 2
        pairs, e = panels.shape[1], tf.range(params["model/wpe"].shape[1])  # E, from wpe [n_ctx, E]
        flat = panel * (pairs * 2 * native.PANEL) + (e // 2) * (2 * native.PANEL) + column * 2 + e % 2
        return tf.cast(tf.gather(tf.reshape(panels, [-1]), flat), tf.float32)
    width = panels.shape[1]  # [P, E, 32]
    flat = panel * (width * native.PANEL) + tf.range(width) * native.PANEL + column
    values = tf.gather(tf.reshape(panels, [-1]), flat)  # [B, T, E]
    if panels.dtype != tf.int8:
        return values
    scales = params["model/wte/scales"]  # [P, ceil(E / group), 32]; row e is in block e // group
    blocks = scales.shape[1]
    block = tf.range(width) // quantize.INT8_GROUP
    return tf.cast(values, tf.float32) * tf.gather(tf.reshape(scales, [-1]), panel * (blocks * native.PANEL)
                                                   + block * native.PANEL + column)


def lm_head(params, config: GPT2Config, hidden):
    """[..., E] -> [..., V] float32 logits, with the output embedding tied to `wte`."""
    if "model/wte" in params:
        return tf.cast(_dot_transposed(hidden, params["model/wte"]), tf.float32)
    return _panel_product(hidden, params["model/wte/panels"], config.n_vocab, params.get("model/wte/scales"))


def block(params, scope, config, x, layer_cache, cache_index, mask):
    """One transformer block (pre-LN): x + attn(ln_1(x)), then + mlp(ln_2(.))."""
    eps = config.layer_norm_epsilon
    a, layer_cache = attention(
        params, f"{scope}/attn", config, layer_norm(x, params[f"{scope}/ln_1/g"], params[f"{scope}/ln_1/b"], eps),
        layer_cache, cache_index, mask,
    )
    x = x + a
    m = mlp(params, f"{scope}/mlp", layer_norm(x, params[f"{scope}/ln_2/g"], params[f"{scope}/ln_2/b"], eps))
    return x + m, layer_cache


def attention(params, scope, config, x, layer_cache, cache_index, mask):
    """Causal self-attention over the cache. x [B, T, E]; layer_cache (keys, values), each [B * H, S, D].

    mask: the bias [B, 1, T, S] `_attention_bias` makes, or for a decode step by the native kernel
    (T = 1, `native_attention`) the key_mask [B, S] itself: the kernel reads only slots <= cache_index.
    """
    qkv = conv1d(params, f"{scope}/c_attn", x)  # [B, T, 3E]
    q, k, v = (split_heads(t, config.n_head) for t in tf.split(qkv, 3, axis=-1))  # [B * H, T, D] each
    layer, index = None, tf.cast(cache_index, tf.int32)
    if layer_cache is None:  # no cache: attend over this call's tokens only (cache_index must be 0)
        new_cache = (k, v)
    elif isinstance(layer_cache, Layered):  # every layer's cache [L, B * H, S, D]: write into this layer's
        layer = layer_cache.layer
        new_cache = tuple(dynamic_update_slice(old, new[None], tf.stack([layer, 0, index, 0]))
                          for old, new in zip(layer_cache.every, (k, v)))
    else:  # write this call's K/V at cache_index; under XLA an in-place update of the buffers
        new_cache = tuple(dynamic_update_slice(old, new, tf.stack([0, index, 0]))
                          for old, new in zip(layer_cache, (k, v)))
    if mask.shape.rank == 2:  # the kernel: [B * H, D] queries of the one new token
        out = native.decode_attention(q[:, 0], *new_cache, mask, index + 1, config.n_head, cpu_threads(), layer=layer)
        return conv1d(params, f"{scope}/c_proj", merge_heads(out[:, None], config.n_head)), new_cache
    # XLA's attention; in the loop over the layers (a prefill) over a copy of this layer's cache
    keys, values = new_cache if layer is None else (tf.gather(t, layer) for t in new_cache)
    scores = tf.matmul(q, keys, transpose_b=True) * (1.0 / math.sqrt(config.head_dim))  # [B * H, T, S]
    _, length, slots = shape_of(scores)
    scores = tf.reshape(scores, [-1, config.n_head, length, slots]) + mask  # [B, H, T, S]
    weights = tf.reshape(tf.nn.softmax(scores, axis=-1), [-1, length, slots])  # [B * H, T, S]
    out = merge_heads(tf.matmul(weights, values), config.n_head)  # [B, T, E]
    return conv1d(params, f"{scope}/c_proj", out), new_cache


def native_attention(params) -> bool:
    """Whether decode steps over `params` run their attention by the native kernel: where the weights
    are the kernel's panels (the generator on a CPU that runs it), unless CNGPT_TF_NATIVE_ATTENTION=0
    (read when tracing; benchmarks compare the two)."""
    return "model/wte/panels" in params and os.environ.get(NATIVE_ATTENTION_VARIABLE, "1") != "0"


def mlp(params, scope, x):
    h = gelu(conv1d(params, f"{scope}/c_fc", x))  # [B, T, 4E]
    return conv1d(params, f"{scope}/c_proj", h)


def conv1d(params, scope, x):
    """GPT-2's Conv1D (a dense layer): x [..., nx] @ w + b, as [x, 1] @ [[w], [b]], from the row
    blocks `{scope}/wb/i` (each [nf / blocks, nx + 1], transposed) or the panels `{scope}/panels`."""
    ones = [[0, 0]] * (x.shape.rank - 1) + [[0, 1]]
    x = tf.pad(x, ones, constant_values=1.0)  # [..., nx + 1]
    panels, scales = params.get(f"{scope}/panels"), params.get(f"{scope}/scales")
    if isinstance(panels, Layered):  # in the loop over the layers: every layer's, and which to read
        n = panels.every[0].shape[0] * native.PANEL
        return _panel_product(x, panels.every, n, scales.every if scales is not None else None, layer=panels.layer)
    if panels is not None:
        return _panel_product(x, panels, panels.shape[0] * native.PANEL, scales)
    outs = [_dot_transposed(x, wb) for wb in weight_blocks(params, scope)]  # [x, 1] @ wb.T per block
    return outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)


def _panel_product(x, panels, n, scales=None, layer=None):
    """x [..., K] @ W [K, n] by the native kernel, W given as its panels (any precision; `scales`
    with int8 panels; lists of every layer's and a layer index: `native.panel_matmul`)."""
    flat = tf.reshape(x, [-1, x.shape[-1]])  # [prod(...), K]
    out = native.panel_matmul(flat, panels, n, cpu_threads(), scales, group=quantize.INT8_GROUP, layer=layer)
    return tf.reshape(out, shape_of(x)[:-1] + [n])


def _dot_transposed(x, w):
    """x [..., K] @ w.T for w [N, K] -> [..., N].

    A 2-D matmul with transpose_b, not tf.tensordot: tensordot transposes w first, and XLA then
    fuses a copy into each matrix-vector product, ~6% slower at batch 1.
    """
    if x.shape.rank == 2:
        return tf.matmul(x, w, transpose_b=True)
    out = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w, transpose_b=True)  # [prod(...), N]
    return tf.reshape(out, shape_of(x)[:-1] + [w.shape[0]])


def layer_norm(x, g, b, epsilon):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * g + b


def gelu(x):
    """The tanh approximation GPT-2 was trained with (HF `gelu_new`)."""
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def split_heads(x, n_head):
    """[B, T, E] -> [B * H, T, D]."""
    _, length, width = shape_of(x)
    x = tf.transpose(tf.reshape(x, [-1, length, n_head, width // n_head]), [0, 2, 1, 3])  # [B, H, T, D]
    return tf.reshape(x, [-1, length, width // n_head])


def merge_heads(x, n_head):
    """[B * H, T, D] -> [B, T, E]."""
    _, length, head_dim = shape_of(x)
    x = tf.transpose(tf.reshape(x, [-1, n_head, length, head_dim]), [0, 2, 1, 3])  # [B, T, H, D]
    return tf.reshape(x, [-1, length, n_head * head_dim])


def shape_of(x) -> list:
    """x's dimensions: Python ints where tracing knows them, scalar tensors elsewhere.

    Static sizes keep the traced graph small (tracing is part of the first call's latency).
    """
    dynamic = None
    dims = []
    for i, size in enumerate(tf.TensorShape(x.shape).as_list()):  # x may be a numpy array
        if size is None:
            dynamic = tf.shape(x) if dynamic is None else dynamic
            size = dynamic[i]
        dims.append(size)
    return dims


def _attention_bias(n_new, key_mask, cache_index, dtype):
    """[B, 1, T, S]: 0 where query t (slot cache_index + t) may see key slot s, NEG_INF elsewhere."""
    n_slots = shape_of(key_mask)[1]
    query_slot = tf.cast(cache_index, tf.int32) + tf.range(n_new)[:, None]  # [T, 1]
    causal = tf.range(n_slots)[None, :] <= query_slot  # [T, S]
    allowed = tf.logical_and(causal[None, None], tf.cast(key_mask, tf.bool)[:, None, None, :])
    return tf.where(allowed, tf.zeros([], dtype), tf.constant(NEG_INF, dtype))
