"""Generation speed of peer engines against cngpt_tf, on the same random-init GPT-2 weights.

GPT-12L-CN's shape by default (12 layers, n_embd 768, 12 heads, 1024 positions, vocab 21128); the
weights of benchmarks/generation.py with random biases and LayerNorms on top, so that a wrong
mapping of any tensor changes the greedy tokens ("greedy = HF" compares them with HF PyTorch's).
Rows: HF PyTorch `generate`; cngpt_tf's Generator (weights= fp32, bf16, int8);
ONNX Runtime through optimum (fp32, dynamic int8); llama.cpp through llama-cpp-python (GGUF F32,
BF16, Q8_0: benchmarks/peers_gguf.py); CTranslate2 (float32, int8_float32). Each engine's files are
written to --workdir before anything is timed; "load s" reads them, "first call s" is the first
generate call (compiles included).

Protocol: 8-token prompts, 64 new tokens, greedy, forced to full length (each engine's own way of
suppressing EOS), batch 1 and 8; per batch one warm-up call each, then --reps rounds in which the
contenders alternate; the median run counts. A peer that cannot be imported or fails gets a row
saying why. The peers live in a venv of their own (setup.py's [bench] extra):

    python -m venv --system-site-packages /tmp/peersvenv && /tmp/peersvenv/bin/pip install -e .[bench]
    /tmp/peersvenv/bin/python benchmarks/peers.py                     # full size
    /tmp/peersvenv/bin/python benchmarks/peers.py --layers 2 --n-embd 64 --heads 2 --vocab 1000 --reps 2
    /tmp/peersvenv/bin/python benchmarks/peers.py --only torch cngpt llama  # families: all their rows
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import cached_property
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; no hub is reachable here
# Several OpenMP runtimes share this process (torch's, llama.cpp's, CTranslate2's): with their default
# spin-waiting, idle ones starve the engine that runs (measured: llama.cpp's first call 16 s instead of
# 0.02 s, 57 tok/s instead of 2000+, next to ONNX Runtime + torch). Passive waiting ends that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.generation import PROMPT_LEN, SHAPE, cpu_name  # noqa: E402
from benchmarks.peers_gguf import LlamaRunner, write_gguf  # noqa: E402

PAUSE_S = 0.1  # between timed runs: lets the previous engine's spinning worker threads go to sleep
VERSIONS = ("torch", "transformers", "tensorflow", "onnxruntime", "optimum", "optimum-onnx", "llama-cpp-python",
            "ctranslate2", "gguf")


# ----- pure parts (tests/benchmarks/test_peers.py) ---------------------------------------------------

def round_robin(names: list, reps: int) -> list[tuple[int, object]]:
    """The timed runs in order: every contender once per round, so machine noise hits all alike."""
    return [(rep, name) for rep in range(reps) for name in names]


def tokens_per_s(batch: int, new_tokens: int, times: list[float]) -> float:
    """New tokens per second of the median run."""
    return batch * new_tokens / statistics.median(times)


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one table-safe line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = text.replace("|", "/")  # a "|" would split the markdown cell
    return text if len(text) <= limit else text[: limit - 1] + "…"


def attempt(fn, *args):
    """(fn(*args), None), or (None, why) if it raised: a failing peer must not end the benchmark."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 (any peer error becomes a row; Ctrl-C still stops us)
        return None, one_line(e)


def agreement(reference: dict[int, np.ndarray], tokens: dict[int, np.ndarray]) -> str:
    """Compare greedy new tokens per batch size with the reference's: "yes", or where they part."""
    common = sorted(set(reference) & set(tokens))
    if not common:
        return "—"
    for batch in common:
        ref, got = np.asarray(reference[batch]), np.asarray(tokens[batch])
        if ref.shape != got.shape:
            return f"no (b{batch} shape {got.shape} vs {ref.shape})"
        differ = np.argwhere(ref != got)
        if len(differ):
            row, col = differ[0]
            return f"no (b{batch} row {row} from token {col})"
    return "yes"


