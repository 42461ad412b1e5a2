"""Generator on the tiny converted model: token-for-token parity with HF PyTorch `generate`, loading
every output folder, sampling, shape buckets (no retrace), input checks before any compile, text.

XLA compiles are the cost here (about a second each for the tiny model), so the tests share one
Generator and reuse few (batch, bucket, strategy) shapes. The slow test repeats the parity check on a
full-size (12-layer, 21128-token) random model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cngpt_tf.decoding import SHORT
from cngpt_tf.generator import BUCKET, Generator
from cngpt_tf.generation_config import GenerationConfig
from tests.conftest import write_torch_model

torch = pytest.importorskip("torch")

CLS, SEP, PAD = 101, 102, 0
# ids below the tiny demo vocab's 1803 tokens
PROMPTS = [[CLS, 1200, 1210, 1220], [CLS, 300], [CLS, 1500, 1600, 1700, 1750, 1790, 400]]
NEW = 20


@pytest.fixture(scope="module")
def gen(converted):
    return Generator.from_pretrained(converted)


@pytest.fixture(scope="module")
def hf(tiny_pt_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_pt_dir).eval()


def left_pad(prompts, pad=PAD):
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + list(p) for p in prompts], np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    return ids, mask


def hf_generate(model, ids, mask, **kwargs):
    """HF greedy (unless told otherwise) from already left-padded ids."""
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), pad_token_id=PAD, **kwargs)
    return out.numpy()


def tracing_counts(gen):
    return {key: fn.experimental_get_tracing_count() for key, fn in gen._compiled.items()}


# ----- greedy parity with HF PyTorch -----------------------------------------------------------------


def test_greedy_batch_1_equals_hf(gen, hf):
    ids, mask = left_pad(PROMPTS[:1])
    ours = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    ref = hf_generate(hf, ids, mask, max_new_tokens=NEW)
    assert ours.dtype == np.int32 and ours.shape == (1, len(PROMPTS[0]) + NEW)
    np.testing.assert_array_equal(ours, ref)


def test_greedy_left_padded_batch_equals_hf(gen, hf):
    ids, mask = left_pad(PROMPTS)
    ref = hf_generate(hf, ids, mask, max_new_tokens=NEW)
    np.testing.assert_array_equal(gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1), ref)
    # ragged lists are left-padded the same way
    np.testing.assert_array_equal(gen.generate_ids(PROMPTS, max_new_tokens=NEW, eos_token_id=-1), ref)


def first_new_token_emitted_mid_sequence(row, prompt_width, start=2):
    """A token the model emits for the first time at new position >= start."""
    new = row[prompt_width:].tolist()
    for i in range(start, len(new)):
        if new[i] not in new[:i]:
            return new[i], i
    pytest.skip("the model repeats one token from the start; no mid-sequence eos candidate")


def test_eos_stops_rows_like_hf(gen, hf):
    ids, mask = left_pad(PROMPTS)
    plain = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    eos, at = first_new_token_emitted_mid_sequence(plain[0], ids.shape[1])

    ours = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=eos)
    ref = hf_generate(hf, ids, mask, max_new_tokens=NEW, eos_token_id=eos)
    np.testing.assert_array_equal(ours, ref)
    width = ids.shape[1]
    assert ours[0, width + at] == eos and (ours[0, width + at + 1:] == PAD).all()  # row 0 stopped, padded
    assert (ours[:, width:] != PAD).all(axis=1).any()  # while another row ran on

    # alone, the row that stops makes the result end at its eos
    one = gen.generate_ids(ids[:1], mask[:1], max_new_tokens=NEW, eos_token_id=eos)
    np.testing.assert_array_equal(one, hf_generate(hf, ids[:1], mask[:1], max_new_tokens=NEW, eos_token_id=eos))
    assert one.shape[1] == width + at + 1


def test_min_new_tokens_equals_hf(gen, hf):
    ids, mask = left_pad(PROMPTS[:1])
    plain = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    eos = int(plain[0, ids.shape[1]])  # the very first new token
    for min_new in (0, 3):
        ours = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=eos, min_new_tokens=min_new)
        ref = hf_generate(hf, ids, mask, max_new_tokens=NEW, eos_token_id=eos, min_new_tokens=min_new)
        np.testing.assert_array_equal(ours, ref, err_msg=f"min_new_tokens={min_new}")
    assert ours.shape[1] > ids.shape[1] + 3


def test_repetition_penalty_equals_hf(gen, hf):
    ids, mask = left_pad(PROMPTS[:1])
    ours = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1, repetition_penalty=1.3)
    ref = hf_generate(hf, ids, mask, max_new_tokens=NEW, repetition_penalty=1.3)
    np.testing.assert_array_equal(ours, ref)
    plain = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    assert (ours != plain).any()  # the penalty changed something


# ----- loading ---------------------------------------------------------------------------------


def test_from_pretrained_accepts_out_dir_tf2_and_tf1(gen, converted):
    ids, mask = left_pad(PROMPTS[:1])
    expected = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    for folder in (converted / "tf2", converted / "tf1"):
        other = Generator.from_pretrained(folder)
        assert other.config == gen.config, folder
        assert other.tokenizer is not None
        np.testing.assert_array_equal(other.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1), expected,
                                      err_msg=str(folder))


def test_config_special_ids_come_from_the_vocab(gen):
    assert (gen.config.pad_token_id, gen.config.bos_token_id, gen.config.eos_token_id) == (PAD, CLS, SEP)


# ----- sampling ----------------------------------------------------------------------------------


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ(gen):
    kwargs = dict(max_new_tokens=NEW, do_sample=True, eos_token_id=-1)
    a = gen.generate_ids(PROMPTS[:1], seed=1, **kwargs)
    b = gen.generate_ids(PROMPTS[:1], seed=1, **kwargs)
    c = gen.generate_ids(PROMPTS[:1], seed=2, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # temperature and top_p are runtime values of the same compiled function
    d = gen.generate_ids(PROMPTS[:1], seed=1, temperature=0.7, **kwargs)
    assert d.shape == a.shape


def test_num_return_sequences(gen):
    out = gen.generate_ids(PROMPTS[:2], max_new_tokens=8, do_sample=True, seed=3, num_return_sequences=3,
                           eos_token_id=-1)
    ids, _ = left_pad(PROMPTS[:2])
    assert out.shape == (6, ids.shape[1] + 8)
    for row in range(6):
        np.testing.assert_array_equal(out[row, :ids.shape[1]], ids[row // 3])
    assert len({tuple(r) for r in out[:3]}) > 1  # the copies of one prompt sample differently


def test_top_k_1_sampling_equals_greedy(gen):
    ids, mask = left_pad(PROMPTS[:1])
    greedy = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    sampled = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1, do_sample=True, top_k=1, seed=5)
    np.testing.assert_array_equal(sampled, greedy)


# ----- shape buckets ---------------------------------------------------------------------------------


def test_prompt_lengths_in_one_bucket_do_not_retrace(gen):
    key = (GenerationConfig().strategy, False)  # (sampling strategy, poem constraint or not)
    gen.generate_ids([[CLS, 5, 6]], max_new_tokens=NEW)
    fn = gen._compiled[key]
    before = fn.experimental_get_tracing_count()
    # prompts of 1..8 tokens (the short bucket) and 17..32 new tokens: one (prompt, new-token) bucket
    for prompt, new in (([CLS] + [7] * (SHORT - 1), 17), ([CLS] + [8] * 4, 2 * BUCKET), ([CLS], 25)):
        gen.generate_ids([prompt], max_new_tokens=new)
        gen.generate_ids([prompt], max_new_tokens=new, eos_token_id=-1, min_new_tokens=1)
    assert fn.experimental_get_tracing_count() == before
    assert gen._compiled[key] is fn
    # the counter moves once for the next prompt bucket (9..16 tokens), and not again within it
    gen.generate_ids([[CLS] + [9] * SHORT], max_new_tokens=NEW)
    gen.generate_ids([[CLS] + [9] * (BUCKET - 1)], max_new_tokens=NEW)
    assert fn.experimental_get_tracing_count() == before + 1


# ----- bad input fails before any compile -----------------------------------------------------------


@pytest.fixture(scope="module")
def fresh(converted):
    """A Generator nothing has compiled in; each bad call must leave it so."""
    return Generator.from_pretrained(converted, tokenizer=False)


TEN = [[CLS] + [5] * 9]
BAD = [
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=-1), "top_k"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_length=10, max_new_tokens=None), "max_length"),  # not longer than the prompt
    (dict(max_length=5, max_new_tokens=None), "max_length"),
    (dict(max_new_tokens=55), "max_new_tokens.*n_positions"),  # 10 + 55 > 64
    (dict(max_length=65, max_new_tokens=None), "max_length.*n_positions"),
    (dict(max_length=20), "max_new_tokens or max_length, not both"),  # both, in one call
    (dict(max_new_tokens=64), "max_new_tokens=64 leaves no room for a prompt in n_positions=64"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(min_new_tokens=5, max_new_tokens=4), "min_new_tokens"),  # more than it may generate
    (dict(num_return_sequences=2), "num_return_sequences"),  # greedy
    (dict(num_return_sequences=0, do_sample=True), "num_return_sequences"),
    # values that used to pass and then broke the output (NaN/inf logits, [PAD]s, a wrapped seed)
    (dict(do_sample=True, temperature=float("inf")), "temperature"),
    (dict(do_sample=True, temperature=float("nan")), "temperature"),
    (dict(do_sample=True, temperature=1e-38), "temperature"),
    (dict(do_sample=True, temperature=1e3), "temperature"),
    (dict(do_sample=True, temperature="1"), "temperature"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(repetition_penalty=1e-3), "repetition_penalty"),
    (dict(do_sample=True, top_p=float("nan")), "top_p"),
    (dict(do_sample=True, top_k=2.0), "top_k"),
    (dict(do_sample=True, top_k=True), "top_k"),
    (dict(do_sample=True, top_k=1804), "top_k=1804 exceeds the vocab of 1803"),  # the tiny vocab's size
    (dict(top_k=10**6), "top_k.*vocab"),  # greedy too: a setting that cannot work is an error
    (dict(do_sample="yes"), "do_sample"),
    (dict(do_sample=True, seed=-1), "seed"),
    (dict(do_sample=True, seed=2**31), "seed"),  # wrapped silently before
    (dict(do_sample=True, seed=2**64 + 1), "seed"),
    (dict(do_sample=True, seed=1.0), "seed"),
    (dict(do_sample=True, seed="1"), "seed"),
    (dict(do_sample=True, seed=True), "seed"),
    (dict(eos_token_id=1803), "eos_token_id"),
    (dict(eos_token_id=-2), "eos_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(pad_token_id=1803), "pad_token_id"),
    (dict(form="五言绝句"), "form: a poem"),  # a poem() setting: generate_ids would ignore it
    (dict(acrostic="明月几时"), "acrostic: a poem"),
]


@pytest.mark.parametrize("kwargs, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_raises_before_compiling(fresh, kwargs, name):
    assert fresh.config.n_vocab == 1803
    kwargs = {"max_new_tokens": 4, **kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(ValueError, match=name):
        fresh.generate_ids(TEN, **kwargs)
    assert fresh._compiled == {}


POEM_BAD = [(kwargs, name) for kwargs, name in BAD
            if set(kwargs) <= {"do_sample", "top_k", "top_p", "temperature", "repetition_penalty", "seed"}]


@pytest.mark.parametrize("kwargs, name", POEM_BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(POEM_BAD)])
def test_bad_poem_settings_raise_before_compiling(gen, kwargs, name):
    compiled = dict(gen._compiled)
    with pytest.raises(ValueError, match=name):
        gen.poem("春", form="五言绝句", **kwargs)
    assert gen._compiled == compiled  # nothing new compiled (and nothing replaced)


def test_ids_and_masks_that_would_be_converted_silently_are_refused(fresh):
    """Floats (3.7 -> 3) and ids past int32 (2**32 + 5 -> 5) must not become other valid ids."""
    for ids, match in (([[CLS, 3.7]], "input_ids must hold integers"),
                       (np.array([[CLS, 3.0]]), "input_ids must hold integers"),
                       (np.array([[CLS, 2**32 + 5]]), "input_ids: an id .* outside the vocab"),
                       (np.array([[CLS, 2**63 + 5]], np.uint64), "input_ids: an id .* outside the vocab")):
        with pytest.raises(ValueError, match=match):
            fresh.generate_ids(ids, max_new_tokens=4)
    ids = np.array([[PAD, CLS, 5]])
    for mask, match in (([[0.5, 1, 1]], "attention_mask must hold integers"),
                        ([[-1, 1, 1]], "attention_mask must hold only 0s and 1s"),
                        ([[0, 1, 2]], "attention_mask"),
                        ([[0, 1]], "same shape|one shape"),
                        ([[[0, 1, 1]]], "one shape")):
        with pytest.raises(ValueError, match=match):
            fresh.generate_ids(ids, np.array(mask), max_new_tokens=4)
    assert fresh._compiled == {}


def test_right_padded_attention_mask_is_refused(fresh):
    ids = np.array([[CLS, 5, 6, PAD]])
    for mask in ([[1, 1, 1, 0]], [[0, 1, 0, 1]], [[0, 0, 0, 0]]):
        with pytest.raises(ValueError, match="attention_mask"):
            fresh.generate_ids(ids, np.array(mask), max_new_tokens=4)
    with pytest.raises(ValueError, match="input_ids"):
        fresh.generate_ids([[]], max_new_tokens=4)
    assert fresh._compiled == {}


def test_out_of_vocab_ids_are_refused(gen):
    """XLA's gather would clamp an out-of-range id silently; it must be a ValueError instead."""
    for bad in (gen.config.n_vocab + 100, -5):
        with pytest.raises(ValueError, match="input_ids"):
            gen.generate_ids([[CLS, bad]], max_new_tokens=NEW)


