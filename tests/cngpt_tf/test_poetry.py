"""Classical poems (`Generator.poem`, `cngpt_tf.poetry`): exact forms from a random model, greedy
parity with a NumPy/PyTorch reference that applies the rules step by step, the real 21128-token
vocab, input errors, and `PoemConstraint` alone on hand-made logits.

The tiny random model writes garbage, so every property checked here comes from the masks alone.
The rules are re-implemented in this file from the `cngpt_tf.poetry` docstring (the CJK test by
Unicode character names, the rhyme groups read from the JSON), not imported from the library.

XLA compiles cost ~4 s each on 2 cores: the sampled cases are drawn from a few fixed
(new-token bucket, sampling strategy, batch) shapes, so that the whole file compiles about 8 times.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from cngpt_tf.poetry import (ANY_GROUP_ROW, CJK_ROW, COMMA_ROW, FIRST_GROUP_ROW, FORCE, PERIOD_ROW, RHYME, RHYME_TABLE,
                             SEP_ROW, PoemConstraint, PoemPlan, PoemVocab)
from tests.conftest import torch_logits, write_torch_model

torch = pytest.importorskip("torch")

COMMA, PERIOD = "，", "。"
GROUPS = json.loads(RHYME_TABLE.read_text(encoding="utf-8"))  # {group name: characters}
GROUP_OF = {c: name for name, chars in GROUPS.items() for c in chars}
# Characters of the tiny demo vocab (all in a rhyme group): acrostics and rhyme characters.
POOL = "床前明月光疑是地上霜举头望低思故乡白日依山尽黄河入海流欲穷千里目更层楼春眠不觉晓处闻啼鸟夜来风雨声花落知多少"
NO_GROUP = "兙"  # a CJK character of the tiny vocab that the shipped table leaves out


def is_chinese_char(token: str) -> bool:
    """One CJK ideograph (unified or compatibility), by its Unicode name."""
    return len(token) == 1 and unicodedata.name(token, "").startswith(
        ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


# ----- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_out(tiny_pt_dir, tmp_path_factory):
    """tf2 only: the poem code needs nothing else, and a SavedModel export would cost ~5 s more."""
    from cngpt_tf.export.convert import convert

    out = tmp_path_factory.mktemp("poetry") / "out"
    convert(str(tiny_pt_dir), out, formats=("tf2",), progress=False)
    return out


@pytest.fixture(scope="module")
def gen(tiny_out):
    from cngpt_tf.generator import Generator

    return Generator.from_pretrained(tiny_out)


@pytest.fixture(scope="module")
def vocab(tiny_pt_dir):
    return (tiny_pt_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def hf(tiny_pt_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_pt_dir).eval()


# ----- the rules, checked on output text ---------------------------------------------------------------


def check_poem(poem: str, vocab_set: set, chars: int, lines: int, acrostic=None, rhyme=None):
    """Assert that `poem` has exactly the form asked; the rules as the poetry docstring states them."""
    rows = poem.split("\n")
    assert len(rows) == lines, poem
    for i, row in enumerate(rows):
        assert len(row) == chars + 1, (i, row, poem)
        assert row[-1] == (COMMA if i % 2 == 0 else PERIOD), (i, row)
        for c in row[:-1]:
            assert is_chinese_char(c) and c in vocab_set, (i, c, row)
        if acrostic:
            assert row[0] == acrostic[i], (i, row, acrostic)
    ends = [row[chars - 1] for row in rows[1::2]]
    if rhyme is None or not ends or (acrostic and chars == 1):  # an acrostic character is forced
        return
    groups = {GROUP_OF.get(c) for c in ends}
    if rhyme == "auto":
        assert len(groups) == 1 and None not in groups, (ends, groups)
    else:
        want = rhyme if rhyme in GROUPS else GROUP_OF[rhyme]
        assert groups == {want}, (ends, groups, want)


# ----- sampled poems have exactly the form asked ---------------------------------------------------------

# (forms, sampling, rows): each case is one compiled shape (new-token bucket, trace key, batch).
BUCKET_16 = [(3, 2), (1, 4), (2, 5), (4, 3)]  # 9..16 new tokens
BUCKET_32 = ["五言绝句", (4, 6), (6, 4), (3, 7), (2, 8), (1, 12), (5, 5)]  # 17..32
BUCKET_48 = ["七言绝句", (7, 5), (3, 10), (6, 6)]  # 33..48 (五言律诗 = 49, 七言律诗 = 65 > n_positions)
PLAIN = "top_k=0, top_p=1"
FILTERED = "top_k=8, top_p<1, repetition penalty"
CASES = [(BUCKET_32, PLAIN, 1), (BUCKET_32, FILTERED, 3), (BUCKET_48, FILTERED, 1), (BUCKET_16, PLAIN, 3)]


def shape_of(form):
    return {"五言绝句": (5, 4), "七言绝句": (7, 4)}.get(form, form)


@st.composite
def poem_requests(draw):
    forms, sampling, rows = draw(st.sampled_from(CASES))
    form = draw(st.sampled_from(forms))
    chars, lines = shape_of(form)
    kwargs = dict(form=form, seed=draw(st.integers(0, 2**31 - 2)), num_return_sequences=rows,
                  temperature=draw(st.floats(0.3, 3.0)), prompt=draw(st.sampled_from(["", "明月", "春夜思故乡"])))
    if sampling == FILTERED:
        kwargs.update(top_k=8, top_p=draw(st.floats(0.3, 0.99)), repetition_penalty=draw(st.floats(1.05, 2.0)))
    if draw(st.booleans()):
        kwargs["acrostic"] = "".join(draw(st.lists(st.sampled_from(POOL), min_size=lines, max_size=lines)))
    kwargs["rhyme"] = draw(st.one_of(st.none(), st.just("auto"), st.sampled_from(list(GROUPS)), st.sampled_from(POOL)))
    return kwargs


@settings(max_examples=25, deadline=None)
@given(request=poem_requests())
def test_sampled_poems_have_exactly_the_form_asked(gen, vocab, request):
    poems = gen.poem(**request)
    assert len(poems) == request["num_return_sequences"]
    chars, lines = shape_of(request["form"])
    rhyme = request["rhyme"] if chars > 1 else None  # one-character lines: test_one_character_lines_rhyme
    for poem in poems:
        check_poem(poem, set(vocab), chars, lines, request.get("acrostic"), rhyme)


def test_default_form_is_seven_character_quatrain_and_seed_repeats(gen, vocab):
    first = gen.poem(seed=7, rhyme="auto")
    check_poem(first[0], set(vocab), 7, 4, rhyme="auto")
    assert gen.poem(seed=7, rhyme="auto") == first


def test_one_character_lines_rhyme(gen, vocab):
    """A line of one character: that character is the line's last, so it must rhyme."""
    for seed in range(3):
        poem = gen.poem(form=(1, 12), rhyme="auto", seed=seed)[0]
        check_poem(poem, set(vocab), 1, 12, rhyme="auto")


