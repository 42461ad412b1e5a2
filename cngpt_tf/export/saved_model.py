"""Export `OUT_DIR/saved_model/<version>/`: a TF2 SavedModel for TF Serving, built on `cngpt_tf.model`.

Signatures (the input and output names are what REST/gRPC clients send and receive):
- `serving_default`: `text` tf.string [batch] -> `generated_text` tf.string [batch]. Tokenization and
  the clean decode run in-graph with core TensorFlow ops only (`cngpt_tf.text_graph`), so the stock
  model server needs no tensorflow-text. A prompt longer than the context minus `max_new_tokens` is
  truncated from the left (its end is kept).
- `generate_ids`: int32 `input_ids`, `attention_mask` [batch, seq] (left-padded) -> int32
  `sequences` [batch, seq + new]: the prompt, then the new tokens, [PAD] after end-of-text.
- `logits`: int32 `input_ids`, `attention_mask` -> float32 `logits` [batch, seq, vocab].
- sampled exports add `serving_seeded`: `text` + int64 `seed` [batch] (one seed per request: the
  first row's; all rows of a request share one random stream) -> `generated_text`.
- `poem`: `text` (a title or context, may be ""), `form` ("七言绝句"… or "chars,lines"),
  `acrostic` ("" for none, else one character per line), `rhyme` ("" or "auto"), int64 `seed`,
  all [batch] -> `poem` tf.string: one line per 句, "\n"-joined; the form enforced by the masks of
  `cngpt_tf.poetry` inside the decode loop, with the export's sampling settings.
Requests are checked as the Python `Generator` checks its arguments, by the same rules
(`cngpt_tf.decoding.check_prompts` for ids and masks, `cngpt_tf.sampling.check_seed` for seeds: an
integer in [0, 2**31 - 1], never wrapped); a bad request fails with INVALID_ARGUMENT naming the
problem, before any decoding. Generation settings are fixed at export (checked against the model by
`GenerationSettings.check_for`) and written to `assets/generation_config.json` under HF
`GenerationConfig` key names. The decode loop is XLA-compiled (`jit_compile=True`): the CPU model
server needs `--xla_cpu_compilation_enabled=true` (see README).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import tempfile
from pathlib import Path

import tensorflow as tf

from .. import model
from ..config import GPT2Config
from ..decoding import check_prompts, compile_decoder, generate_bucketed, round_up
from ..poetry import FORMS, PoemConstraint, PoemVocab, build_schedule
from ..sampling import SamplingConfig, check_seed, make_sampler
from ..vocab import read_vocab

IDS_SPEC = tf.TensorSpec([None, None], tf.int32, name="input_ids")
MASK_SPEC = tf.TensorSpec([None, None], tf.int32, name="attention_mask")
TEXT_SPEC = tf.TensorSpec([None], tf.string, name="text")
SEED_SPEC = tf.TensorSpec([None], tf.int64, name="seed")
FORM_SPEC = tf.TensorSpec([None], tf.string, name="form")
ACROSTIC_SPEC = tf.TensorSpec([None], tf.string, name="acrostic")
RHYME_SPEC = tf.TensorSpec([None], tf.string, name="rhyme")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """What the exported generation signatures do; HF GenerationConfig names."""

    max_new_tokens: int = 50
    do_sample: bool = False
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0

    @property
    def sampling(self) -> SamplingConfig:
        """The sampling settings, checked alone (`SamplingConfig.validate`)."""
        return SamplingConfig(self.do_sample, self.top_k, self.top_p, self.temperature,
                              self.repetition_penalty).validate()

    def check_for(self, config: GPT2Config) -> "GenerationSettings":
        """Check every setting against the model before anything is built: ValueError naming the
        setting (max_new_tokens, top_k, ...; the pt2tf flag of the same name). Returns self."""
        m, n_ctx = self.max_new_tokens, config.n_ctx
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < n_ctx:
            raise ValueError(f"max_new_tokens must be an integer in [1, {n_ctx - 1}]: a prompt needs at least "
                             f"one of the n_positions={n_ctx} positions, got {m!r}")
        SamplingConfig(self.do_sample, self.top_k, self.top_p, self.temperature,
                       self.repetition_penalty).validate(config.n_vocab)
        return self

    def to_generation_config(self, config: GPT2Config) -> dict:
        return {**dataclasses.asdict(self), "pad_token_id": config.pad_token_id,
                "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}


class GPT2Module(tf.Module):
    """The weights as variables and the `logits` function over them."""

    def __init__(self, config: GPT2Config, pt_tensors, vocab: str | Path):
        super().__init__(name="cngpt")
        self.config = config
        packed = model.params_from_pt(pt_tensors, config)
        self.params = {name: tf.Variable(value, trainable=False, name=name) for name, value in packed.items()}
        self.vocab = tf.saved_model.Asset(str(vocab))

    @tf.function(input_signature=[IDS_SPEC, MASK_SPEC])
    def logits(self, input_ids, attention_mask):
        return {"logits": model.logits(self.params, self.config, input_ids, attention_mask)}


class GenerationModule(GPT2Module):
    """Adds the in-graph tokenizer and the generation functions, with settings fixed at export."""

    def __init__(self, config: GPT2Config, pt_tensors, vocab: str | Path, generation: GenerationSettings):
        from ..text_graph import TextGraph

        self.generation = generation.check_for(config)
        super().__init__(config, pt_tensors, vocab)
        tokens = read_vocab(vocab)
        self.text = TextGraph(tokens)
        sampler = make_sampler(generation.sampling)
        self._decode = compile_decoder(self.params, config, sampler)
        self._decode_poem = compile_decoder(self.params, config, sampler, PoemConstraint.from_inputs)
        self._poems = _PoemTables(tokens, config.eos_token_id)

    @tf.function(input_signature=[IDS_SPEC, MASK_SPEC])
    def generate_ids(self, input_ids, attention_mask):
        with tf.control_dependencies(check_prompts(input_ids, attention_mask, self.config.n_vocab)):
            return {"sequences": self._generate(input_ids, attention_mask, seed=0)}

    @tf.function(input_signature=[TEXT_SPEC])
    def generate_text(self, text):
        return {"generated_text": self._generate_text(text, seed=0)}

    @tf.function(input_signature=[TEXT_SPEC, SEED_SPEC])
    def generate_text_seeded(self, text, seed):
        return {"generated_text": self._generate_text(text, seed=_request_seed(seed))}

    @tf.function(input_signature=[TEXT_SPEC, FORM_SPEC, ACROSTIC_SPEC, RHYME_SPEC, SEED_SPEC])
    def poem(self, text, form, acrostic, rhyme, seed):
        """Poems of an exact form after each `text` (a title or context, may be empty)."""
        p = self._poems
        chars, lines, acrostic_ids, rhymes = p.parse(form, acrostic, rhyme)
        n_new = tf.reduce_max(lines * (chars + 1) + 1)
        schedule, forced = build_schedule(chars, lines, acrostic_ids, rhymes, round_up(n_new))
        input_ids, attention_mask = self.text.encode(text, self.config.n_ctx - n_new)
        constraint = (p.table, schedule, forced, p.char_group, tf.fill(tf.shape(chars), -1))
        sequences = self._generate(input_ids, attention_mask, _request_seed(seed), n_new, self._decode_poem,
                                   constraint)
        poems = self.text.decode(sequences[:, tf.shape(input_ids)[1]:], self.config.eos_token_id)
        return {"poem": tf.strings.regex_replace(tf.strings.regex_replace(poems, "，", "，\n"), "。(.)", "。\n\\1")}

    def _generate_text(self, text, seed):
        max_prompt = self.config.n_ctx - self.generation.max_new_tokens
        input_ids, attention_mask = self.text.encode(text, max_prompt)
        sequences = self._generate(input_ids, attention_mask, seed)
        return self.text.decode(sequences, self.config.eos_token_id)

    def _generate(self, input_ids, attention_mask, seed, max_new=None, decode=None, constraint=()):
        """Left-padded [B, P] prompts -> [B, P + new], with the export's generation settings."""
        c, g = self.config, self.generation
        max_new = tf.constant(g.max_new_tokens) if max_new is None else max_new
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.reduce_sum(attention_mask, axis=1)) + max_new, c.n_ctx,
            message=f"prompt + new tokens exceed n_positions ({c.n_ctx})")
        return generate_bucketed(
            decode or self._decode, input_ids, attention_mask, max_new, min_new=0, eos=c.eos_token_id,
            pad=c.pad_token_id or 0, seed=seed, temperature=g.temperature, top_p=g.top_p,
            penalty=g.repetition_penalty, constraint=constraint)


