"""Tests of `cngpt_tf.config`: config.json / hparams.json with wrong types or absurd sizes fail with
one ConfigError naming the file and the field, never a TypeError / ValueError traceback."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from cngpt_tf.config import LIMITS, GPT2Config
from cngpt_tf.errors import ConfigError

HF = {"model_type": "gpt2", "vocab_size": 110, "n_positions": 64, "n_ctx": 64, "n_embd": 64, "n_head": 4,
      "n_layer": 2, "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
      "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}
HPARAMS = {"n_vocab": 110, "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_layer": 2}


def write(tmp_path, d, name="config.json", raw: str | None = None):
    path = tmp_path / name
    path.write_text(raw if raw is not None else json.dumps(d), encoding="utf-8")
    return path


def refused(path, *must_name) -> str:
    with pytest.raises(ConfigError) as info:
        GPT2Config.from_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 300, message
    for part in must_name:
        assert part in message, message
    return message


def test_good_configs_read():
    config = GPT2Config.from_hf_dict(HF)
    assert (config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer) == (110, 64, 64, 4, 2)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (101, 102, 0)
    assert GPT2Config.from_hparams_dict(HPARAMS) == dataclasses.replace(config, bos_token_id=None,
                                                                        eos_token_id=None, pad_token_id=None)
    assert GPT2Config.from_hf_dict({**HF, "n_inner": 256}).n_embd == 64  # 4 * n_embd, spelled out
    eps = GPT2Config.from_hf_dict({**HF, "layer_norm_epsilon": 1}).layer_norm_epsilon
    assert eps == 1.0 and type(eps) is float


WRONG_TYPES = ["64", 64.0, 64.5, [64], None, True, {"n": 64}, float("nan"), float("inf")]


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("field", ["vocab_size", "n_positions", "n_embd", "n_head", "n_layer"])
def test_hf_sizes_of_wrong_type_are_refused(field, value, tmp_path):
    """Integral floats (64.0) are refused too: HF writes ints, and a float here is a hand-edited file."""
    message = refused(write(tmp_path, {**HF, field: value}), field)
    assert f"{field} must be an integer" in message


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("field", list(HPARAMS))
def test_hparams_sizes_of_wrong_type_are_refused(field, value, tmp_path):
    refused(write(tmp_path, {**HPARAMS, field: value}, "hparams.json"), f"{field} must be an integer")


@pytest.mark.parametrize("field,ours", [("vocab_size", "n_vocab"), ("n_positions", "n_ctx"), ("n_embd", "n_embd"),
                                        ("n_head", "n_head"), ("n_layer", "n_layer")])
@pytest.mark.parametrize("value", [0, -1, "limit+1", 10**9, 10**18, 2**62, 10**400])
def test_sizes_out_of_range_are_refused(field, ours, value, tmp_path):
    value = LIMITS[ours] + 1 if value == "limit+1" else value
    refused(write(tmp_path, {**HF, field: value}), field, "outside the supported range")


def test_sizes_at_the_limits_are_accepted():
    """The limits are generous (GPT-2 XL is 48 x 1600): they bound absurd configs, not real ones."""
    config = GPT2Config(n_vocab=LIMITS["n_vocab"], n_ctx=LIMITS["n_ctx"], n_embd=LIMITS["n_embd"],
                        n_head=LIMITS["n_head"], n_layer=LIMITS["n_layer"])
    assert config.head_dim == 1


def test_absurd_config_fails_before_anything_is_built(tmp_path):
    path = write(tmp_path, {**HF, "n_layer": 1000000000, "n_embd": 10**18, "vocab_size": 2**62})
    refused(path, "outside the supported range")


def test_n_head_must_divide_n_embd(tmp_path):
    refused(write(tmp_path, {**HF, "n_head": 3}), "n_embd=64 is not divisible by n_head=3")


def test_old_n_ctx_stands_in_for_n_positions(tmp_path):
    d = {k: v for k, v in HF.items() if k != "n_positions"}
    assert GPT2Config.from_file(write(tmp_path, {**d, "n_ctx": 32})).n_ctx == 32
    refused(write(tmp_path, {**d, "n_ctx": "32"}), "n_ctx must be an integer")


def test_missing_size_is_named(tmp_path):
    d = {k: v for k, v in HF.items() if k != "n_head"}
    refused(write(tmp_path, d), "missing field 'n_head'")


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "-1e-5", "0", "0.0", "1e-50", "1e39", '"abc"',
                                 '"1e-5"', "[1e-05]", "true", "null", "{}"])
def test_layer_norm_epsilon_must_be_a_finite_positive_float32(raw, tmp_path):
    text = json.dumps(HF).replace('"layer_norm_epsilon": 1e-05', f'"layer_norm_epsilon": {raw}')
    assert raw in text
    refused(write(tmp_path, None, raw=text), "layer_norm_epsilon must be a finite number > 0")


def test_hparams_layer_norm_epsilon_is_checked(tmp_path):
    refused(write(tmp_path, {**HPARAMS, "layer_norm_epsilon": "abc"}, "hparams.json"), "layer_norm_epsilon")


@pytest.mark.parametrize("field,value", [
    ("activation_function", ["gelu_new"]), ("activation_function", 1), ("activation_function", None),
    ("activation_function", "relu"), ("model_type", ["gpt2"]), ("model_type", 2), ("model_type", "bert"),
    ("n_inner", "256"), ("n_inner", 256.0), ("n_inner", True), ("n_inner", 100), ("n_inner", [256]),
    ("pad_token_id", "0"), ("bos_token_id", 1.0), ("eos_token_id", True), ("eos_token_id", [102]),
    ("pad_token_id", {"id": 0}),
    ("scale_attn_weights", "false"), ("scale_attn_weights", 0), ("scale_attn_weights", False),
    ("scale_attn_by_inverse_layer_idx", "no"), ("scale_attn_by_inverse_layer_idx", True),
    ("add_cross_attention", 1), ("add_cross_attention", True),
])
def test_other_fields_of_wrong_type_or_value_are_refused(field, value, tmp_path):
    refused(write(tmp_path, {**HF, field: value}), field)


def test_long_string_values_give_short_messages(tmp_path):
    message = refused(write(tmp_path, {**HF, "activation_function": "x" * 10**6}), "activation_function")
    assert "xxx..." in message


def test_special_ids_outside_the_vocab_are_dropped_with_a_warning(tmp_path, caplog):
    """GPT-2's 50256 in a 110-token vocab (as real releases carry): the vocab's own ids win later."""
    path = write(tmp_path, {**HF, "bos_token_id": 50256, "eos_token_id": -1})
    with caplog.at_level(logging.WARNING, logger="cngpt_tf.config"):
        config = GPT2Config.from_file(path)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (None, None, 0)
    assert "bos_token_id=50256" in caplog.text and "eos_token_id=-1" in caplog.text


@pytest.mark.parametrize("field,value", [("n_layer", True), ("n_embd", 64.0), ("n_layer", 1025), ("n_vocab", "110"),
                                         ("layer_norm_epsilon", float("nan")), ("layer_norm_epsilon", None),
                                         ("activation_function", None), ("pad_token_id", True),
                                         ("eos_token_id", 110), ("bos_token_id", 1.0)])
def test_constructor_checks_too(field, value):
    good = GPT2Config.from_hparams_dict(HPARAMS)
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(good, **{field: value})


# ----- the file itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"[" * 100_000 + b"]" * 100_000,  # past Python's recursion limit
    b'{"n_layer": 1' + b"0" * 5000 + b"}",  # past int()'s digit limit
    b'{"vocab_size": 1,}',
    b"\xff\xfe{}",
    b"[1, 2]",
    b"",
], ids=["deep", "long_int", "bad_json", "not_utf8", "not_object", "empty"])
def test_unreadable_json_is_one_config_error(content, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    refused(path)


def test_huge_config_is_refused_unread(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(HF).encode()[:-1] + b', "pad": "' + b" " * (2 << 20) + b'"}')
    refused(path, "larger than 1 MiB")


def test_not_a_file(tmp_path):
    (tmp_path / "config.json").mkdir()
    refused(tmp_path / "config.json", "not a regular file")
    refused(tmp_path / "missing.json", "file not found")


def test_messages_name_the_source_when_given(tmp_path):
    path = write(tmp_path, {**HF, "n_layer": "2"})
    with pytest.raises(ConfigError, match=r"^release\.zip:model/config\.json: n_layer must be an integer"):
        GPT2Config.from_file(path, "release.zip:model/config.json")
    path.write_bytes(b"{")
    with pytest.raises(ConfigError, match=r"^release\.zip:model/config\.json: not a readable JSON file"):
        GPT2Config.from_file(path, "release.zip:model/config.json")