def test_out_of_vocab_id_under_a_padding_mask_is_ignored(gen):
    """Only real (mask 1) positions must be in the vocab: what sits under padding is never read."""
    ids, mask = left_pad(PROMPTS[:1])
    ids, mask = np.pad(ids, [[0, 0], [1, 0]]), np.pad(mask, [[0, 0], [1, 0]])
    expected = gen.generate_ids(ids, mask, max_new_tokens=4, eos_token_id=-1)
    ids[0, 0] = gen.config.n_vocab + 7
    np.testing.assert_array_equal(gen.generate_ids(ids, mask, max_new_tokens=4, eos_token_id=-1)[:, 1:],
                                  expected[:, 1:])


def test_seed_edges_are_accepted(gen):
    kwargs = dict(max_new_tokens=NEW, do_sample=True, eos_token_id=-1)  # the sampling test's shapes
    top = gen.generate_ids(PROMPTS[:1], seed=2**31 - 1, **kwargs)
    np.testing.assert_array_equal(gen.generate_ids(PROMPTS[:1], seed=np.int64(2**31 - 1), **kwargs), top)
    assert gen.generate_ids(PROMPTS[:1], seed=0, **kwargs).shape == top.shape


# ----- poems at the edges of the accepted settings -------------------------------------------------


@pytest.mark.parametrize("settings", [
    dict(do_sample=True, temperature=1e2, repetition_penalty=1e2, top_k=1803),  # top_k = the vocab size
    dict(do_sample=True, temperature=1e-2, repetition_penalty=1e-2, top_p=1e-6),
], ids=["hot", "cold"])
def test_poem_form_holds_at_the_accepted_extremes(gen, settings):
    from tests.cngpt_tf.test_poetry import check_poem

    vocab = set(gen.tokenizer.tokens)
    poems = gen.poem("春", form="五言绝句", acrostic="明月几时", rhyme="auto", seed=2**31 - 1,
                     num_return_sequences=2, **settings)
    assert len(poems) == 2
    for poem in poems:
        assert "[" not in poem and "#" not in poem, poem  # no [PAD], [UNK], [SEP] or word pieces
        check_poem(poem, vocab, 5, 4, acrostic="明月几时", rhyme="auto")


