"""The SavedModel as TF Serving uses it: signatures, in-graph text, warmup, TF1 loader, bad requests,
and the same replies as the Python API (`Generator.generate` / `Generator.poem`) for the same settings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cngpt_tf.export.convert import convert
from cngpt_tf.generation_config import GenerationConfig
from converters import pt2tf

from .serving_stand_in import StandIn

NEW = 12  # max_new_tokens of the test exports: short, so the tests stay quick
PROMPTS = ["明月几时有，", "床前明月光，疑是地上霜。", "春"]
# What the tokenizer normalises (case, spaces, tabs, full-width forms, accents), loses ([UNK]: emoji,
# characters outside the vocab and outside the BMP) or reads as special tokens: the reply keeps it all.
ODD_PROMPTS = ["GPT-2 模型在 2019 年发布，", "Hello   World", "tab\there\t", "Ｆｕｌｌ－ｗｉｄｔｈ，", "Café naïve",
               "emoji 😀👍🏽", "猫咪在𠀀", "\U0001F600", "明月[SEP]", "[CLS]几时有[SEP]", "", "abc", "x ##y", "  "]
SAMPLED = GenerationConfig(max_new_tokens=NEW, do_sample=True, top_k=20, temperature=1.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_pt_dir):
    out = tmp_path_factory.mktemp("serving") / "out"
    convert(str(tiny_pt_dir), out, formats=("saved_model",), progress=False,
            generation=GenerationConfig(max_new_tokens=NEW))
    return out / "saved_model" / "1"


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def sampled(tiny_pt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "out"
    convert(str(tiny_pt_dir), out, formats=("saved_model",), progress=False, generation=SAMPLED,
            saved_model_version=3)
    return tf.saved_model.load(str(out / "saved_model" / "3"))


@pytest.fixture(scope="module")
def generator(converted):
    from cngpt_tf.generator import Generator

    return Generator.from_pretrained(converted / "tf2")


def texts(result) -> list[str]:
    return [b.decode("utf-8") for b in result["generated_text"].numpy().tolist()]


def test_signatures_listed_by_saved_model_cli(exported):
    shown = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                            str(exported), "--all"], capture_output=True, text=True, check=True).stdout
    for name in ("serving_default", "generate_ids", "logits", "poem"):
        assert f"signature_def['{name}']" in shown
    for tensor in ("text", "generated_text", "input_ids", "attention_mask", "sequences", "logits"):
        assert f"['{tensor}']" in shown


def test_generation_config_asset(exported):
    path = exported / "assets" / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["max_new_tokens"] == NEW and config["do_sample"] is False
    assert {"top_k", "top_p", "temperature", "repetition_penalty", "eos_token_id", "pad_token_id"} <= set(config)
    assert GenerationConfig.from_json_file(path) == GenerationConfig(max_new_tokens=NEW)
    assert (exported / "assets" / "vocab.txt").is_file()
    tokenizer = json.loads((exported / "assets" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer["do_lower_case"] is True


def test_serving_default_equals_pipeline(loaded, generator):
    from cngpt_tf import pipeline

    expected = [r[0]["generated_text"] for r in pipeline("text-generation", generator)(PROMPTS, max_new_tokens=NEW)]
    assert texts(loaded.signatures["serving_default"](text=tf.constant(PROMPTS))) == expected
    single = texts(loaded.signatures["serving_default"](text=tf.constant(PROMPTS[:1])))
    assert single == expected[:1]


def test_replies_keep_the_text_as_sent_like_the_generator(loaded, generator):
    """The request text byte for byte + the continuation decoded from the new tokens only."""
    expected = generator.generate(ODD_PROMPTS, max_new_tokens=NEW)
    replies = loaded.signatures["serving_default"](text=tf.constant(ODD_PROMPTS))["generated_text"].numpy()
    assert [r.decode("utf-8") for r in replies] == expected
    for prompt, reply in zip(ODD_PROMPTS, replies):
        assert reply.startswith(prompt.encode("utf-8"))
        assert len(reply) > len(prompt.encode("utf-8"))  # a continuation, also after a literal [SEP]
    for prompt in ("Hello   World", "明月[SEP]", ""):
        assert texts(loaded.signatures["serving_default"](text=tf.constant([prompt]))) == \
            generator.generate([prompt], max_new_tokens=NEW)


def test_generate_ids_equals_generator(loaded, generator):
    prompts = [[101, 300, 400, 500, 600], [101, 700], [101, 800, 900]]
    expected = generator.generate_ids(prompts, max_new_tokens=NEW)
    width = max(map(len, prompts))
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], np.int32)
    mask = (np.arange(width)[None] >= width - np.array([len(p) for p in prompts])[:, None]).astype(np.int32)
    out = loaded.signatures["generate_ids"](input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
    np.testing.assert_array_equal(out["sequences"].numpy(), expected)


def test_runs_in_bare_tensorflow(exported):
    script = textwrap.dedent(f"""
        import sys, tensorflow as tf
        m = tf.saved_model.load({str(exported)!r})
        out = m.signatures["serving_default"](text=tf.constant(["明月几时有，"]))
        text = out["generated_text"].numpy()[0].decode("utf-8")
        assert text.startswith("明月几时有，"), text
        assert "tensorflow_text" not in sys.modules and "transformers" not in sys.modules
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("OK"), done.stderr[-2000:]


