"""Tests of `read_tf1` / `read_tf2` on corrupt, truncated and hostile folders: each ends in one typed,
one-line error naming the file (and the tensor), never a TensorFlow / h5py traceback, and nothing
is read beyond what the files hold."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cngpt_tf.config import GPT2Config
from cngpt_tf.errors import CheckpointError, ConfigError, SourceError, WeightMappingError
from cngpt_tf.formats import names
from cngpt_tf.formats.hf_tf2 import LAYER, MODEL_NAME, WEIGHTS, read_tf2, write_tf2
from cngpt_tf.formats.tf1 import PREFIX, read_tf1, write_tf1

CONFIG = GPT2Config(n_vocab=11, n_ctx=7, n_embd=8, n_head=2, n_layer=2)
DATA = f"{PREFIX}.data-00000-of-00001"
GAMMA = f"{MODEL_NAME}/transformer/h_._0/ln_1/gamma:0"  # an h5 dataset: 8 floats


def pt_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {entry.name(names.PT, layer): rng.standard_normal(entry.shape(names.PT, CONFIG)).astype(np.float32)
            for entry, layer in names.expand(CONFIG)}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny model written as tf1/ and tf2/ (the writers do not look at values: NaN can be written)."""
    root = tmp_path_factory.mktemp("tf_readers")
    vocab = root / "vocab.txt"
    vocab.write_text("".join(f"t{i}\n" for i in range(CONFIG.n_vocab)), encoding="utf-8")
    write_tf1(root / "tf1", pt_tensors(), CONFIG, vocab)
    write_tf2(root / "tf2", pt_tensors(), CONFIG, vocab)
    return root


def copy(written: Path, fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written / fmt, tmp_path / fmt))


def fails(read, folder: Path, error: type, *must_name: str) -> str:
    start = time.perf_counter()
    with pytest.raises(error) as info:
        read(folder)
    assert time.perf_counter() - start < 5
    assert type(info.value) is error  # e.g. a NaN is not a naming problem
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(folder) in message, message  # names the file
    for part in must_name:
        assert part in message, message
    return message


@pytest.mark.parametrize("fmt,read", [("tf1", read_tf1), ("tf2", read_tf2)])
def test_round_trip_is_exact(written, fmt, read):
    config, tensors = read(written / fmt)
    assert config == CONFIG
    want = pt_tensors()
    assert list(tensors) == list(want)
    for name, value in want.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], value)