# ----- one GenerationConfig: defaults, overrides, the model's generation_config.json -------------------


def test_default_length_is_the_configs_rule(gen):
    """Neither max_new_tokens nor max_length: `default_max_new_tokens(n_positions)`, 64 // 2 here."""
    from cngpt_tf.generation_config import default_max_new_tokens

    assert default_max_new_tokens(gen.config.n_ctx) == 32
    ids, mask = left_pad(PROMPTS[:1])
    out = gen.generate_ids(ids, mask, eos_token_id=-1)  # the shapes of the bucket test: no new compile
    np.testing.assert_array_equal(out, gen.generate_ids(ids, mask, max_new_tokens=32, eos_token_id=-1))
    assert out.shape == (1, ids.shape[1] + 32)


def test_keyword_arguments_override_the_config_as_in_hf(gen):
    ids, mask = left_pad(PROMPTS[:1])
    expected = gen.generate_ids(ids, mask, max_new_tokens=NEW, eos_token_id=-1)
    config = GenerationConfig(max_new_tokens=NEW)
    np.testing.assert_array_equal(gen.generate_ids(ids, mask, config, eos_token_id=-1), expected)
    # max_length replaces the config's max_new_tokens (HF's rule), it is not "both"
    other = GenerationConfig(max_new_tokens=3)
    np.testing.assert_array_equal(gen.generate_ids(ids, mask, other, max_length=ids.shape[1] + NEW, eos_token_id=-1),
                                  expected)
    with pytest.raises(TypeError, match="unknown generation setting.*top_n"):
        gen.generate_ids(ids, mask, top_n=3)
    with pytest.raises(TypeError, match="generation_config must be a GenerationConfig"):
        gen.generate_ids(ids, mask, {"max_new_tokens": 3})


