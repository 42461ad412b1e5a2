"""Tests of `python -m converters.pt2tf`: the output contract, each format checked by its own users'
loaders (TF1 graph-mode restore, HF's TF1 importer, TFGPT2LMHeadModel, a bare `tf.saved_model.load`),
every kind of source, and bad input failing closed with one line and no OUT_DIR.

Read-only checks share the session fixture `converted`; tests that convert again use `formats=` subsets.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cngpt_tf.export.convert import convert
from converters import pt2tf
from tests.conftest import torch_logits, write_torch_model

torch = pytest.importorskip("torch")

ATOL = 1e-4
TF1_FILES = {"checkpoint", "model.ckpt.index", "model.ckpt.data-00000-of-00001", "hparams.json", "vocab.txt",
             "tokenizer_config.json"}
TF2_FILES = {"tf_model.h5", "config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


# ----- helpers ------------------------------------------------------------------------------------


def hparams_of(folder: Path) -> dict:
    c = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return dict(n_vocab=c["vocab_size"], n_ctx=c["n_positions"], n_embd=c["n_embd"], n_head=c["n_head"],
                n_layer=c["n_layer"])


def openai_layout(hp: dict) -> dict[str, tuple[str, list[int]]]:
    """openai/gpt-2's variables, written out here independently of `names.py`:
    {TF1 name: (source state-dict key, TF1 shape)}."""
    v, c, e = hp["n_vocab"], hp["n_ctx"], hp["n_embd"]
    out = {"model/wte": ("transformer.wte.weight", [v, e]), "model/wpe": ("transformer.wpe.weight", [c, e])}
    for i in range(hp["n_layer"]):
        for norm in ("ln_1", "ln_2"):
            out[f"model/h{i}/{norm}/g"] = (f"transformer.h.{i}.{norm}.weight", [e])
            out[f"model/h{i}/{norm}/b"] = (f"transformer.h.{i}.{norm}.bias", [e])
        for tf_sub, pt_sub, nx, nf in (("attn/c_attn", "attn.c_attn", e, 3 * e), ("attn/c_proj", "attn.c_proj", e, e),
                                       ("mlp/c_fc", "mlp.c_fc", e, 4 * e), ("mlp/c_proj", "mlp.c_proj", 4 * e, e)):
            out[f"model/h{i}/{tf_sub}/w"] = (f"transformer.h.{i}.{pt_sub}.weight", [1, nx, nf])
            out[f"model/h{i}/{tf_sub}/b"] = (f"transformer.h.{i}.{pt_sub}.bias", [nf])
    out["model/ln_f/g"] = ("transformer.ln_f.weight", [e])
    out["model/ln_f/b"] = ("transformer.ln_f.bias", [e])
    return out


def padded_batch(n_vocab: int, seq_len: int = 12, n_pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two rows; the second is left-padded with [PAD]=0 (mask 0), as batched generation does."""
    ids = np.random.RandomState(1).randint(104, n_vocab, size=(2, seq_len)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, :n_pad], mask[1, :n_pad] = 0, 0
    return ids, mask


def assert_close_at_real(expected, actual, mask, atol):
    real = mask.astype(bool)
    np.testing.assert_allclose(actual[real], expected[real], rtol=0, atol=atol)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leftovers(parent: Path, out_name: str = "out") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((f".{out_name}.tmp-", f".{out_name}.old-")))