def test_tf1_session_loader_runs_every_signature_by_tensor_name(exported):
    """What the C++ model server does: load with the `serve` tag, run signatures by tensor names."""
    from types import SimpleNamespace

    from cngpt_tf.vocab import read_vocab
    from cngpt_tf.export.warmup import warmup_inputs

    gen_config = json.loads((exported / "assets" / "generation_config.json").read_text(encoding="utf-8"))
    config = SimpleNamespace(bos_token_id=gen_config["bos_token_id"],
                             n_vocab=len(read_vocab(exported / "assets" / "vocab.txt")))
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported))
        assert {"serving_default", "generate_ids", "logits"} <= set(meta.signature_def)
        for name, signature in meta.signature_def.items():
            if name == "__saved_model_init_op":
                continue
            feed = {signature.inputs[k].name: v for k, v in warmup_inputs(config, name).items()}
            fetch = {k: t.name for k, t in signature.outputs.items()}
            result = sess.run(fetch, feed_dict=feed)
            assert all(np.asarray(v).size for v in result.values()), name


def test_warmup_records_replay(exported, loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported / "assets.extra" / "tf_serving_warmup_requests"
    seen = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert out
        seen.append(request.model_spec.signature_name)
    assert sorted(seen) == sorted(["serving_default", "generate_ids", "logits", "poem"])


def test_bad_requests_give_defined_results(loaded, exported):
    serve = loaded.signatures["serving_default"]
    empty, = texts(serve(text=tf.constant([""])))
    assert isinstance(empty, str)  # generated from [CLS] alone
    long_prompt = "明月几时有，" * 40  # 240 characters > the 64-token context: truncated from the left
    long_text, = texts(serve(text=tf.constant([long_prompt])))
    assert "明月" in long_text
    broken, = texts(serve(text=tf.constant([b"\xff\xfe\xe6\x98\x8e"])))  # not UTF-8: replaced (dropped for the model)
    assert broken.startswith("\ufffd\ufffd明")  # every reply is valid UTF-8
    too_long = np.full((1, 60), 300, np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceed n_positions"):
        loaded.signatures["generate_ids"](input_ids=too_long, attention_mask=np.ones_like(too_long))
    assert texts(serve(text=tf.constant(["春"])))  # the model still answers afterwards


def test_rest_and_grpc_through_the_client(exported, capsys):
    from cngpt_tf import serving_client

    server = StandIn(exported)
    try:
        url, target = server.start_rest(), server.start_grpc()
        assert serving_client.main(PROMPTS[:2] + ["--url", url, "-q"]) == 0
        rest_lines = capsys.readouterr().out.strip().splitlines()
        assert serving_client.main(PROMPTS[:2] + ["--grpc", target, "-q"]) == 0
        grpc_lines = capsys.readouterr().out.strip().splitlines()
        assert rest_lines == grpc_lines and rest_lines[0].startswith(PROMPTS[0])
        # the `inputs` (columnar) REST format gives the same text
        reply = _post(f"{url}/v1/models/cngpt:predict", {"inputs": {"text": PROMPTS[:2]}})
        assert reply["outputs"] == rest_lines
        # a bad request is an error reply; the server keeps serving
        assert serving_client.main(["春", "--url", url, "--signature", "nope", "-q"]) != 0
        assert "error:" in capsys.readouterr().err
        assert serving_client.main(["春", "--url", url, "-q"]) == 0
    finally:
        server.stop()


def test_sampled_export_takes_a_seed(sampled):
    seeded = sampled.signatures["serving_seeded"]
    a = texts(seeded(text=tf.constant(PROMPTS), seed=tf.constant([7, 7, 7], tf.int64)))
    b = texts(seeded(text=tf.constant(PROMPTS), seed=tf.constant([7, 7, 7], tf.int64)))
    c = texts(seeded(text=tf.constant(PROMPTS), seed=tf.constant([8, 8, 8], tf.int64)))
    assert a == b and a != c
    # seeds follow the Python API's rule (an integer in [0, 2**31 - 1]) in every row; none wraps
    rule = r"seed must be an integer in \[0, 2147483647\]"
    for bad in ([2**31 + 7, 0, 0], [-1, 7, 7], [7, 7, 2**40]):  # 2**31 + 7 was taken as 8 before
        with pytest.raises(tf.errors.InvalidArgumentError, match=rule):
            seeded(text=tf.constant(PROMPTS), seed=tf.constant(bad, tf.int64))
    assert texts(seeded(text=tf.constant(PROMPTS), seed=tf.constant([7, 7, 7], tf.int64))) == a
    top = tf.constant([2**31 - 1] * 3, tf.int64)
    assert texts(seeded(text=tf.constant(PROMPTS), seed=top)) == texts(seeded(text=tf.constant(PROMPTS), seed=top))


def test_sampled_replies_equal_the_generator_with_the_same_seed(sampled, generator):
    for prompt in ("明月几时有，", "Hello [SEP]"):
        expected = generator.generate([prompt], SAMPLED, seed=11)
        assert texts(sampled.signatures["serving_seeded"](text=tf.constant([prompt]),
                                                          seed=tf.constant([11], tf.int64))) == expected


def test_an_empty_batch_gives_an_empty_result_everywhere(loaded, sampled):
    none = tf.constant([], tf.string)
    no_ids = tf.zeros([0, 3], tf.int32)
    outputs = [
        loaded.signatures["serving_default"](text=none)["generated_text"],
        sampled.signatures["serving_seeded"](text=none, seed=tf.constant([], tf.int64))["generated_text"],
        loaded.signatures["poem"](text=none, form=none, acrostic=none, rhyme=none,
                                  seed=tf.constant([], tf.int64))["poem"],
        loaded.signatures["generate_ids"](input_ids=no_ids, attention_mask=no_ids)["sequences"],
        loaded.signatures["logits"](input_ids=no_ids, attention_mask=no_ids)["logits"],
    ]
    assert [o.shape[0] for o in outputs] == [0] * 5
    assert outputs[3].shape == (0, 3) and outputs[4].shape == (0, 3, 1803)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one shape"):  # the shapes must still agree
        loaded.signatures["generate_ids"](input_ids=no_ids, attention_mask=tf.zeros([0, 2], tf.int32))
    assert texts(loaded.signatures["serving_default"](text=tf.constant(["春"])))  # and it answers afterwards


def poems(signature, rows, seed=0):
    """rows: (text, form, acrostic, rhyme) -> the poem signature's poems."""
    columns = [tf.constant(list(c), tf.string) for c in zip(*rows)]
    out = signature(text=columns[0], form=columns[1], acrostic=columns[2], rhyme=columns[3],
                    seed=tf.constant([seed] * len(rows), tf.int64))
    return [p.decode("utf-8") for p in out["poem"].numpy()]


POEMS = [("春", "五言绝句", "", ""), ("", "五言绝句", "明月几时", "auto"), ("明月", "3,2", "", "一麻"),
         ("秋夜", " 5 , 4 ", "", "光"), ("Hello", "七言绝句", "", "十唐")]


@pytest.mark.parametrize("export", ["greedy", "sampled"])
def test_poems_equal_the_generator(loaded, sampled, generator, export):
    """rhyme "" (none), "auto", a group name, a character: the same poems as Generator.poem."""
    signature = (loaded if export == "greedy" else sampled).signatures["poem"]
    settings = GenerationConfig() if export == "greedy" else SAMPLED.update(max_new_tokens=None)
    for text, form, acrostic, rhyme in POEMS:
        expected = generator.poem(text, settings, form=form, acrostic=acrostic or None, rhyme=rhyme or None,
                                  seed=5)
        assert poems(signature, [(text, form, acrostic, rhyme)], seed=5) == expected, (text, form, rhyme)


BAD_POEMS = [  # (form, acrostic, rhyme), what the Python API and the signature both name
    (("八言", "", ""), "form: use one of"),
    (("0,4", "", ""), "form: use one of"),
    (("5,33", "", ""), "form: use one of"),
    (("五言绝句", "明月", ""), "acrostic: "),
    (("五言绝句", "明月几猫", ""), "acrostic: .*not a Chinese character of the vocab"),
    (("五言绝句", "", "一花"), "rhyme: expected"),  # no such group
    (("五言绝句", "", "猫"), "rhyme: character.*not a Chinese character of the vocab"),
    (("五言绝句", "", "兙"), "rhyme: character.*in no rhyme group"),  # in the vocab, in no group
]


@pytest.mark.parametrize("request_, match", BAD_POEMS,
                         ids=[f"{match.split(':')[0]}-{i}" for i, (_, match) in enumerate(BAD_POEMS)])
def test_poem_refuses_what_the_generator_refuses(loaded, generator, request_, match):
    form, acrostic, rhyme = request_
    with pytest.raises(ValueError, match=match):
        generator.poem("春", form=form, acrostic=acrostic or None, rhyme=rhyme or None, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        poems(loaded.signatures["poem"], [("春", form, acrostic, rhyme)])
    assert len(poems(loaded.signatures["poem"], [("春", "五言绝句", "", "")])[0].split("\n")) == 4


def test_poem_signature_keeps_the_form_per_row(loaded):
    out = loaded.signatures["poem"](
        text=tf.constant(["", "明月"]), form=tf.constant(["五言绝句", "3,2"]), acrostic=tf.constant(["明月几时", ""]),
        rhyme=tf.constant(["auto", ""]), seed=tf.constant([1, 1], tf.int64))
    first, second = (p.decode("utf-8").split("\n") for p in out["poem"].numpy())
    assert [len(line) for line in first] == [6] * 4 and [line[0] for line in first] == list("明月几时")
    assert [line[-1] for line in first] == ["，", "。", "，", "。"]
    assert [len(line) for line in second] == [4, 4] and [line[-1] for line in second] == ["，", "。"]
    for form, acrostic in (("五言绝句", "明月"), ("八言", ""), ("五言绝句", "abcd")):
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.signatures["poem"](text=tf.constant([""]), form=tf.constant([form]), acrostic=tf.constant([acrostic]),
                                      rhyme=tf.constant([""]), seed=tf.constant([0], tf.int64))


def test_no_generate_exports_logits_only(tiny_pt_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert pt2tf.main([str(tiny_pt_dir), str(out), "--formats", "saved_model", "--no_generate", "-q"]) == 0
    loaded = tf.saved_model.load(str(out / "saved_model" / "1"))
    assert set(loaded.signatures) == {"logits"}
    assert not (out / "saved_model" / "1" / "assets.extra").exists()


def test_bad_generation_flags_are_argparse_errors(tiny_pt_dir, tmp_path):
    for flags in (["--top_p", "0"], ["--max_new_tokens", "0"], ["--temperature", "-1"], ["--saved_model_version", "0"]):
        with pytest.raises(SystemExit) as e:
            pt2tf.main([str(tiny_pt_dir), str(tmp_path / "out"), *flags])
        assert e.value.code == 2


def _post(url, payload):
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read().decode("utf-8"))


def test_models_config_example_parses():
    """serving/models.config is a valid ModelServerConfig text proto naming our model and path."""
    from pathlib import Path

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (Path(__file__).resolve().parents[3] / "serving" / "models.config").read_text(encoding="utf-8")
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("cngpt", "/models/cngpt", "tensorflow")
