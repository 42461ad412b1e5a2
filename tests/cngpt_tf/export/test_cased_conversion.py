"""A cased model (tokenizer_config.json {"do_lower_case": false}) stays cased in every format: tf1/ and
tf2/ write the setting for `ChineseTokenizer.from_pretrained` (and so the `Generator`), the SavedModel
tokenizes with it in-graph. Every face gives the same ids and the same replies."""

from __future__ import annotations

import json
import shutil

import pytest
import tensorflow as tf

from cngpt_tf.export.convert import convert
from cngpt_tf.generation_config import GenerationConfig
from cngpt_tf.generator import Generator
from cngpt_tf.tokenizer import ChineseTokenizer

NEW = 6
# The tiny vocab spells only lower-case Latin: cased, "Hello" is one [UNK]; lower-cased, h ##e ##l ##l ##o.
PROMPTS = ["Hello World，明月", "ABC abc", "明月几时有，", "Café [SEP] x"]


@pytest.fixture(scope="module")
def cased_out(tiny_pt_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("cased") / "model"
    shutil.copytree(tiny_pt_dir, src)
    (src / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    out = src.parent / "out"
    convert(str(src), out, progress=False, generation=GenerationConfig(max_new_tokens=NEW))
    return out


@pytest.fixture(scope="module")
def loaded(cased_out):
    return tf.saved_model.load(str(cased_out / "saved_model" / "1"))


def test_every_format_records_the_casing(cased_out):
    for path in (cased_out / "tf1" / "tokenizer_config.json", cased_out / "tf2" / "tokenizer_config.json",
                 cased_out / "saved_model" / "1" / "assets" / "tokenizer_config.json"):
        assert json.loads(path.read_text(encoding="utf-8"))["do_lower_case"] is False, path


def test_every_face_tokenizes_cased(cased_out, loaded):
    tf1 = ChineseTokenizer.from_pretrained(cased_out / "tf1")
    tf2 = ChineseTokenizer.from_pretrained(cased_out / "tf2")
    expected = tf1.encode_batch(PROMPTS)
    assert tf2.encode_batch(PROMPTS) == expected
    assert expected != ChineseTokenizer(cased_out / "tf1" / "vocab.txt").encode_batch(PROMPTS)  # casing matters
    assert expected[0][:3] == [tf1.cls_token_id, tf1.unk_token_id, tf1.unk_token_id]
    ids, mask = (t.numpy() for t in loaded.text.encode(tf.constant(PROMPTS), 64))
    assert [row[m == 1].tolist() for row, m in zip(ids, mask)] == expected


def test_every_face_replies_alike(cased_out, loaded):
    replies = [r.decode("utf-8") for r in
               loaded.signatures["serving_default"](text=tf.constant(PROMPTS))["generated_text"].numpy()]
    for folder in ("tf1", "tf2"):
        generator = Generator.from_pretrained(cased_out / folder)
        assert generator.generate(PROMPTS, max_new_tokens=NEW) == replies, folder
    assert all(r.startswith(p) for r, p in zip(replies, PROMPTS))


@pytest.mark.parametrize("folder", ["tf1", "tf2"])
def test_converting_back_keeps_the_casing(cased_out, folder, tmp_path):
    from transformers import BertTokenizer

    from cngpt_tf.export.convert_back import convert_back

    back = convert_back(cased_out / folder, tmp_path / "back")
    assert json.loads((back / "tokenizer_config.json").read_text(encoding="utf-8"))["do_lower_case"] is False
    # HF's own tokenizer reads it: "Hello" stays one [UNK] in the tiny lower-case vocab
    hf = BertTokenizer.from_pretrained(str(back))
    assert hf.tokenize("Hello") == ["[UNK]"] and hf.tokenize("hello") != ["[UNK]"]