# ----- greedy output equals a step-by-step reference --------------------------------------------------


def reference_poem(hf_model, vocab, prompt_ids, chars, lines, acrostic=None, rhyme=None):
    """Greedy decoding with the rules as masks, one full forward pass of HF PyTorch GPT-2 per step.

    Returns (poem ids, new [SEP] included; number of steps where the mask changed the argmax)."""
    index = {t: i for i, t in enumerate(vocab)}
    cjk = np.array([is_chinese_char(t) for t in vocab])
    group_of = np.array([GROUP_OF.get(t) if c else None for t, c in zip(vocab, cjk)], object)
    group = None if rhyme in (None, "auto") else (rhyme if rhyme in GROUPS else GROUP_OF[rhyme])

    def only(token_id):
        allowed = np.zeros(len(vocab), bool)
        allowed[token_id] = True
        return allowed

    ids, changed = list(prompt_ids), 0

    def emit(allowed):
        nonlocal changed
        logits = torch_logits(hf_model, np.array([ids]), np.ones((1, len(ids)), np.int64))[0, -1]
        token = int(np.argmax(np.where(allowed, logits, -np.inf)))
        changed += token != int(np.argmax(logits))
        ids.append(token)
        return token

    for line in range(lines):
        for pos in range(chars):
            if acrostic and pos == 0:
                emit(only(index[acrostic[line]]))
            elif rhyme is not None and line % 2 == 1 and pos == chars - 1:
                in_group = (group_of != None) if group is None else (group_of == group)  # noqa: E711
                token = emit(cjk & in_group)
                group = group_of[token] if group is None else group
            else:
                emit(cjk)
        emit(only(index[COMMA if line % 2 == 0 else PERIOD]))
    emit(only(index["[SEP]"]))
    return ids[len(prompt_ids):], changed


def text_of(vocab, ids, chars):
    """Poem ids ([SEP] last) -> the text poem() returns: one line per 句, "\n"-joined."""
    body = [vocab[i] for i in ids[:-1]]
    return "\n".join("".join(body[k:k + chars + 1]) for k in range(0, len(body), chars + 1))


