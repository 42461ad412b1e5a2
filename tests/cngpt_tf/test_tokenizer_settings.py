"""`read_tokenizer_settings`: the one reader of tokenizer_config.json, for the tokenizer and the converters."""

from __future__ import annotations

import json

import pytest

from cngpt_tf.errors import ConfigError
from cngpt_tf.tokenizer import ChineseTokenizer, read_tokenizer_settings, write_tokenizer_config


def write(folder, data) -> None:
    (folder / "tokenizer_config.json").write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def test_no_file_means_no_settings(tmp_path):
    assert read_tokenizer_settings(tmp_path) == {}


def test_the_casing_keys_are_read_and_others_ignored(tmp_path):
    write(tmp_path, {"do_lower_case": False, "strip_accents": None, "tokenize_chinese_chars": True,
                     "model_max_length": 1024, "tokenizer_class": "BertTokenizer"})
    assert read_tokenizer_settings(tmp_path) == {"do_lower_case": False, "strip_accents": None,
                                                 "tokenize_chinese_chars": True}


def test_what_we_write_we_read(tmp_path):
    write_tokenizer_config(tmp_path, do_lower_case=False, model_max_length=64)
    assert read_tokenizer_settings(tmp_path) == {"do_lower_case": False}


@pytest.mark.parametrize("data, problem", [
    ('{"do_lower_case": "false"}', "do_lower_case must be true or false"),  # a string is not False
    ('{"do_lower_case": 0}', "do_lower_case must be true or false"),
    ('{"strip_accents": "yes"}', "strip_accents must be true or false"),
    ('{"do_basic_tokenize": false}', "do_basic_tokenize=false is not supported"),
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_file_is_a_config_error_naming_it(tmp_path, data, problem):
    write(tmp_path, data)
    with pytest.raises(ConfigError, match=problem) as e:
        read_tokenizer_settings(tmp_path)
    assert "tokenizer_config.json" in str(e.value)
    with pytest.raises(ConfigError, match=problem):  # the tokenizer reads it the same way
        (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
        ChineseTokenizer.from_pretrained(tmp_path)


def test_a_huge_or_special_file_is_refused_without_reading_it(tmp_path):
    (tmp_path / "tokenizer_config.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(ConfigError, match="tokenizer_config.json"):
        read_tokenizer_settings(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer_config.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="tokenizer_config.json"):
        read_tokenizer_settings(tmp_path)