@pytest.mark.parametrize("fmt,write", [("tf1", write_tf1), ("tf2", write_tf2)])
def test_writers_keep_the_tokenizer_casing(tmp_path, fmt, write):
    """Both formats write tokenizer_config.json: a cased model stays cased for from_pretrained."""
    from cngpt_tf.tokenizer import ChineseTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "Hello"]),
                     encoding="utf-8")
    for lower, expected in ((False, [2, 5]), (True, [2, 4])):
        write(tmp_path / fmt, pt_tensors(), CONFIG, vocab, do_lower_case=lower)
        config = json.loads((tmp_path / fmt / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert config["do_lower_case"] is lower and config["model_max_length"] == CONFIG.n_ctx
        assert ChineseTokenizer.from_pretrained(tmp_path / fmt).encode("Hello") == expected


# ----- tf1 ------------------------------------------------------------------------------------------


def _cut(path: Path, keep: float = 0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _hparams(**changes):
    def edit(folder: Path):
        path = folder / "hparams.json"
        path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")
    return edit


TF1_CASES = {
    "data_cut_in_half": (lambda f: _cut(f / DATA), CheckpointError, ["model.ckpt", "truncated"]),
    "data_flipped_byte": (lambda f: _flip(f / DATA), CheckpointError, ["model.ckpt", "cannot read TF1 checkpoint"]),
    "data_missing": (lambda f: (f / DATA).unlink(), CheckpointError, ["model.ckpt"]),
    "index_garbage": (lambda f: (f / f"{PREFIX}.index").write_bytes(np.random.default_rng(0).bytes(900)),
                      CheckpointError, ["model.ckpt", "cannot read TF1 checkpoint"]),
    "index_cut_in_half": (lambda f: _cut(f / f"{PREFIX}.index"), CheckpointError, ["model.ckpt"]),
    "checkpoint_points_nowhere": (lambda f: (f / "checkpoint").write_text('model_checkpoint_path: "nope"\n'),
                                  SourceError, ["checkpoint", "nope", "no .index file"]),
    "checkpoint_garbage": (lambda f: (f / "checkpoint").write_bytes(b"\xff\xfe\x00garbage{{{"),
                           SourceError, ["checkpoint", "not a TF1 checkpoint state file"]),
    "checkpoint_not_text_proto": (lambda f: (f / "checkpoint").write_text("model_checkpoint_path = [1, 2]\n"),
                                  SourceError, ["checkpoint", "not a TF1 checkpoint state file"]),
    "checkpoint_empty": (lambda f: (f / "checkpoint").write_text(""), SourceError, ["names no checkpoint"]),
    "checkpoint_missing": (lambda f: (f / "checkpoint").unlink(), SourceError, ["checkpoint"]),
    "hparams_string_size": (_hparams(n_embd="8"), ConfigError, ["hparams.json", "n_embd must be an integer"]),
    "hparams_float_epsilon": (_hparams(layer_norm_epsilon=[1e-5]), ConfigError, ["hparams.json", "layer_norm_epsilon"]),
    "hparams_absurd_layers": (_hparams(n_layer=10**9), ConfigError, ["hparams.json", "n_layer"]),
    "hparams_more_layers": (_hparams(n_layer=1000), WeightMappingError, ["n_layer=1000", "'model/h2/ln_1/g'"]),
    "hparams_other_width": (_hparams(n_embd=16), WeightMappingError, ["'model/wte'", "[11, 8]", "[11, 16]"]),
}


@pytest.mark.parametrize("case", TF1_CASES)
def test_tf1_corrupt_folder_is_one_typed_error(case, written, tmp_path):
    mutate, error, must_name = TF1_CASES[case]
    folder = copy(written, "tf1", tmp_path)
    mutate(folder)
    fails(read_tf1, folder, error, *must_name)


def test_tf1_non_finite_tensor_is_named(written, tmp_path):
    tensors = pt_tensors()
    tensors["h.0.attn.c_attn.weight"][0, :3] = np.nan
    tensors["h.0.attn.c_attn.weight"][1, 1] = np.inf
    write_tf1(tmp_path / "tf1", tensors, CONFIG, written / "tf1" / "vocab.txt")
    fails(read_tf1, tmp_path / "tf1", CheckpointError, "'model/h0/attn/c_attn/w' has 3 NaN and 1 Inf values")


def test_tf1_non_float32_tensor_is_refused_before_reading(written, tmp_path):
    import tensorflow as tf

    folder = copy(written, "tf1", tmp_path)
    tensors = names.convert(pt_tensors(), names.PT, names.TF1, CONFIG)
    keys = list(tensors)
    dtypes = {k: tf.float64 if k == "model/ln_f/g" else tf.float32 for k in keys}
    tf.raw_ops.SaveV2(prefix=str(folder / PREFIX), tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tf.constant(tensors[k], dtypes[k]) for k in keys])
    fails(read_tf1, folder, CheckpointError, "'model/ln_f/g' is float64, expected float32")


# ----- tf2 ------------------------------------------------------------------------------------------


def _h5(edit):
    def mutate(folder: Path):
        with h5py.File(folder / WEIGHTS, "a") as f:
            edit(f, f[LAYER])
    return mutate


def _replace(name: str = GAMMA, **dataset):
    def edit(f, group):
        del group[name]
        group.create_dataset(name, **dataset)
    return edit


def _external_link(f, group):
    other = Path(f.filename).with_name("other.h5")
    with h5py.File(other, "w") as o:
        o["secret"] = np.ones(8, np.float32)
    del group[GAMMA]
    group[GAMMA] = h5py.ExternalLink(str(other), "/secret")


def _external_storage(f, group):
    other = Path(f.filename).with_name("secret.bin")
    other.write_bytes(np.ones(8, np.float32).tobytes())
    del group[GAMMA]
    group.create_dataset(GAMMA, shape=(8,), dtype=np.float32, external=[(str(other), 0, 32)])


def _nan(f, group):
    group[GAMMA][1:3] = [np.nan, -np.inf]


def _config(**changes):
    def edit(folder: Path):
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")
    return edit


def _duplicate_name(f, group):
    listed = list(group.attrs["weight_names"])
    group.attrs["weight_names"] = np.array(listed + [listed[0]])


TF2_CASES = {
    "cut_in_half": (lambda f: _cut(f / WEIGHTS), CheckpointError, ["not a readable HF TF2 weights file"]),
    "garbage": (lambda f: (f / WEIGHTS).write_bytes(np.random.default_rng(0).bytes(4096)), CheckpointError,
                ["not a readable HF TF2 weights file"]),
    "empty": (lambda f: (f / WEIGHTS).write_bytes(b""), CheckpointError, ["not a readable"]),
    "missing": (lambda f: (f / WEIGHTS).unlink(), SourceError, ["file not found"]),
    "no_transformer_group": (_h5(lambda f, g: f.move(LAYER, "other")), CheckpointError, ["no 'transformer' group"]),
    "no_weight_names": (_h5(lambda f, g: g.attrs.__delitem__("weight_names")), CheckpointError, ["weight_names"]),
    "weight_names_are_ints": (_h5(lambda f, g: g.attrs.__setitem__("weight_names", np.arange(3))), CheckpointError,
                              ["weight name", "not <model>/<tensor>"]),
    "weight_names_scalar": (_h5(lambda f, g: g.attrs.__setitem__("weight_names", b"a/b")), CheckpointError,
                            ["weight_names"]),
    "listed_but_absent": (_h5(lambda f, g: g.__delitem__(GAMMA)), WeightMappingError, [GAMMA, "not a dataset here"]),
    "listed_is_a_group": (_h5(lambda f, g: (g.__delitem__(GAMMA), g.create_group(GAMMA))), WeightMappingError,
                          ["not a dataset here"]),
    "listed_twice": (_h5(_duplicate_name), WeightMappingError, ["listed twice"]),
    "int64_tensor": (_h5(_replace(data=np.arange(8, dtype=np.int64))), CheckpointError,
                     ["tensor 'transformer/h_._0/ln_1/gamma:0' is int64, expected floating point"]),
    "bool_tensor": (_h5(_replace(data=np.ones(8, bool))), CheckpointError, ["is bool"]),
    "string_tensor": (_h5(_replace(data=np.array([b"x"] * 8))), CheckpointError, ["is |S1"]),
    "wrong_shape": (_h5(_replace(data=np.ones(9, np.float32))), WeightMappingError,
                    ["'transformer/h_._0/ln_1/gamma:0' has shape [9], expected [8]"]),
    "external_link": (_h5(_external_link), CheckpointError, ["stored in another file"]),
    "external_storage": (_h5(_external_storage), CheckpointError, ["stored in another file"]),
    "nan_and_inf": (_h5(_nan), CheckpointError, ["'transformer/h_._0/ln_1/gamma:0' has 1 NaN and 1 Inf values"]),
    "config_float_size": (_config(n_embd=8.0), ConfigError, ["config.json", "n_embd must be an integer"]),
    "config_null_vocab": (_config(vocab_size=None), ConfigError, ["config.json", "vocab_size"]),
    "config_more_layers": (_config(n_layer=12), WeightMappingError, ["n_layer=12"]),
}


@pytest.mark.parametrize("case", TF2_CASES)
def test_tf2_corrupt_folder_is_one_typed_error(case, written, tmp_path):
    mutate, error, must_name = TF2_CASES[case]
    folder = copy(written, "tf2", tmp_path)
    mutate(folder)
    fails(read_tf2, folder, error, *must_name)


def test_tf2_other_float_widths_are_read_as_float32(written, tmp_path):
    folder = copy(written, "tf2", tmp_path)
    with h5py.File(folder / WEIGHTS, "a") as f:
        value = f[LAYER][GAMMA][()]
        _replace(data=value.astype(np.float64))(f, f[LAYER])
    _, tensors = read_tf2(folder)
    assert tensors["h.0.ln_1.weight"].dtype == np.float32
    np.testing.assert_array_equal(tensors["h.0.ln_1.weight"], value)


def test_tf2_declared_size_beyond_the_file_is_refused_unread(written, tmp_path):
    """An unwritten chunked dataset reads as a full array of fill values: a 60 KB file could declare
    gigabytes. The declared size is compared with the file's before any tensor is read."""
    folder = copy(written, "tf2", tmp_path)
    vocab = 1 << 22  # wte: 128 MiB declared
    _config(vocab_size=vocab)(folder)
    wte = f"{MODEL_NAME}/transformer/wte/embeddings:0"
    _h5(_replace(wte, shape=(vocab, 8), dtype=np.float32, chunks=(1024, 8), compression="gzip"))(folder)
    assert (folder / WEIGHTS).stat().st_size < 1 << 20
    fails(read_tf2, folder, CheckpointError, "bytes of tensors but the file holds")


def test_tf2pt_refuses_an_int64_tensor_in_one_line(written, tmp_path, capsys):
    from converters import tf2pt

    folder = copy(written, "tf2", tmp_path)
    _h5(_replace(data=np.arange(8, dtype=np.int64)))(folder)
    out = tmp_path / "back"
    rc = tf2pt.main([str(folder), str(out), "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(r"gamma:0' is int64, expected floating point", lines[0]), err
    assert not out.exists()


# ----- the converters run the same checks ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tf1", "tf2", "saved_model"])
def test_pt2tf_refuses_non_finite_weights_in_every_format(fmt, tmp_path, capsys):
    """Before, NaN weights passed `--formats saved_model` (its verification compares NaN logits)."""
    from cngpt_tf.formats.pytorch import write_pytorch
    from converters import pt2tf

    model = tmp_path / "model"
    model.mkdir()
    tensors = pt_tensors()
    tensors["h.1.mlp.c_proj.weight"][3, :2] = np.nan
    write_pytorch(model, tensors)
    (model / "config.json").write_text(json.dumps(CONFIG.to_hf_dict()), encoding="utf-8")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"t{i}" for i in range(4, CONFIG.n_vocab)]
    (model / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    out = tmp_path / "out"
    rc = pt2tf.main([str(model), str(out), "--formats", fmt, "--no_generate", "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "pytorch_model.bin: tensor 'h.1.mlp.c_proj.weight' has 2 NaN and 0 Inf" in lines[0], err
    assert not out.exists()
