"""The parity matrix of the one generation contract (issue 13): ONE table of cases, run through the three
faces of the model, asserting the same text for good cases and the same class of error, naming the
same field, for bad ones.

The faces:
- Python: `Generator.from_pretrained(OUT)` (`generate`, `poem`, `generate_ids`): a ValueError refuses;
- CLI: `python -m cngpt_tf.generate OUT PROMPT... --flags`, in-process (`main(argv)`): one text per
  line, a poem and a blank line; exit 2 with one `error:` line on stderr refuses;
- SavedModel: `OUT/saved_model/1` as the model server loads it, with the TF1 session loader (`serve`
  tag) and the tensors named by `signature_def[...].inputs/outputs` (serving_default, serving_seeded,
  poem, generate_ids); InvalidArgumentError refuses. For settings the export refuses (kind
  "settings"), the third face is `convert()` itself: GenerationFlagError before anything is written.

A SavedModel fixes its settings at export, so there is one export (and OUT) per settings row of
`EXPORTS`; the Python and CLI faces get the same settings and max_new_tokens explicitly. Every row runs
through Python and the SavedModel; a representative subset (`cli=True`) also through the CLI, which
reloads and recompiles the model per call, and every kind of row has one (checked below). The CLI has
no ids input: `generate_ids` rows run through the other two faces.

XLA compiles are the cost (about 2 s per shape and face): rows reuse few (batch, prompt bucket)
shapes, one Generator per OUT, one TF1 session per export.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from cngpt_tf import generate as generate_cli
from cngpt_tf.export.convert import GenerationFlagError, convert
from cngpt_tf.generation_config import GenerationConfig, parse_form
from cngpt_tf.generator import Generator
from cngpt_tf.poetry import load_rhyme_table

NEW = 8  # max_new_tokens of every row: one new-token bucket
EXPORTS = {  # the settings rows: one SavedModel each
    "greedy": GenerationConfig(max_new_tokens=NEW),
    "sampled": GenerationConfig(max_new_tokens=NEW, do_sample=True, top_k=20, top_p=0.9, temperature=1.5,
                                repetition_penalty=1.3),
}
# Mixed scripts: what the tokenizer normalises, loses ([UNK]) or reads as special tokens. Each is at
# most 8 tokens with [CLS] (the tiny vocab spells Latin letter by letter): one prompt bucket.
PROMPTS = {
    "chinese": "明月几时有，",
    "latin-spaces-tab": "ab  c\td",
    "full-width": "Ｆｕｌｌ，ＡＢ",
    "accents": "Café né",
    "emoji": "hi 😀👍🏽",
    "outside-vocab": "明月照猫",  # 照 and 猫 are not in the tiny vocab
    "outside-bmp": "春\U00020000",  # U+20000, CJK extension B
    "literal-sep": "明月[SEP]几时",
    "empty": "",
}
LONG = "床前明月光，疑是地上霜。" * 8  # 96 tokens + [CLS]: more than n_positions (64) - NEW
# generate_ids rows of 1..8 ids: the mixed batch's shape [9, 8]
IDS = tuple((101, *range(300 + 50 * n, 300 + 50 * n + n % 8)) for n in range(len(PROMPTS)))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "text" (serving_default / serving_seeded), "poem", "ids" (generate_ids), "settings"
    export: str = "greedy"  # the settings row of EXPORTS (and its SavedModel)
    prompts: tuple = ()  # text: the batch; poem: (title,); ids: id rows
    seed: int | None = None
    poem: tuple[str, str, str] = ("", "", "")  # form, acrostic, rhyme; "" = none, as the signature takes them
    settings: tuple = ()  # kind "settings": (name, value) pairs over the export's settings
    error: str | None = None  # the field every face's refusal names; None: the same result everywhere
    cli: bool = False  # also through the CLI


def text(name, prompts, **kw):
    return Case(name, "text", prompts=tuple(prompts), **kw)


def poem(name, title, form, acrostic="", rhyme="", **kw):
    return Case(name, "poem", prompts=(title,), poem=(form, acrostic, rhyme), **kw)


CASES = [
    # ----- text, greedy: each script on its own, a batch mixing them, an empty batch, a long prompt
    *(text(f"greedy-{name}", [prompt]) for name, prompt in PROMPTS.items()),
    text("greedy-mixed-batch", PROMPTS.values(), cli=True),
    text("greedy-empty-batch", []),  # the CLI needs one prompt (argparse): see test_the_cli_needs_a_prompt
    text("greedy-long-prompt", [LONG]),  # cut from the left for the model; the reply keeps it all
    # ----- text, sampled: 2 seeds over the mixed batch (one seed per request, as the server takes it)
    text("sampled-seed-0", PROMPTS.values(), export="sampled", seed=0, cli=True),
    text("sampled-seed-1", PROMPTS.values(), export="sampled", seed=1),
    # ----- poems: forms, an acrostic, rhyme "auto", a group name, a character. On the sampled export
    # (the CLI's poems sample; greedy poems: tests/cngpt_tf/export/test_saved_model.py), where they
    # share one compiled shape per form bucket.
    poem("sampled-poem-五言绝句", "春", "五言绝句", seed=3, export="sampled"),
    poem("sampled-poem-acrostic-group", "", "5,4", "床前明月", "一麻", seed=3, export="sampled"),
    poem("sampled-poem-acrostic-auto", "明月", "五言绝句", "明月几时", "auto", seed=4, export="sampled", cli=True),
    poem("sampled-poem-5,4-group", "秋夜", "5,4", rhyme="十唐", seed=5, export="sampled"),
    poem("sampled-poem-rhyme-char", "Hello", "五言绝句", rhyme="光", seed=6, export="sampled"),
    # 七言绝句 (33 tokens) after a title longer than the 31 positions left: the title loses its start
    poem("sampled-poem-七言绝句-auto-long-title", LONG, "七言绝句", rhyme="auto", seed=3, export="sampled"),
    # ----- bad requests
    poem("bad-form", "春", "八言", seed=0, error="form", cli=True),
    poem("bad-form-range", "春", "5,33", seed=0, error="form"),
    poem("bad-form-empty", "春", "", seed=0, error="form"),
    poem("bad-form-too-long", "", "七言律诗", seed=0, error="form"),  # [CLS] + 65 tokens > n_positions 64
    poem("bad-acrostic-length", "春", "五言绝句", "明月", seed=0, error="acrostic", cli=True),
    poem("bad-acrostic-char", "春", "五言绝句", "明月几猫", seed=0, error="acrostic"),  # 猫: not in the vocab
    poem("bad-rhyme-group", "春", "五言绝句", rhyme="一花", seed=0, error="rhyme", cli=True),  # no such group
    poem("bad-rhyme-char", "春", "五言绝句", rhyme="猫", seed=0, error="rhyme"),
    poem("bad-poem-seed", "春", "五言绝句", seed=-1, error="seed"),
    text("bad-seed-negative", [PROMPTS["chinese"]], export="sampled", seed=-1, error="seed", cli=True),
    text("bad-seed-2**31", [PROMPTS["chinese"]], export="sampled", seed=2**31, error="seed", cli=True),
    # ----- settings an export refuses at convert time (the third face is convert())
    Case("bad-top_k", "settings", prompts=("春",), settings=(("do_sample", True), ("top_k", 5000)),
         error="top_k", cli=True),  # > the 1803-token vocab: known only with the model
    Case("bad-max_new_tokens", "settings", prompts=("春",), settings=(("max_new_tokens", 64),),
         error="max_new_tokens", cli=True),  # leaves no room for a prompt in 64 positions
    Case("bad-temperature", "settings", prompts=("春",), settings=(("do_sample", True), ("temperature", 0.0)),
         error="temperature", cli=True),
    # ----- ids (generate_ids): never cut, an id outside the vocab refused, an empty batch answered
    Case("ids", "ids", prompts=IDS),
    Case("ids-too-long", "ids", prompts=((101,) + (300,) * 59,), error="n_positions"),  # 60 + 8 > 64
    Case("ids-outside-vocab", "ids", prompts=((101, 1803),), error="input_ids"),
    Case("ids-empty-batch", "ids", prompts=()),
]


# ----- the faces ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Refused:
    """A face's refusal: its one-line message."""

    message: str