def run_main(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = pt2tf.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """stderr without our own log lines (logging goes to stderr too): what the user sees as the error."""
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


def assert_failed_cleanly(rc: int, err: str, out: Path, *must_name: str) -> str:
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in must_name:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()
    assert leftovers(out.parent, out.name) == []
    return lines[0]


@pytest.fixture(scope="session")
def source_state(tiny_pt_dir) -> dict[str, np.ndarray]:
    sd = torch.load(tiny_pt_dir / "pytorch_model.bin", weights_only=True)
    return {k: v.numpy() for k, v in sd.items()}


def tf1_tensors(folder: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder / "model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_tf1_equals(folder: Path, state: dict[str, np.ndarray], hp: dict) -> None:
    got = tf1_tensors(folder)
    layout = openai_layout(hp)
    assert set(got) == set(layout)
    for name, (key, shape) in layout.items():
        np.testing.assert_array_equal(got[name], state[key].astype(np.float32).reshape(shape), err_msg=name)


# ----- OUT_DIR layout -----------------------------------------------------------------------------


def test_out_dir_layout(converted, tiny_pt_dir):
    assert {p.name for p in converted.iterdir()} == {"tf1", "tf2", "saved_model", "conversion_report.json"}
    assert {p.name for p in (converted / "tf1").iterdir()} == TF1_FILES
    assert {p.name for p in (converted / "tf2").iterdir()} == TF2_FILES
    assert [p.name for p in (converted / "saved_model").iterdir()] == ["1"]
    sm = converted / "saved_model" / "1"
    assert (sm / "saved_model.pb").is_file()
    assert (sm / "variables").is_dir() and any((sm / "variables").iterdir())
    assert {p.name for p in (sm / "assets").iterdir()} == {"vocab.txt", "generation_config.json",
                                                           "tokenizer_config.json"}
    vocab = (tiny_pt_dir / "vocab.txt").read_bytes()
    for copy in (converted / "tf1" / "vocab.txt", converted / "tf2" / "vocab.txt", sm / "assets" / "vocab.txt"):
        assert copy.read_bytes() == vocab
    assert [p.name for p in converted.parent.iterdir()] == ["out"]  # no temp folder beside OUT_DIR


# ----- tf1 ----------------------------------------------------------------------------------------


def test_tf1_variables_are_openai_layout(converted, tiny_pt_dir):
    import tensorflow as tf

    hp = hparams_of(tiny_pt_dir)
    listed = dict(tf.train.list_variables(str(converted / "tf1")))
    assert listed == {name: shape for name, (_, shape) in openai_layout(hp).items()}
    dtypes = tf.train.load_checkpoint(str(converted / "tf1")).get_variable_to_dtype_map()
    assert set(dtypes.values()) == {tf.float32}


def test_tf1_hparams(converted, tiny_pt_dir):
    hparams = json.loads((converted / "tf1" / "hparams.json").read_text(encoding="utf-8"))
    assert hparams == hparams_of(tiny_pt_dir)


def test_tf1_tensors_equal_source(converted, tiny_pt_dir, source_state):
    assert_tf1_equals(converted / "tf1", source_state, hparams_of(tiny_pt_dir))


def test_tf1_latest_checkpoint_after_move(converted, tmp_path):
    import tensorflow as tf

    moved = shutil.copytree(converted / "tf1", tmp_path / "elsewhere" / "renamed_model")
    prefix = tf.train.latest_checkpoint(str(moved))
    assert prefix is not None and Path(prefix) == moved / "model.ckpt"
    np.testing.assert_array_equal(tf.train.load_variable(prefix, "model/wte"),
                                  tf1_tensors(converted / "tf1")["model/wte"])


def test_tf1_graph_mode_restore(converted, tiny_pt_dir, source_state):
    """What openai/gpt-2's sample.py does: build variables by name, `Saver().restore`."""
    import tensorflow as tf

    layout = openai_layout(hparams_of(tiny_pt_dir))
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.get_variable(name, shape=shape, dtype=tf.float32)
                     for name, (_, shape) in layout.items()}
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(converted / "tf1")))
            values = sess.run(variables)
    for name, (key, shape) in layout.items():
        np.testing.assert_array_equal(values[name], source_state[key].reshape(shape), err_msg=name)


