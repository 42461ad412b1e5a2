"""Tests of `cngpt_tf.formats.names`: the one PyTorch <-> TF1 <-> HF-TF weight-name table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cngpt_tf.config import GPT2Config
from cngpt_tf.errors import WeightMappingError
from cngpt_tf.formats import names

# Small dims keep the 12-layer table cheap; distinct sizes make a swapped axis visible.
CONFIGS = [
    GPT2Config(n_vocab=11, n_ctx=7, n_embd=8, n_head=2, n_layer=n) for n in (1, 2, 12)
]
PAIRS = list(itertools.permutations(names.FORMATS, 2))


def random_tensors(fmt: str, config: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        entry.name(fmt, layer): rng.standard_normal(entry.shape(fmt, config)).astype(np.float32)
        for entry, layer in names.expand(config)
    }


def n_weights(config: GPT2Config) -> int:
    return 2 + 12 * config.n_layer + 2  # wte, wpe; 12 per block; ln_f g/b


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}")
@pytest.mark.parametrize("fmt", names.FORMATS)
def test_names_unique_per_format(config, fmt):
    listed = names.names(fmt, config)
    assert len(listed) == n_weights(config)
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}")
def test_known_names(config):
    last = config.n_layer - 1
    assert "wte.weight" in names.names(names.PT, config)
    assert f"h.{last}.mlp.c_proj.weight" in names.names(names.PT, config)
    assert f"model/h{last}/attn/c_attn/w" in names.names(names.TF1, config)
    assert "model/ln_f/g" in names.names(names.TF1, config)
    assert f"transformer/h_._{last}/ln_2/gamma:0" in names.names(names.HF_TF, config)
    assert "transformer/wpe/embeddings:0" in names.names(names.HF_TF, config)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}")
@pytest.mark.parametrize("src,dst", PAIRS)
def test_round_trip_is_identity(config, src, dst):
    tensors = random_tensors(src, config)
    there = names.convert(tensors, src, dst, config)
    assert sorted(there) == sorted(names.names(dst, config))
    back = names.convert(there, dst, src, config)
    assert list(back) == names.names(src, config)
    assert set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].shape == value.shape
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}")
@pytest.mark.parametrize("src,dst", PAIRS)
def test_mapping_is_a_bijection(config, src, dst):
    mapping = {}
    for entry, layer in names.expand(config):
        mapping[entry.name(src, layer)] = entry.name(dst, layer)
    assert len(mapping) == n_weights(config)  # injective on the source side
    assert len(set(mapping.values())) == len(mapping)  # ... and on the destination side
    assert set(mapping.values()) == set(names.names(dst, config))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}")
def test_element_counts_equal_across_formats(config):
    for entry, layer in names.expand(config):
        sizes = {fmt: int(np.prod(entry.shape(fmt, config))) for fmt in names.FORMATS}
        assert len(set(sizes.values())) == 1, (entry.name(names.PT, layer), sizes)


def test_shapes_follow_openai_layout():
    config = CONFIGS[1]
    e = config.n_embd
    tf1 = {entry.name(names.TF1, layer): entry.shape(names.TF1, config) for entry, layer in names.expand(config)}
    assert tf1["model/wte"] == (config.n_vocab, e)
    assert tf1["model/wpe"] == (config.n_ctx, e)
    assert tf1["model/h1/attn/c_attn/w"] == (1, e, 3 * e)
    assert tf1["model/h1/attn/c_attn/b"] == (3 * e,)
    assert tf1["model/h0/mlp/c_fc/w"] == (1, e, 4 * e)
    assert tf1["model/h0/mlp/c_proj/w"] == (1, 4 * e, e)
    assert tf1["model/ln_f/g"] == (e,)


# ----- fails closed -------------------------------------------------------------------------------


def test_unknown_name_is_refused_and_named():
    config = CONFIGS[0]
    tensors = random_tensors(names.PT, config)
    tensors["h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightMappingError, match="h.0.attn.rotary.weight"):
        names.convert(tensors, names.PT, names.TF1, config, origin="some.bin")


def test_layer_beyond_config_is_unknown():
    config = CONFIGS[0]  # one layer: h.1.* must not be silently dropped
    tensors = random_tensors(names.PT, CONFIGS[1])
    with pytest.raises(WeightMappingError, match=r"h\.1\."):
        names.convert(tensors, names.PT, names.HF_TF, config)


@pytest.mark.parametrize("fmt", names.FORMATS)
def test_missing_name_is_refused_and_named(fmt):
    config = CONFIGS[1]
    tensors = random_tensors(fmt, config)
    gone = names.names(fmt, config)[5]
    del tensors[gone]
    dst = names.TF1 if fmt != names.TF1 else names.PT
    with pytest.raises(WeightMappingError, match="missing") as info:
        names.convert(tensors, fmt, dst, config, origin="the.ckpt")
    assert gone in str(info.value) and "the.ckpt" in str(info.value)


@pytest.mark.parametrize("fmt", names.FORMATS)
def test_wrong_shape_is_refused_with_both_shapes(fmt):
    config = CONFIGS[1]
    tensors = random_tensors(fmt, config)
    name = next(n for n in tensors if "c_attn" in n and tensors[n].ndim >= 2)
    expected = list(tensors[name].shape)
    bad = expected[:-1] + [expected[-1] + 1]
    tensors[name] = np.zeros(bad, np.float32)
    with pytest.raises(WeightMappingError) as info:
        names.convert(tensors, fmt, names.PT if fmt != names.PT else names.TF1, config, origin="w.h5")
    message = str(info.value)
    assert name in message and str(bad) in message and str(expected) in message and "w.h5" in message


def test_same_element_count_but_wrong_shape_is_refused():
    """A transposed Conv1D weight has the right size; the reshape must not silently accept it."""
    config = CONFIGS[0]
    tensors = random_tensors(names.PT, config)
    tensors["h.0.attn.c_attn.weight"] = tensors["h.0.attn.c_attn.weight"].T.copy()
    with pytest.raises(WeightMappingError, match="h.0.attn.c_attn.weight"):
        names.convert(tensors, names.PT, names.TF1, config)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="keras"):
        names.convert({}, names.PT, "keras", CONFIGS[0])


@pytest.mark.parametrize("src,dst", PAIRS)
def test_convert_reshapes_without_copying(src, dst):
    config = CONFIGS[1]
    tensors = random_tensors(src, config)
    out = names.convert(tensors, src, dst, config)
    for entry, layer in names.expand(config):
        a, b = tensors[entry.name(src, layer)], out[entry.name(dst, layer)]
        assert np.shares_memory(a, b), entry.name(src, layer)
