"""Tests of `python -m converters.tf2pt`: PT -> TF1/TF2 -> PT gives back the exact same state dict."""

from __future__ import annotations

import re

import pytest

from converters import tf2pt

torch = pytest.importorskip("torch")

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def run_main(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = tf2pt.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.fixture(scope="module")
def source_model(tiny_pt_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_pt_dir).eval()


@pytest.mark.parametrize("safetensors", [False, True], ids=["bin", "safetensors"])
@pytest.mark.parametrize("fmt", ["tf1", "tf2"])
def test_round_trip_is_exact(fmt, safetensors, converted, tiny_pt_dir, source_model, tmp_path, capsys):
    from transformers import BertTokenizer, GPT2LMHeadModel

    back = tmp_path / "back"
    rc, out, err = run_main([converted / fmt, back, "-q", *(["--safetensors"] if safetensors else [])], capsys)
    assert rc == 0, err
    assert out.strip() == f"done: {back}"
    weights = "model.safetensors" if safetensors else "pytorch_model.bin"
    assert {p.name for p in back.iterdir()} == {weights, "config.json", "vocab.txt", "tokenizer_config.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["back"]  # no temp folder left

    model, info = GPT2LMHeadModel.from_pretrained(back, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and not info["mismatched_keys"]
    got, want = model.state_dict(), source_model.state_dict()
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied

    vocab = (tiny_pt_dir / "vocab.txt").read_bytes()
    assert (back / "vocab.txt").read_bytes() == vocab
    tokenizer = BertTokenizer.from_pretrained(back)
    source_tok = BertTokenizer(vocab_file=str(tiny_pt_dir / "vocab.txt"))
    text = "床前明月光，疑是地上霜。Hello 2024"
    assert tokenizer(text)["input_ids"] == source_tok(text)["input_ids"]
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.bos_token_id == tokenizer.cls_token_id  # not GPT-2's 50256
    assert model.config.eos_token_id == tokenizer.sep_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_neither_tf1_nor_tf2_is_refused(tiny_pt_dir, tmp_path, capsys):
    out = tmp_path / "back"
    rc, _, err = run_main([tiny_pt_dir, out, "-q"], capsys)  # a PyTorch folder: not a tf1/ or tf2/ one
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tiny_pt_dir) in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_out_dir_is_refused(converted, tmp_path, capsys):
    out = tmp_path / "back"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    rc, _, err = run_main([converted / "tf1", out, "-q"], capsys)
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0], err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text(encoding="utf-8") == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back"]


def test_overwrite_replaces_a_previous_conversion_only(converted, tmp_path, capsys):
    out = tmp_path / "back"
    rc, _, err = run_main([converted / "tf1", out, "-q", "--safetensors"], capsys)
    assert rc == 0, err
    rc, _, err = run_main([converted / "tf2", out, "--overwrite", "-q"], capsys)
    assert rc == 0, err
    assert {p.name for p in out.iterdir()} == {"pytorch_model.bin", "config.json", "vocab.txt", "tokenizer_config.json"}

    (out / "stale.txt").write_text("mine", encoding="utf-8")
    rc, _, err = run_main([converted / "tf2", out, "--overwrite", "-q"], capsys)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "stale.txt" in lines[0] and "previous conversion" in lines[0], err
    assert (out / "stale.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back"]