@pytest.mark.parametrize("prompt, form, acrostic, rhyme", [
    ("", "五言绝句", "床前明月", None),
    ("明月", "七言绝句", None, "auto"),
    ("", "七言绝句", "春眠不觉", "auto"),
    ("春夜", (4, 6), "白日依山尽黄", "十唐"),
    ("", (5, 5), None, "霜"),
])
def test_greedy_equals_reference(gen, hf, vocab, prompt, form, acrostic, rhyme):
    chars, lines = shape_of(form)
    prompt_ids = gen.tokenizer.encode(prompt)
    ref, changed = reference_poem(hf, vocab, prompt_ids, chars, lines, acrostic, rhyme)
    assert ref[-1] == vocab.index("[SEP]")
    assert changed >= lines  # the masks matter (the unmasked argmax is rarely the punctuation due)
    poem = gen.poem(prompt, form=form, acrostic=acrostic, rhyme=rhyme, do_sample=False)
    assert poem == [text_of(vocab, ref, chars)]
    # the same ids, read back one character per token
    index = {t: i for i, t in enumerate(vocab)}
    assert [index[c] for c in poem[0].replace("\n", "")] == ref[:-1]


# ----- the real 21128-token vocab ---------------------------------------------------------------------


def test_real_vocab_regulated_verse(data_dir, tmp_path):
    from cngpt_tf.generator import Generator
    from cngpt_tf.export.convert import convert

    tokens = (data_dir / "bert_chinese_vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokens) == 21128
    write_torch_model(tmp_path / "model", tokens, n_positions=128)
    convert(str(tmp_path / "model"), tmp_path / "out", formats=("tf2",), progress=False)
    real = Generator.from_pretrained(tmp_path / "out")
    acrostic = "春夏秋冬江山如画"
    poems = real.poem("题画", form="七言律诗", acrostic=acrostic, rhyme="auto", seed=3, num_return_sequences=2)
    assert len(poems) == 2
    for poem in poems:
        check_poem(poem, set(tokens), 7, 8, acrostic, "auto")


# ----- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(acrostic="床前明"), "acrostic"),  # 3 characters for 4 lines
    (dict(acrostic="床前明月光"), "acrostic"),
    (dict(acrostic="床前😀月"), "acrostic"),
    (dict(acrostic="床前a月"), "acrostic"),  # in the vocab, but not a Chinese character
    (dict(acrostic="床前，月"), "acrostic"),
    (dict(form="七言"), "form"),
    (dict(form=(0, 4)), "form"),
    (dict(form=(5, 0)), "form"),
    (dict(form=(5,)), "form"),
    (dict(rhyme="xyz"), "rhyme"),
    (dict(rhyme="a"), "rhyme"),
    (dict(rhyme=NO_GROUP), "rhyme"),
    (dict(rhyme=3), "rhyme"),
    (dict(form="七言律诗"), "form: .*n_positions=64"),  # [CLS] + 65 tokens > 64: no prompt fits
])
def test_bad_input_names_the_parameter(gen, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gen.poem(**kwargs)


def test_longest_poem_that_fits(gen, vocab):
    """五言律诗: 49 new tokens after a prompt of 15 fill n_positions=64 exactly."""
    prompt = "床前明月光疑是地上霜举头望明"  # [CLS] + 14
    assert len(gen.tokenizer.encode(prompt)) + 49 == 64
    check_poem(gen.poem(prompt, form="五言律诗", rhyme="auto", seed=1, top_k=8)[0], set(vocab), 5, 8, rhyme="auto")


def test_a_prompt_too_long_loses_its_start(gen):
    """[CLS] + 15 + 49 > 64: the prompt is cut from the left to [CLS] + its last 14 tokens, the rule of
    `generate` and of the SavedModel's `poem` signature (`cngpt_tf.tokenizer.keep_end`)."""
    long, kept = "床前明月光疑是地上霜举头望明月", "前明月光疑是地上霜举头望明月"
    assert len(gen.tokenizer.encode(long)) + 49 == 65 and len(gen.tokenizer.encode(kept)) + 49 == 64
    assert gen.poem(long, form="五言律诗", seed=1, top_k=8) == gen.poem(kept, form="五言律诗", seed=1, top_k=8)


def test_empty_acrostic_and_rhyme_mean_none(gen):
    """The `poem` signature spells none "" (a string tensor holds no None): the Python API reads "" so too."""
    assert gen.poem("春", form="五言绝句", acrostic="", rhyme="", seed=2) == gen.poem("春", form="五言绝句", seed=2)


def test_non_integer_form_is_refused(gen):
    with pytest.raises(ValueError, match="form"):
        gen.poem(form=(5.5, 4))


def test_rhyme_group_without_vocab_characters_is_refused(gen):
    table = {"唐": "光霜", "空": "𠀀𪚥"}  # 空: characters the tiny vocab lacks
    with pytest.raises(ValueError, match="rhyme"):
        gen.poem(form="五言绝句", rhyme="空", rhyme_table=table, seed=0)


# ----- PoemConstraint alone --------------------------------------------------------------------------

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "，", "。", "a", "7", "##光", "!", "光", "霜", "天", "年", "日", "兙"]
TABLE = {"唐": "光霜", "寒": "天年"}  # 日 and 兙: Chinese characters in no group
ID = {t: i for i, t in enumerate(TOKENS)}