class Served:
    """A SavedModel as the model server loads it: the TF1 loader, the `serve` tag, one session, and
    every tensor fed and fetched by the names its signature_def gives."""

    def __init__(self, export_dir):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(export_dir))
        self.signatures = dict(meta.signature_def)

    def __call__(self, name: str, **inputs) -> dict:
        signature = self.signatures[name]
        assert set(inputs) == set(signature.inputs), (name, sorted(signature.inputs))
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        return self.session.run({k: t.name for k, t in signature.outputs.items()}, feed_dict=feed)


@pytest.fixture(scope="session")
def outs(tmp_path_factory, tiny_pt_dir) -> dict:
    """One pt2tf OUT (tf2 + saved_model) per settings row."""
    made = {}
    for name, settings in EXPORTS.items():
        made[name] = tmp_path_factory.mktemp(f"parity-{name}") / "out"
        convert(str(tiny_pt_dir), made[name], formats=("tf2", "saved_model"), progress=False, generation=settings)
    return made


@pytest.fixture(scope="session")
def generators(outs) -> dict:
    return {name: Generator.from_pretrained(out) for name, out in outs.items()}


@pytest.fixture(scope="session")
def served(outs):
    sessions = {name: Served(out / "saved_model" / "1") for name, out in outs.items()}
    yield sessions
    for s in sessions.values():
        s.session.close()


