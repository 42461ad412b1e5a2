"""The embedded demo: a small GPT-2 trained on Tang poems, shipped as a PyTorch-format release zip.

`cngpt_tf/data/gpt2_poem_demo_CN.zip` holds `gpt2_poem_demo_CN/{pytorch_model.bin, config.json,
vocab.txt}` like the seed release, so `pt2tf --demo` converts it through the same code path as a
real model. It is 4 layers, n_embd 256, 4 heads, 128 positions, with the first 8064 tokens of BERT's
Chinese vocab (the same ids mean the same characters), weights stored as float16; trained by
`scripts/train_demo.py` with this project's Keras fine-tuning on 95% of the Tang poems in
`tests/data/`, one `title：poem` a line. Its held-out perplexity and sha256 are in the README.
"""

from __future__ import annotations

from pathlib import Path

from .errors import SourceError

NAME = "gpt2_poem_demo_CN"
DEMO_RELEASE = Path(__file__).resolve().parent / "data" / f"{NAME}.zip"


def demo_release() -> Path:
    """The packaged demo zip; SourceError if this installation lacks it (package data left out)."""
    if not DEMO_RELEASE.is_file():
        raise SourceError(f"{DEMO_RELEASE}: the demo release is missing from this installation "
                          "(reinstall with `pip install -e .` from a full checkout)")
    return DEMO_RELEASE
