"""`GenerationConfig`: every rule of `validate`, `update` as HF's per-call override, what compiles
(`strategy`), HF's generation_config.json, the default length, and one table of bad settings that
the Python API, the pipeline and both CLIs refuse with the same words.

Nothing here compiles: a bad setting must fail before any tracing, and the CLIs before TensorFlow
is even imported.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cngpt_tf.errors import ConfigError
from cngpt_tf.generation_config import (
    DEFAULT_MAX_NEW_TOKENS,
    FORMS,
    PENALTY_RANGE,
    SEED_MAX,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    GenerationConfig,
    Strategy,
    check_int,
    default_max_new_tokens,
    parse_form,
)

ROOT = Path(__file__).resolve().parents[2]
N_VOCAB, N_CTX = 1803, 64  # the tiny test model's sizes


# ----- validate: one rule per field ------------------------------------------------------------------


BAD = [
    ("do_sample", 1, "do_sample must be True or False"),
    ("do_sample", "yes", "do_sample must be True or False"),
    ("do_sample", None, "do_sample must be True or False"),
    ("max_new_tokens", 0, r"max_new_tokens must be an integer >= 1, got 0"),
    ("max_new_tokens", -3, "max_new_tokens must be an integer >= 1"),
    ("max_new_tokens", 2.0, "max_new_tokens must be an integer"),
    ("max_new_tokens", True, "max_new_tokens must be an integer"),
    ("max_new_tokens", np.bool_(True), "max_new_tokens must be an integer"),
    ("max_new_tokens", "8", "max_new_tokens must be an integer"),
    ("max_new_tokens", N_CTX, r"max_new_tokens=64 leaves no room for a prompt in n_positions=64 \(at most 63\)"),
    ("max_length", 1, r"max_length must be an integer >= 2, got 1"),  # a prompt and one new token at least
    ("max_length", N_CTX + 1, "max_length=65 exceeds n_positions=64"),
    ("max_length", 20.5, "max_length must be an integer"),
    ("min_new_tokens", -1, r"min_new_tokens must be an integer >= 0, got -1"),
    ("min_new_tokens", N_CTX, r"min_new_tokens=64 leaves no room for a prompt in n_positions=64"),
    ("min_new_tokens", None, "min_new_tokens must be an integer"),
    ("top_k", -1, r"top_k must be an integer >= 0, got -1"),
    ("top_k", 1.5, "top_k must be an integer"),
    ("top_k", 2.0, "top_k must be an integer"),
    ("top_k", True, "top_k must be an integer"),
    ("top_k", "8", "top_k must be an integer"),
    ("top_k", None, "top_k must be an integer"),
    ("top_k", N_VOCAB + 1, "top_k=1804 exceeds the vocab of 1803 tokens"),
    ("top_p", 0.0, r"top_p must be in \[1e-06, 1\], got 0.0"),
    ("top_p", 1e-7, r"top_p must be in \[1e-06, 1\]"),
    ("top_p", 1e-46, r"top_p must be in \[1e-06, 1\]"),  # rounds to 0 in float32: no token kept
    ("top_p", -0.1, "top_p must be in"),
    ("top_p", 1.5, "top_p must be in"),
    ("top_p", math.nan, r"top_p must be in \[1e-06, 1\], got nan"),
    ("top_p", "0.9", "top_p must be a number"),
    ("temperature", 0.0, r"temperature must be in \[0.01, 100\], got 0.0"),
    ("temperature", -1.0, "temperature must be in"),
    ("temperature", 9e-3, "temperature must be in"),
    ("temperature", 1e-38, "temperature must be in"),  # logits overflow to inf in float32
    ("temperature", 101.0, "temperature must be in"),
    ("temperature", math.inf, "temperature must be in"),
    ("temperature", math.nan, "temperature must be in"),
    ("temperature", True, "temperature must be a number"),
    ("temperature", "1", "temperature must be a number"),
    ("temperature", 1j, "temperature must be a number"),
    ("repetition_penalty", 0.0, r"repetition_penalty must be in \[0.01, 100\]"),
    ("repetition_penalty", -1.3, "repetition_penalty must be in"),
    ("repetition_penalty", 1e-3, "repetition_penalty must be in"),
    ("repetition_penalty", 1e3, "repetition_penalty must be in"),
    ("repetition_penalty", math.nan, "repetition_penalty must be in"),
    ("repetition_penalty", np.float32(np.inf), "repetition_penalty must be in"),
    ("num_return_sequences", 0, r"num_return_sequences must be an integer >= 1, got 0"),
    ("num_return_sequences", 2.0, "num_return_sequences must be an integer"),
    ("seed", -1, r"seed must be an integer in \[0, 2147483647\], got -1"),
    ("seed", SEED_MAX + 1, r"seed must be an integer in \[0, 2147483647\]"),  # never wrapped
    ("seed", 2**64 + 1, "seed must be an integer in"),
    ("seed", 1.0, "seed must be an integer in"),
    ("seed", "1", "seed must be an integer in"),
    ("seed", True, "seed must be an integer in"),
    ("form", "七言", "form: use one of 五言绝句, 七言绝句, 五言律诗, 七言律诗 or 'chars,lines'"),
    ("form", (0, 4), "form: use one of"),
    ("form", (5, 33), "form: use one of"),
    ("form", (5,), "form: use one of"),
    ("form", (5.5, 4), "form: use one of"),
    ("form", "5,4,3", "form: use one of"),
    ("form", "５,４", "form: use one of"),  # full-width digits are digits to str.isdigit, not to us
    ("form", None, "form: use one of"),
    ("acrostic", ["明", "月"], "acrostic must be a string or None"),
    ("rhyme", 3, "rhyme must be a string or None"),
]


@pytest.mark.parametrize("field, value, match", BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_validate_names_the_bad_field(field, value, match):
    settings = {"do_sample": True, field: value}  # sampling: every field matters
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**settings).validate(N_VOCAB, N_CTX)


def test_messages_stay_short_for_huge_values():
    with pytest.raises(ValueError) as info:
        GenerationConfig(seed=10**5000).validate()
    assert len(str(info.value)) < 120


def test_cross_field_rules():
    with pytest.raises(ValueError, match="give max_new_tokens or max_length, not both"):
        GenerationConfig(max_new_tokens=4, max_length=20).validate()
    with pytest.raises(ValueError, match="min_new_tokens=5 exceeds max_new_tokens=4"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5).validate()
    with pytest.raises(ValueError, match=r"num_return_sequences > 1 needs do_sample=True"):
        GenerationConfig(num_return_sequences=2).validate()
    # greedy too: a top_k the vocab cannot have is an error, not a silent no-op
    with pytest.raises(ValueError, match="top_k=1804 exceeds"):
        GenerationConfig(top_k=N_VOCAB + 1).validate(N_VOCAB, N_CTX)


def test_model_bounds_apply_only_when_the_model_is_given():
    config = GenerationConfig(max_new_tokens=5000, top_k=10**6, min_new_tokens=100)
    assert config.validate() == config  # no model: no upper bound
    with pytest.raises(ValueError, match="max_new_tokens"):
        config.validate(n_ctx=N_CTX)
    with pytest.raises(ValueError, match="top_k"):
        config.validate(n_vocab=N_VOCAB)


def test_validate_accepts_the_edges():
    low, high = TEMPERATURE_RANGE
    assert (low, high) == PENALTY_RANGE == (1e-2, 1e2) and TOP_P_RANGE == (1e-6, 1.0)
    for temperature, penalty in ((low, high), (high, low)):
        config = GenerationConfig(do_sample=True, temperature=temperature, repetition_penalty=penalty)
        assert config.validate() == config
    edges = [
        GenerationConfig(max_new_tokens=N_CTX - 1, min_new_tokens=N_CTX - 1),
        GenerationConfig(max_length=N_CTX, min_new_tokens=0),
        GenerationConfig(max_length=2),
        GenerationConfig(do_sample=True, top_k=N_VOCAB, top_p=1e-6, seed=SEED_MAX, num_return_sequences=64),
        GenerationConfig(do_sample=True, top_p=1.0, seed=0),
        GenerationConfig(form=(32, 32), acrostic="", rhyme="auto"),
        GenerationConfig(form=(1, 1)),
        *(GenerationConfig(form=name) for name in FORMS),
    ]
    for config in edges:
        assert config.validate(N_VOCAB, N_CTX) == config


def test_validate_returns_plain_python_values():
    """A Fraction or numpy scalars would reach TensorFlow as they are and fail there, unnamed."""
    config = GenerationConfig(
        do_sample=np.bool_(True), top_k=np.int64(3), top_p=np.float32(0.5), temperature=Fraction(1, 3),
        repetition_penalty=np.float64(1.5), max_new_tokens=np.int32(8), min_new_tokens=np.uint8(2),
        num_return_sequences=np.int16(2), seed=np.int64(SEED_MAX), form=[np.int64(5), 4]).validate(N_VOCAB, N_CTX)
    values = [config.do_sample, config.top_k, config.top_p, config.temperature, config.repetition_penalty,
              config.max_new_tokens, config.min_new_tokens, config.num_return_sequences, config.seed]
    assert [type(v) for v in values] == [bool, int, float, float, float, int, int, int, int]
    assert config.temperature == pytest.approx(1 / 3) and config.seed == SEED_MAX
    assert config.form == (5, 4) and type(config.form[0]) is int  # a list form becomes a tuple
    assert GenerationConfig(form="5,4").validate().form == "5,4"  # a name or "c,l" stays as given


def test_check_int_rule():
    assert check_int("n", np.int64(3), 0, 5) == 3 and type(check_int("n", np.int64(3), 0)) is int
    for value in (True, 3.0, "3", None, Fraction(3, 1)):
        with pytest.raises(ValueError, match=r"^n must be an integer in \[0, 5\], got "):
            check_int("n", value, 0, 5)
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got 0$"):
        check_int("n", 0, 1)


@pytest.mark.parametrize("form, shape", [("五言绝句", (5, 4)), ("七言律诗", (7, 8)), ("5,4", (5, 4)),
                                         (" 3 , 6", (3, 6)), ((4, 6), (4, 6)), ([2, 3], (2, 3)),
                                         ((np.int32(32), 1), (32, 1))])
def test_parse_form(form, shape):
    assert parse_form(form) == shape and all(type(n) is int for n in parse_form(form))


# ----- update: HF's per-call override ----------------------------------------------------------------


def test_update_returns_a_changed_copy():
    base = GenerationConfig(top_k=8)
    changed = base.update(do_sample=True, temperature=0.7)
    assert (changed.do_sample, changed.temperature, changed.top_k) == (True, 0.7, 8)
    assert base == GenerationConfig(top_k=8)  # frozen: the base is untouched
    assert base.update() == base


def test_update_unknown_name_is_a_type_error():
    with pytest.raises(TypeError, match="unknown generation setting.*max_tokens, top_n"):
        GenerationConfig().update(top_n=3, max_tokens=5)


def test_update_one_length_replaces_the_other():
    assert GenerationConfig(max_new_tokens=5).update(max_length=30) == GenerationConfig(max_length=30)
    assert GenerationConfig(max_length=30).update(max_new_tokens=5) == GenerationConfig(max_new_tokens=5)
    # both in one call is the caller's own contradiction: kept, and validate refuses it
    both = GenerationConfig().update(max_new_tokens=5, max_length=30)
    with pytest.raises(ValueError, match="not both"):
        both.validate()
    # None clears a length without touching the other
    assert GenerationConfig(max_length=30).update(max_new_tokens=None) == GenerationConfig(max_length=30)


# ----- strategy: what compiles -----------------------------------------------------------------------


def test_strategy_holds_only_what_changes_the_compiled_decoder():
    greedy = GenerationConfig(top_k=8, top_p=0.5, temperature=0.3)
    assert greedy.strategy == Strategy() == GenerationConfig().strategy  # greedy ignores the filters
    assert GenerationConfig(repetition_penalty=1.2).strategy == Strategy(penalty=True)
    sampled = GenerationConfig(do_sample=True, top_k=8, top_p=0.5)
    assert sampled.strategy == Strategy(do_sample=True, top_k=8, top_p=True, penalty=False)
    # runtime values: the same compiled decoder
    assert sampled.update(temperature=0.3, top_p=0.9, seed=4, max_new_tokens=7).strategy == sampled.strategy
    assert GenerationConfig(do_sample=True, top_p=1.0).strategy.top_p is False  # 1.0: no filter to compile
    assert len({GenerationConfig(do_sample=True, top_k=k).strategy for k in (0, 1, 8)}) == 3


# ----- generation_config.json ------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    config = GenerationConfig(max_new_tokens=24, min_new_tokens=2, do_sample=True, top_k=8, top_p=0.9,
                              temperature=0.7, repetition_penalty=1.3, num_return_sequences=3, seed=5,
                              form=(5, 8), acrostic="明月几时有人知否", rhyme="auto")
    path = tmp_path / "generation_config.json"
    config.to_json_file(path, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["eos_token_id"] == 102 and data["form"] == "5,8" and data["acrostic"] == "明月几时有人知否"
    back = GenerationConfig.from_json_file(path, N_VOCAB, N_CTX)
    assert back == config.update(form="5,8")  # the form travels as "chars,lines"
    assert parse_form(back.form) == (5, 8)
    assert GenerationConfig.from_json_file(path) == back


def test_json_keeps_only_our_fields(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"_from_model_config": True, "bos_token_id": 101, "eos_token_id": 102,
                                "transformers_version": "4.57.0", "top_k": 4, "do_sample": True}), encoding="utf-8")
    assert GenerationConfig.from_json_file(path) == GenerationConfig(top_k=4, do_sample=True)
    assert GenerationConfig.from_dict({"no_repeat_ngram_size": 3}) == GenerationConfig()


@pytest.mark.parametrize("text, match", [
    ('{"top_p": 0}', r"generation_config.json: top_p must be in"),
    ('{"top_k": 5000}', r"generation_config.json: top_k=5000 exceeds the vocab of 1803"),
    ('{"max_new_tokens": 64}', r"generation_config.json: max_new_tokens=64 leaves no room"),
    ('{"top_k": ', r"generation_config.json: not a readable JSON file"),
    ("[1, 2]", r"generation_config.json: expected a JSON object"),
])
def test_bad_json_is_a_config_error_naming_the_file(tmp_path, text, match):
    path = tmp_path / "generation_config.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        GenerationConfig.from_json_file(path, N_VOCAB, N_CTX)


# ----- the default length ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_ctx, default", [(1024, 50), (128, 50), (100, 50), (99, 49), (64, 32), (40, 20), (3, 1),
                                            (2, 1)])
def test_default_max_new_tokens(n_ctx, default):
    assert DEFAULT_MAX_NEW_TOKENS == 50
    assert default_max_new_tokens(n_ctx) == default
    assert GenerationConfig(max_new_tokens=default).validate(n_ctx=n_ctx).max_new_tokens == default  # it fits


def test_new_tokens():
    assert GenerationConfig().new_tokens(10) == DEFAULT_MAX_NEW_TOKENS
    assert GenerationConfig().new_tokens(10, n_ctx=40) == 20  # the small-context rule
    assert GenerationConfig(max_new_tokens=7).new_tokens(10, n_ctx=40) == 7
    assert GenerationConfig(max_length=30).new_tokens(10, n_ctx=40) == 20  # max_length counts the prompt
    with pytest.raises(ValueError, match="max_length=10 must exceed the prompt length 10"):
        GenerationConfig(max_length=10).new_tokens(10)


def test_for_export_fixes_a_concrete_length():
    assert GenerationConfig().for_export(N_VOCAB, 40).max_new_tokens == 20  # the small-context rule
    assert GenerationConfig().for_export(N_VOCAB, 1024).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    sampled = GenerationConfig(do_sample=True, top_k=np.int64(8), max_new_tokens=12).for_export(N_VOCAB, N_CTX)
    assert (sampled.max_new_tokens, sampled.top_k, type(sampled.top_k)) == (12, 8, int)  # validated
    with pytest.raises(ValueError, match="max_length: an export fixes max_new_tokens"):
        GenerationConfig(max_length=30).for_export(N_VOCAB, N_CTX)
    with pytest.raises(ValueError, match="max_new_tokens=64 leaves no room"):
        GenerationConfig(max_new_tokens=64).for_export(N_VOCAB, N_CTX)


# ----- one table, every face: the same words ----------------------------------------------------------

# (field, value as Python has it, the flag's text): the flag's text parses (int / float) to the value
SHARED = [
    ("max_new_tokens", 0, "0"),
    ("top_p", 2.0, "2"),
    ("temperature", math.nan, "nan"),
    ("temperature", math.inf, "inf"),
    ("repetition_penalty", 0.0, "0"),
    ("top_k", -1, "-1"),
]
GENERATE_ONLY = [("seed", -1, "-1"), ("num_return_sequences", 0, "0"), ("min_new_tokens", -1, "-1")]


def message(field, value) -> str:
    with pytest.raises(ValueError) as info:
        GenerationConfig(**{field: value}).validate()
    return str(info.value)


@pytest.fixture(scope="module")
def tiny_generator():
    """A tiny random model with the real tokenizer rules; built, never compiled."""
    from cngpt_tf.config import GPT2Config
    from cngpt_tf.demo import demo_weights
    from cngpt_tf.generator import Generator

    config = GPT2Config(n_vocab=N_VOCAB, n_ctx=N_CTX, n_embd=16, n_head=2, n_layer=1)
    return Generator(demo_weights(config), config, native_kernel=False)


@pytest.mark.parametrize("field, value, flag", SHARED + GENERATE_ONLY)
def test_python_api_refuses_with_validates_words(field, value, flag, tiny_generator):
    expected = message(field, value)
    for call in (lambda: tiny_generator.generate_ids([[101, 5]], **{field: value}),
                 lambda: tiny_generator.generate_ids([[101, 5]], generation_config=GenerationConfig(**{field: value})),
                 lambda: tiny_generator.settings(**{field: value})):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == expected
    assert tiny_generator._compiled == {}
    with pytest.raises(TypeError, match="pass generation_config= by name"):  # HF's second argument is ours third
        tiny_generator.generate_ids([[101, 5]], GenerationConfig())


@pytest.mark.parametrize("field, value, flag", SHARED)
def test_pipeline_refuses_with_validates_words(field, value, flag, tiny_generator):
    from cngpt_tf.text_generation import TextGenerationPipeline

    tiny_generator.tokenizer = object()  # the pipeline only asks that there is one
    try:
        with pytest.raises(ValueError) as info:
            TextGenerationPipeline(tiny_generator, **{field: value})
    finally:
        tiny_generator.tokenizer = None
    assert str(info.value) == message(field, value)


def cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err, err
    return err.splitlines()[-1]


@pytest.mark.parametrize("field, value, flag", SHARED + GENERATE_ONLY)
def test_generate_cli_refuses_with_validates_words(field, value, flag, tmp_path, capsys):
    from cngpt_tf import generate

    line = cli_error(generate.main, [str(tmp_path / "no_model"), "春", f"--{field}", flag], capsys)
    assert line == f"python -m cngpt_tf.generate: error: {message(field, value)}"


@pytest.mark.parametrize("field, value, flag", SHARED)
def test_pt2tf_cli_refuses_with_validates_words(field, value, flag, tmp_path, capsys):
    from converters import pt2tf

    line = cli_error(pt2tf.main, [str(tmp_path / "no_model"), str(tmp_path / "out"), f"--{field}", flag], capsys)
    assert line == f"python -m converters.pt2tf: error: {message(field, value)}"
    assert not (tmp_path / "out").exists()


def test_both_clis_refuse_before_tensorflow_is_imported():
    code = (
        "import sys\n"
        "from cngpt_tf import generate\n"
        "from converters import pt2tf\n"
        "for main, argv in ((generate.main, ['m', 'x', '--top_p', '2']), (pt2tf.main, ['m', 'o', '--top_p', '2'])):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 2, e.code\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert done.stderr.count("top_p must be in [1e-06, 1], got 2.0") == 2, done.stderr