def format_table(rows: list[dict], batches: list[int]) -> str:
    """The markdown table; a row's missing numbers show as "—"."""
    header = ["contender", "weights", "load s", "first call s"] + [f"b{b} tok/s" for b in batches]
    header += ["greedy = HF", "note"]
    cells = [header]
    for r in rows:
        speeds = [_num(r.get("tok_s", {}).get(b), ".1f") for b in batches]
        cells.append([r["name"], r["weights"], _num(r.get("load"), ".2f"), _num(r.get("first"), ".2f"), *speeds,
                      r.get("greedy", "—"), r.get("note", "")])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def dummy_vocab(n: int) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE vocab of n unique tokens for engines that want one (HF's
    GPT-2 tokenizer for CTranslate2, GGUF for llama.cpp); we feed ids, so only uniqueness matters.
    One merge, consistent with the tokens: llama.cpp refuses a gpt2 vocab without merges, and HF's
    fast tokenizer refuses a merge whose parts or result are not tokens."""
    tokens = ["a", "b", "ab"] + [f"t{i}" for i in range(3, n)]
    return tokens, ["a b"]


def bert_vocab(n: int) -> list[str]:
    """A vocab.txt for cngpt_tf's tf2/ folder: BERT's special tokens where GPT-12L-CN has them
    ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), matching SHAPE's pad/bos/eos ids."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return tokens + [f"[tok{i}]" for i in range(len(tokens), n)]


def select(keys: list[str], only: list[str] | None) -> list[str]:
    """The contender keys named by --only: a key itself, or a family ("llama" -> "llama", "llama-bf16", ...)."""
    if not only:
        return list(keys)
    unknown = [o for o in only if not any(k == o or k.startswith(o + "-") for k in keys)]
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; choose from {keys}")
    return [k for k in keys if any(k == o or k.startswith(o + "-") for o in only)]


# ----- the model and its files ----------------------------------------------------------------------

def random_model(args) -> tuple:
    """(config, PyTorch-named weights) of args' shape, random init with random biases and LayerNorms."""
    from cngpt_tf.config import GPT2Config
    from cngpt_tf.demo import demo_weights

    shape = dict(SHAPE, n_layer=args.layers, n_embd=args.n_embd, n_head=args.heads, n_vocab=args.vocab)
    config = GPT2Config(**shape)
    weights = demo_weights(config, seed=0)
    # Biases and LayerNorms are 0 and 1 at init: make them count, so that a wrong mapping of any
    # tensor changes some greedy tokens (batch 8's rows catch what batch 1's may not).
    rng = np.random.default_rng(1)
    for name, value in weights.items():
        if value.ndim == 1:
            value += rng.normal(0.0, 0.1 if ".ln_" in name or name.startswith("ln_f") else 0.02, value.shape)
    return config, weights


