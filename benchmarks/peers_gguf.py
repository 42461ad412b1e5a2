"""llama.cpp's part of benchmarks/peers.py: a GGUF file from cngpt_tf's (PyTorch-named) GPT-2
weights, and batched greedy generation over llama-cpp-python's C API (`LlamaRunner`).

llama.cpp's "gpt2" architecture, with the tensor names and layouts that its own
convert_hf_to_gguf.py writes (conversion/gpt2.py there): HF's Conv1D weights are stored [in, out]
and GGUF wants [out, in] (numpy order; ggml's ne0 is the input width), so they are transposed.
Which tensors keep float32 also follows that script: 1-D tensors (biases, LayerNorm), norms and the
position table; the rest take the file's type (F32, BF16 or Q8_0).

The vocab is a dummy one (benchmarks/peers.py feeds token ids, never text), but llama.cpp needs
the keys of a BPE ("gpt2") tokenizer to load the model: the token list, and at least one merge
(without the merges key it refuses the file: "cannot find tokenizer merges in model file").
"""

from __future__ import annotations

import re

import numpy as np

# HF GPT-2 name (without "transformer.") -> GGUF name; per-layer parts under "h.{i}." / "blk.{i}."
TOP_LEVEL = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
LAYER_PARTS = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
CONV1D_PARTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # HF's Conv1D: [in, out]
FILE_TYPES = ("F32", "BF16", "Q8_0")
_LAYER = re.compile(r"h\.(\d+)\.(.+)\.(weight|bias)$")


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of an HF GPT-2 tensor ("transformer." prefix optional); KeyError if none."""
    name = hf_name.removeprefix("transformer.")
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    m = _LAYER.match(name)
    if not m or m.group(2) not in LAYER_PARTS:
        raise KeyError(f"no GGUF name for the GPT-2 tensor {hf_name!r}")
    return f"blk.{m.group(1)}.{LAYER_PARTS[m.group(2)]}.{m.group(3)}"


def is_conv1d_weight(hf_name: str) -> bool:
    """True for the weights HF stores [in, out] (Conv1D), which GGUF needs transposed."""
    m = _LAYER.match(hf_name.removeprefix("transformer."))
    return bool(m) and m.group(2) in CONV1D_PARTS and m.group(3) == "weight"


def storage_type(name: str, ndim: int, file_type: str) -> str:
    """The type a GGUF tensor is stored in, as convert_hf_to_gguf.py decides it: float32 for 1-D
    tensors, norms and the position table (llama.cpp's kernels for those expect float32)."""
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {FILE_TYPES}, not {file_type!r}")
    if ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd."):
        return "F32"
    return file_type


def gguf_tensors(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array in GGUF's layout (Conv1D weights transposed)."""
    out = {}
    for hf_name, value in weights.items():
        value = np.asarray(value, np.float32)
        out[gguf_name(hf_name)] = np.ascontiguousarray(value.T) if is_conv1d_weight(hf_name) else value
    return out


def write_gguf(path, weights: dict[str, np.ndarray], config, tokens: list[str], merges: list[str],
               file_type: str) -> None:
    """Write a llama.cpp "gpt2" GGUF file. config: a cngpt_tf GPT2Config (its special ids are written
    as the tokenizer's); tokens: exactly config.n_vocab unique strings; merges: BPE merges "a b"."""
    if len(tokens) != config.n_vocab or len(set(tokens)) != len(tokens):
        raise ValueError(f"need {config.n_vocab} unique tokens, got {len(tokens)} ({len(set(tokens))} unique)")
    if not merges:
        raise ValueError("llama.cpp needs at least one BPE merge to load a gpt2 vocab")
    import gguf  # after the checks: they need no peer installed
    qtypes = {"F32": gguf.GGMLQuantizationType.F32, "BF16": gguf.GGMLQuantizationType.BF16,
              "Q8_0": gguf.GGMLQuantizationType.Q8_0}
    ftypes = {"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name("cngpt-tf peers benchmark (random init)")
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_ctx)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(ftypes[file_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merges)
    for key, value in (("bos", config.bos_token_id), ("eos", config.eos_token_id), ("pad", config.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(False)  # we feed whole prompts of ids
    for name, value in gguf_tensors(weights).items():
        qtype = storage_type(name, value.ndim, file_type)
        if qtype == "F32":
            writer.add_tensor(name, value)
        else:  # quantize() returns the raw bytes (uint16 for BF16, uint8 blocks for Q8_0)
            writer.add_tensor(name, gguf.quants.quantize(value, qtypes[qtype]), raw_dtype=qtypes[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class LlamaRunner:
    """Batched greedy generation with llama.cpp's C API: one context with a KV stream per sequence
    (not unified: sequences share no prefix), sampling in C (greedy, EOS biased to -inf so that
    every row runs to full length, as min_new_tokens does in HF)."""

    quiet = None  # the log callback, kept alive here: llama.cpp calls it from C while we run

    def __init__(self, path, config, threads: int, max_batch: int, max_len: int, amx: bool = False):
        import llama_cpp as L

        if LlamaRunner.quiet is None:  # llama.cpp logs every tensor at load
            LlamaRunner.quiet = L.llama_log_callback(lambda level, text, user_data: None)
        L.llama_log_set(LlamaRunner.quiet, None)
        L.llama_backend_init()
        model_params = L.llama_model_default_params()
        # On x86 the "extra buffer types" hold llama.cpp's AMX kernels for Q8_0 (its repacking is for
        # Q4 types): on this project's VMs they die of SIGILL (tilezero), taking the process along.
        model_params.use_extra_bufts = amx
        self.model = L.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = L.llama_context_default_params()
        per_seq = 256 * -(-max_len // 256)  # llama.cpp pads each sequence's KV stream to 256 cells
        params.n_seq_max, params.n_ctx, params.kv_unified = max_batch, max_batch * per_seq, False
        params.n_batch = params.n_ubatch = max(512, max_batch * max_len)
        params.n_threads = params.n_threads_batch = threads
        self.n_batch, self.n_seq, self.per_seq = params.n_batch, max_batch, per_seq  # for logits()' chunks
        self.n_vocab = config.n_vocab
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = L.llama_batch_init(params.n_batch, 0, 1)
        no_eos = (L.llama_logit_bias * 1)(L.llama_logit_bias(config.eos_token_id, float("-inf")))
        self.sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(self.sampler, L.llama_sampler_init_logit_bias(config.n_vocab, 1, no_eos))
        L.llama_sampler_chain_add(self.sampler, L.llama_sampler_init_greedy())
        self.L = L

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Run one batch of (token, position, sequence, wants logits) entries."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, pos, 1, seq, out
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def generate(self, ids: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy new tokens [batch, new_tokens] after each prompt row of ids [batch, length]."""
        L, (batch, length) = self.L, ids.shape
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)  # a fresh KV cache per call
        self._decode([(int(ids[s, p]), p, s, p == length - 1) for s in range(batch) for p in range(length)])
        rows = [s * length + length - 1 for s in range(batch)]  # the batch entries that have logits
        out = np.zeros((batch, new_tokens), np.int32)
        for step in range(new_tokens):
            out[:, step] = [L.llama_sampler_sample(self.sampler, self.ctx, i) for i in rows]
            if step + 1 < new_tokens:
                self._decode([(int(out[s, step]), length + step, s, True) for s in range(batch)])
                rows = list(range(batch))
        return out

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Float32 logits [batch, length, vocab] of every position of each row of ids [batch, length]
        (benchmarks/accuracy.py's perplexity), in as few decodes as the context allows."""
        L, (batch, length) = self.L, ids.shape
        if length > self.per_seq:
            raise ValueError(f"rows of {length} tokens do not fit this context's {self.per_seq} cells a sequence")
        rows = max(1, min(self.n_seq, self.n_batch // length))  # sequences per decode
        out = np.empty((batch, length, self.n_vocab), np.float32)
        for start in range(0, batch, rows):
            chunk = ids[start:start + rows]
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
            self._decode([(int(chunk[s, p]), p, s, True) for s in range(len(chunk)) for p in range(length)])
            # every entry asked for logits: llama_get_logits holds them in the batch's order
            flat = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(chunk) * length, out.shape[2]))
            out[start:start + len(chunk)] = flat.reshape(len(chunk), length, -1)
        return out
