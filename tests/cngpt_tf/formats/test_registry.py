"""`cngpt_tf.formats.registry.detect`: the one place that decides what a folder holds, for every
reader (`Generator.from_pretrained`, `convert_back`, fine-tuning's model folder).

Marker files alone decide, so most cases are empty files in tmp_path; one OUT_DIR with real tiny
tf1/ and tf2/ weights checks that what is detected is what gets read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cngpt_tf.config import GPT2Config
from cngpt_tf.errors import SourceError
from cngpt_tf.formats import names
from cngpt_tf.formats.registry import FORMATS, detect, holds

CONFIG = GPT2Config(n_vocab=12, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "，", "。", "床", "前", "明", "月", "光"]


def touch(folder: Path, *files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def test_markers():
    assert {name: f.marker for name, f in FORMATS.items()} == {
        "tf1": "hparams.json", "tf2": "tf_model.h5", "saved_model": "saved_model.pb"}


@pytest.mark.parametrize("layout, accept, expected", [
    ({".": ["tf_model.h5"]}, ("tf2", "tf1"), ("tf2", ".")),  # a tf2/ folder itself
    ({".": ["hparams.json"]}, ("tf2", "tf1"), ("tf1", ".")),  # a tf1/ folder itself
    ({"tf1": ["hparams.json"], "tf2": ["tf_model.h5"]}, ("tf2", "tf1"), ("tf2", "tf2")),  # an OUT_DIR
    ({"tf1": ["hparams.json"], "tf2": ["tf_model.h5"]}, ("tf1", "tf2"), ("tf1", "tf1")),  # the caller's order
    ({"tf1": ["hparams.json"]}, ("tf2", "tf1"), ("tf1", "tf1")),  # pt2tf --formats tf1
    ({".": ["hparams.json"], "tf2": ["tf_model.h5"]}, ("tf2", "tf1"), ("tf2", "tf2")),  # preference over place
    ({"saved_model": ["saved_model.pb"]}, ("saved_model",), ("saved_model", "saved_model")),
])
def test_detect_prefers_the_callers_order(tmp_path, layout, accept, expected):
    for sub, files in layout.items():
        touch(tmp_path / sub, *files)
    fmt, folder = detect(tmp_path, accept)
    assert (fmt.name, folder) == (expected[0], tmp_path / expected[1])


@pytest.mark.parametrize("layout", [
    {},  # an empty folder
    {".": ["config.json", "pytorch_model.bin", "vocab.txt"]},  # a PyTorch release: not ours to read here
    {"tf3": ["tf_model.h5"]},  # a marker in a sub-folder of another name
    {"tf1": ["tf_model.h5"], "tf2": ["hparams.json"]},  # markers in each other's folders
])
def test_a_folder_holding_nothing_accepted_is_a_source_error_naming_it(tmp_path, layout):
    for sub, files in layout.items():
        touch(tmp_path / sub, *files)
    with pytest.raises(SourceError) as info:
        detect(tmp_path, ("tf2", "tf1"))
    assert str(info.value) == (f"{tmp_path}: no tf_model.h5 (tf2) or hparams.json (tf1) here or in tf2/, tf1/ "
                               "(convert with pt2tf first)")


def test_a_marker_must_be_a_regular_file(tmp_path):
    (tmp_path / "tf_model.h5").mkdir()  # a folder named like the marker
    assert not holds(tmp_path, "tf2")
    with pytest.raises(SourceError, match="no tf_model.h5"):
        detect(tmp_path, ("tf2",))
    with pytest.raises(SourceError, match="missing"):
        detect(tmp_path / "missing", ("tf2",))


def test_saved_model_is_not_read_back(tmp_path):
    fmt, folder = detect(touch(tmp_path / "saved_model", "saved_model.pb"), ("saved_model",))
    with pytest.raises(SourceError, match="cannot be read back"):
        fmt.read(folder)


# ----- what is detected is what is read, for each reader ----------------------------------------------


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    """A pt2tf-like OUT_DIR of a tiny random model: tf1/ and tf2/ with the same weights."""
    from cngpt_tf.demo import demo_weights
    from cngpt_tf.formats.hf_tf2 import write_tf2
    from cngpt_tf.formats.tf1 import write_tf1

    out = tmp_path_factory.mktemp("registry") / "out"
    vocab = out.parent / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    tensors = demo_weights(CONFIG, seed=1)
    write_tf1(out / "tf1", tensors, CONFIG, vocab)
    write_tf2(out / "tf2", tensors, CONFIG, vocab)
    return out


def test_detected_folders_read_the_same_weights(out_dir):
    from cngpt_tf.demo import demo_weights

    expected = demo_weights(CONFIG, seed=1)
    for accept in (("tf2",), ("tf1",)):
        fmt, folder = detect(out_dir, accept)
        config, tensors = fmt.read(folder)
        assert (config.n_vocab, config.n_ctx, config.n_layer) == (12, 8, 1) and set(tensors) == set(expected)
        for name in names.names(names.PT, CONFIG):
            np.testing.assert_allclose(tensors[name], expected[name], rtol=0, atol=0, err_msg=f"{accept} {name}")


def test_generator_loads_an_out_dir_with_tf1_only(out_dir, tmp_path):
    """Generator.from_pretrained asks for tf2, then tf1: an OUT_DIR of `--formats tf1` loads too."""
    import shutil

    from cngpt_tf.generator import Generator

    only_tf1 = tmp_path / "out"
    shutil.copytree(out_dir / "tf1", only_tf1 / "tf1")
    gen = Generator.from_pretrained(only_tf1, native_kernel=False)
    assert gen.config.n_vocab == 12 and gen.tokenizer is not None and gen.config.eos_token_id == VOCAB.index("[SEP]")


def test_every_reader_refuses_an_empty_folder_by_the_same_rule(tmp_path):
    from cngpt_tf.export.convert_back import convert_back
    from cngpt_tf.finetune import _tf2_folder
    from cngpt_tf.generator import Generator

    empty = touch(tmp_path / "empty")
    with pytest.raises(SourceError, match=r"empty: no tf_model.h5 \(tf2\) or hparams.json \(tf1\) here"):
        Generator.from_pretrained(empty)
    with pytest.raises(SourceError, match=r"empty: no hparams.json \(tf1\) or tf_model.h5 \(tf2\) here"):
        convert_back(empty, tmp_path / "back")
    with pytest.raises(SourceError, match=r"empty: no tf_model.h5 \(tf2\) here or in tf2/"):
        _tf2_folder(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # convert_back wrote nothing


def test_finetune_needs_tf2_and_convert_back_takes_an_out_dir(out_dir, tmp_path):
    import shutil

    from cngpt_tf.export.convert_back import convert_back
    from cngpt_tf.finetune import _tf2_folder

    assert _tf2_folder(out_dir) == out_dir / "tf2"
    only_tf1 = tmp_path / "only_tf1"
    shutil.copytree(out_dir / "tf1", only_tf1 / "tf1")
    with pytest.raises(SourceError, match="no tf_model.h5"):
        _tf2_folder(only_tf1)  # Keras fine-tuning reads tf2/ only
    back = convert_back(out_dir, tmp_path / "back")  # an OUT_DIR: its tf1/ first
    assert {p.name for p in back.iterdir()} >= {"pytorch_model.bin", "config.json", "vocab.txt"}
