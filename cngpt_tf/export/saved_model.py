"""Export `OUT_DIR/saved_model/<version>/`: a TF2 SavedModel for TF Serving, built on `cngpt_tf.model`.

Signatures (the input and output names are what REST/gRPC clients send and receive); every one takes
an empty batch and answers it with an empty result:
- `serving_default`: `text` tf.string [batch] -> `generated_text` tf.string [batch]: each text exactly
  as sent (bytes unchanged; bytes that are not UTF-8 become U+FFFD, so that every reply is valid
  UTF-8), then the clean decode of the new tokens only, joined by
  `cngpt_tf.tokenizer.join_continuation`'s rule — the reply `Generator.generate` gives. Tokenization
  (HF BertTokenizer's ids, with the model's do_lower_case) and decoding run in-graph with core
  TensorFlow ops only (`cngpt_tf.text_graph`), so the stock model server needs no tensorflow-text. A
  prompt longer than the context minus `max_new_tokens` is truncated from the left for the model
  (its end is kept); the reply still starts with the whole text.
- sampled exports add `serving_seeded`: `text` + int64 `seed` [batch] (one seed per request: the
  first row's; all rows of a request share one random stream) -> `generated_text`.
- `generate_ids`: int32 `input_ids`, `attention_mask` [batch, seq] (left-padded) -> int32
  `sequences` [batch, seq + new]: the prompt, then the new tokens, [PAD] after end-of-text.
- `logits`: int32 `input_ids`, `attention_mask` -> float32 `logits` [batch, seq, vocab].
- `poem` (when the vocab holds the poem punctuation "，" and "。"; else it is left out with a logged
  warning): `text` (a title or context, may be ""), `form` ("七言绝句"… or "chars,lines"),
  `acrostic` ("" for none, else one character per line), `rhyme` ("" for none, "auto", a rhyme-group
  name of the shipped table such as "十唐", or one character), int64 `seed`, all [batch] -> `poem`
  tf.string: one line per 句, "\n"-joined, as `Generator.poem` gives it for the same settings and
  seed; the form enforced by the masks of `cngpt_tf.poetry` inside the decode loop, with the export's
  sampling settings (`cngpt_tf.export.poem_graph` parses the request).
Requests are checked as the Python `Generator` checks its arguments, by the same rules
(`cngpt_tf.decoding.check_prompts` for ids and masks, `cngpt_tf.sampling.check_seed` for seeds: an
integer in [0, 2**31 - 1], never wrapped; `PoemPlan.build`'s rules for form, acrostic and rhyme); a bad
request fails with INVALID_ARGUMENT naming the problem, before any decoding. Generation settings are a
`GenerationConfig` fixed at export (validated against the model) and written to
`assets/generation_config.json` (HF's file); the tokenizer's casing goes to
`assets/tokenizer_config.json`. `num_return_sequences` is not applied (one reply per request row).
The decode loop is XLA-compiled (`jit_compile=True`): the CPU model server needs
`--xla_cpu_compilation_enabled=true` (see README).
"""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path

import tensorflow as tf

from .. import model
from ..config import GPT2Config
from ..decoding import check_prompts, compile_decoder, generate_bucketed, round_up
from ..generation_config import GenerationConfig
from ..poetry import PoemConstraint, build_schedule, missing_punctuation
from ..sampling import check_seed, make_sampler, require
from ..tokenizer import write_tokenizer_config
from ..vocab import read_vocab

log = logging.getLogger("cngpt_tf.export.saved_model")

IDS_SPEC = tf.TensorSpec([None, None], tf.int32, name="input_ids")
MASK_SPEC = tf.TensorSpec([None, None], tf.int32, name="attention_mask")
TEXT_SPEC = tf.TensorSpec([None], tf.string, name="text")
SEED_SPEC = tf.TensorSpec([None], tf.int64, name="seed")
FORM_SPEC = tf.TensorSpec([None], tf.string, name="form")
ACROSTIC_SPEC = tf.TensorSpec([None], tf.string, name="acrostic")
RHYME_SPEC = tf.TensorSpec([None], tf.string, name="rhyme")


def fixed_generation(generation: GenerationConfig, config: GPT2Config) -> GenerationConfig:
    """`generation` as the export fixes it (`GenerationConfig.for_export`): validated against the
    model, with the max_new_tokens every request gets; ValueError naming the setting otherwise."""
    return generation.for_export(config.n_vocab, config.n_ctx)


