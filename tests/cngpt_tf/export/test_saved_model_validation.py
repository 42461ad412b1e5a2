"""The SavedModel's signatures refuse what the Python `Generator` refuses, by the same rules.

Each bad request fails with INVALID_ARGUMENT naming the problem (before decoding: XLA would clamp an
out-of-vocab id or wrap a seed silently), the Python API raises ValueError with the same words, and
the model answers a good request as before afterwards. Uses the session's `converted` export (greedy);
export settings that cannot work are refused before anything is built, and a vocab that cannot make
poems exports without the `poem` signature.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from cngpt_tf.config import GPT2Config
from cngpt_tf.export.saved_model import export_saved_model, fixed_generation
from cngpt_tf.generation_config import GenerationConfig
from cngpt_tf.generator import Generator

CLS, N_VOCAB = 101, 1803  # the tiny demo vocab
SEED_RULE = r"seed must be an integer in \[0, 2147483647\]"


@pytest.fixture(scope="module")
def loaded(converted):
    return tf.saved_model.load(str(converted / "saved_model" / "1"))


@pytest.fixture(scope="module")
def python_api(converted):
    return Generator.from_pretrained(converted, tokenizer=False)


GOOD_IDS = np.array([[0, CLS, 300, 400], [CLS, 500, 600, 700]], np.int32)
GOOD_MASK = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)

BAD_IDS = [
    ("id = n_vocab", [[CLS, N_VOCAB]], [[1, 1]], "outside the vocab of 1803"),
    ("id far past the vocab", [[CLS, 2**31 - 1]], [[1, 1]], "outside the vocab of 1803"),
    ("negative id", [[CLS, -1]], [[1, 1]], "outside the vocab of 1803"),
    ("right padded", [[CLS, 300, 0]], [[1, 1, 0]], "left-padded"),
    ("hole in the mask", [[CLS, 300, 400]], [[1, 0, 1]], "left-padded"),
    ("no real token", [[0, 0]], [[0, 0]], "left-padded"),
    ("mask value -1", [[CLS, 300]], [[-1, 1]], "only 0s and 1s"),
    ("mask wider than ids", [[CLS, 300]], [[0, 1, 1]], "one shape"),
    ("mask with more rows", [[CLS, 300]], [[1, 1], [1, 1]], "one shape"),
    ("empty prompt", np.zeros((1, 0)), np.zeros((1, 0)), "one shape"),
]  # an empty batch is no error: an empty result (test_saved_model.py)


@pytest.mark.parametrize("ids, mask, match", [b[1:] for b in BAD_IDS], ids=[b[0] for b in BAD_IDS])
def test_generate_ids_refuses_what_the_python_api_refuses(loaded, python_api, ids, mask, match):
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        loaded.signatures["generate_ids"](input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
    with pytest.raises(ValueError, match=match):
        python_api.generate_ids(ids, mask, max_new_tokens=4)
    assert python_api._compiled == {}


def test_generate_ids_answers_good_requests_before_and_after_bad_ones(loaded):
    generate_ids = loaded.signatures["generate_ids"]
    before = generate_ids(input_ids=tf.constant(GOOD_IDS), attention_mask=tf.constant(GOOD_MASK))["sequences"].numpy()
    np.testing.assert_array_equal(before[:, :4], GOOD_IDS)
    assert before.shape[1] > 4 and ((before >= 0) & (before < N_VOCAB)).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocab"):
        generate_ids(input_ids=tf.constant([[CLS, N_VOCAB + 5]]), attention_mask=tf.constant([[1, 1]]))
    # an id under the padding (mask 0) is never read: accepted, with the same result
    padded = GOOD_IDS.copy()
    padded[0, 0] = N_VOCAB + 5
    after = generate_ids(input_ids=tf.constant(padded), attention_mask=tf.constant(GOOD_MASK))["sequences"].numpy()
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])


def poem(loaded, seeds, form="五言绝句"):
    n = len(seeds)
    return loaded.signatures["poem"](text=tf.constant(["春"] * n), form=tf.constant([form] * n),
                                     acrostic=tf.constant([""] * n), rhyme=tf.constant(["auto"] * n),
                                     seed=tf.constant(seeds, tf.int64))["poem"].numpy()


@pytest.mark.parametrize("seeds", [[-1], [2**31], [2**31 + 7], [2**63 - 1], [0, -5]],
                         ids=["-1", "2**31", "2**31+7 (wrapped to 8 before)", "int64 max", "a later row"])
def test_poem_refuses_seeds_outside_the_python_rule(loaded, seeds):
    with pytest.raises(tf.errors.InvalidArgumentError, match=SEED_RULE):
        poem(loaded, seeds)


def test_poem_takes_the_edges_of_the_seed_range(loaded):
    top = poem(loaded, [2**31 - 1])
    assert top.tolist() == poem(loaded, [2**31 - 1]).tolist()
    lines = top[0].decode("utf-8").split("\n")
    assert [len(line) for line in lines] == [6] * 4
    assert len(poem(loaded, [0, 2**31 - 1])) == 2


def test_python_api_and_saved_model_share_the_seed_rule(python_api):
    for seed in (-1, 2**31, 2**31 + 7):
        with pytest.raises(ValueError, match=SEED_RULE):
            python_api.generate_ids([[CLS, 300]], max_new_tokens=4, do_sample=True, seed=seed)


# ----- export settings checked against the model before anything is built -------------------------------


TINY = GPT2Config(n_vocab=N_VOCAB, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
BAD_SETTINGS = [
    (dict(max_new_tokens=64), "max_new_tokens"),  # = n_positions: no room for [CLS]
    (dict(max_new_tokens=1000), "max_new_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(top_k=N_VOCAB + 1), "top_k"),
    (dict(do_sample=True, top_k=10**6), "top_k"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=1e-38), "temperature"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(top_p=float("nan")), "top_p"),
]


@pytest.mark.parametrize("kwargs, name", BAD_SETTINGS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_SETTINGS)])
def test_export_settings_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fixed_generation(GenerationConfig(**kwargs), TINY)


def test_export_settings_accept_the_edges_and_fix_the_length():
    edges = GenerationConfig(max_new_tokens=63, do_sample=True, top_k=N_VOCAB, top_p=1e-6, temperature=1e-2,
                             repetition_penalty=1e2)
    assert fixed_generation(edges, TINY) == edges
    assert fixed_generation(GenerationConfig(), TINY).max_new_tokens == 32  # half the 64 positions
    with pytest.raises(ValueError, match="max_length"):  # a request's prompt length varies
        fixed_generation(GenerationConfig(max_length=40), TINY)


def test_export_refuses_bad_settings_before_building_anything(tmp_path):
    """No weights are needed to fail: the settings are checked first, and nothing is written."""
    for kwargs, name in (BAD_SETTINGS[0], BAD_SETTINGS[4]):
        with pytest.raises(ValueError, match=name):
            export_saved_model(tmp_path / "1", {}, TINY, tmp_path / "vocab.txt", GenerationConfig(**kwargs))
    assert list(tmp_path.iterdir()) == []


# ----- the poem tables and the vocab -------------------------------------------------------------------


def test_poem_tables_take_a_vocab_that_repeats_a_token(tiny_vocab):
    """A vocab may repeat a token (HF reads it: the last id wins); TensorFlow's table initializer
    refuses a repeated key, which failed the whole SavedModel export with its own message."""
    from cngpt_tf.export.poem_graph import PoemTables

    tokens = list(tiny_vocab)
    tokens[5] = "床"  # [unused5] -> a second 床, before the first
    tables = PoemTables(tokens, tokens.index("[SEP]"))
    assert int(tables.char_ids.lookup(tf.constant("床"))) == max(i for i, t in enumerate(tokens) if t == "床")


def test_a_rhyme_group_without_vocab_characters_is_refused_by_both_faces(tiny_vocab, converted, tmp_path):
    """A group none of whose characters is in the vocab: the Python API and the signature's parser
    refuse it with the same words; another group still works."""
    from cngpt_tf.export.poem_graph import PoemTables
    from cngpt_tf.formats.hf_tf2 import read_tf2
    from cngpt_tf.poetry import load_rhyme_table
    from cngpt_tf.tokenizer import ChineseTokenizer

    group = "四开"
    chars = set(load_rhyme_table()[group])
    tokens = [f"[unused{100 + i}]" if t in chars else t for i, t in enumerate(tiny_vocab)]
    assert tokens != list(tiny_vocab)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    config, tensors = read_tf2(converted / "tf2")
    python_api = Generator(tensors, config, ChineseTokenizer(tmp_path / "vocab.txt"))
    tables = PoemTables(tokens, tokens.index("[SEP]"))
    parse = tf.function(tables.parse)
    message = "rhyme: group.*has no character in the vocab"
    with pytest.raises(ValueError, match=message):
        python_api.poem("春", form="五言绝句", rhyme=group, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        parse(tf.constant(["五言绝句"]), tf.constant([""]), tf.constant([group]))
    chars, lines, _, rhymes, groups = parse(tf.constant(["五言绝句"]), tf.constant([""]), tf.constant(["十唐"]))
    assert (int(chars[0]), int(lines[0]), bool(rhymes[0])) == (5, 4, True) and int(groups[0]) == 9


def test_a_vocab_without_poem_punctuation_exports_without_poem(tiny_vocab, converted, tmp_path, caplog):
    """Every other signature is exported and works; a WARNING names the missing characters."""
    from cngpt_tf.formats.hf_tf2 import read_tf2
    from cngpt_tf.vocab import read_vocab

    renamed = {"，": "[unused200]", "。": "[unused201]"}
    tokens = [renamed.get(t, t) for t in read_vocab(converted / "tf2" / "vocab.txt")]
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    config, tensors = read_tf2(converted / "tf2")
    with caplog.at_level(logging.WARNING, logger="cngpt_tf.export.saved_model"):
        export_saved_model(tmp_path / "1", tensors, config, tmp_path / "vocab.txt", GenerationConfig(max_new_tokens=4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("，" in w and "。" in w and "poem" in w for w in warnings), warnings
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    assert set(loaded.signatures) == {"logits", "serving_default", "generate_ids"}
    reply, = loaded.signatures["serving_default"](text=tf.constant(["明月"]))["generated_text"].numpy()
    assert reply.decode("utf-8").startswith("明月") and len(reply) > len("明月".encode())
    from tensorflow_serving.apis import prediction_log_pb2

    records = tf.data.TFRecordDataset(str(tmp_path / "1" / "assets.extra" / "tf_serving_warmup_requests"))
    names = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request.model_spec.signature_name
             for r in records]
    assert sorted(names) == ["generate_ids", "logits", "serving_default"]
