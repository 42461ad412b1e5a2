"""The pure parts of benchmarks/peers.py and benchmarks/peers_gguf.py: no peer engine needed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peers import (agreement, attempt, bert_vocab, dummy_vocab, format_table, one_line, round_robin,
                              select, tokens_per_s)
from benchmarks.peers_gguf import gguf_name, gguf_tensors, is_conv1d_weight, storage_type, write_gguf
from cngpt_tf.config import GPT2Config
from cngpt_tf.demo import demo_weights
from cngpt_tf.vocab import special_token_ids

TINY = GPT2Config(n_vocab=300, n_ctx=32, n_embd=64, n_head=2, n_layer=2, pad_token_id=0, bos_token_id=101,
                  eos_token_id=102)


def test_round_robin_alternates_contenders_within_each_rep():
    assert round_robin(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
    assert round_robin(["a"], 0) == []


def test_tokens_per_s_uses_the_median_run():
    # median of (1, 2, 100) is 2 s: batch 8 * 64 new tokens / 2 s; the outlier does not count
    assert tokens_per_s(8, 64, [1.0, 100.0, 2.0]) == 256.0
    assert tokens_per_s(1, 64, [1.0, 3.0]) == 32.0  # even count: the mean of the middle two


def test_one_line_keeps_the_type_and_first_line_and_is_table_safe():
    error = ImportError("No module named 'llama_cpp'\nmore detail")
    assert one_line(error) == "ImportError: No module named 'llama_cpp'"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(ValueError("\n\n  a | b  \n")) == "ValueError: a / b"
    long = one_line(ValueError("x" * 500), limit=40)
    assert len(long) == 40 and long.endswith("…")


def test_attempt_returns_the_value_or_the_reason():
    assert attempt(lambda a, b: a + b, 1, 2) == (3, None)

    def fails():
        raise ModuleNotFoundError("No module named 'ctranslate2'")

    assert attempt(fails) == (None, "ModuleNotFoundError: No module named 'ctranslate2'")


def test_attempt_lets_keyboard_interrupt_through():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attempt(interrupted)


def test_agreement_names_where_greedy_tokens_part():
    ref = {1: np.array([[5, 6, 7]]), 8: np.arange(24).reshape(8, 3)}
    assert agreement(ref, {1: np.array([[5, 6, 7]]), 8: np.arange(24).reshape(8, 3)}) == "yes"
    assert agreement(ref, {1: np.array([[5, 9, 7]])}) == "no (b1 row 0 from token 1)"
    other = np.arange(24).reshape(8, 3)
    other[3, 2] = -1
    assert agreement(ref, {1: np.array([[5, 6, 7]]), 8: other}) == "no (b8 row 3 from token 2)"
    assert agreement(ref, {1: np.array([[5, 6]])}) == "no (b1 shape (1, 2) vs (1, 3))"
    assert agreement({}, {1: np.array([[5, 6, 7]])}) == "—"  # no reference ran


def test_format_table_is_markdown_with_dashes_for_missing_numbers():
    rows = [
        {"name": "HF PyTorch generate", "weights": "fp32", "load": 1.234, "first": 2.5,
         "tok_s": {1: 10.04, 8: 70.56}, "greedy": "ref", "note": ""},
        {"name": "CTranslate2", "weights": "int8", "tok_s": {}, "note": "ModuleNotFoundError: No module named 'x'"},
    ]
    lines = format_table(rows, [1, 8]).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["contender", "weights", "load s", "first call s", "b1 tok/s", "b8 tok/s", "greedy = HF", "note"]
    assert set(lines[1]) == {"|", "-"}
    assert cells[2] == ["HF PyTorch generate", "fp32", "1.23", "2.50", "10.0", "70.6", "ref", ""]
    assert cells[3] == ["CTranslate2", "int8", "—", "—", "—", "—", "—", "ModuleNotFoundError: No module named 'x'"]
    assert len({len(line) for line in lines}) == 1  # columns padded to one width


def test_dummy_vocab_is_unique_and_its_merge_uses_its_tokens():
    tokens, merges = dummy_vocab(1000)
    assert len(tokens) == len(set(tokens)) == 1000
    for merge in merges:
        left, right = merge.split(" ")
        assert {left, right, left + right} <= set(tokens)


def test_bert_vocab_puts_the_specials_where_the_config_expects_them():
    tokens = bert_vocab(TINY.n_vocab)
    assert len(tokens) == len(set(tokens)) == TINY.n_vocab
    ids = special_token_ids(tokens)  # what cngpt_tf reads pad/bos/eos from
    assert (ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]) == (TINY.pad_token_id, TINY.bos_token_id, TINY.eos_token_id)


def test_select_picks_keys_and_families():
    keys = ["torch", "cngpt", "cngpt-bf16", "llama", "llama-q8_0"]
    assert select(keys, None) == keys
    assert select(keys, ["llama", "torch"]) == ["torch", "llama", "llama-q8_0"]  # in the table's order
    assert select(keys, ["cngpt"]) == ["cngpt", "cngpt-bf16"]
    with pytest.raises(ValueError, match="ort"):
        select(keys, ["ort"])


def test_gguf_names_are_llama_cpps_gpt2_tensors():
    names = {gguf_name(name) for name in demo_weights(TINY)}
    per_layer = ["attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias", "attn_output.weight",
                 "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias", "ffn_up.weight", "ffn_up.bias",
                 "ffn_down.weight", "ffn_down.bias"]
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    expected |= {f"blk.{i}.{part}" for i in range(TINY.n_layer) for part in per_layer}
    assert names == expected  # what llama.cpp's gpt2 loader asks for (output.weight is optional: tied)
    assert gguf_name("transformer.h.11.mlp.c_proj.weight") == "blk.11.ffn_down.weight"
    assert gguf_name("lm_head.weight") == "output.weight"
    with pytest.raises(KeyError):
        gguf_name("h.0.attn.masked_bias")


def test_only_conv1d_weights_are_transposed():
    weights = demo_weights(TINY)
    out = gguf_tensors(weights)
    e = TINY.n_embd
    assert out["blk.0.attn_qkv.weight"].shape == (3 * e, e)  # HF Conv1D [in, out] -> GGUF [out, in]
    assert out["blk.1.ffn_up.weight"].shape == (4 * e, e)
    assert out["blk.1.ffn_down.weight"].shape == (e, 4 * e)
    np.testing.assert_array_equal(out["blk.0.attn_output.weight"], weights["h.0.attn.c_proj.weight"].T)
    np.testing.assert_array_equal(out["token_embd.weight"], weights["wte.weight"])  # [vocab, embd] already
    assert out["blk.0.attn_qkv.weight"].flags["C_CONTIGUOUS"]
    assert not is_conv1d_weight("h.0.attn.c_attn.bias") and not is_conv1d_weight("wte.weight")


def test_storage_types_follow_convert_hf_to_gguf():
    assert storage_type("blk.0.ffn_up.weight", 2, "Q8_0") == "Q8_0"
    assert storage_type("token_embd.weight", 2, "BF16") == "BF16"
    assert storage_type("position_embd.weight", 2, "Q8_0") == "F32"
    assert storage_type("blk.0.attn_norm.weight", 1, "BF16") == "F32"
    assert storage_type("blk.0.ffn_up.bias", 1, "Q8_0") == "F32"
    with pytest.raises(ValueError):
        storage_type("token_embd.weight", 2, "Q4_0")


def test_write_gguf_refuses_a_vocab_llama_cpp_would_not_load(tmp_path):
    tokens, merges = dummy_vocab(TINY.n_vocab)
    with pytest.raises(ValueError, match="unique"):
        write_gguf(tmp_path / "m.gguf", {}, TINY, tokens[:-1], merges, "F32")
    with pytest.raises(ValueError, match="unique"):
        write_gguf(tmp_path / "m.gguf", {}, TINY, tokens[:-1] + ["a"], merges, "F32")
    with pytest.raises(ValueError, match="merge"):
        write_gguf(tmp_path / "m.gguf", {}, TINY, tokens, [], "F32")
    assert not (tmp_path / "m.gguf").exists()