def settings_of(case: Case) -> GenerationConfig:
    return EXPORTS[case.export].update(**dict(case.settings))


def python_face(case: Case, generator: Generator):
    g = settings_of(case)
    try:
        if case.kind == "poem":
            form, acrostic, rhyme = case.poem
            # "" as the signature takes it (none); the CLI rows omit the flag instead (None)
            return generator.poem(case.prompts[0], g, form=form, acrostic=acrostic, rhyme=rhyme, seed=case.seed)
        if case.kind == "ids":
            return generator.generate_ids([list(row) for row in case.prompts], generation_config=g).tolist()
        return generator.generate(list(case.prompts), g, seed=case.seed)
    except ValueError as e:
        return Refused(str(e))


def saved_model_face(case: Case, serve: Served):
    seed = np.full(len(case.prompts), 0 if case.seed is None else case.seed, np.int64)
    try:
        if case.kind == "poem":
            form, acrostic, rhyme = case.poem
            out = serve("poem", text=strings(case.prompts), form=strings([form]), acrostic=strings([acrostic]),
                        rhyme=strings([rhyme]), seed=seed)["poem"]
        elif case.kind == "ids":
            ids, mask = left_pad(case.prompts)
            return serve("generate_ids", input_ids=ids, attention_mask=mask)["sequences"].tolist()
        elif EXPORTS[case.export].do_sample:
            out = serve("serving_seeded", text=strings(case.prompts), seed=seed)["generated_text"]
        else:
            assert case.seed is None, "serving_default takes no seed"
            out = serve("serving_default", text=strings(case.prompts))["generated_text"]
    except tf.errors.InvalidArgumentError as e:
        return Refused(e.message)
    return [b.decode("utf-8") for b in out.tolist()]


def convert_face(case: Case, src, tmp_path):
    """The export refuses settings it cannot fix: GenerationFlagError before anything is written."""
    out = tmp_path / "refused"
    with pytest.raises(GenerationFlagError) as e:
        convert(str(src), out, formats=("saved_model",), progress=False, generation=settings_of(case))
    assert not out.exists()
    return Refused(str(e.value))


def cli_face(case: Case, out, capsys):
    g, poem_row = settings_of(case), case.kind == "poem"
    argv = [str(out), *case.prompts, *flags(g, poem=poem_row)]
    if case.seed is not None:
        argv += ["--seed", str(case.seed)]
    if poem_row:
        for name, value in zip(("form", "acrostic", "rhyme"), case.poem):
            argv += [f"--{name}", value] if value or name == "form" else []  # --form makes it a poem
    capsys.readouterr()
    try:
        code = generate_cli.main(argv)
    except SystemExit as e:  # argparse's usage errors, also the library's ValueErrors via parser.error
        code = e.code
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stderr, stderr
    if code == 0:
        return stdout[:-2].split("\n\n") if poem_row else stdout.split("\n")[:-1]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and not stdout, (code, stderr, stdout)
    return Refused(errors[0])


def flags(g: GenerationConfig, *, poem: bool) -> list[str]:
    """The CLI flags of g's settings (a poem's form fixes its length: no --max_new_tokens)."""
    default, out = GenerationConfig(), ["--do_sample"] if g.do_sample else []
    for name in ("max_new_tokens", "top_k", "top_p", "temperature", "repetition_penalty"):
        value = getattr(g, name)
        if value != getattr(default, name) and not (poem and name == "max_new_tokens"):
            out += [f"--{name}", str(value)]
    return out


def strings(texts) -> np.ndarray:
    return np.array([t.encode("utf-8") for t in texts], dtype=object)


