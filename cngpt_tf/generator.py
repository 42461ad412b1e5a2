"""`Generator`: XLA-compiled GPT-2 text generation with a KV cache, batched, over converted weights.

    gen = Generator.from_pretrained("out/")          # a pt2tf OUT_DIR, its tf2/ or tf1/ folder
    ids = gen.generate_ids([[101, 3209, 3299]], max_new_tokens=32)  # numpy [B, P + new]
    gen.generate(["明月几时有，"], max_length=60, do_sample=True, top_k=8, seed=0)
    gen.generate(["明月几时有，"], GenerationConfig(do_sample=True, top_k=8), seed=0)

Settings are one `GenerationConfig`, as in HF: each call starts from the config it is given (or the
generator's own, `generation_config`: from `Generator(..., generation_config=)` or the folder's
`generation_config.json`), keyword arguments override its fields (`update`), and the result is
checked once (`validate`) before anything is compiled.

Text prompts (`generate`, `poem`) follow the SavedModel's rules, so that every face gives the same
reply: a prompt longer than the context minus the new tokens loses its start
(`cngpt_tf.tokenizer.keep_end`: `[CLS]` stays first, the end of the prompt is kept) and the reply
still starts with the whole prompt as sent; an empty batch gives an empty result. Prompts given as
ids (`generate_ids`) are never cut: one that does not fit is a ValueError, as in the SavedModel's
`generate_ids` signature.

Prompts are left-padded and their length rounded up to a multiple of `BUCKET` (16; 1..8 tokens to
8), as is the number of new tokens, so that new lengths rarely trigger a new XLA compile. Each
compiled function is cached per (batch, prompt bucket, new-token bucket, `Strategy`); temperature,
top_p, the penalty, the seed and max_new_tokens are runtime inputs and never recompile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import compile_cache, model, native
from .config import GPT2Config, check_weight_mode, with_vocab
from .decoding import BUCKET, check_prompts, compile_decoder, generate_bucketed, round_up
from .errors import short_repr
from .formats.registry import detect
from .generation_config import SEED_MAX, GenerationConfig, Strategy, check_int
from .poetry import PoemConstraint
from .sampling import check_seed, make_sampler

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"  # HF's file of default settings, beside the weights
POEM_ONLY = ("form", "acrostic", "rhyme")  # settings only `poem()` reads
LENGTHS = ("max_new_tokens", "max_length", "min_new_tokens")  # a poem's form fixes its length


class Generator:
    def __init__(self, pt_tensors: dict, config: GPT2Config, tokenizer=None, *, native_kernel: bool | None = None,
                 weights: str = "fp32", generation_config: GenerationConfig | None = None):
        """pt_tensors: PyTorch-named numpy weights (what every reader in `cngpt_tf.formats` returns).

        native_kernel: run the weight products in `cngpt_tf.native`'s kernel (default: where
        `native.enabled()`, i.e. on an AVX2 + FMA or AVX-512 CPU where it builds); False keeps XLA's dot.
        weights: "fp32", or "bf16" / "int8": the weights quantised here, at load, from the float32
        ones (`cngpt_tf.quantize`: every Conv1D and the tied embedding; activations and accumulation
        stay float32). Reduced precision runs only in the native kernel: ValueError where it cannot.
        generation_config: the default settings of every call (default: `GenerationConfig()`),
        checked against the model here."""
        self.config = config
        self.tokenizer = tokenizer
        self.generation_config = _config(generation_config, GenerationConfig()).validate(config.n_vocab, config.n_ctx)
        self.weights = check_weight_mode(weights)
        asked = "native_kernel=True" if weights == "fp32" else f"weights={weights!r}"
        if weights != "fp32" and native_kernel is False:
            raise ValueError(f"{asked} needs the native kernel; native_kernel=False keeps XLA's dot, which "
                             "reads float32 weights only")
        if (native_kernel or weights != "fp32") and not native.available():
            raise ValueError(f"{asked} needs the native kernel, which cannot run here ({native.describe()})")
        if native_kernel is None:  # reduced precision asks for the kernel; fp32 takes it where enabled
            native_kernel = native.enabled() if weights == "fp32" else True
        self.native_kernel = native_kernel
        # The kernel's weight layout (panels) works only under XLA on the CPU: all the generator runs.
        packed = model.params_from_pt(pt_tensors, config, panels=self.native_kernel, weights=weights)
        # The panels are fresh arrays of our own: TF takes them without a copy (native.variable).
        self.params = {k: native.variable(v, k.replace("/", "_")) if k.endswith(("/panels", "/scales"))
                       else tf.Variable(v, trainable=False, name=k.replace("/", "_")) for k, v in packed.items()}
        self._compiled = {}
        self._poem_vocab = None  # cngpt_tf.poetry.PoemVocab, built on the first poem()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, tokenizer: bool = True, native_kernel: bool | None = None,
                        weights: str = "fp32", generation_config: GenerationConfig | None = None) -> "Generator":
        """Load a pt2tf OUT_DIR (its tf2/, else its tf1/), an HF TF GPT-2 folder (tf_model.h5), or a
        tf1/ folder (`cngpt_tf.formats.registry.detect` decides).

        generation_config: the default settings; without it, the folder's generation_config.json
        (HF's file; our fields only, checked against the model: ConfigError naming it) when there is
        one, else `GenerationConfig()`. native_kernel, weights: as in `Generator()` (weights checked
        before anything is read)."""
        check_weight_mode(weights)
        fmt, folder = detect(path, accept=("tf2", "tf1"))
        config, pt_tensors = fmt.read(folder)
        tok = None
        if (folder / "vocab.txt").is_file():
            config, _ = with_vocab(config, folder / "vocab.txt")
            if tokenizer:
                from .tokenizer import ChineseTokenizer

                tok = ChineseTokenizer.from_pretrained(folder)
        defaults = folder / GENERATION_CONFIG
        if generation_config is None and defaults.is_file():
            generation_config = GenerationConfig.from_json_file(defaults, config.n_vocab, config.n_ctx)
        return cls(pt_tensors, config, tok, native_kernel=native_kernel, weights=weights,
                   generation_config=generation_config)

    def settings(self, generation_config: GenerationConfig | None = None, **kwargs) -> GenerationConfig:
        """The settings of one call, as HF resolves them: `generation_config` (default: this
        generator's), its fields overridden by `kwargs` (TypeError for an unknown name), checked
        against the model (ValueError naming the first bad field)."""
        base = _config(generation_config, self.generation_config)
        return base.update(**kwargs).validate(self.config.n_vocab, self.config.n_ctx)

    # ----- id level -------------------------------------------------------------------------------

    def generate_ids(self, input_ids, attention_mask=None, generation_config: GenerationConfig | None = None, *,
                     eos_token_id: int | None = None, pad_token_id: int | None = None, **kwargs) -> np.ndarray:
        """Generate after each prompt; return numpy int32 [B * num_return_sequences, P + new].

        input_ids: a list of id lists (any lengths; left-padded here) or a [B, P] array with an
        optional left-padded 0/1 attention_mask. Like HF `generate`: the result keeps the prompt
        (padded to the longest), new tokens follow, rows that ended get `pad_token_id` after their
        end-of-text, and it is as long as the longest row needed. `max_length` counts the prompt
        (its padded length), `max_new_tokens` does not; with neither, `default_max_new_tokens`.
        eos_token_id=-1 never stops.

        Settings: `generation_config` and keyword arguments (its field names), see `settings`.
        Everything is checked before anything is compiled (ValueError naming it): the settings
        (`GenerationConfig.validate`, the rules of every face), ids in the vocab, a left-padded 0/1
        mask, prompt + new tokens within n_positions (a prompt of ids is never cut). seed=None draws
        one. An empty batch (`[]`, or a [0, P] array) gives an empty int32 [0, P] array.
        """
        if isinstance(attention_mask, GenerationConfig):
            raise TypeError("the second argument of generate_ids is attention_mask: pass generation_config= by name")
        _refuse(kwargs, POEM_ONLY, "a poem() setting; generate_ids and generate write free text")
        settings = self.settings(generation_config, **kwargs)
        return self._generate_ids(settings, input_ids, attention_mask, eos_token_id, pad_token_id)

    def _generate_ids(self, g: GenerationConfig, input_ids, attention_mask, eos_token_id, pad_token_id):
        seed = _seed(g.seed)
        pad = self._pad_id(pad_token_id)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        eos = -1 if eos is None else eos
        check_int("eos_token_id", eos, -1, self.config.n_vocab - 1)
        ids, mask = _left_pad(input_ids, attention_mask, pad, self.config.n_vocab)
        if ids.shape[0] == 0:  # an empty batch: an empty result, as every face gives
            return ids
        max_new = _new_token_budget(g, ids, mask, self.config.n_ctx)
        if g.min_new_tokens > max_new:  # from max_length or the default: known only with the prompt
            raise ValueError(f"min_new_tokens={g.min_new_tokens} exceeds the {max_new} new tokens to generate")
        n = g.num_return_sequences
        if n > 1:
            ids, mask = np.repeat(ids, n, 0), np.repeat(mask, n, 0)
        return self._run(g, ids, mask, max_new, g.min_new_tokens, eos, pad, seed)

    def _run(self, g: GenerationConfig, ids, mask, max_new, min_new, eos, pad, seed, constraint=None):
        """Run the compiled decoder (shapes bucketed); return prompt + new tokens (numpy)."""
        out = generate_bucketed(
            self._compiled_decode(g.strategy, constraint is not None), tf.constant(ids, tf.int32),
            tf.constant(mask, tf.int32), max_new, min_new=min_new, eos=eos, pad=pad, seed=seed,
            temperature=g.temperature, top_p=g.top_p, penalty=g.repetition_penalty,
            constraint=constraint.inputs(round_up(max_new)) if constraint is not None else ())
        out = out.numpy()
        compile_cache.record()  # where the cache is on, vouch for the programs this call compiled and ran
        return out

    def _compiled_decode(self, strategy: Strategy, constrained: bool = False):
        """One compiled decoder per strategy (and poem or not); TF retraces it per bucket."""
        key = (strategy, constrained)
        if key not in self._compiled:
            make = PoemConstraint.from_inputs if constrained else None
            self._compiled[key] = compile_decoder(self.params, self.config, make_sampler(strategy), make)
        return self._compiled[key]

    def _pad_id(self, pad_token_id):
        if pad_token_id is None:
            return self.config.pad_token_id if self.config.pad_token_id is not None else 0
        return check_int("pad_token_id", pad_token_id, 0, self.config.n_vocab - 1)

    # ----- text level -----------------------------------------------------------------------------

    def generate(self, prompts, generation_config: GenerationConfig | None = None, *, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, **kwargs) -> list[str]:
        """Texts in, texts out, one per prompt x num_return_sequences: each prompt exactly as given,
        then the clean decode of its new tokens (`_join`). Settings as in `generate_ids`.

        The SavedModel's `serving_default` rules, so both give the same reply: a prompt longer than
        n_positions - max_new_tokens tokens is cut from the left for the model (`[CLS]` and the end
        of the prompt are kept, `cngpt_tf.tokenizer.keep_end`), the reply still starts with the
        whole prompt; with max_length (which counts the prompt) a prompt that leaves no room is a
        ValueError instead. An empty list of prompts gives [].
        """
        if self.tokenizer is None:
            raise ValueError("this Generator has no tokenizer (no vocab.txt next to the weights)")
        _refuse(kwargs, POEM_ONLY, "a poem() setting; generate_ids and generate write free text")
        settings = self.settings(generation_config, **kwargs)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        room = None  # with max_length (it counts the prompt): never cut, a prompt too long is refused
        if settings.max_length is None:
            room = self.config.n_ctx - settings.new_tokens(0, self.config.n_ctx)
        encoded = self.tokenizer.encode_batch(prompts, max_tokens=room)
        sequences = self._generate_ids(settings, encoded, None, eos_token_id, pad_token_id)
        n = settings.num_return_sequences
        width = max(len(ids) for ids in encoded)
        return [self._join(prompts[i // n], encoded[i // n], row[width:]) for i, row in enumerate(sequences)]

    def poem(self, prompt: str = "", generation_config: GenerationConfig | None = None, *, rhyme_table=None,
             **kwargs) -> list[str]:
        """Classical poems of an exact form, one string each: one line per 句, "\n"-joined.

        Settings as in `generate_ids`, and the poem's own fields: form ("五言绝句", "七言绝句",
        "五言律诗", "七言律诗", "chars,lines" or (chars_per_line, lines)); acrostic: one character
        per line (藏头诗); rhyme: "auto" (even lines rhyme with line 2), a rhyme-group name of the
        table (e.g. "十唐") or a character to rhyme with. None or "" is no acrostic / no rhyme (the
        SavedModel's `poem` signature spells none ""). A poem samples (do_sample=True) unless
        a generation_config or a do_sample argument says otherwise; its form fixes its length
        (max_new_tokens and the like are refused).
        The prompt (e.g. a title) conditions the poem and is not part of the result; one longer than
        n_positions minus the poem's tokens is cut from the left, as `generate` cuts it (the
        SavedModel's `poem` signature does the same). A form that leaves no room for [CLS] is a
        ValueError naming `form`. The form is enforced by masks inside the compiled loop
        (`cngpt_tf.poetry`).
        """
        from .poetry import PoemPlan, PoemVocab, format_poem

        if self.tokenizer is None:
            raise ValueError("poem() needs a tokenizer (no vocab.txt beside the weights)")
        _refuse(kwargs, LENGTHS, "a poem's form fixes its length")
        if generation_config is None:
            kwargs = {"do_sample": True, **kwargs}
        g = self.settings(generation_config, **kwargs)
        seed = _seed(g.seed)
        if rhyme_table is not None:
            vocab = PoemVocab(self.tokenizer.tokens, self.config.eos_token_id, rhyme_table)
        else:  # the shipped table: built once per generator
            if self._poem_vocab is None:
                self._poem_vocab = PoemVocab(self.tokenizer.tokens, self.config.eos_token_id)
            vocab = self._poem_vocab
        n = g.num_return_sequences
        plan = PoemPlan.build(vocab, g.form, n, g.acrostic, g.rhyme)
        if plan.n_new + 1 > self.config.n_ctx:  # the words of the `poem` signature for the same mistake
            raise ValueError(f"form: a poem of this form ({plan.n_new} tokens) does not fit "
                             f"n_positions={self.config.n_ctx} after a prompt")
        prompt_ids = self.tokenizer.encode(prompt, max_tokens=self.config.n_ctx - plan.n_new)
        ids = np.array([prompt_ids] * n, np.int32)
        out = self._run(g, ids, np.ones_like(ids), plan.n_new, 0, self.config.eos_token_id, self._pad_id(None), seed,
                        constraint=plan)
        return [format_poem(self.tokenizer.decode(row[len(prompt_ids):])) for row in out]

    def _join(self, prompt: str, prompt_ids: list[int], new_ids) -> str:
        """The reply: the prompt exactly as given + the clean decode of the new tokens only.

        One rule for every face (`cngpt_tf.tokenizer.join_continuation`, in-graph in the
        SavedModel): a Latin word after a Latin word gets its space, a "##" piece joins the
        prompt's last word. `prompt_ids` are not decoded, so a literal "[SEP]" in the prompt no
        longer hides the continuation and the prompt is not normalised (case, spaces, emoji)."""
        return self.tokenizer.continue_text(prompt, new_ids)



# ----- helpers --------------------------------------------------------------------------------------


def _config(given, default: GenerationConfig) -> GenerationConfig:
    if given is None:
        return default
    if not isinstance(given, GenerationConfig):  # e.g. poem("春", "七言绝句"): form is a keyword now
        raise TypeError(f"generation_config must be a GenerationConfig, got {short_repr(given)} "
                        "(pass settings such as form= or max_new_tokens= by name)")
    return given


def _refuse(kwargs: dict, names: tuple[str, ...], why: str) -> None:
    """A setting this call would ignore is an error, not a silent no-op."""
    for name in names:
        if name in kwargs:
            raise ValueError(f"{name}: {why}")


def _left_pad(input_ids, attention_mask, pad_id: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged lists -> left-padded [B, P] ids and mask; both checked by `check_prompts`."""
    if (isinstance(input_ids, (list, tuple)) and input_ids and not np.isscalar(input_ids[0])
            and attention_mask is None):
        rows = [list(r) for r in input_ids]
        width = max(len(r) for r in rows)
        if width == 0:
            raise ValueError("input_ids: every prompt is empty; start it with the [CLS] id at least")
        ids = _integers("input_ids", [[pad_id] * (width - len(r)) + r for r in rows])
        mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32)
    else:
        ids = _integers("input_ids", input_ids)
        if ids.ndim == 1:  # one prompt; [] is an empty batch
            ids = ids[None] if ids.size else ids.reshape(0, 0)
        mask = np.ones_like(ids) if attention_mask is None else _integers("attention_mask", attention_mask)
        if mask.ndim == 1:
            mask = mask[None] if mask.size else mask.reshape(0, 0)
    check_prompts(ids, mask, n_vocab)  # ValueError naming input_ids or attention_mask
    return ids.astype(np.int32), mask.astype(np.int32)


def _integers(name: str, values) -> np.ndarray:
    """values as an integer array, not cast yet: 3.7 or 2**32 + 5 must not become another valid id."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got an array of {array.dtype}")
    return array.astype(np.int64) if array.dtype.kind in "b" else array


def _new_token_budget(g: GenerationConfig, ids, mask, n_ctx: int) -> int:
    """The number of new tokens to generate; the longest real prompt plus it must fit n_ctx."""
    max_new = g.new_tokens(ids.shape[1], n_ctx)  # ValueError when max_length does not exceed the prompt
    longest = int(mask.sum(1).max())
    if longest + max_new > n_ctx:
        what = (f"max_length={g.max_length}" if g.max_length is not None
                else f"max_new_tokens={max_new}" + (" (the default)" if g.max_new_tokens is None else ""))
        raise ValueError(f"{what}: prompt ({longest} tokens) + {max_new} new tokens exceed n_positions={n_ctx}")
    return max_new


def _seed(seed) -> int:
    """`check_seed`'s rule; None draws a seed."""
    return int(np.random.randint(0, SEED_MAX + 1)) if seed is None else check_seed(seed)
