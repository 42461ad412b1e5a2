"""The benchmarks' model: a random-init Chinese GPT-2 with GPT-12L-CN's shape, written as a release is.

12 layers, n_embd 768, 12 heads, 1024 positions, the real 21128-token BERT Chinese vocab (tests/data).
Weights are GPT-2's init with a fixed seed, in torch's format (written without torch).
"""

from __future__ import annotations

from pathlib import Path

from cngpt_tf.config import GPT2Config, write_json
from cngpt_tf.formats.pytorch import write_pytorch
from cngpt_tf.demo import demo_weights

REAL_VOCAB = Path(__file__).resolve().parents[1] / "tests" / "data" / "bert_chinese_vocab.txt"


def bench_vocab() -> list[str]:
    return REAL_VOCAB.read_text(encoding="utf-8").split("\n")[:-1]


def make_model(folder: Path, vocab: list[str] | None = None) -> Path:
    """Write pytorch_model.bin, config.json and vocab.txt into `folder` (created); return it."""
    vocab = vocab or bench_vocab()
    config = GPT2Config(n_vocab=len(vocab), n_ctx=1024, n_embd=768, n_head=12, n_layer=12)
    folder.mkdir(parents=True)
    write_pytorch(folder, demo_weights(config, seed=0))
    write_json(folder / "config.json", config.to_hf_dict())
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return folder
