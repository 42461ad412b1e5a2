"""Tests of `cngpt_tf.formats.names`: the one PyTorch <-> TF1 <-> HF-TF weight-name table."""

from __future__ import annotations

import copy
import itertools
import time
import tracemalloc

import numpy as np
import pytest

from cngpt_tf.config import GPT2Config
from cngpt_tf.errors import CheckpointError, WeightMappingError
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


# ----- a config must not cost what it claims: every check is O(number of tensors) ----------------


def claiming(config: GPT2Config, **fields) -> GPT2Config:
    """`config` with fields past GPT2Config's own limits (n_layer=10**9): `names` must not rely on them."""
    config = copy.copy(config)
    for name, value in fields.items():
        object.__setattr__(config, name, value)
    return config


def bounded(call, seconds: float = 2.0, megabytes: float = 20.0):
    """Run `call`, expecting an exception; return it after asserting time and Python-heap peak.

    While it runs, the address space may grow by 1 GiB at most (Linux): a regression that tries to
    build 10**9 names then fails here with MemoryError instead of exhausting the test machine."""
    guard = _address_space_guard(1 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the caller checks its type
        error = e
    else:
        raise AssertionError("no error raised")
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        guard()
    assert elapsed < seconds and peak < megabytes * 2**20, (elapsed, peak)
    return error


def _address_space_guard(extra: int):
    """Cap this process's address space at its current size + `extra`; return the undo."""
    try:
        import resource

        with open("/proc/self/status", encoding="ascii") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        before = resource.getrlimit(resource.RLIMIT_AS)
        if before[1] != resource.RLIM_INFINITY and before[1] < size + extra:
            return lambda: None
        resource.setrlimit(resource.RLIMIT_AS, (size + extra, before[1]))
    except (ImportError, OSError, StopIteration, ValueError):
        return lambda: None
    return lambda: resource.setrlimit(resource.RLIMIT_AS, before)


@pytest.mark.parametrize("fmt", names.FORMATS)
def test_billion_layer_config_fails_fast_naming_the_layer_count(fmt):
    tensors = random_tensors(fmt, CONFIGS[1])
    huge = claiming(CONFIGS[1], n_layer=10**9)
    for call in (lambda: names.check(tensors, fmt, huge, origin="w.bin"),
                 lambda: names.convert(tensors, fmt, names.PT, huge, origin="w.bin")):
        error = bounded(call)
        assert type(error) is WeightMappingError
        message = str(error)
        assert message.startswith("w.bin: ") and "n_layer=1000000000" in message and "2 layer(s)" in message
        assert names._BLOCK[0].name(fmt, 2) in message  # the first block it lacks


def test_billion_layer_config_with_its_last_layer_present_still_fails_fast():
    """The last layer's tensors exist, so the count check passes: the missing-name scan must stop at
    the first gap instead of listing 10**9 layers' names."""
    tensors = random_tensors(names.PT, CONFIGS[1])
    tensors["h.999999999.ln_1.weight"] = np.ones(8, np.float32)
    error = bounded(lambda: names.check(tensors, names.PT, claiming(CONFIGS[1], n_layer=10**9), origin="w.bin"))
    assert type(error) is WeightMappingError and "missing tensor 'h.2.ln_1.weight'" in str(error)


@pytest.mark.parametrize("field,tensor,dims", [("n_vocab", "wte.weight", "[1000000000000, 8]"),
                                               ("n_ctx", "wpe.weight", "[1000000000000, 8]")])
def test_huge_embedding_sizes_are_compared_with_the_tensors_first(field, tensor, dims):
    tensors = random_tensors(names.PT, CONFIGS[1])
    error = bounded(lambda: names.check(tensors, names.PT, claiming(CONFIGS[1], **{field: 10**12}), origin="w.bin"))
    assert type(error) is WeightMappingError
    assert tensor in str(error) and dims in str(error) and str(list(tensors[tensor].shape)) in str(error)


def test_layer_names_are_read_canonically():
    entry = names._BLOCK[0]
    assert names.parse("h.11.ln_1.weight", names.PT) == (entry, 11)
    assert names.parse("model/h3/ln_1/g", names.TF1) == (entry, 3)
    assert names.parse("transformer/h_._0/ln_1/gamma:0", names.HF_TF) == (entry, 0)
    assert names.parse("wte.weight", names.PT) == (names._EMBEDDINGS[0], None)
    for name in ("h.01.ln_1.weight", "h.-1.ln_1.weight", "h.1e3.ln_1.weight", "h." + "9" * 5000 + ".ln_1.weight",
                 "h.0.ln_1.weight ", "h..ln_1.weight", "model/h0/ln_1/g", 7, None):
        assert names.parse(name, names.PT) is None, name


def test_unknown_name_message_is_bounded():
    tensors = random_tensors(names.PT, CONFIGS[0])
    tensors["x" * 10**6] = np.zeros(1, np.float32)
    error = bounded(lambda: names.check(tensors, names.PT, CONFIGS[0], origin="w.bin"))
    assert type(error) is WeightMappingError and "xxx" in str(error) and len(str(error)) < 300


def test_check_shapes_takes_shapes_as_readers_list_them():
    """TF's checkpoint reader lists shapes as lists: the index can be checked before reading data."""
    config = CONFIGS[1]
    shapes = {entry.name(names.TF1, layer): list(entry.shape(names.TF1, config))
              for entry, layer in names.expand(config)}
    names.check_shapes(shapes, names.TF1, config, origin="x.ckpt")
    shapes["model/h1/attn/c_proj/w"] = [1, 8, 9]
    expected = r"x\.ckpt: tensor 'model/h1/attn/c_proj/w' has shape \[1, 8, 9\], expected \[1, 8, 8\]"
    with pytest.raises(WeightMappingError, match=expected):
        names.check_shapes(shapes, names.TF1, config, origin="x.ckpt")


# ----- values: NaN / Inf and non-float tensors fail the check, naming each tensor -----------------


def test_non_finite_values_are_named_and_counted():
    config = CONFIGS[1]
    tensors = random_tensors(names.PT, config)
    w = tensors["h.0.attn.c_attn.weight"]
    w[0, :3] = np.nan
    w[1, 0] = -np.inf
    tensors["wpe.weight"][2, 2] = np.inf
    tensors["ln_f.bias"][0] = np.nan
    with pytest.raises(CheckpointError) as info:
        names.check(tensors, names.PT, config, origin="w.bin")
    assert type(info.value) is CheckpointError  # not a naming problem
    message = str(info.value)
    assert message.startswith("w.bin: tensor 'wpe.weight' has 0 NaN and 1 Inf values (and 2 more tensor(s): ")
    assert "'h.0.attn.c_attn.weight'" in message and "'ln_f.bias'" in message and "\n" not in message


def test_non_finite_message_is_bounded_however_many_tensors_are_bad():
    config = CONFIGS[2]
    tensors = {name: np.full_like(value, np.nan) for name, value in random_tensors(names.HF_TF, config).items()}
    expected = r"has 88 NaN and 0 Inf values \(and 147 more tensor\(s\): .*, \.\.\.\)$"
    with pytest.raises(CheckpointError, match=expected) as info:
        names.check(tensors, names.HF_TF, config, origin="w.h5")
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, object])
def test_non_float_tensor_is_refused_naming_it_and_its_dtype(dtype):
    config = CONFIGS[0]
    tensors = random_tensors(names.PT, config)
    tensors["h.0.mlp.c_fc.bias"] = np.zeros(32, dtype)
    expected = rf"w.bin: tensor 'h.0.mlp.c_fc.bias' is {np.dtype(dtype)}, expected floating"
    with pytest.raises(CheckpointError, match=expected):
        names.check(tensors, names.PT, config, origin="w.bin")


def test_float16_and_float64_values_are_checked_too():
    config = CONFIGS[0]
    for dtype in (np.float16, np.float64):
        tensors = {n: v.astype(dtype) for n, v in random_tensors(names.PT, config).items()}
        names.check(tensors, names.PT, config, origin="w.bin")
        tensors["ln_f.weight"][1] = np.inf
        with pytest.raises(CheckpointError, match="'ln_f.weight' has 0 NaN and 1 Inf"):
            names.check(tensors, names.PT, config, origin="w.bin")


def test_finite_check_makes_no_copy():
    """min/max over each tensor: no temporary as large as a weight (the 400 MB model must not double)."""
    tensors = {"big": np.ones((2500, 4000), np.float32)}  # 40 MB
    tracemalloc.start()
    names.check_values(tensors, origin="w.bin")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20, peak
    tensors["big"][-1, -1] = np.nan
    with pytest.raises(CheckpointError, match="'big' has 1 NaN"):
        names.check_values(tensors, origin="w.bin")