def left_pad(rows) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(r) for r in rows), default=0)
    ids = np.array([[0] * (width - len(r)) + list(r) for r in rows], np.int32).reshape(len(rows), width)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32).reshape(len(rows), width)
    return ids, mask


# ----- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_faces_agree(case, generators, served, outs, tiny_pt_dir, tmp_path, capsys):
    results = {"python": python_face(case, generators[case.export])}
    if case.kind == "settings":  # what a SavedModel cannot fix, convert() refuses
        results["convert"] = convert_face(case, tiny_pt_dir, tmp_path)
    else:
        results["saved_model"] = saved_model_face(case, served[case.export])
    if case.cli:
        results["cli"] = cli_face(case, outs[case.export], capsys)
    if case.error is None:
        expected = results["python"]
        assert not isinstance(expected, Refused), expected
        for face, result in results.items():
            assert result == expected, (face, result, expected)
        check_contract(case, expected)
    else:
        for face, result in results.items():
            assert isinstance(result, Refused), (face, result)
            assert re.search(rf"(?<![\w]){re.escape(case.error)}(?![\w])", result.message), (face, result.message)


def check_contract(case: Case, result) -> None:
    """What the agreed result must be, beyond agreeing."""
    if case.kind == "text":
        assert len(result) == len(case.prompts)
        for prompt, reply in zip(case.prompts, result):
            assert reply.startswith(prompt) and len(reply) > len(prompt), (prompt, reply)
    elif case.kind == "poem":
        form, acrostic, _ = case.poem
        chars, lines = parse_form(form)
        (one,) = result
        assert [len(line) for line in one.split("\n")] == [chars + 1] * lines, one
        if acrostic:
            assert "".join(line[0] for line in one.split("\n")) == acrostic
    elif case.kind == "ids":  # the prompts left-padded to the longest, then the new tokens
        width = max((len(p) for p in case.prompts), default=0)
        assert len(result) == len(case.prompts)
        for row, prompt in zip(result, case.prompts):
            assert row[width - len(prompt):width] == list(prompt) and width < len(row) <= width + NEW


# ----- the table itself -----------------------------------------------------------------------------


def kind_of(case: Case) -> tuple:
    """A kind of row: what it runs, good or refused, and for good text the export (greedy / sampled)."""
    return case.kind, case.error is None, case.export if case.kind == "text" and case.error is None else ""


def test_every_kind_of_row_runs_through_the_cli_too():
    kinds = {kind_of(c) for c in CASES if c.kind != "ids"}  # the CLI takes text only
    assert kinds == {kind_of(c) for c in CASES if c.cli}
    assert not [c.name for c in CASES if c.cli and c.kind == "poem" and c.error is None and c.export == "greedy"], \
        "the CLI's poems sample: a greedy poem cannot run through it"
    assert len({c.name for c in CASES}) == len(CASES)


def test_the_prompts_are_what_the_table_says(generators):
    tokenizer, config = generators["greedy"].tokenizer, generators["greedy"].config
    vocab = set(tokenizer.tokens)
    assert not {"照", "猫"} & vocab and "\U00020000" not in vocab and "一花" not in vocab
    assert ord(PROMPTS["outside-bmp"][-1]) > 0xFFFF
    assert tokenizer.unk_token_id in tokenizer.encode(PROMPTS["emoji"])
    assert tokenizer.sep_token_id in tokenizer.encode(PROMPTS["literal-sep"])
    assert len(tokenizer.encode(LONG)) > config.n_ctx - NEW
    assert max(len(tokenizer.encode(p)) for p in PROMPTS.values()) <= 8 and max(map(len, IDS)) == 8  # one bucket
    groups = load_rhyme_table()
    assert vocab >= set("床前明月几时光") and {"一麻", "十唐"} <= set(groups) and "一花" not in groups
    assert "光" in groups["十唐"] and set(groups["十唐"]) & vocab and set(groups["一麻"]) & vocab


def test_seeds_change_sampled_text(generators):
    """The sampled rows agree for each seed; the seed must also matter (else a face ignoring it would pass)."""
    gen = generators["sampled"]
    one, two = (gen.generate(list(PROMPTS.values()), EXPORTS["sampled"], seed=s) for s in (0, 1))
    assert one != two


def test_the_cli_needs_a_prompt(outs, capsys):
    """An empty batch: [] from the Python API and the SavedModel (a row above); the CLI cannot send
    one: argparse requires a prompt, a usage error (exit 2)."""
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(outs["greedy"])])
    assert e.value.code == 2 and "prompts" in capsys.readouterr().err
