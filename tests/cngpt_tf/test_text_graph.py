"""TextGraph: in-graph encode/decode equal HF BertTokenizer / ChineseTokenizer, and survive a SavedModel.

Unit tests use a tiny vocab written here; the parity tests use the real BERT Chinese vocab and the
CLUE sample in `tests/data/`.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cngpt_tf.text_graph import TextGraph
from cngpt_tf.tokenizer import ChineseTokenizer
from cngpt_tf.vocab import read_vocab

DATA = Path(__file__).resolve().parents[1] / "data"
VOCAB_FILE = DATA / "bert_chinese_vocab.txt"
CORPUS_FILE = DATA / "clue_corpus_small_sample.txt"
TINY_VOCAB = (["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("明月几时有，。!,")
              + ["hello", "world", "un", "##aff", "##able", "##s", "12", "##月"])
NO_LIMIT = 1 << 30


def rows(graph, texts, max_tokens=NO_LIMIT):
    """encode() -> list of id lists without the left padding, after checking the padding."""
    ids, mask = (t.numpy() for t in graph.encode(tf.constant(texts, tf.string), max_tokens))
    assert ids.shape == mask.shape and ids.dtype == mask.dtype == np.int32
    out = []
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert m.tolist() == [0] * (len(m) - n) + [1] * n  # padding on the left only
        assert (row[: len(m) - n] == 0).all()  # [PAD] is id 0 in both vocabs
        out.append(row[len(m) - n:].tolist())
    return out


def decoded(graph, batch, eos_id):
    return [t.decode("utf-8") for t in graph.decode(tf.constant(batch, tf.int32), eos_id).numpy()]


# ---- tiny vocab: truncation, edge inputs, decode rules ----

@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_graph") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return TextGraph(read_vocab(tiny_file))


@pytest.fixture(scope="module")
def tiny_tok(tiny_file):
    return ChineseTokenizer(tiny_file)


def ids_of(*tokens):
    return [TINY_VOCAB.index(t) for t in tokens]


def test_encode_basic_and_wordpiece(tiny, tiny_tok):
    texts = ["明月几时有", "Hello, UNAFFABLE worlds!", "unaffablex 12月", "[CLS]明[SEP]", "mi[UNK]x"]
    assert rows(tiny, texts) == [tiny_tok.encode(t) for t in texts]
    assert rows(tiny, ["Hello, unaffable"]) == [ids_of("[CLS]", "hello", ",", "un", "##aff", "##able")]


def test_left_truncation_keeps_cls_and_the_end(tiny):
    ids, mask = tiny.encode(tf.constant(["明月几时有", "明"]), 3)
    assert ids.numpy().tolist() == [ids_of("[CLS]", "时", "有"), ids_of("[PAD]", "[CLS]", "明")]
    assert mask.numpy().tolist() == [[1, 1, 1], [0, 1, 1]]
    assert rows(tiny, ["明月几时有"], 1) == [ids_of("[CLS]")]
    assert rows(tiny, ["明月几时有"], 0) == [ids_of("[CLS]")]  # [CLS] is always there
    assert rows(TextGraph(TINY_VOCAB, add_cls=False), ["明月几时有", ""], 2) == [ids_of("时", "有"), []]


def test_left_truncation_is_the_tokenizers_rule(tiny, tiny_tok):
    """The Python text faces cut a prompt by `ChineseTokenizer.encode(max_tokens=)`: the same ids as
    the graph for every limit, [CLS] included (one rule, `cngpt_tf.tokenizer.keep_end`)."""
    texts = ["明月几时有", "[CLS]明[SEP]月", "unaffables 12月", ""]
    no_cls = TextGraph(TINY_VOCAB, add_cls=False)
    for limit in range(0, 9):
        assert rows(tiny, texts, limit) == tiny_tok.encode_batch(texts, max_tokens=limit), limit
        assert rows(no_cls, texts, limit) == tiny_tok.encode_batch(texts, add_cls=False, max_tokens=limit), limit
    assert tiny_tok.encode("明月几时有", max_tokens=3, add_sep=True) == ids_of("[CLS]", "有", "[SEP]")


def test_empty_inputs(tiny):
    assert rows(tiny, ["", "   \u3000", "\x00\u200b"]) == [ids_of("[CLS]")] * 3
    ids, mask = tiny.encode(tf.constant([], tf.string), 8)
    assert ids.shape == mask.shape == (0, 0)


def test_non_utf8_bytes_give_a_defined_result(tiny, tiny_tok):
    # unicode_transcode(errors="replace") makes bad bytes U+FFFD, which BERT's cleaning drops.
    bad = [b"\xff\xfe hello", b"\xe6\x9c" + "月".encode(), b"[CL\xffS]", b"\x80", b"hel\xc3lo"]
    assert rows(tiny, bad) == [tiny_tok.encode(b.decode("utf-8", errors="replace")) for b in bad]
    assert rows(tiny, bad[:1]) == [ids_of("[CLS]", "hello")]


def test_decode_rules(tiny, tiny_tok):
    batch = [ids_of("hello", "world", "，", "明", "[UNK]", "un", "##aff", "##able", "12", "[SEP]", "有"),
             ids_of("##aff", "##s", "[PAD]", "[unused1]", "hello", "[MASK]", "##s", "[CLS]", "月", "。", "[PAD]"),
             ids_of("[SEP]", "明", "明", "明", "明", "明", "明", "明", "明", "明", "明")]
    assert decoded(tiny, batch, ids_of("[SEP]")[0]) == [tiny_tok.decode(r) for r in batch]
    assert decoded(tiny, batch, ids_of("[SEP]")[0])[:2] == ["hello world，明[UNK]unaffable 12", "affs hellos月。"]
    assert decoded(tiny, batch, ids_of("月")[0])[1] == "affs hellos"  # eos_id also ends the text
    assert decoded(tiny, [[], []], 4) == ["", ""]
    assert decoded(tiny, [[-1, 999, ids_of("明")[0]]], 4) == ["明"]  # ids outside the vocab: dropped


# ---- real vocab: HF parity ----

@pytest.fixture(scope="module")
def vocab():
    if not VOCAB_FILE.is_file():
        pytest.skip(f"{VOCAB_FILE} not found")
    return read_vocab(VOCAB_FILE)


@pytest.fixture(scope="module")
def graph(vocab):
    return TextGraph(vocab)


@pytest.fixture(scope="module")
def hf():
    from transformers import BertTokenizer

    return BertTokenizer(str(VOCAB_FILE), do_lower_case=True)


@pytest.fixture(scope="module")
def tok():
    return ChineseTokenizer(VOCAB_FILE)


def hf_ids(hf, text):
    return [hf.cls_token_id] + hf.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def corpus_ids(graph, hf):
    lines = CORPUS_FILE.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 occurs
    lines = lines[:-1] if lines[-1] == "" else lines
    assert len(lines) == 2500
    got = [r for i in range(0, len(lines), 250) for r in rows(graph, lines[i:i + 250])]
    return lines, got


def test_corpus_ids_equal_hf(corpus_ids, hf):
    lines, got = corpus_ids
    bad = [i for i, (line, ids) in enumerate(zip(lines, got)) if ids != hf_ids(hf, line)]
    assert not bad, f"{len(bad)} lines differ, first {bad[:5]}"


def test_corpus_decode_equals_chinese_tokenizer(corpus_ids, graph, tok):
    _, got = corpus_ids
    for i in range(0, len(got), 500):
        part = got[i:i + 500]
        width = max(map(len, part))
        batch = [[0] * (width - len(r)) + r for r in part]  # left-padded as encode gives them
        assert decoded(graph, batch, tok.eos_token_id) == [tok.decode(r) for r in part]


_pieces = [
    st.text(st.characters(min_codepoint=0xFF01, max_codepoint=0xFF5E), max_size=6),  # full-width
    st.sampled_from(["é", "Å", "ñ", "É", "ü", "ß", "İ", "ı", "Æ", "e\u0301", "A\u030a", "n\u0303\u0327",
                     "\u0301", "\u0301a", "Ω\u0345", "\u1e9e", "ǅ", "ﬁ", "Σ", "ΑΣ", "ς", "σ"]),
    st.sampled_from(["😀", "👍🏽", "🇨🇳", "👨\u200d👩\u200d👧", "\u2764\ufe0f", "🀄"]),
    st.text(st.sampled_from([chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u200b", "\ufeff",
                                                              "\ufffd", "\u200e", "\ue000"]), max_size=4),
    st.text(st.characters(min_codepoint=0x0600, max_codepoint=0x06FF), max_size=6),  # Arabic
    st.text(st.characters(min_codepoint=0x0400, max_codepoint=0x04FF), max_size=6),  # Cyrillic
    st.text(st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), max_size=4),  # Hangul
    st.text(st.characters(min_codepoint=0x3040, max_codepoint=0x30FF), max_size=6),  # kana
    st.text(st.characters(min_codepoint=0x0370, max_codepoint=0x03FF), max_size=6),  # Greek
    st.text(st.sampled_from(string.ascii_letters), min_size=95, max_size=106),  # ~100-char words
    st.text(st.sampled_from(string.ascii_letters + string.digits + string.punctuation), max_size=12),
    st.text(st.sampled_from(list(" \t\n\r\u3000\u2028\u2029\xa0\u2003\u202f")), min_size=1, max_size=5),
    st.sampled_from(["[CLS]", "[UNK]", "[SEP]", "[PAD]", "[MASK]", "[cls]", "[CLS", "[[UNK]]", "[C\x00LS]"]),
    st.text(st.sampled_from(list("明月几时有把酒问青天我欲乘风归去，。！？、“”《》丽\uf900\U00020000")), max_size=8),
    st.text(st.characters(codec="utf-8"), max_size=6),  # anything
]
adversarial = st.lists(st.one_of(_pieces), max_size=10).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adversarial, min_size=1, max_size=3))
def test_adversarial_ids_equal_hf(graph, hf, texts):
    assert rows(graph, texts) == [hf_ids(hf, t) for t in texts]


def test_random_ids_decode_equals_chinese_tokenizer(vocab, graph, tok):
    rng = np.random.default_rng(0)
    cont = [i for i, t in enumerate(vocab) if t.startswith("##") and len(t) > 2]
    words = [i for i, t in enumerate(vocab) if t.isascii() and t.isalnum()]
    pools = [np.arange(len(vocab)), np.array(cont), np.array(words), np.arange(0, 106)]
    for _ in range(20):
        batch = [[int(rng.choice(pools[rng.integers(4)])) for _ in range(24)] for _ in range(16)]
        assert decoded(graph, batch, tok.eos_token_id) == [tok.decode(r) for r in batch]


def test_savedmodel_without_tensorflow_text_or_transformers(graph, tmp_path):
    texts = ["明月几时有，把酒问青天。", "Hello WORLD [CLS] é😀", "", "\xff\xfe abc"]
    raw = [t.encode("latin-1") if t.startswith("\xff") else t.encode() for t in texts]
    tf.saved_model.save(graph, str(tmp_path / "model"))
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        m = tf.saved_model.load({str(tmp_path / "model")!r})
        ids, mask = m.encode(tf.constant({raw!r}), 6)
        text = m.decode(ids, 102)
        assert "tensorflow_text" not in sys.modules and "transformers" not in sys.modules
        print(json.dumps([ids.numpy().tolist(), mask.numpy().tolist(), [t.decode() for t in text.numpy()]]))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ids, mask = graph.encode(tf.constant(raw), 6)
    expected = [ids.numpy().tolist(), mask.numpy().tolist(),
                [t.decode() for t in graph.decode(ids, 102).numpy()]]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
    assert expected[2] == ["酒问青天。", "hello world[UNK]", "", "abc"]  # é😀 is one word


def test_no_lower_case_matches_hf_without_combining_sequences(vocab):
    from transformers import BertTokenizer

    cased = BertTokenizer(str(VOCAB_FILE), do_lower_case=False)
    texts = ["Hello World, iPhone 12!", "明月几时有\u3000ÅΩ", "[CLS]x[UNK]", "\u212b\uf900 café"]
    assert rows(TextGraph(vocab, do_lower_case=False), texts) == [hf_ids(cased, t) for t in texts]


@pytest.mark.parametrize("lower, strip", [(False, True), (True, False)], ids=["cased-stripped", "lower-kept"])
def test_strip_accents_follows_hf(vocab, lower, strip):
    """strip_accents as HF's BasicTokenizer reads it (and ChineseTokenizer): its own switch."""
    from transformers import BertTokenizer

    hf = BertTokenizer(str(VOCAB_FILE), do_lower_case=lower, strip_accents=strip)
    texts = ["Café Ünïcode résumé", "naïve ÅNGSTRÖM", "明月几时有，é", "ABC déf"]
    graph = TextGraph(vocab, do_lower_case=lower, strip_accents=strip)
    assert rows(graph, texts) == [hf_ids(hf, t) for t in texts]
    assert rows(graph, texts[:1]) != rows(TextGraph(vocab, do_lower_case=lower), texts[:1])