class Setup:
    """The config, weights, prompts and each engine's files (written on first use, untimed)."""

    def __init__(self, args, workdir: Path, config=None, weights: dict | None = None):
        """config, weights: a given model (benchmarks/accuracy.py's trained demo); by default a random
        one of args' shape (args.layers, n_embd, heads, vocab)."""
        self.config, self.weights = (config, weights) if config is not None else random_model(args)
        self.tokens, self.merges = dummy_vocab(self.config.n_vocab)
        self.workdir, self.threads, self.new_tokens, self.batches = workdir, args.threads, args.new_tokens, args.batches
        self.llama_amx = args.llama_amx

    def prompts(self, batch: int) -> np.ndarray:
        """[batch, PROMPT_LEN] ids: [CLS] then ordinary tokens (past BERT's specials)."""
        ids = np.random.RandomState(batch).randint(104, self.config.n_vocab, size=(batch, PROMPT_LEN))
        ids[:, 0] = self.config.bos_token_id
        return ids.astype(np.int32)

    @cached_property
    def hf_dir(self) -> Path:
        """An HF GPT-2 folder (safetensors, config, a GPT-2 BPE tokenizer over the dummy vocab)."""
        from safetensors.numpy import save_file

        folder = self.workdir / "hf"
        folder.mkdir(exist_ok=True)  # a kept --workdir is rewritten
        tensors = {f"transformer.{k}": np.ascontiguousarray(v) for k, v in self.weights.items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})  # lm_head: tied to wte
        # Our config names BertTokenizer (the real vocab's): these engines get the BPE one.
        _write_json(folder / "config.json", dict(self.config.to_hf_dict(), tokenizer_class="GPT2Tokenizer"))
        _write_json(folder / "vocab.json", {t: i for i, t in enumerate(self.tokens)})
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(self.merges) + "\n", encoding="utf-8")
        special = {f"{k}_token": self.tokens[getattr(self.config, f"{k}_token_id")] for k in ("bos", "eos", "pad")}
        _write_json(folder / "tokenizer_config.json", dict(special, tokenizer_class="GPT2Tokenizer",
                                                           unk_token=special["eos_token"],
                                                           model_max_length=self.config.n_ctx))
        return folder

    @cached_property
    def tf2_dir(self) -> Path:
        """cngpt_tf's tf2/ folder, written by the project's own writer."""
        from cngpt_tf.formats.hf_tf2 import write_tf2

        vocab = self.workdir / "vocab.txt"
        vocab.write_text("".join(t + "\n" for t in bert_vocab(self.config.n_vocab)), encoding="utf-8")
        write_tf2(self.workdir / "tf2", self.weights, self.config, vocab)
        return self.workdir / "tf2"

    @cached_property
    def onnx_dir(self) -> Path:
        from optimum.onnxruntime import ORTModelForCausalLM

        folder = self.workdir / "onnx"
        ORTModelForCausalLM.from_pretrained(self.hf_dir, export=True, use_cache=True).save_pretrained(folder)
        return folder

    @cached_property
    def onnx_int8_dir(self) -> Path:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        folder = self.workdir / "onnx_int8"
        config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
        ORTQuantizer.from_pretrained(self.onnx_dir).quantize(save_dir=folder, quantization_config=config)
        return folder

    @cached_property
    def ct2_dir(self) -> Path:
        from ctranslate2.converters import TransformersConverter

        folder = self.workdir / "ct2"
        TransformersConverter(str(self.hf_dir)).convert(str(folder), force=True)  # float32 weights; int8 at load
        return folder

    def gguf(self, file_type: str) -> Path:
        path = self.workdir / f"model-{file_type}.gguf"
        write_gguf(path, self.weights, self.config, self.tokens, self.merges, file_type)
        return path


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, ensure_ascii=False, indent=1), encoding="utf-8")


# ----- contenders: prepare(setup) writes files (untimed), load() is timed, generate(ids) -> new ids ---

class Contender:
    family = name = ""  # family: the key of the fp32 row, and --only's name for all the rows
    modules: tuple[str, ...] = ()  # imported in prepare(): an import is no part of the load time

    def __init__(self, weights: str = "fp32"):
        self.weights, self.key = weights, self.family if weights == "fp32" else f"{self.family}-{weights}"

    def prepare(self, setup: Setup) -> None:
        self.setup = setup
        for module in self.modules:
            importlib.import_module(module)

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, ids: np.ndarray) -> np.ndarray:
        """Greedy, exactly setup.new_tokens new tokens after each prompt: int [batch, new_tokens]."""
        raise NotImplementedError


class HFGenerate(Contender):
    """HF `generate` on a torch model: PyTorch itself, or optimum's ONNX Runtime model."""

    def generate(self, ids):
        import torch

        n, t = self.setup.new_tokens, torch.from_numpy(ids.astype(np.int64))
        with torch.inference_mode():
            out = self.model.generate(t, attention_mask=torch.ones_like(t), do_sample=False, max_new_tokens=n,
                                      min_new_tokens=n, pad_token_id=self.setup.config.pad_token_id)
        return out[:, ids.shape[1]:].numpy()


class Torch(HFGenerate):
    family, name = "torch", "HF PyTorch generate"
    modules = ("torch", "transformers.models.gpt2.modeling_gpt2")

    def load(self):
        import torch
        from transformers import GPT2LMHeadModel

        torch.set_num_threads(self.setup.threads)
        self.model = GPT2LMHeadModel.from_pretrained(self.setup.hf_dir, dtype=torch.float32).eval()