def allowed_of(logits) -> set:
    return {TOKENS[i] for i in np.flatnonzero(np.isfinite(np.asarray(logits)))}


def test_vocab_table_rows():
    v = PoemVocab(TOKENS, ID["[SEP]"], TABLE)
    rows = [allowed_of(np.where(row, 0.0, -np.inf)) for row in v.table]
    assert rows[CJK_ROW] == set("光霜天年日兙")
    assert rows[COMMA_ROW] == {COMMA} and rows[PERIOD_ROW] == {PERIOD} and rows[SEP_ROW] == {"[SEP]"}
    assert rows[ANY_GROUP_ROW] == set("光霜天年")
    assert rows[FIRST_GROUP_ROW:] == [set("光霜"), set("天年")]


def test_constraint_apply_masks_exactly_the_allowed_set():
    v = PoemVocab(TOKENS, ID["[SEP]"], TABLE)
    # one step per code; rows: (no group yet, group 唐, group 寒)
    codes = [CJK_ROW, COMMA_ROW, PERIOD_ROW, SEP_ROW, FORCE, RHYME]
    schedule = np.array([codes] * 3, np.int32)
    forced = np.zeros_like(schedule)
    forced[:, codes.index(FORCE)] = [ID["日"], ID["光"], ID["兙"]]
    constraint = PoemConstraint(tf.constant(v.table), tf.constant(schedule), tf.constant(forced),
                                tf.constant(v.char_group))
    group = tf.constant([-1, 0, 1])
    logits = tf.constant(np.random.default_rng(0).normal(size=(3, len(TOKENS))), tf.float32)
    expected = {
        CJK_ROW: [set("光霜天年日兙")] * 3,
        COMMA_ROW: [{COMMA}] * 3,
        PERIOD_ROW: [{PERIOD}] * 3,
        SEP_ROW: [{"[SEP]"}] * 3,
        FORCE: [{"日"}, {"光"}, {"兙"}],
        RHYME: [set("光霜天年"), set("光霜"), set("天年")],
    }
    for step, code in enumerate(codes):
        out = constraint.apply(logits, tf.constant(step), group).numpy()
        assert [allowed_of(row) for row in out] == expected[code], code
        kept = np.isfinite(out)
        np.testing.assert_array_equal(out[kept], logits.numpy()[kept])  # allowed logits unchanged
        assert np.all(out[~kept] == -np.inf)


def test_constraint_update_sets_the_group_at_the_first_rhyme_step_only():
    v = PoemVocab(TOKENS, ID["[SEP]"], TABLE)
    plan = PoemPlan.build(v, (2, 4), batch=2, rhyme="auto")  # rhyme steps: 4 (line 2) and 10 (line 4)
    schedule = plan.schedule[0]
    assert [t for t, c in enumerate(schedule) if c == RHYME] == [4, 10]
    constraint, group = PoemConstraint.from_inputs(*plan.inputs(16))
    assert group.numpy().tolist() == [-1, -1]
    tokens = tf.constant([ID["天"], ID["霜"]])
    for step in range(4):  # characters and punctuation before the first rhyme step: no group
        group = constraint.update(tokens, tf.constant(step), group)
        assert group.numpy().tolist() == [-1, -1]
    group = constraint.update(tokens, tf.constant(4), group)
    assert group.numpy().tolist() == [1, 0]  # 天 -> 寒, 霜 -> 唐
    out = constraint.apply(tf.zeros([2, len(TOKENS)]), tf.constant(10), group).numpy()
    assert [allowed_of(row) for row in out] == [set("天年"), set("光霜")]
    for step in range(5, 12):  # later characters, the second rhyme step included, keep the group
        group = constraint.update(tf.constant([ID["光"], ID["年"]]), tf.constant(step), group)
        assert group.numpy().tolist() == [1, 0]
    # a group given up front is never replaced
    plan = PoemPlan.build(v, (2, 4), batch=1, rhyme="年")
    constraint, group = PoemConstraint.from_inputs(*plan.inputs(16))
    assert group.numpy().tolist() == [1]
    assert constraint.update(tf.constant([ID["光"]]), tf.constant(4), group).numpy().tolist() == [1]
