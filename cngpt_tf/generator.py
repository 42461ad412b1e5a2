"""`Generator`: XLA-compiled GPT-2 text generation with a KV cache, batched, over converted weights.

    gen = Generator.from_pretrained("out/")          # a pt2tf OUT_DIR, its tf2/ or tf1/ folder
    ids = gen.generate_ids([[101, 3209, 3299]], max_new_tokens=32)  # numpy [B, P + new]
    gen.generate(["明月几时有，"], max_length=60, do_sample=True, top_k=8, seed=0)

Prompts are left-padded and their length rounded up to a multiple of `BUCKET` (16; 1..8 tokens to
8), as is the number of new tokens, so that new lengths rarely trigger a new XLA compile. Each
compiled function is cached per (batch, prompt bucket, new-token bucket, sampling strategy);
temperature, top_p, the penalty, the seed and max_new_tokens are runtime inputs and never recompile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import model, native
from .config import GPT2Config, with_vocab
from .decoding import BUCKET, check_prompts, compile_decoder, generate_bucketed, round_up
from .errors import SourceError, short_repr
from .poetry import PoemConstraint
from .sampling import SEED_MAX, SamplingConfig, check_seed, make_sampler

log = logging.getLogger(__name__)


class Generator:
    def __init__(self, pt_tensors: dict, config: GPT2Config, tokenizer=None, *, native_kernel: bool | None = None):
        """pt_tensors: PyTorch-named numpy weights (what every reader in `cngpt_tf.formats` returns).

        native_kernel: run the weight products in `cngpt_tf.native`'s kernel (default: where
        `native.enabled()`, i.e. on an AVX-512 CPU where it builds); False keeps XLA's dot."""
        self.config = config
        self.tokenizer = tokenizer
        if native_kernel and not native.available():
            raise ValueError("native_kernel=True, but the native kernel cannot run here (see cngpt_tf.native)")
        self.native_kernel = native.enabled() if native_kernel is None else native_kernel
        # The kernel's weight layout (panels) works only under XLA on the CPU: all the generator runs.
        packed = model.params_from_pt(pt_tensors, config, panels=self.native_kernel)
        self.params = {k: tf.Variable(v, trainable=False, name=k.replace("/", "_")) for k, v in packed.items()}
        self._compiled = {}
        self._poem_vocab = None  # cngpt_tf.poetry.PoemVocab, built on the first poem()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, tokenizer: bool = True, native_kernel: bool | None = None) -> "Generator":
        """Load a pt2tf OUT_DIR (uses its tf2/), an HF TF GPT-2 folder (tf_model.h5), or a tf1/ folder.

        native_kernel: as in `Generator()`."""
        folder = _model_folder(Path(path))
        if (folder / "tf_model.h5").is_file():
            from .formats.hf_tf2 import read_tf2 as read
        else:
            from .formats.tf1 import read_tf1 as read
        config, pt_tensors = read(folder)
        tok = None
        if (folder / "vocab.txt").is_file():
            config, _ = with_vocab(config, folder / "vocab.txt")
            if tokenizer:
                from .tokenizer import ChineseTokenizer

                tok = ChineseTokenizer.from_pretrained(folder)
        return cls(pt_tensors, config, tok, native_kernel=native_kernel)

    # ----- id level -------------------------------------------------------------------------------

    def generate_ids(
        self,
        input_ids,
        attention_mask=None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        seed: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> np.ndarray:
        """Generate after each prompt; return numpy int32 [B * num_return_sequences, P + new].

        input_ids: a list of id lists (any lengths; left-padded here) or a [B, P] array with an
        optional left-padded 0/1 attention_mask. Like HF `generate`: the result keeps the prompt
        (padded to the longest), new tokens follow, rows that ended get `pad_token_id` after their
        end-of-text, and it is as long as the longest row needed. `max_length` counts the prompt
        (its padded length), `max_new_tokens` does not; give one. eos_token_id=-1 never stops.

        Every argument is checked before anything is compiled (ValueError naming it): ids in the
        vocab, a left-padded 0/1 mask, sampling settings in `SamplingConfig.validate`'s ranges with
        top_k <= the vocab size, and `seed` an integer in [0, 2**31 - 1] (`check_seed`; the
        SavedModel's rule too). seed=None draws one.
        """
        sampling = SamplingConfig(do_sample, top_k, top_p, temperature, repetition_penalty)
        sampling = sampling.validate(self.config.n_vocab)
        seed = _seed(seed)
        pad = self._pad_id(pad_token_id)
        ids, mask = _left_pad(input_ids, attention_mask, pad, self.config.n_vocab)
        max_new = _new_token_budget(ids, mask, max_new_tokens, max_length, self.config.n_ctx)
        _check_int("min_new_tokens", min_new_tokens, 0, max_new)  # never more than it may generate
        _check_int("num_return_sequences", num_return_sequences, 1)
        if num_return_sequences > 1 and not do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy rows would be identical)")
        if num_return_sequences > 1:
            ids, mask = np.repeat(ids, num_return_sequences, 0), np.repeat(mask, num_return_sequences, 0)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        eos = -1 if eos is None else eos
        _check_int("eos_token_id", eos, -1, self.config.n_vocab - 1)
        return self._run(sampling, ids, mask, max_new, min_new_tokens, eos, pad, seed)

    def _run(self, sampling, ids, mask, max_new, min_new, eos, pad, seed, constraint=None):
        """Run the compiled decoder (shapes bucketed); return prompt + new tokens (numpy)."""
        out = generate_bucketed(
            self._compiled_decode(sampling, constraint is not None), tf.constant(ids, tf.int32),
            tf.constant(mask, tf.int32), max_new, min_new=min_new, eos=eos, pad=pad, seed=seed,
            temperature=sampling.temperature, top_p=sampling.top_p, penalty=sampling.repetition_penalty,
            constraint=constraint.inputs(round_up(max_new)) if constraint is not None else ())
        return out.numpy()

    def _compiled_decode(self, sampling: SamplingConfig, constrained: bool = False):
        """One compiled decoder per sampling strategy (and poem or not); TF retraces it per bucket."""
        key = (sampling.trace_key, constrained)
        if key not in self._compiled:
            make = PoemConstraint.from_inputs if constrained else None
            self._compiled[key] = compile_decoder(self.params, self.config, make_sampler(sampling), make)
        return self._compiled[key]

    def _pad_id(self, pad_token_id):
        if pad_token_id is None:
            return self.config.pad_token_id if self.config.pad_token_id is not None else 0
        _check_int("pad_token_id", pad_token_id, 0, self.config.n_vocab - 1)
        return pad_token_id

    # ----- text level -----------------------------------------------------------------------------

    def generate(self, prompts, **kwargs) -> list[str]:
        """Texts in, clean texts out (prompt + continuation), one per prompt x num_return_sequences."""
        if self.tokenizer is None:
            raise ValueError("this Generator has no tokenizer (no vocab.txt next to the weights)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.tokenizer.encode_batch(prompts)
        for text, ids in zip(prompts, encoded):
            if len(ids) >= self.config.n_ctx:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.config.n_ctx}: {text[:20]!r}…")
        sequences = self.generate_ids(encoded, **kwargs)
        n = kwargs.get("num_return_sequences", 1)
        width = max(len(ids) for ids in encoded)
        return [self._join(prompts[i // n], encoded[i // n], row[width:]) for i, row in enumerate(sequences)]

    def poem(
        self,
        prompt: str = "",
        form="七言绝句",
        acrostic: str | None = None,
        rhyme=None,
        *,
        do_sample: bool = True,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        num_return_sequences: int = 1,
        rhyme_table=None,
    ) -> list[str]:
        """Classical poems of an exact form, one string each: one line per 句, "\n"-joined.

        form: "五言绝句", "七言绝句", "五言律诗", "七言律诗" or (chars_per_line, lines);
        acrostic: one character per line (藏头诗); rhyme: None, "auto" (even lines rhyme with line 2),
        a rhyme-group name of the table (e.g. "十唐") or a character to rhyme with.
        The prompt (e.g. a title) conditions the poem and is not part of the result. The form is
        enforced by masks inside the compiled loop (`cngpt_tf.poetry`). Sampling settings and
        `seed` are checked as in `generate_ids`.
        """
        from .poetry import PoemPlan, PoemVocab, format_poem

        if self.tokenizer is None:
            raise ValueError("poem() needs a tokenizer (no vocab.txt beside the weights)")
        sampling = SamplingConfig(do_sample, top_k, top_p, temperature, repetition_penalty)
        sampling = sampling.validate(self.config.n_vocab)
        seed = _seed(seed)
        _check_int("num_return_sequences", num_return_sequences, 1)
        if num_return_sequences > 1 and not do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy rows would be identical)")
        if rhyme_table is not None:
            vocab = PoemVocab(self.tokenizer.tokens, self.config.eos_token_id, rhyme_table)
        else:  # the shipped table: built once per generator
            if self._poem_vocab is None:
                self._poem_vocab = PoemVocab(self.tokenizer.tokens, self.config.eos_token_id)
            vocab = self._poem_vocab
        plan = PoemPlan.build(vocab, form, num_return_sequences, acrostic, rhyme)
        prompt_ids = self.tokenizer.encode(prompt)
        if len(prompt_ids) + plan.n_new > self.config.n_ctx:
            what = "form" if plan.n_new + 1 > self.config.n_ctx else "prompt"
            raise ValueError(f"{what}: a {plan.n_new}-token poem after a prompt of {len(prompt_ids)} token(s) "
                             f"exceeds n_positions={self.config.n_ctx}")
        ids = np.array([prompt_ids] * num_return_sequences, np.int32)
        out = self._run(sampling, ids, np.ones_like(ids), plan.n_new, 0, self.config.eos_token_id,
                        self._pad_id(None), seed, constraint=plan)
        return [format_poem(self.tokenizer.decode(row[len(prompt_ids):])) for row in out]

    def _join(self, prompt: str, prompt_ids: list[int], new_ids) -> str:
        """The user's own prompt text + the clean decode of what followed it.

        Decoding prompt + continuation together keeps the spacing rule at their boundary (a Latin
        word after a Latin word gets its space); the prompt part is then replaced by the original.
        """
        tok = self.tokenizer
        full = tok.decode(list(prompt_ids) + [int(i) for i in new_ids])
        prefix = tok.decode(prompt_ids)
        return prompt + full[len(prefix):] if full.startswith(prefix) else full


# ----- helpers --------------------------------------------------------------------------------------


def _model_folder(path: Path) -> Path:
    if (path / "tf2" / "tf_model.h5").is_file():
        return path / "tf2"
    if (path / "tf_model.h5").is_file() or (path / "hparams.json").is_file():
        return path
    raise SourceError(f"{path}: no tf_model.h5 or hparams.json here or in {path / 'tf2'} (convert with pt2tf first)")


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
        ids = ids[None] if ids.ndim == 1 else ids
        mask = np.ones_like(ids) if attention_mask is None else _integers("attention_mask", attention_mask)
        mask = mask[None] if mask.ndim == 1 else mask
    check_prompts(ids, mask, n_vocab)  # ValueError naming input_ids or attention_mask
    return ids.astype(np.int32), mask.astype(np.int32)


def _integers(name: str, values) -> np.ndarray:
    """values as an integer array, not cast yet: 3.7 or 2**32 + 5 must not become another valid id."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got an array of {array.dtype}")
    return array.astype(np.int64) if array.dtype.kind in "b" else array


def _new_token_budget(ids, mask, max_new_tokens, max_length, n_ctx) -> int:
    if (max_new_tokens is None) == (max_length is None):
        raise ValueError("give exactly one of max_new_tokens and max_length")
    if max_length is not None:
        _check_int("max_length", max_length, 1)
        if max_length <= ids.shape[1]:
            raise ValueError(f"max_length={max_length} must exceed the prompt length {ids.shape[1]}")
        max_new_tokens = max_length - ids.shape[1]
    _check_int("max_new_tokens", max_new_tokens, 1)
    longest = int(mask.sum(1).max())
    if longest + max_new_tokens > n_ctx:
        what = f"max_length={max_length}" if max_length is not None else f"max_new_tokens={max_new_tokens}"
        raise ValueError(f"{what}: prompt ({longest} tokens) + {max_new_tokens} new tokens exceed n_positions={n_ctx}")
    return max_new_tokens


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum
            or (maximum is not None and value > maximum)):
        upto = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{upto}, got {short_repr(value)}")


def _seed(seed) -> int:
    """`check_seed`'s rule; None draws a seed."""
    return int(np.random.randint(0, SEED_MAX + 1)) if seed is None else check_seed(seed)