class OnnxRuntime(HFGenerate):
    family, name = "ort", "ONNX Runtime (optimum)"
    modules = ("torch", "onnxruntime", "optimum.onnxruntime")

    def prepare(self, setup):
        super().prepare(setup)
        self.folder = setup.onnx_dir if self.weights == "fp32" else setup.onnx_int8_dir

    def load(self):
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.setup.threads, 1
        onnx = "model.onnx" if self.weights == "fp32" else "model_quantized.onnx"
        self.model = ORTModelForCausalLM.from_pretrained(self.folder, file_name=onnx, session_options=options,
                                                         provider="CPUExecutionProvider")


class Cngpt(Contender):
    family, name = "cngpt", "cngpt_tf Generator"
    modules = ("cngpt_tf.generator",)

    def prepare(self, setup):
        super().prepare(setup)
        self.folder = setup.tf2_dir

    def load(self):
        from cngpt_tf.generator import Generator

        self.gen = Generator.from_pretrained(self.folder, tokenizer=False, weights=self.weights)

    def generate(self, ids):
        n = self.setup.new_tokens
        return self.gen.generate_ids(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[:, ids.shape[1]:]


class CTranslate2(Contender):
    family, name = "ct2", "CTranslate2"
    modules = ("ctranslate2",)

    def prepare(self, setup):
        super().prepare(setup)
        self.folder = setup.ct2_dir
        vocab = json.loads((self.folder / "vocabulary.json").read_text(encoding="utf-8"))
        if vocab != setup.tokens:  # we speak to it in token strings: they must be ours, in our order
            raise ValueError("the converted vocabulary differs from the HF folder's")

    def load(self):
        import ctranslate2

        compute = "float32" if self.weights == "fp32" else "int8_float32"
        self.gen = ctranslate2.Generator(str(self.folder), device="cpu", compute_type=compute,
                                         intra_threads=self.setup.threads, inter_threads=1)

    def generate(self, ids):
        n, tokens = self.setup.new_tokens, self.setup.tokens
        # include_prompt_in_result=False: the prompt goes through in one pass (a prefill), as in the
        # other engines; min_length keeps EOS out until n tokens.
        results = self.gen.generate_batch([[tokens[i] for i in row] for row in ids], max_length=n, min_length=n,
                                          beam_size=1, sampling_topk=1, include_prompt_in_result=False)
        return np.array([r.sequences_ids[0] for r in results])


class LlamaCpp(Contender):
    """llama.cpp through llama-cpp-python's C API (peers_gguf.LlamaRunner: the high-level `Llama`
    class runs one sequence only)."""

    family, name = "llama", "llama.cpp (llama-cpp-python)"
    modules = ("llama_cpp",)
    TYPES = {"fp32": "F32", "bf16": "BF16", "q8_0": "Q8_0"}

    def prepare(self, setup):
        super().prepare(setup)
        self.path = setup.gguf(self.TYPES[self.weights])

    def load(self):
        s = self.setup
        self.runner = LlamaRunner(self.path, s.config, s.threads, max(s.batches), PROMPT_LEN + s.new_tokens,
                                  amx=s.llama_amx)

    def generate(self, ids):
        return self.runner.generate(ids, self.setup.new_tokens)


def contenders() -> list[Contender]:
    return [Torch(), Cngpt(), Cngpt("bf16"), Cngpt("int8"), OnnxRuntime(), OnnxRuntime("int8"), LlamaCpp(),
            LlamaCpp("bf16"), LlamaCpp("q8_0"), CTranslate2(), CTranslate2("int8")]


# ----- the run ----------------------------------------------------------------------------------------

def run(chosen: list[Contender], setup: Setup, batches: list[int], reps: int) -> list[dict]:
    """One table row per contender: load, first call, tok/s per batch, greedy agreement, or why not."""
    rows = {c.key: {"name": c.name, "weights": c.weights, "tok_s": {}, "note": ""} for c in chosen}
    outputs = {c.key: {} for c in chosen}  # key -> {batch: greedy tokens of the warm-up call}
    live = load_all(chosen, setup, rows)
    for batch in batches:
        ids = setup.prompts(batch)
        for c in list(live):  # one warm-up call each (the first one also traces/compiles)
            seconds, out = timed_call(c, ids, setup.new_tokens, rows, live)
            if out is not None:
                rows[c.key].setdefault("first", seconds)
                outputs[c.key][batch] = out
        times = {c.key: [] for c in live}
        for _, c in round_robin(list(live), reps):
            if c in live:  # not failed earlier in this batch
                time.sleep(PAUSE_S)
                seconds, out = timed_call(c, ids, setup.new_tokens, rows, live)
                if out is not None:
                    times[c.key].append(seconds)
        for c in live:
            rows[c.key]["tok_s"][batch] = tokens_per_s(batch, setup.new_tokens, times[c.key])
        print(f"  batch {batch}: done", file=sys.stderr, flush=True)
    reference = outputs.get("torch", {})
    for key, row in rows.items():
        row["greedy"] = "ref" if key == "torch" and reference else agreement(reference, outputs[key])
    return list(rows.values())


def load_all(chosen: list[Contender], setup: Setup, rows: dict) -> list[Contender]:
    """Prepare (untimed) and load (timed) each contender; those that failed get the reason."""
    live = []
    for c in chosen:
        _, why = attempt(c.prepare, setup)
        if why is None:
            start = time.perf_counter()
            _, why = attempt(c.load)
            rows[c.key]["load"] = time.perf_counter() - start if why is None else None
        if why is None:
            live.append(c)
        rows[c.key]["note"] = why or ""
        print(f"  {c.key}: {why or 'loaded'}", file=sys.stderr, flush=True)
    return live


def timed_call(c: Contender, ids: np.ndarray, new_tokens: int, rows: dict, live: list[Contender]):
    """(seconds, new tokens) of one generate call; (None, None) after dropping a failed contender."""
    start = time.perf_counter()
    out, why = attempt(c.generate, ids)
    seconds = time.perf_counter() - start
    if why is None and np.shape(out) != (len(ids), new_tokens):
        why = f"returned shape {np.shape(out)}, not {(len(ids), new_tokens)}"
    if why is not None:
        rows[c.key]["note"] = why
        live.remove(c)
        return None, None
    return seconds, np.asarray(out)


def versions() -> str:
    dists = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version
             for d in importlib.metadata.distributions()}
    return ", ".join(f"{name} {dists[name]}" for name in VERSIONS if name in dists)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=21128, help="at least 200 (BERT's specials come first)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per contender and batch (median)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"contenders: {[c.key for c in contenders()]}")
    parser.add_argument("--workdir", type=Path, help="keep each engine's files here (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--llama-amx", action="store_true", help="let llama.cpp use its AMX kernels (SIGILL here)")
    args = parser.parse_args(argv)
    if args.vocab < 200 or args.reps < 1:
        parser.error("--vocab must be at least 200 (BERT's special tokens take ids 0..103), --reps at least 1")
    all_contenders = contenders()
    try:
        keys = select([c.key for c in all_contenders], args.only)
    except ValueError as e:
        parser.error(str(e))
    chosen = [c for c in all_contenders if c.key in keys]
    if any(isinstance(c, Cngpt) for c in chosen):  # before TensorFlow starts: later it is fixed
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.get_logger().setLevel("ERROR")  # one compile per batch size is expected: no retracing warnings
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="peers_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        setup = Setup(args, workdir)
        c = setup.config
        print(f"model: {c.n_layer} layers, n_embd {c.n_embd}, {c.n_head} heads, vocab {c.n_vocab} (random init); "
              f"prompt {PROMPT_LEN}, {args.new_tokens} new tokens, greedy, median of {args.reps}")
        print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, "
              f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; {versions()}")
        before = os.getloadavg()[0]
        print(format_table(run(chosen, setup, args.batches, args.reps), args.batches))
        # Spin-waiting engines (llama.cpp most) slow down many times when other work shares the cores.
        print(f"load average (1 min): {before:.1f} before the runs, {os.getloadavg()[0]:.1f} after")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