def _request_seed(seed):
    """int64 seeds [batch] -> the request's int32 seed (the first row's; 0 for none), after
    `check_seed` on every row: a seed out of range fails the request, it is never wrapped."""
    with tf.control_dependencies([check_seed(seed)]):
        first = tf.cond(tf.size(seed) > 0, lambda: seed[0], lambda: tf.constant(0, tf.int64))
        return tf.cast(first, tf.int32)


class _PoemTables(tf.Module):
    """The poem masks' data for the `poem` signature, and in-graph parsing of its inputs."""

    def __init__(self, tokens: list[str], sep_id: int):
        super().__init__()
        vocab = PoemVocab(tokens, sep_id)
        self.table = tf.constant(vocab.table)
        self.char_group = tf.constant(vocab.char_group)
        cjk = {t: i for i, t in enumerate(tokens) if vocab.cjk[i]}  # a repeated token: the last id, as HF
        self.char_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            list(cjk), tf.constant(list(cjk.values()), tf.int32)), default_value=-1)
        self.forms = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            list(FORMS), tf.constant([c * 100 + n for c, n in FORMS.values()], tf.int32)), default_value=-1)

    def parse(self, form, acrostic, rhyme):
        """form [B] ("七言绝句" or "C,L"), acrostic [B] ("" none), rhyme [B] ("" / "auto") -> the
        inputs of `build_schedule`; a bad row fails the request with InvalidArgument."""
        named = self.forms.lookup(form)
        numeric = tf.strings.regex_full_match(form, r"[0-9]{1,2},[0-9]{1,2}")
        tf.debugging.assert_equal(tf.reduce_all((named >= 0) | numeric), True,
                                  message=f"form: use one of {', '.join(FORMS)} or 'chars,lines'")
        digits = tf.where(numeric, form, "0,0")
        pair = tf.strings.to_number(tf.strings.split(digits, ",").to_tensor("0", shape=[None, 2]), tf.int32)
        chars = tf.where(named >= 0, named // 100, pair[:, 0])
        lines = tf.where(named >= 0, named % 100, pair[:, 1])
        tf.debugging.assert_positive(chars * lines, message="form: use a form name or 'chars,lines'")
        tf.debugging.assert_less_equal(tf.maximum(chars, lines), 32, message="form: at most 32 chars and lines")
        letters = tf.strings.unicode_split(acrostic, "UTF-8")  # ragged [B, A]
        padded = letters.to_tensor("")
        ids = self.char_ids.lookup(padded)
        tf.debugging.assert_equal(tf.reduce_any((ids < 0) & (padded != "")), False,
                                  message="acrostic: a character is not a Chinese character of the vocab")
        count = letters.row_lengths()
        tf.debugging.assert_equal(tf.logical_or(count == 0, tf.cast(count, tf.int32) == lines), True,
                                  message="acrostic: one character per line")
        ids = tf.where(tf.equal(count, 0)[:, None], -1, ids)
        ids = tf.pad(ids, [[0, 0], [0, 1]], constant_values=-1)  # at least one column
        return chars, lines, ids, tf.equal(rhyme, "auto")


def export_saved_model(folder: str | Path, pt_tensors, config: GPT2Config, vocab: str | Path,
                       generation: GenerationSettings | None = GenerationSettings()) -> None:
    """Write the SavedModel into `folder` (the versioned folder, e.g. `saved_model/1`).

    generation=None exports the `logits` signature only.
    """
    if generation is None:
        module = GPT2Module(config, pt_tensors, vocab)
    else:
        module = GenerationModule(config, pt_tensors, vocab, generation)
    signatures = {"logits": module.logits.get_concrete_function()}
    with tempfile.TemporaryDirectory() as tmp:
        if generation is not None:
            signatures["serving_default"] = module.generate_text.get_concrete_function()
            signatures["generate_ids"] = module.generate_ids.get_concrete_function()
            signatures["poem"] = module.poem.get_concrete_function()
            if generation.do_sample:
                signatures["serving_seeded"] = module.generate_text_seeded.get_concrete_function()
            path = Path(tmp) / "generation_config.json"
            path.write_text(json.dumps(generation.to_generation_config(config), indent=2) + "\n", encoding="utf-8")
            module.generation_config = tf.saved_model.Asset(str(path))
        tf.saved_model.save(module, str(folder), signatures=signatures)
    if generation is not None:
        from .warmup import write_warmup_requests

        write_warmup_requests(Path(folder), config, list(signatures))
    del module, signatures
    gc.collect()  # the module's variables sit in reference cycles (tf.function caches): free them now
