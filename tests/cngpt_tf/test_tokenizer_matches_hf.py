"""ChineseTokenizer (our own BERT code, `cngpt_tf.wordpiece`) gives exactly the ids of HF's slow
`BertTokenizer`: `convert_tokens_to_ids(tokenize(text))`, compared with HF itself here.

Every code point 0..0x10FFFF under each casing setting that changes what BERT does, alone and
inside words; random texts built from the hard cases; the CLUE sample; crafted vocabs (no `[MASK]`,
repeated tokens, empty lines, tokens holding whitespace). And the point of it: building and using a
tokenizer imports neither transformers nor torch nor TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
import string
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cngpt_tf.tokenizer import ChineseTokenizer
from cngpt_tf.vocab import read_vocab
from cngpt_tf.wordpiece import BertWordPiece, is_cjk

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
VOCAB = DATA / "bert_chinese_vocab.txt"

# HF's switches and how BasicTokenizer reads them: lower-casing; accents stripped with it unless
# strip_accents=False, or alone with strip_accents=True; CJK split. strip_accents=True with
# lower-casing takes HF's branch of None (`is not False`): the random texts cover it.
SETTINGS = {
    "default": {},
    "cased": {"do_lower_case": False},
    "lower-keep-accents": {"strip_accents": False},
    "cased-strip-accents": {"do_lower_case": False, "strip_accents": True},
    "no-cjk-split": {"tokenize_chinese_chars": False},
    "lower-strip-accents-true": {"strip_accents": True},
}


def hf_ids(hf, text: str) -> list[int]:
    return hf.convert_tokens_to_ids(hf.tokenize(text))


class Pair:
    """Ours (`BertWordPiece`, which `ChineseTokenizer` encodes with) and HF's tokenizer on one
    vocab file with one setting."""

    def __init__(self, vocab_file: Path, setting: dict):
        from transformers import BertTokenizer

        self.ours = BertWordPiece(read_vocab(vocab_file), **setting)
        self.chinese = ChineseTokenizer(vocab_file, add_cls=False, **setting)
        self.hf = BertTokenizer(str(vocab_file), **setting)

    def ids(self, text: str) -> tuple[list[int], list[int]]:
        return self.ours.encode(text), hf_ids(self.hf, text)


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    return {name: Pair(VOCAB, setting) for name, setting in SETTINGS.items()}


def assert_same_ids(pair: Pair, units: list[str], what: str, chunk: int = 8192) -> None:
    """Units joined by spaces, a chunk at a time; a difference names the first unit that differs."""
    for i in range(0, len(units), chunk):
        ours, hf = pair.ids(" ".join(units[i:i + chunk]))
        if ours == hf:
            continue
        for unit in units[i:i + chunk]:
            ours, hf = pair.ids(unit)
            if ours != hf:
                code_points = " ".join(f"U+{ord(c):04X}" for c in unit)
                pytest.fail(f"{what}: {unit!r} ({code_points}): ours {ours}, HF {hf}")
        pytest.fail(f"{what}: units {i}..{i + chunk} differ together, each alone is equal")


# ---- every code point ----

@functools.cache
def code_points() -> tuple[list[str], list[str], list[str]]:
    """Every code point, in three lists: category C* (controls, format, unassigned, private use,
    surrogates: 970k of the 1.1M), the others, and those of the others that are not CJK."""
    control, other = [], []
    for cp in range(0x110000):
        c = chr(cp)
        (control if unicodedata.category(c).startswith("C") else other).append(c)
    return control, other, [c for c in other if not is_cjk(c)]


def layouts(name: str) -> dict[str, list[str]]:
    """The texts to compare under setting `name`, as units joined by spaces.

    * alone: each code point outside C* its own word (a character the vocab lacks is one [UNK]);
      the CJK ideographs (92k) only where the settings reach them (default, no CJK split), as
      lower-casing and stripping accents leave each one (after NFC) as it is: checked below;
    * controls: C* deleted (\\t \\n \\r: whitespace), which no step after lower-casing depends on,
      so only with and without it: in bulk, 64 inside one Latin word each, where a character
      that is not deleted or not whitespace as in HF changes the word's ids;
    * in a word: "a" c "b" ("##" pieces, NFC composing with "a", the whole word [UNK] when c
      cannot be spelled), for every non-CJK c (with CJK split, a CJK character is its own word);
    * after CJK: "明" c for every mark c (category M*; with CJK split, "明" is its own word and
      any other c is as alone; the default settings);
    * CJK, c, Latin: "明" c "b", one word without the CJK split ("##" + a CJK character too).
    """
    control, other, non_cjk = code_points()
    out = {"alone": other if name in ("default", "no-cjk-split") else non_cjk}
    if name in ("default", "cased"):
        out["controls"] = ["a" + "".join(control[i:i + 64]) + "b" for i in range(0, len(control), 64)]
    if name == "no-cjk-split":
        out["CJK, c, Latin"] = ["明" + c + "b" for c in other]
    else:
        out["in a word"] = ["a" + c + "b" for c in non_cjk]
    if name == "default":
        out["after CJK"] = ["明" + c for c in non_cjk if unicodedata.category(c).startswith("M")]
    return out


@pytest.mark.parametrize("name", [n for n in SETTINGS if n != "lower-strip-accents-true"])
def test_every_code_point(pairs, name):
    control, other, non_cjk = code_points()
    assert len(control) + len(other) == 0x110000
    if name not in ("default", "no-cjk-split"):  # why the CJK ideographs need not run alone here
        nfc = [unicodedata.normalize("NFC", c) for c in other if is_cjk(c)]
        assert len(nfc) + len(non_cjk) == len(other) > 140_000
        assert all(c.lower() == c == unicodedata.normalize("NFD", c) for c in nfc)
    for layout, units in layouts(name).items():
        assert_same_ids(pairs[name], units, f"{name}, {layout}")


# ---- random texts of the hard cases ----

_VOCAB_CJK = "明月几时有把酒问青天我欲乘风归去丽中文"
_RARE_CJK = "\u3400\u4dbf\u9fa5\uf900\ufa6d\U00020000\U0002a6d6\U0002b740\U0002f800\u2e80\u3007"
_ACCENTS = ["é", "Å", "ñ", "É", "ü", "ß", "İ", "ı", "Æ", "e\u0301", "A\u030a", "n\u0303\u0327", "\u0301",
            "\u0301a", "Ω\u0345", "\u1e9e", "ǅ", "ﬁ", "Σ", "ΑΣ", "ΣΑΣ ", "ς", "\u212a", "\u212b", "\u1fef",
            "\u0344", "\u0f73", "\u302e", "\U0001d165\U0001d16d", "Ǆ\u0307"]
_SPACES = list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000")
_CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\u200e",
                                             "\ue000", "\ud800", "\udfff", "\U000e0001", "\U0010ffff", "\u0378"]
_SPECIAL_LITERALS = ["[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]", " [CLS] ", "\t[SEP]\n", "[cls]", "[Cls]",
                     "[sep]", "[CLS", "CLS]", "[[UNK]]", "[CL\x00S]", "[CL\u200bS]", "[C\u0301LS]", "[ĆLS]",
                     "[MAS\u212a]", "[UN\u212a]", "[SE\ufffdP]", "[unused1]", "##", "##s", "[CLS][SEP]"]


def chars(alphabet, min_size=0, max_size=None):
    """Strings over `alphabet` (st.text over a sampled alphabet can crash Hypothesis' shrinker when
    one_of mixes several alphabets: "ValueError: 65 is not in list")."""
    return st.lists(st.sampled_from(list(alphabet)), min_size=min_size, max_size=max_size).map("".join)


PIECES = [
    chars(_VOCAB_CJK + _RARE_CJK + "，。！？、“”《》·…—", max_size=8),
    chars(string.ascii_letters, max_size=12),
    chars(string.ascii_letters, min_size=98, max_size=104),  # about 100 characters
    chars(string.digits + "０１２", max_size=6),
    chars(string.punctuation, max_size=4),
    st.sampled_from(_ACCENTS),
    chars(_SPACES, min_size=1, max_size=3),
    chars(_CONTROLS, max_size=3),
    st.sampled_from(_SPECIAL_LITERALS),
    st.text(st.characters(min_codepoint=0xFF01, max_codepoint=0xFF5E), max_size=4),  # full-width
    st.text(st.characters(min_codepoint=0x0370, max_codepoint=0x04FF), max_size=5),  # Greek, Cyrillic
    st.text(st.characters(min_codepoint=0x0600, max_codepoint=0x06FF), max_size=4),  # Arabic
    st.text(st.characters(min_codepoint=0x3040, max_codepoint=0x30FF), max_size=4),  # kana
    st.sampled_from(["😀", "👍🏽", "🇨🇳", "👨\u200d👩\u200d👧", "\u2764\ufe0f", "🀄"]),
    st.text(max_size=6),  # anything
]
TEXTS = st.lists(st.one_of(PIECES), max_size=12).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SETTINGS)), text=TEXTS)
def test_random_texts(pairs, name, text):
    pair = pairs[name]
    ours, hf = pair.ids(text)
    assert ours == hf
    tok = pair.chinese
    assert tok.encode(text) == ours  # the real vocab has every special: ChineseTokenizer's ids are HF's
    assert tok.decode(tok.encode(text)) == tok.normalise(text)  # the round-trip contract, every setting


def test_corpus_under_the_other_settings(pairs):
    """A third of the CLUE sample, its lines dealt out to the settings (test_tokenizer.py runs all of
    it with the default settings)."""
    lines = [line for line in (DATA / "clue_corpus_small_sample.txt").read_text(encoding="utf-8").split("\n") if line]
    lines = lines[::3]
    names = [n for n in SETTINGS if n != "default"]
    for i, line in enumerate(lines):
        ours, hf = pairs[names[i % len(names)]].ids(line)
        assert ours == hf, (names[i % len(names)], i, line[:40])


@pytest.mark.parametrize("text, cased_ids", [
    ("[CL\x00S]", [101]),  # cleaning joins "[CLS]": HF's never_split keeps it whole, WordPiece finds it
    ("[CL\u200bS]", [101]),
    ("[MAS\u212a]", [103]),  # NFC makes the Kelvin sign "K"
])
def test_specials_that_cleaning_makes(pairs, text, cased_ids):
    assert pairs["cased"].ids(text) == (cased_ids, cased_ids)
    ours, hf = pairs["default"].ids(text)
    assert ours == hf and ours != cased_ids  # lower-cased first: "[", "cls"/"mask", "]"


def test_a_special_that_stripping_accents_makes():
    """"[ĆLS]" stripped of its accent is "[CLS]": HF checks never_split again after stripping."""
    text = "[C\u0301LS]"  # NFC composes "Ć"
    assert Pair(VOCAB, SETTINGS["cased-strip-accents"]).ids(text) == ([101], [101])
    ours, hf = Pair(VOCAB, SETTINGS["cased"]).ids(text)
    assert ours == hf and ours != [101]


# ---- crafted vocabs ----

CRAFTED = {
    # no [MASK]: HF adds it past the vocab, id len(distinct tokens), here the vocab size
    "no-mask": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "##b", "明", "[", "]", "##M", "##A", "##S", "##K"],
    # repeated tokens (the last line wins), an empty line (and an empty last line, written below),
    # tokens of or with whitespace, accents and sigmas
    "odd": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "", "b", "a", "##b", "x y", " ", "\u2028",
            "##\u2028", "\u3000", "[UNK]", "ab", "##", "#", "明", "月", "##月", "É", "é", "e", "##\u0301",
            "ς", "σ", "α", "##σ", "##ς"],  # "ΑΣ" lower-cased a character at a time is "ασ", as a word "ας"
    # repeated tokens and no [MASK]: its id len(distinct tokens) is then the id of a vocab line
    "repeats-no-mask": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "a", "[SEP]", "b", "##b", "c"],
}
CRAFTED_TEXTS = ["[MASK]", "a[MASK]b", " [MASK] ", "[MA\x00SK]", "[mask]", "ab", "a b", "x y", "ab ba abb", "",
                 "[SEP]", "a [SEP] b", "[UNK]", "\u2028", "a\u2028b", "\u3000", "##b", "#", "a##b", "明月", "明 月",
                 "Éé", "E\u0301", "ΑΣ σς", "a" * 100, "a" * 101, "b" * 101 + "明", "A\u200bB", "[CLS]\t明", "ba"]


@pytest.mark.parametrize("vocab", sorted(CRAFTED))
def test_crafted_vocabs(tmp_path, vocab):
    tokens = CRAFTED[vocab]
    path = tmp_path / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens) + ("\n" if vocab == "odd" else ""), encoding="utf-8")
    for setting in SETTINGS.values():
        pair = Pair(path, setting)
        for text in CRAFTED_TEXTS:
            ours, hf = pair.ids(text)
            assert ours == hf, (setting, text)
    no_mask = "[MASK]" not in tokens
    expected = len(set(tokens)) if no_mask else tokens.index("[MASK]")
    assert Pair(path, {}).ids("[MASK]") == ([expected], [expected])
    if vocab == "repeats-no-mask":
        assert expected == 8 and tokens[expected] == "##b"  # HF's id collides with a vocab line
    # ChineseTokenizer (every face of the model) makes a [MASK] the vocab lacks its [UNK] instead,
    # as the SavedModel's in-graph tokenizer does; everything else stays HF's
    chinese = ChineseTokenizer(path, add_cls=False)
    for text in CRAFTED_TEXTS:
        want = hf_ids(Pair(path, {}).hf, text.replace("[MASK]", "[UNK]") if no_mask else text)
        assert chinese.encode(text) == want, text


@settings(max_examples=150, deadline=None)
@given(vocab=st.sampled_from(sorted(CRAFTED)), name=st.sampled_from(sorted(SETTINGS)),
       text=st.lists(st.sampled_from(["a", "b", "c", "A", "É", "e\u0301", "明", "月", "#", "##", " ", "\u2028",
                                      "\x00", "[MASK]", "[SEP]", "[UNK]", "[", "]", "M", "A", "S", "K", "x y", "σ",
                                      "Σ", "\u3000", "\t"]), max_size=20).map("".join))
def test_crafted_vocabs_random_texts(crafted_pairs, vocab, name, text):
    ours, hf = crafted_pairs(vocab, name).ids(text)
    assert ours == hf


@pytest.fixture(scope="module")
def crafted_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    cache = {}

    def get(vocab: str, name: str) -> Pair:
        if (vocab, name) not in cache:
            path = folder / f"{vocab}.txt"
            path.write_text("".join(t + "\n" for t in CRAFTED[vocab]), encoding="utf-8")
            cache[vocab, name] = Pair(path, SETTINGS[name])
        return cache[vocab, name]

    return get


# ---- no heavy imports ----

def test_tokenizer_imports_no_transformers_torch_or_tensorflow():
    script = (
        "import json, sys\n"
        "from cngpt_tf.tokenizer import ChineseTokenizer\n"
        f"tok = ChineseTokenizer({str(VOCAB)!r})\n"
        "ids = tok.encode('明月几时有，把酒问青天。Hello WORLD [SEP]')\n"
        "text = tok.decode(ids), tok.normalise('Café'), tok.continue_text('明月', ids[1:3])\n"
        "heavy = [m for m in ('transformers', 'torch', 'tensorflow') if m in sys.modules]\n"
        "print(json.dumps([ids, text, heavy]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ids, text, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == []
    tok = ChineseTokenizer(VOCAB)
    assert ids == tok.encode("明月几时有，把酒问青天。Hello WORLD [SEP]") and ids[-1] == tok.sep_token_id
    assert text == ["明月几时有，把酒问青天。hello world", "cafe", "明月明月"]