# ---- continue_text: the reply rule of ChineseTokenizer.continue_text ----

def replies(graph, texts, new_ids, eos_id):
    out = graph.continue_text(tf.constant(texts, tf.string), tf.constant(new_ids, tf.int32), eos_id)
    return [t.decode("utf-8") for t in out.numpy()]


def test_continue_text_keeps_the_text_and_spaces_latin_words(tiny, tiny_tok):
    sep = ids_of("[SEP]")[0]
    cases = [("Hello", ("world", "明")), ("Hello ", ("world",)), ("un", ("##aff", "##able")),
             ("", ("明",)), ("明", ()), ("a[SEP]b", ("[CLS]", "hello")), ("x😀", ("hello",)), ("é", ("12",)),
             ("12", ("[UNK]",)), ("hello", ("[SEP]", "world")), ("hello", ("[PAD]", "##s")),
             ("hello", ("[unused1]", "world")), ("Hello\tWORLD  ", ("12",)), ("Ｈｅｌｌｏ", ("hello",))]
    width = max(len(c[1]) for c in cases)
    new = [ids_of(*c[1]) + [0] * (width - len(c[1])) for c in cases]
    got = replies(tiny, [c[0] for c in cases], new, sep)
    assert got == [tiny_tok.continue_text(c[0], row) for c, row in zip(cases, new)]
    assert got[:4] == ["Hello world明", "Hello world", "unaffable", "明"]
    assert got[5] == "a[SEP]b hello" and got[12] == "Hello\tWORLD  12"
    assert replies(tiny, [b"ab\xff", b"\xe6\x98"], [ids_of("hello")] * 2, sep) == ["ab\ufffdhello", "\ufffdhello"]
    assert replies(tiny, [], np.zeros((0, 3)), sep) == []
    assert replies(tiny, ["a", "b"], np.zeros((2, 0)), sep) == ["a", "b"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(adversarial, min_size=1, max_size=4), data=st.data())
def test_continue_text_equals_chinese_tokenizer(vocab, graph, tok, texts, data):
    cont = [i for i, t in enumerate(vocab) if t.startswith("##") and len(t) > 2][:200]
    words = [i for i, t in enumerate(vocab) if t.isascii() and t.isalnum()][:200]
    pool = st.one_of(st.sampled_from(cont), st.sampled_from(words), st.integers(0, len(vocab) - 1),
                     st.sampled_from([0, 100, 101, 102, 103, 1, 2]))
    new = [data.draw(st.lists(pool, min_size=6, max_size=6)) for _ in texts]
    assert replies(graph, texts, new, tok.eos_token_id) == [tok.continue_text(t, r) for t, r in zip(texts, new)]