def test_tf1_loads_with_hf_importer(converted, tiny_pt_dir):
    """An independent reader: transformers' own openai-checkpoint importer."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, load_tf_weights_in_gpt2

    config = GPT2Config.from_pretrained(tiny_pt_dir)
    imported = load_tf_weights_in_gpt2(GPT2Model(config), config, str(converted / "tf1" / "model.ckpt")).eval()
    source = GPT2LMHeadModel.from_pretrained(tiny_pt_dir).eval().transformer
    ids, mask = padded_batch(config.vocab_size)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions))
    with torch.no_grad():
        got = imported(**inputs).last_hidden_state.numpy()
        want = source(**inputs).last_hidden_state.numpy()
    assert_close_at_real(want, got, mask, 1e-6)


# ----- tf2 ----------------------------------------------------------------------------------------


def test_tf2_loads_and_matches_torch(converted, tiny_pt_dir):
    from transformers import TFGPT2LMHeadModel

    model, info = TFGPT2LMHeadModel.from_pretrained(str(converted / "tf2"), output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert not info.get("mismatched_keys") and not info.get("error_msgs")
    ids, mask = padded_batch(model.config.vocab_size)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    assert_close_at_real(torch_logits(tiny_pt_dir, ids, mask), logits, mask, ATOL)


def test_tf2_tokenizer_matches_source_vocab(converted, tiny_pt_dir):
    from transformers import BertTokenizer

    ours = BertTokenizer.from_pretrained(str(converted / "tf2"))
    source = BertTokenizer(vocab_file=str(tiny_pt_dir / "vocab.txt"))
    for text in ("床前明月光，疑是地上霜。", "举头望明月 Hello World 2024!", "低头思故乡（夜来风雨声）"):
        assert ours(text)["input_ids"] == source(text)["input_ids"]
    assert len(ours) == len(source)


def test_tf2_config_special_ids_come_from_vocab(converted, tiny_pt_dir, tiny_vocab):
    source = json.loads((tiny_pt_dir / "config.json").read_text(encoding="utf-8"))
    assert source["bos_token_id"] == source["eos_token_id"] == 50256  # the fixture's seed-style config
    config = json.loads((converted / "tf2" / "config.json").read_text(encoding="utf-8"))
    assert config["pad_token_id"] == tiny_vocab.index("[PAD]")
    assert config["bos_token_id"] == tiny_vocab.index("[CLS]")
    assert config["eos_token_id"] == tiny_vocab.index("[SEP]")
    assert 50256 not in config.values()
    assert config["vocab_size"] == len(tiny_vocab)


# ----- saved_model --------------------------------------------------------------------------------

SERVING_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    folder, batch, out = sys.argv[1:4]
    data = np.load(batch)
    loaded = tf.saved_model.load(folder)
    fn = loaded.signatures["logits"]
    _, kwargs = fn.structured_input_signature
    specs = {
        "inputs": {k: [v.shape.as_list(), v.dtype.name, v.name] for k, v in kwargs.items()},
        "outputs": {k: [v.shape.as_list(), v.dtype.name] for k, v in fn.structured_outputs.items()},
    }
    result = fn(input_ids=tf.constant(data["ids"]), attention_mask=tf.constant(data["mask"]))
    np.save(out, result["logits"].numpy())
    assert "transformers" not in sys.modules, "the SavedModel pulled in transformers"
    assert "cngpt_tf" not in sys.modules, "the SavedModel pulled in cngpt_tf"
    print("SPECS " + json.dumps(specs))
""")