class GPT2Module(tf.Module):
    """The weights as variables and the `logits` function over them."""

    def __init__(self, config: GPT2Config, pt_tensors, vocab: str | Path):
        super().__init__(name="cngpt")
        self.config = config
        packed = model.params_from_pt(pt_tensors, config)
        self.params = {name: tf.Variable(value, trainable=False, name=name) for name, value in packed.items()}
        self.vocab = tf.saved_model.Asset(str(vocab))

    @tf.function(input_signature=[IDS_SPEC, MASK_SPEC], autograph=False)
    def logits(self, input_ids, attention_mask):
        return {"logits": model.logits(self.params, self.config, input_ids, attention_mask)}


class GenerationModule(GPT2Module):
    """Adds the in-graph tokenizer and the generation functions, with settings fixed at export."""

    def __init__(self, config: GPT2Config, pt_tensors, vocab: str | Path, generation: GenerationConfig, *,
                 do_lower_case: bool = True):
        from ..text_graph import TextGraph
        from .poem_graph import PoemTables

        self.generation = fixed_generation(generation, config)
        super().__init__(config, pt_tensors, vocab)
        tokens = read_vocab(vocab)
        self.text = TextGraph(tokens, do_lower_case=do_lower_case)
        sampler = make_sampler(self.generation.strategy)
        self._decode = compile_decoder(self.params, config, sampler)
        missing = missing_punctuation(tokens)
        self.has_poem = not missing
        if missing:
            log.warning("%s: the vocab lacks the poem punctuation %s: exporting without the `poem` signature",
                        vocab, " ".join(missing))
        else:  # a tf.function only here: saving traces every tf.function of the module
            self._decode_poem = compile_decoder(self.params, config, sampler, PoemConstraint.from_inputs)
            self._poems = PoemTables(tokens, config.eos_token_id)
            self.poem = tf.function(self._poem, input_signature=[TEXT_SPEC, FORM_SPEC, ACROSTIC_SPEC,
                                                                 RHYME_SPEC, SEED_SPEC], autograph=False)

    @tf.function(input_signature=[IDS_SPEC, MASK_SPEC], autograph=False)
    def generate_ids(self, input_ids, attention_mask):
        def generate():
            with tf.control_dependencies(check_prompts(input_ids, attention_mask, self.config.n_vocab)):
                return self._generate(input_ids, attention_mask, self._seed, self.generation.max_new_tokens,
                                      self.generation.min_new_tokens, self._decode)

        def empty():  # [0, seq] in, [0, seq] out; the shapes must still agree
            same = tf.reduce_all(tf.equal(tf.shape(input_ids), tf.shape(attention_mask)))
            with tf.control_dependencies([require(same, "input_ids and attention_mask must have one shape "
                                                        "[batch, length]")]):
                return tf.identity(input_ids)

        return {"sequences": tf.cond(tf.shape(input_ids)[0] > 0, generate, empty)}

    @tf.function(input_signature=[TEXT_SPEC], autograph=False)
    def generate_text(self, text):
        return {"generated_text": self._generate_text(text, self._seed)}

    @tf.function(input_signature=[TEXT_SPEC, SEED_SPEC], autograph=False)
    def generate_text_seeded(self, text, seed):
        return {"generated_text": self._generate_text(text, _request_seed(seed))}

    def _poem(self, text, form, acrostic, rhyme, seed):
        """Poems of an exact form after each `text` (a title or context, may be empty)."""
        c = self.config
        sizes = tf.stack([tf.size(x) for x in (text, form, acrostic, rhyme, seed)])
        with tf.control_dependencies([require(tf.equal(sizes, sizes[0]),
                                              "text, form, acrostic, rhyme and seed must have one batch size")]):
            chars, lines, acrostic_ids, rhymes, groups = self._poems.parse(form, acrostic, rhyme)
            seed = _request_seed(seed)
        n_new = lines * (chars + 1) + 1  # [B] every character, every punctuation mark, then [SEP]
        longest = tf.reduce_max(tf.concat([n_new, [1]], 0))
        fits = require(longest < c.n_ctx, f"form: a poem of this form does not fit n_positions={c.n_ctx} "
                                          "after a prompt")

        def generate():
            with tf.control_dependencies([fits]):
                schedule, forced = build_schedule(chars, lines, acrostic_ids, rhymes, round_up(longest))
                input_ids, attention_mask = self.text.encode(text, c.n_ctx - longest)
            constraint = (self._poems.table, schedule, forced, self._poems.char_group, groups)
            sequences = self._generate(input_ids, attention_mask, seed, longest, 0, self._decode_poem, constraint)
            poems = self.text.decode(sequences[:, tf.shape(input_ids)[1]:], c.eos_token_id)
            return _format_poems(poems)

        with tf.control_dependencies([fits]):
            return {"poem": tf.cond(tf.size(text) > 0, generate, lambda: tf.zeros([0], tf.string))}

    @property
    def _seed(self):
        """The seed of a request without one: the export's seed, else 0."""
        return tf.constant(self.generation.seed or 0, tf.int32)

    def _generate_text(self, text, seed):
        """text [B] -> replies [B]: each text as sent + the decode of its new tokens."""
        g = self.generation

        def generate():
            input_ids, attention_mask = self.text.encode(text, self.config.n_ctx - g.max_new_tokens)
            sequences = self._generate(input_ids, attention_mask, seed, g.max_new_tokens, g.min_new_tokens,
                                       self._decode)
            return self.text.continue_text(text, sequences[:, tf.shape(input_ids)[1]:], self.config.eos_token_id)

        return tf.cond(tf.size(text) > 0, generate, lambda: tf.zeros([0], tf.string))

    def _generate(self, input_ids, attention_mask, seed, max_new, min_new, decode, constraint=()):
        """Left-padded [B, P] prompts -> [B, P + new], with the export's generation settings."""
        c, g = self.config, self.generation
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.reduce_sum(attention_mask, axis=1)) + max_new, c.n_ctx,
            message=f"prompt + new tokens exceed n_positions ({c.n_ctx})")
        return generate_bucketed(
            decode, input_ids, attention_mask, max_new, min_new=min_new, eos=c.eos_token_id,
            pad=c.pad_token_id or 0, seed=seed, temperature=g.temperature, top_p=g.top_p,
            penalty=g.repetition_penalty, constraint=constraint)


