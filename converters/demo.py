"""Build the embedded demo: a small random-init Chinese GPT-2, zipped like the seed release.

No weights can be downloaded on our machines, so `pt2tf --demo` makes `gpt2_demo_CN.zip` holding
`gpt2_demo_CN/{pytorch_model.bin, config.json, vocab.txt}` — a BERT-style Chinese vocab, the seed's
config format (including the GPT-2 `50256` special ids some releases carry) and torch-format weights
written without torch — and converts it through the same code path as a real model. The weights are
random (fixed seed): the demo shows the pipeline, not poetry.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from cngpt_tf.config import GPT2Config
from cngpt_tf.formats import names
from cngpt_tf.formats.pytorch import write_pytorch
from cngpt_tf.formats.source import default_cache_dir

NAME = "gpt2_demo_CN"
SEED = 20240501
DEMO_SHAPE = dict(n_ctx=128, n_embd=128, n_head=4, n_layer=4)

# Characters of a few classical poems, so generated demo text looks like Chinese, then a slice of the
# CJK block; the real BERT Chinese vocab orders specials, punctuation, digits, Latin, then CJK.
_POEMS = (
    "床前明月光疑是地上霜举头望明月低头思故乡白日依山尽黄河入海流欲穷千里目更上一层楼"
    "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少明月几时有把酒问青天不知天上宫阙今夕是何年"
    "慈母手中线游子身上衣临行密密缝意恐迟迟归谁言寸草心报得三春晖"
)
_PUNCT = "，。！？；：、“”‘’（）《》…—"


def demo_vocab() -> list[str]:
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list("!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~")
    tokens += list(_PUNCT)
    cjk = list(dict.fromkeys(_POEMS))
    cjk += [chr(c) for c in range(0x4E00, 0x4E00 + 1500) if chr(c) not in cjk]
    tokens += cjk
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return tokens


def demo_weights(config: GPT2Config, seed: int = SEED) -> dict[str, np.ndarray]:
    """GPT-2's own init: N(0, 0.02) weights, zero biases, unit LayerNorm gains."""
    rng = np.random.default_rng(seed)
    out = {}
    for entry, layer in names.expand(config):
        name, shape = entry.name(names.PT, layer), entry.shape(names.PT, config)
        if name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        elif ".ln_" in name or name.startswith("ln_f"):
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
    return out


def seed_style_config(config: GPT2Config) -> dict:
    """config.json as the seed release writes it, GPT-2's 50256 special ids included."""
    d = config.to_hf_dict()
    d.update(bos_token_id=50256, eos_token_id=50256, attn_pdrop=0.1, embd_pdrop=0.1, resid_pdrop=0.1,
             initializer_range=0.02, output_past=True)
    d.pop("pad_token_id", None)
    return d


def build_demo_zip(cache_dir: str | Path | None = None) -> Path:
    """Write (or reuse) `<cache>/demo/gpt2_demo_CN.zip` and return its path."""
    folder = Path(cache_dir or default_cache_dir()) / "demo"
    path = folder / f"{NAME}.zip"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    vocab = demo_vocab()
    config = GPT2Config(n_vocab=len(vocab), **DEMO_SHAPE)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        weights = write_pytorch(tmp, demo_weights(config))
        part = Path(tmp) / "demo.zip"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{NAME}/config.json", json.dumps(seed_style_config(config), indent=2))
            z.writestr(f"{NAME}/vocab.txt", "".join(t + "\n" for t in vocab))
            z.write(weights, f"{NAME}/{weights.name}")
        os.replace(part, path)
    return path