class _Stop(Exception):
    pass


def settings_of_poem(gen, monkeypatch, *args, **kwargs) -> GenerationConfig:
    """The settings poem() decodes with, caught before anything compiles."""
    seen = []

    def run(g, *rest, **options):
        seen.append(g)
        raise _Stop

    monkeypatch.setattr(gen, "_run", run)
    with pytest.raises(_Stop):
        gen.poem("春", *args, **kwargs)
    return seen[0]


def test_poem_samples_unless_a_config_or_argument_says_otherwise(gen, monkeypatch):
    assert settings_of_poem(gen, monkeypatch, form="五言绝句").do_sample is True
    assert settings_of_poem(gen, monkeypatch, form="五言绝句", do_sample=False).do_sample is False
    greedy = settings_of_poem(gen, monkeypatch, GenerationConfig(form="5,4", top_k=8))
    assert (greedy.do_sample, greedy.form, greedy.top_k) == (False, "5,4", 8)
    with pytest.raises(TypeError, match="form= or max_new_tokens= by name"):
        gen.poem("春", "五言绝句")  # the old positional form
    with pytest.raises(ValueError, match="max_new_tokens: a poem's form fixes its length"):
        gen.poem("春", max_new_tokens=10)


def test_from_pretrained_reads_the_folders_generation_config(converted, tmp_path):
    import shutil

    from cngpt_tf.errors import ConfigError

    folder = Path(shutil.copytree(converted / "tf2", tmp_path / "tf2"))
    GenerationConfig(max_new_tokens=7, do_sample=True, top_k=5).to_json_file(folder / "generation_config.json",
                                                                             eos_token_id=SEP)
    loaded = Generator.from_pretrained(folder, tokenizer=False, native_kernel=False)
    assert (loaded.generation_config.max_new_tokens, loaded.generation_config.do_sample,
            loaded.generation_config.top_k) == (7, True, 5)
    given = Generator.from_pretrained(folder, tokenizer=False, native_kernel=False,
                                      generation_config=GenerationConfig())
    assert given.generation_config == GenerationConfig().validate()  # an explicit config wins over the file
    # what the file holds is checked against the model, and the error names the file
    (folder / "generation_config.json").write_text('{"top_k": 5000}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"generation_config.json: top_k=5000 exceeds the vocab of 1803"):
        Generator.from_pretrained(folder, tokenizer=False, native_kernel=False)


def test_pipeline_defaults_come_from_the_config(gen):
    from cngpt_tf.text_generation import pipeline

    prompt = "明月几时有，"
    plain = pipeline("text-generation", gen)
    assert plain.generation_config == gen.generation_config  # no length of its own: the config's rule
    expected = gen.generate([prompt], max_new_tokens=32, eos_token_id=-1)
    assert [r["generated_text"] for r in plain(prompt, eos_token_id=-1)] == expected
    # a per-call max_new_tokens replaces the pipeline's max_length, as in HF
    short = pipeline("text-generation", gen, max_length=40)
    assert short(prompt, max_new_tokens=12)[0]["generated_text"] == gen.generate([prompt], max_new_tokens=12)[0]
    with pytest.raises(ValueError, match="top_p must be in"):
        pipeline("text-generation", gen, top_p=2.0)  # checked when the pipeline is made


# ----- text ----------------------------------------------------------------------------------------


CJK_SPACE_CJK = re.compile(r"[\u4e00-\u9fff]\s+[\u4e00-\u9fff]")


def test_generate_text_is_clean(gen):
    prompt = "明月几时有，"
    texts = gen.generate([prompt], max_new_tokens=12)
    assert isinstance(texts, list) and len(texts) == 1
    text = texts[0]
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert not CJK_SPACE_CJK.search(text), text
    for piece in ("[CLS]", "[SEP]", "[PAD]", "##"):
        assert piece not in text, text
    # the continuation is the clean decode of the ids generate_ids makes for the encoded prompt
    ids = gen.tokenizer.encode(prompt)
    assert ids[0] == CLS
    row = gen.generate_ids([ids], max_new_tokens=12)[0]
    assert text == prompt + gen.tokenizer.decode(row[len(ids):].tolist())


def test_generate_from_an_empty_prompt_starts_from_cls(gen):
    assert gen.tokenizer.encode("") == [CLS]
    texts = gen.generate([""], max_new_tokens=12)
    assert len(texts) == 1 and isinstance(texts[0], str)
    row = gen.generate_ids([[CLS]], max_new_tokens=12)[0]
    assert texts[0] == gen.tokenizer.decode(row.tolist())
    assert not CJK_SPACE_CJK.search(texts[0]) and "[CLS]" not in texts[0]


def test_a_prompt_too_long_for_the_context_loses_its_start(gen):
    """The SavedModel's rule (`cngpt_tf.tokenizer.keep_end`): [CLS] + the prompt's last
    n_positions - max_new_tokens - 1 tokens go to the model; the reply keeps the whole prompt."""
    long, kept = "明" * 60, "明" * (64 - NEW - 1)
    reply, = gen.generate([long], max_new_tokens=NEW)
    assert reply.startswith(long) and reply[len(long):] == gen.generate([kept], max_new_tokens=NEW)[0][len(kept):]
    with pytest.raises(ValueError, match="max_length"):  # max_length counts the prompt: no room, no cut
        gen.generate([long], max_length=40, max_new_tokens=None)
    with pytest.raises(ValueError, match="n_positions"):  # ids are never cut
        gen.generate_ids([gen.tokenizer.encode(long)], max_new_tokens=NEW)


def test_an_empty_batch_gives_an_empty_result(gen):
    """As the SavedModel answers an empty request; the settings are still checked, nothing compiles."""
    compiled = dict(gen._compiled)
    assert gen.generate([], max_new_tokens=NEW) == []
    for ids, shape in (([], (0, 0)), (np.zeros((0, 3), np.int64), (0, 3))):
        out = gen.generate_ids(ids, max_new_tokens=NEW, do_sample=True, num_return_sequences=2)
        assert out.shape == shape and out.dtype == np.int32
    assert gen.generate_ids([], [], max_new_tokens=NEW).shape == (0, 0)  # with an (empty) mask
    with pytest.raises(ValueError, match="one shape"):
        gen.generate_ids(np.zeros((0, 3), np.int32), np.zeros((0, 2), np.int32), max_new_tokens=NEW)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate([], do_sample=True, top_p=0.0)
    assert gen._compiled == compiled


def test_generate_several_prompts_and_sequences(gen):
    prompts = ["床前明月光，", "春眠"]
    # the shapes and strategy of test_num_return_sequences: no new compile
    texts = gen.generate(prompts, max_new_tokens=8, do_sample=True, seed=0, num_return_sequences=3)
    assert len(texts) == 6
    for i, text in enumerate(texts):
        assert text.startswith(prompts[i // 3]), (i, text)
        assert not CJK_SPACE_CJK.search(text) and "##" not in text


# ----- full size (slow) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_greedy_equals_hf(tmp_path):
    from transformers import GPT2LMHeadModel

    from cngpt_tf.export.convert import convert
    from tests.converters.test_full_size import FULL, N_VOCAB, full_vocab

    vocab = full_vocab()  # the real BERT Chinese vocab (tests/data)
    assert len(vocab) == N_VOCAB
    assert [vocab.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]
    src = write_torch_model(tmp_path / "src", vocab, **FULL)
    report = convert(str(src), tmp_path / "out", progress=False, formats=("tf2",))
    assert report["passed"] is True

    full = Generator.from_pretrained(tmp_path / "out")
    assert (full.config.n_layer, full.config.n_embd, full.config.n_vocab, full.config.n_ctx) == (12, 768, N_VOCAB, 1024)
    ids, mask = left_pad([[CLS, 3209, 3299, 1126, 3198, 3300, 8024], [CLS, 2398, 1184, 3209]])
    ours = full.generate_ids(ids, mask, max_new_tokens=16, eos_token_id=-1)
    ref = hf_generate(GPT2LMHeadModel.from_pretrained(src).eval(), ids, mask, max_new_tokens=16)
    np.testing.assert_array_equal(ours, ref)