def _request_seed(seed):
    """int64 seeds [batch] -> the request's int32 seed (the first row's; 0 for none), after
    `check_seed` on every row: a seed out of range fails the request, it is never wrapped."""
    with tf.control_dependencies([check_seed(seed)]):
        first = tf.cond(tf.size(seed) > 0, lambda: seed[0], lambda: tf.constant(0, tf.int64))
        return tf.cast(first, tf.int32)


def _format_poems(poems):
    """`cngpt_tf.poetry.format_poem` in-graph: a line break after each "，" and "。", none at the end."""
    poems = tf.strings.regex_replace(poems, "([，。])", "\\1\n")
    return tf.strings.regex_replace(poems, "\n+$", "")


def export_saved_model(folder: str | Path, pt_tensors, config: GPT2Config, vocab: str | Path,
                       generation: GenerationConfig | None, *, do_lower_case: bool = True) -> None:
    """Write the SavedModel into `folder` (the versioned folder, e.g. `saved_model/1`).

    generation: the settings of the generation signatures (validated here again, ValueError naming
    the setting before anything is built); None exports the `logits` signature only.
    do_lower_case: the model's tokenizer casing (its tokenizer_config.json), used by the in-graph
    tokenizer.
    """
    if generation is None:
        module = GPT2Module(config, pt_tensors, vocab)
    else:
        module = GenerationModule(config, pt_tensors, vocab, generation, do_lower_case=do_lower_case)
    # The functions themselves, not their concrete functions: saving traces them again anyway (its
    # save context is part of the trace cache's key), so tracing them before would double the time.
    signatures = {"logits": module.logits}
    with tempfile.TemporaryDirectory() as tmp:
        if generation is not None:
            signatures["serving_default"] = module.generate_text
            signatures["generate_ids"] = module.generate_ids
            if module.has_poem:
                signatures["poem"] = module.poem
            if module.generation.do_sample:
                signatures["serving_seeded"] = module.generate_text_seeded
            path = Path(tmp) / "generation_config.json"
            module.generation.to_json_file(path, pad_token_id=config.pad_token_id,
                                           bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
            module.generation_config = tf.saved_model.Asset(str(path))
            module.tokenizer_config = tf.saved_model.Asset(str(write_tokenizer_config(
                tmp, do_lower_case=do_lower_case, model_max_length=config.n_ctx)))
        tf.saved_model.save(module, str(folder), signatures=signatures)
    if generation is not None:
        from .warmup import write_warmup_requests

        write_warmup_requests(Path(folder), config, list(signatures))
    del module, signatures
    gc.collect()  # the module's variables sit in reference cycles (tf.function caches): free them now
