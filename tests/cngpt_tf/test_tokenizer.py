"""ChineseTokenizer: HF-identical ids, `[CLS]`-first prompts, clean decoding, the normalise() contract.

Unit tests use a tiny vocab written here; the parity and round-trip tests use the real BERT Chinese
vocabs and the CLUE sample in `tests/data/`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cngpt_tf.errors import ConfigError, VocabError
from cngpt_tf.tokenizer import (
    ChineseTokenizer,
    is_cjk,
    join_continuation,
    write_tokenizer_config,
)
from cngpt_tf.vocab import read_vocab

TINY_SPECIALS = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_CJK = list("明月几时有把酒问青天我欲乘风归去又恐琼楼玉宇高处不胜寒起舞弄清影何似在人间你好中文")
TINY_REST = list("，。！？,.") + ["hello", "world", "iphone", "12", "un", "##aff", "##able", "##s", "##文"]
TINY_VOCAB = TINY_SPECIALS + TINY_CJK + TINY_REST


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_tok")
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return ChineseTokenizer(tiny_dir / "vocab.txt")


def ids_of(*tokens):
    return [TINY_VOCAB.index(t) for t in tokens]


# ---- tiny vocab: encode ----

def test_special_ids(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 2, 3, 4)
    assert tok.bos_token_id == tok.cls_token_id and tok.eos_token_id == tok.sep_token_id
    assert tok.vocab_size == len(TINY_VOCAB)


def test_encode_adds_cls_not_sep_by_default(tok):
    assert tok.encode("明月") == ids_of("[CLS]", "明", "月")


def test_encode_per_call_and_instance_options(tok, tiny_dir):
    assert tok.encode("明月", add_cls=False) == ids_of("明", "月")
    assert tok.encode("明月", add_sep=True) == ids_of("[CLS]", "明", "月", "[SEP]")
    plain = ChineseTokenizer(tiny_dir / "vocab.txt", add_cls=False, add_sep=True)
    assert plain.encode("明月") == ids_of("明", "月", "[SEP]")
    assert plain.encode("明月", add_cls=True, add_sep=False) == ids_of("[CLS]", "明", "月")


def test_empty_prompt_is_cls_only(tok):
    assert tok.encode("") == [tok.cls_token_id]
    assert tok.encode("", add_cls=False) == []
    assert tok.encode_batch(["", "明"]) == [[3], ids_of("[CLS]", "明")]


def test_encode_unknown_and_wordpiece(tok):
    assert tok.encode("Unaffable 猫", add_cls=False) == ids_of("un", "##aff", "##able", "[UNK]")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


# ---- tiny vocab: decode ----

def test_decode_no_spaces_between_cjk_and_punctuation(tok):
    ids = ids_of("[CLS]", "明", "月", "几", "时", "有", "，", "把", "酒", "问", "青", "天", "。")
    assert tok.decode(ids) == "明月几时有，把酒问青天。"


def test_decode_joins_wordpieces_and_spaces_latin_words(tok):
    assert tok.decode(ids_of("hello", "world")) == "hello world"
    assert tok.decode(ids_of("iphone", "12", "你", "好")) == "iphone 12你好"
    assert tok.decode(ids_of("un", "##aff", "##able", ",", "world", "！")) == "unaffable,world！"
    assert tok.decode(ids_of("中", "##文", "hello")) == "中文hello"
    assert tok.decode(ids_of("##s", "hello")) == "s hello"  # a leading continuation shows its piece


def test_decode_drops_specials_keeps_unk(tok):
    ids = ids_of("[CLS]", "[PAD]", "明", "[MASK]", "[unused1]", "[UNK]", "月", "[PAD]")
    assert tok.decode(ids) == "明[UNK]月"
    assert tok.decode(ids_of("hello", "[UNK]", "world")) == "hello[UNK]world"


def test_decode_cuts_at_sep_unless_told(tok):
    ids = ids_of("[CLS]", "明", "月", "[SEP]", "hello", "[SEP]", "天")
    assert tok.decode(ids) == "明月"
    assert tok.decode(ids, stop_at_eos=False) == "明月hello天"
    assert tok.decode(ids_of("[SEP]", "明")) == ""


def test_decode_accepts_numpy_and_batches(tok):
    ids = np.array([ids_of("[CLS]", "明", "月"), ids_of("[CLS]", "天", "[SEP]")], dtype=np.int32)
    assert tok.decode(ids[0]) == "明月"
    assert tok.decode_batch(ids) == ["明月", "天"]
    assert tok.decode_batch([[5, 6], []]) == [tok.decode([5, 6]), ""]


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(VocabError):
        tok.decode([len(TINY_VOCAB)])
    with pytest.raises(VocabError):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.decode([1.0])


def test_normalise_documented_examples(tok):
    assert tok.normalise("明月 几时") == "明月几时"
    assert tok.normalise("Hello   WORLD") == "hello world"
    assert tok.normalise("明月猫") == "明月[UNK]"
    assert tok.normalise("明[SEP]月") == "明"
    for text in ["明月 几时", "Hello   WORLD", "明月猫", "明[SEP]月", "Unaffable！", ""]:
        assert tok.decode(tok.encode(text)) == tok.normalise(text)


def test_from_pretrained_reads_config(tiny_dir, tmp_path):
    assert ChineseTokenizer.from_pretrained(tiny_dir).encode("HELLO", add_cls=False) == ids_of("hello")
    folder = tmp_path / "cased"
    folder.mkdir()
    (folder / "vocab.txt").write_bytes((tiny_dir / "vocab.txt").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert ChineseTokenizer.from_pretrained(folder).encode("HELLO", add_cls=False) == ids_of("[UNK]")
    assert ChineseTokenizer.from_pretrained(str(folder)).encode("HELLO", add_cls=False) == ids_of("[UNK]")  # a str too
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_basic_tokenize": False}))
    with pytest.raises(ConfigError):
        ChineseTokenizer.from_pretrained(folder)
    with pytest.raises(VocabError):
        ChineseTokenizer.from_pretrained(tmp_path / "missing")


# ---- tiny vocab: replies (prompt as sent + the decoded new tokens) ----

def test_join_continuation_rule():
    assert join_continuation("GPT-2 is", "a model", False) == "GPT-2 is a model"
    assert join_continuation("hello ", "world", False) == "hello world"  # the prompt's own space is kept
    assert join_continuation("明月", "几时有", False) == "明月几时有"
    assert join_continuation("hello", "s", True) == "hellos"  # a "##" piece continues the word
    assert join_continuation("hello，", "world", False) == "hello，world"
    assert join_continuation("12", "ab", False) == "12 ab"
    assert join_continuation("", "ab", False) == "ab" and join_continuation("ab", "", False) == "ab"


def test_continue_text_keeps_the_prompt_as_sent(tok):
    prompts = ["Hello  WORLD\t", "Ｆｕｌｌ", "Café 😀 猫", "明月[SEP]", "[CLS]几时", "", "\U00020000"]
    for prompt in prompts:
        assert tok.continue_text(prompt, ids_of("hello", "[SEP]", "world")).startswith(prompt)
    assert tok.continue_text("明月[SEP]", ids_of("几", "时")) == "明月[SEP]几时"  # [SEP] no longer hides it
    assert tok.continue_text("Hello", ids_of("world", "[SEP]", "明")) == "Hello world"
    assert tok.continue_text("un", ids_of("##aff", "##able")) == "unaffable"
    assert tok.continue_text("un", ids_of("[PAD]", "[unused1]", "##aff")) == "unaff"
    assert tok.continue_text("x", np.array(ids_of("hello"), np.int32)) == "x hello"
    assert tok.continue_text("x", []) == "x"
    with pytest.raises(VocabError):
        tok.continue_text("x", [len(TINY_VOCAB)])


def test_tokenizer_config_round_trip(tiny_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((tiny_dir / "vocab.txt").read_bytes())
    path = write_tokenizer_config(tmp_path, do_lower_case=False, model_max_length=64)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "tokenizer_class": "BertTokenizer", "do_lower_case": False, "model_max_length": 64}
    assert ChineseTokenizer.from_pretrained(tmp_path).encode("HELLO", add_cls=False) == ids_of("[UNK]")
    write_tokenizer_config(tmp_path, do_lower_case=True)
    assert ChineseTokenizer.from_pretrained(tmp_path).encode("HELLO", add_cls=False) == ids_of("hello")


# ---- real vocab and corpus (tests/data) ----

@pytest.fixture(scope="module")
def real_vocab(data_dir):
    return data_dir / "bert_chinese_vocab.txt"


@pytest.fixture(scope="module")
def real_tok(real_vocab):
    return ChineseTokenizer(real_vocab)


@pytest.fixture(scope="module")
def corpus(data_dir):
    lines = (data_dir / "clue_corpus_small_sample.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line]
    assert len(lines) == 2500
    return lines


@pytest.fixture(scope="module")
def corpus_ids(real_tok, corpus):
    return real_tok.encode_batch(corpus)


def test_real_vocab_sizes_and_u2028(data_dir):
    for name, size in [("bert_chinese_vocab.txt", 21128), ("bert_chinese_poem_vocab.txt", 22557)]:
        tok = ChineseTokenizer(data_dir / name)
        assert tok.vocab_size == size
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 100, 101, 102)
        assert tok._tokens[343] == "\u2028" and tok.decode([343]) == "\u2028"


def test_ids_equal_hf_bert_tokenizer_on_corpus(real_vocab, corpus, corpus_ids):
    from transformers import BertTokenizer

    hf = BertTokenizer(str(real_vocab))
    for line, ids in zip(corpus, corpus_ids):
        assert ids == [101] + hf.encode(line, add_special_tokens=False), line[:40]


def test_round_trip_is_normalise_on_corpus(real_tok, corpus, corpus_ids):
    for line, ids in zip(corpus, corpus_ids):
        assert real_tok.decode(ids) == real_tok.normalise(line), line[:40]
    assert real_tok.decode(corpus_ids[0]).startswith("兰州公交集团:明起至8月底三条公交线")


@pytest.fixture(scope="module")
def cjk_alphabet(real_vocab):
    return sorted(t for t in read_vocab(real_vocab) if len(t) == 1 and is_cjk(t)) + list("，。！？")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_exact_round_trip_of_cjk_and_chinese_punctuation(real_tok, cjk_alphabet, data):
    text = "".join(data.draw(st.lists(st.sampled_from(cjk_alphabet), max_size=60)))
    assert real_tok.decode(real_tok.encode(text)) == text
    assert real_tok.normalise(text) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(), st.lists(st.sampled_from(
    list("明月ab Z12，。!?[]#\u2028\u3000\t\n\x00ΣİÉé\u0301ﬁ“") + ["[SEP]", "[CLS]", "[UNK]", "##"])).map("".join)))
def test_round_trip_is_normalise_on_any_text(real_tok, text):
    assert real_tok.decode(real_tok.encode(text)) == real_tok.normalise(text)
    assert real_tok.decode(real_tok.encode(text), stop_at_eos=False) == real_tok.normalise(text, stop_at_eos=False)
