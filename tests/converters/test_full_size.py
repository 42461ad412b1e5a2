"""The released model's shape (GPT2-12L-CN: 12 layers, n_embd 768, 12 heads, 21128 tokens, 1024 positions),
random-init and written by torch, converted to every format and verified. One conversion, ~1 min."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATA, write_torch_model

FULL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
N_VOCAB = 21128


def full_vocab() -> list[str]:
    """The real BERT Chinese vocab (tests/data), as GPT-12L-CN ships it."""
    tokens = (DATA / "bert_chinese_vocab.txt").read_text(encoding="utf-8").split("\n")
    return tokens[:-1] if tokens[-1] == "" else tokens


@pytest.mark.slow
def test_full_size_conversion(tmp_path):
    from cngpt_tf.export.convert import convert

    vocab = full_vocab()
    assert len(vocab) == N_VOCAB
    assert [vocab.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]
    src = write_torch_model(tmp_path / "gpt2_L-12_H-768_A-12_CN", vocab, **FULL)

    out = tmp_path / "out"
    report = convert(str(src), out, progress=False)

    assert report["passed"] is True
    assert set(report["formats"]) == {"tf1", "tf2", "saved_model"}
    for fmt, result in report["formats"].items():
        assert result["max_abs_diff"] <= 1e-4, (fmt, result)
        assert result["greedy_agree"] is True, fmt
    assert report["formats"]["tf1"]["tensors_equal"] and report["formats"]["tf2"]["tensors_equal"]
    expected = {"n_vocab": N_VOCAB, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
                "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
    assert {k: report["config"][k] for k in expected} == expected
    hparams = json.loads((out / "tf1" / "hparams.json").read_text(encoding="utf-8"))
    assert hparams == {"n_vocab": N_VOCAB, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
