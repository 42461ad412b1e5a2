"""The demo models: the embedded trained demo and random-init parts.

The embedded demo is a small GPT-2 trained on Tang poems, shipped as a PyTorch-format release zip.

`cngpt_tf/data/gpt2_poem_demo_CN.zip` holds `gpt2_poem_demo_CN/{pytorch_model.bin, config.json,
vocab.txt}` like the seed release, so `pt2tf --demo` converts it through the same code path as a
real model. It is 4 layers, n_embd 256, 4 heads, 128 positions, with the first 8064 tokens of BERT's
Chinese vocab (the same ids mean the same characters), weights stored as float16; trained by
`scripts/train_demo.py` with this project's Keras fine-tuning on 95% of the Tang poems in
`tests/data/`, one `title：poem` a line. Its held-out perplexity and sha256 are in the README.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import GPT2Config
from .errors import SourceError
from .formats import names

NAME = "gpt2_poem_demo_CN"
DEMO_RELEASE = Path(__file__).resolve().parent / "data" / f"{NAME}.zip"


def demo_release() -> Path:
    """The packaged demo zip; SourceError if this installation lacks it (package data left out)."""
    if not DEMO_RELEASE.is_file():
        raise SourceError(f"{DEMO_RELEASE}: the demo release is missing from this installation "
                          "(reinstall with `pip install -e .` from a full checkout)")
    return DEMO_RELEASE


# ----- random-init parts, for tests, benchmarks and training from scratch ---------------------------
# A generated BERT-style vocab (1803 tokens: specials, ASCII, punctuation, CJK) and GPT-2's init with a
# fixed seed; nothing trained.

SEED = 20240501

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