def test_saved_model_in_bare_tensorflow(converted, tiny_pt_dir, tmp_path):
    hp = hparams_of(tiny_pt_dir)
    ids, mask = padded_batch(hp["n_vocab"])
    np.savez(tmp_path / "batch.npz", ids=ids, mask=mask)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SERVING_SCRIPT, str(converted / "saved_model" / "1"), str(tmp_path / "batch.npz"),
         str(tmp_path / "logits.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    specs = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("SPECS "))[6:])
    assert specs["inputs"] == {"input_ids": [[None, None], "int32", "input_ids"],
                               "attention_mask": [[None, None], "int32", "attention_mask"]}
    assert specs["outputs"] == {"logits": [[None, None, hp["n_vocab"]], "float32"]}
    assert_close_at_real(torch_logits(tiny_pt_dir, ids, mask), np.load(tmp_path / "logits.npy"), mask, ATOL)


# ----- the export's generation settings ---------------------------------------------------------------


def test_export_default_length_is_the_configs_rule(converted):
    """No max_new_tokens given: the export fixes `default_max_new_tokens(n_positions)`, 64 // 2 here."""
    from cngpt_tf.generation_config import GenerationConfig, default_max_new_tokens

    fixed = GenerationConfig.from_json_file(converted / "saved_model" / "1" / "assets" / "generation_config.json")
    assert fixed.max_new_tokens == default_max_new_tokens(64) == 32 and fixed.do_sample is False


@pytest.mark.parametrize("generation, text", [
    ({"max_new_tokens": 64}, "max_new_tokens=64 leaves no room for a prompt in n_positions=64"),
    ({"max_length": 20}, "max_length: an export fixes max_new_tokens"),
    ({"do_sample": True, "top_k": 1804}, "top_k=1804 exceeds the vocab of 1803 tokens"),
])
def test_export_settings_the_model_cannot_honour_fail_before_the_weights(generation, text, tiny_pt_dir, tmp_path):
    from cngpt_tf.export.convert import GenerationFlagError
    from cngpt_tf.generation_config import GenerationConfig

    model = copy_model(tiny_pt_dir, tmp_path / "model")
    (model / "pytorch_model.bin").write_bytes(b"not a checkpoint")  # reading it would fail otherwise
    with pytest.raises(GenerationFlagError, match=re.escape(text) + r".* \(model .*config.json\)"):
        convert(str(model), tmp_path / "out", formats=("saved_model",), progress=False,
                generation=GenerationConfig(**generation))
    # without a SavedModel (or with --no_generate) the settings are not used, and not checked
    with pytest.raises(Exception, match="pytorch_model.bin") as info:
        convert(str(model), tmp_path / "out", formats=("tf1",), progress=False, generation=GenerationConfig(**generation))
    assert not isinstance(info.value, GenerationFlagError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ----- report -------------------------------------------------------------------------------------


def test_report(converted):
    report = json.loads((converted / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["passed"] is True
    assert set(report["formats"]) == {"tf1", "tf2", "saved_model"}
    for fmt, result in report["formats"].items():
        assert result["max_abs_diff"] <= report["atol"] == ATOL, fmt
        assert result["greedy_agree"] is True, fmt
        assert result["tensors_equal"] is not False, fmt
    assert report["formats"]["tf1"]["tensors_equal"] is True
    assert report["formats"]["tf2"]["tensors_equal"] is True
    assert set(report["seconds"]) == {"read", "tf1", "tf2", "saved_model", "verify"}
    assert report["special_tokens"]["[CLS]"] == report["config"]["bos_token_id"]


# ----- sources ------------------------------------------------------------------------------------


def zip_model(folder: Path, path: Path, sub: str = "gpt2_L-12_H-768_A-12_CN") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{sub}/", "")
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{sub}/{f.name}")
        zf.writestr("README.md", "not a model file")
    return path


def test_config_warnings_name_the_zip_member_not_the_temp_folder(tiny_pt_dir, source_state, tmp_path, capsys):
    # the fixture's config.json carries GPT-2's bos/eos 50256, which the conversion warns about and drops
    src = zip_model(tiny_pt_dir, tmp_path / "release.zip")
    rc, _, err = run_main([src, tmp_path / "out", "--formats", "tf1"], capsys)
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "ignoring bos_token_id=50256" in line]
    assert warnings and all(f"{src}:gpt2_L-12_H-768_A-12_CN/config.json" in line for line in warnings), err
    assert not any("cngpt_src_" in line for line in warnings)  # nor the temporary extraction folder


def test_zip_with_sub_folder_via_main(tiny_pt_dir, source_state, tmp_path, capsys):
    src = zip_model(tiny_pt_dir, tmp_path / "gpt2_L-12_H-768_A-12_CN.zip")
    out = tmp_path / "out"
    rc, stdout, err = run_main([src, out, "--formats", "tf1", "-q"], capsys)
    assert rc == 0, err
    # main() prints the verification table, then "done"
    lines = stdout.splitlines()
    assert lines[0].startswith("format") and "max |logits diff|" in lines[0] and "greedy agree" in lines[0]
    assert set(lines[1]) <= {"-", " "}
    row = lines[2].split()
    assert row[0] == "tf1" and row[-1] == "yes" and float(row[1]) == 0.0
    assert lines[-1] == f"done: {out}"
    assert {p.name for p in out.iterdir()} == {"tf1", "conversion_report.json"}
    assert_tf1_equals(out / "tf1", source_state, hparams_of(tiny_pt_dir))
    assert leftovers(tmp_path) == []


def test_safetensors_source(tmp_path, tiny_vocab):
    src = write_torch_model(tmp_path / "st", tiny_vocab, seed=3, safetensors=True)
    assert (src / "model.safetensors").is_file() and not (src / "pytorch_model.bin").exists()
    report = convert(str(src), tmp_path / "out", formats=("tf1",), progress=False)
    assert report["passed"] and report["weights"] == "model.safetensors"
    from safetensors.numpy import load_file

    assert_tf1_equals(tmp_path / "out" / "tf1", load_file(str(src / "model.safetensors")), hparams_of(src))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_url_source(tiny_pt_dir, source_state, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    zip_model(tiny_pt_dir, served / "model.zip")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model.zip"
        report = convert(url, tmp_path / "out", formats=("tf1",), cache_dir=tmp_path / "cache",
                               progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert report["passed"] and report["source"] == url
    assert_tf1_equals(tmp_path / "out" / "tf1", source_state, hparams_of(tiny_pt_dir))
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("model.zip")  # downloaded once, no .part left


def _save_state(folder: Path, state: dict) -> None:
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    torch.save(state, folder / "pytorch_model.bin")


def test_gpt2model_state_dict_source(tiny_pt_dir, source_state, tmp_path):
    """A bare GPT2Model state dict: no `transformer.` prefix, no lm_head."""
    from transformers import GPT2LMHeadModel

    src = copy_model(tiny_pt_dir, tmp_path / "bare")
    _save_state(src, GPT2LMHeadModel.from_pretrained(tiny_pt_dir).transformer.state_dict())
    assert not any(k.startswith("transformer.") for k in torch.load(src / "pytorch_model.bin", weights_only=True))
    report = convert(str(src), tmp_path / "out", formats=("tf1",), progress=False)
    assert report["passed"]
    assert_tf1_equals(tmp_path / "out" / "tf1", source_state, hparams_of(tiny_pt_dir))


def test_old_attention_buffers_are_ignored(tiny_pt_dir, source_state, tmp_path):
    src = copy_model(tiny_pt_dir, tmp_path / "old")
    n_ctx = hparams_of(tiny_pt_dir)["n_ctx"]
    state = {k: torch.from_numpy(v) for k, v in source_state.items()}
    causal = torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx)
    state["transformer.h.0.attn.bias"] = causal.bool()
    state["transformer.h.1.attn.bias"] = causal.to(torch.uint8)  # older transformers saved uint8
    for i in (0, 1):
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    _save_state(src, state)
    report = convert(str(src), tmp_path / "out", formats=("tf1",), progress=False)
    assert report["passed"]
    assert_tf1_equals(tmp_path / "out" / "tf1", source_state, hparams_of(tiny_pt_dir))


def test_fp16_source_is_upcast_and_logged(tiny_pt_dir, source_state, tmp_path, caplog):
    src = copy_model(tiny_pt_dir, tmp_path / "half")
    half = {k: torch.from_numpy(v).half() for k, v in source_state.items()}
    _save_state(src, half)
    with caplog.at_level(logging.INFO):
        report = convert(str(src), tmp_path / "out", formats=("tf1",), progress=False)
    assert report["passed"]
    assert any("upcast" in r.getMessage() and "float16" in r.getMessage() for r in caplog.records), caplog.text
    upcast = {k: v.float().numpy() for k, v in half.items()}
    assert_tf1_equals(tmp_path / "out" / "tf1", upcast, hparams_of(tiny_pt_dir))


# ----- bad input: one line on stderr, non-zero exit, no OUT_DIR -----------------------------------


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def case_missing_src(model, tmp):
    return tmp / "no_such_model", ["no_such_model"]


def case_no_vocab(model, tmp):
    (model / "vocab.txt").unlink()
    return model, ["vocab.txt", str(model)]


def case_truncated_bin(model, tmp):
    _truncate(model / "pytorch_model.bin")
    return model, ["pytorch_model.bin"]


def case_random_safetensors(model, tmp):
    (model / "pytorch_model.bin").unlink()
    (model / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return model, ["model.safetensors"]


def case_zip_escape(model, tmp):
    path = zip_model(model, tmp / "evil.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../evil", "pwned")
    return path, ["evil.zip", "../evil"]


def case_short_vocab(model, tmp):
    lines = (model / "vocab.txt").read_text(encoding="utf-8").split("\n")
    (model / "vocab.txt").write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")  # drop the last token
    return model, ["vocab.txt", str(len(lines) - 2)]


def case_wrong_n_embd(model, tmp):
    _edit_config(model, n_embd=32)  # the weights are 64 wide
    return model, ["wte.weight", "[1803, 64]", "[1803, 32]"]


def case_hostile_pickle(model, tmp):
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Evil(tmp / "pwned")}, f, protocol=2)
    return model, ["pytorch_model.bin", "system"]


def case_hostile_torch_zip(model, tmp):
    torch.save({"transformer.wte.weight": _Evil(tmp / "pwned")}, model / "pytorch_model.bin")
    return model, ["pytorch_model.bin", "system"]


def case_untied_lm_head(model, tmp):
    state = torch.load(model / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = state["transformer.wte.weight"].clone() + 0.01
    _save_state(model, state)
    return model, ["pytorch_model.bin", "lm_head.weight"]


def case_relu(model, tmp):
    _edit_config(model, activation_function="relu")
    return model, ["config.json", "relu"]


BAD_INPUTS = [case_missing_src, case_no_vocab, case_truncated_bin, case_random_safetensors, case_zip_escape,
              case_short_vocab, case_wrong_n_embd, case_hostile_pickle, case_hostile_torch_zip,
              case_untied_lm_head, case_relu]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[5:])
def test_bad_input_fails_closed(make, tiny_pt_dir, tmp_path, capsys):
    src, must_name = make(copy_model(tiny_pt_dir, tmp_path / "model"), tmp_path)
    out = tmp_path / "out"
    rc, _, err = run_main([src, out, "--formats", "tf1", "-q"], capsys)
    assert "Traceback" not in err
    assert_failed_cleanly(rc, err, out, *must_name)
    assert not (tmp_path / "pwned").exists()  # the hostile pickle ran nothing


def test_shape_mismatch_error_names_the_weights_file(tiny_pt_dir, tmp_path, capsys):
    model = copy_model(tiny_pt_dir, tmp_path / "model")
    _edit_config(model, n_embd=32)
    rc, _, err = run_main([model, tmp_path / "out", "--formats", "tf1", "-q"], capsys)
    assert_failed_cleanly(rc, err, tmp_path / "out", str(model / "pytorch_model.bin"))


def test_existing_out_dir_refused_then_overwritten(tiny_pt_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1", "-q"], capsys)
    assert rc == 0, err
    first = (out / "tf1").stat().st_ino

    rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1", "-q"], capsys)
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0] and "--overwrite" in lines[0]
    assert (out / "tf1").stat().st_ino == first
    assert leftovers(tmp_path) == []

    rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1", "--overwrite", "-q"], capsys)
    assert rc == 0, err
    assert {p.name for p in out.iterdir()} == {"tf1", "conversion_report.json"}
    assert (out / "tf1").stat().st_ino != first  # replaced
    assert leftovers(tmp_path) == []


def test_overwrite_never_removes_what_a_conversion_did_not_write(tiny_pt_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1", "-q", *extra], capsys)
        assert rc == 2
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith(f"error: {out}: "), err
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert (out / "keep.txt").read_text(encoding="utf-8") == "precious"
        assert leftovers(tmp_path) == []
    assert "keep.txt" in lines[0]


def test_empty_existing_out_dir_is_fine(tiny_pt_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    rc, _, err = run_main([tiny_pt_dir, tmp_path / "out", "--formats", "tf1", "-q"], capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "tf1" / "checkpoint").is_file()


def test_failed_verification_exits_3(tiny_pt_dir, tmp_path, capsys, monkeypatch):
    import cngpt_tf.export.verify

    compare = cngpt_tf.export.verify.compare  # every reloaded format's logits off by 0.5
    monkeypatch.setattr(cngpt_tf.export.verify, "compare",
                        lambda fmt, reference, logits, *args, **kw: compare(fmt, reference, logits + 0.5, *args, **kw))
    out = tmp_path / "out"
    rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1", "-q"], capsys)
    assert rc == 3
    assert_failed_cleanly(rc, err, out, "verification failed", "tf1")


def test_interrupt_leaves_nothing(tiny_pt_dir, tmp_path, capsys, monkeypatch):
    import cngpt_tf.export.saved_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cngpt_tf.export.saved_model, "export_saved_model", interrupted)
    out = tmp_path / "out"
    rc, _, err = run_main([tiny_pt_dir, out, "--formats", "tf1,saved_model", "-q"], capsys)
    assert rc == 130
    assert_failed_cleanly(rc, err, out, "interrupted")


def test_help_has_example(capsys):
    with pytest.raises(SystemExit) as info:
        pt2tf.main(["--help"])
    assert info.value.code == 0
    assert "example" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["src", "out", "--formats", "bogus"], ["src", "out", "--formats", "tf1,tf3"],
                                  ["only_one_path"]])
def test_bad_arguments_exit_2(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        pt2tf.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# ----- demo ---------------------------------------------------------------------------------------


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo_out"
    rc, stdout, err = run_main(["--demo", out, "--cache_dir", tmp_path / "cache", "-q"], capsys)
    assert rc == 0, err
    report = json.loads((out / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["passed"] is True and set(report["formats"]) == {"tf1", "tf2", "saved_model"}
    assert f"done: {out}" in stdout
    assert report["source"].endswith("gpt2_poem_demo_CN.zip")  # the packaged release, nothing built
    assert not (tmp_path / "cache").exists()


def test_corrupt_weights_inside_zip_named_as_zip_member(tiny_pt_dir, tmp_path, capsys):
    """The error names the user's zip and the member, not the deleted temp folder it was read from."""
    model = copy_model(tiny_pt_dir, tmp_path / "model")
    weights = model / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    archive = zip_model(model, tmp_path / "release.zip", sub="gpt2_CN")
    rc, _, err = run_main([archive, tmp_path / "out", "-q"], capsys)
    line = assert_failed_cleanly(rc, err, tmp_path / "out", f"{archive}:gpt2_CN/pytorch_model.bin")
    assert "cngpt_src_" not in line
