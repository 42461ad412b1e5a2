"""Tokenizer for Chinese GPT-2 models that use a BERT Chinese WordPiece vocab (e.g. GPT-12L-CN).

Those models were trained on `[CLS] text [SEP]` with HF's slow `BertTokenizer`. `ChineseTokenizer`
gives exactly the ids that tokenizer gives, puts `[CLS]` in front of prompts, and decodes ids back to
clean text: no spaces between Chinese characters (HF's pipeline shows "明 月 几 时 有 ，"), `##`
pieces joined, special tokens dropped, and `[SEP]` taken as the end of the text.
"""

from __future__ import annotations

import json
import operator
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from .config import MAX_JSON_BYTES
from .errors import ConfigError, VocabError, short_repr
from .textfile import read_text
from .vocab import CLS, MASK, PAD, SEP, UNK, read_vocab, special_token_ids
from .wordpiece import SPECIALS, BertWordPiece, is_cjk  # is_cjk: also imported from here (poetry, tests)

_UNUSED_RE = re.compile(r"\[unused\d+\]")


TOKENIZER_CONFIG = "tokenizer_config.json"


def read_tokenizer_settings(folder: str | Path) -> dict:
    """The casing options of `folder/tokenizer_config.json` ({} without the file): do_lower_case,
    strip_accents, tokenize_chinese_chars, each checked to be a bool (or None for strip_accents).
    The one reader of that file, for the tokenizer and for every converter that carries it on.
    ConfigError naming the file otherwise (unreadable, too large, not JSON, a wrong type)."""
    path = Path(folder) / TOKENIZER_CONFIG
    if not path.exists() and not path.is_symlink():
        return {}
    text = read_text(path, MAX_JSON_BYTES, ConfigError, "tokenizer config")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    if config.get("do_basic_tokenize", True) is False:
        # Without the basic tokenizer CJK text is not split per character; no model we target does
        # this, and normalise() would be wrong, so refuse rather than guess.
        raise ConfigError(f"{path}: do_basic_tokenize=false is not supported")
    settings = {}
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if key in config:
            value = config[key]
            if not isinstance(value, bool) and not (key == "strip_accents" and value is None):
                raise ConfigError(f"{path}: {key} must be true or false, got {short_repr(value)}")
            settings[key] = value
    return settings


def write_tokenizer_config(folder: str | Path, *, do_lower_case: bool = True,
                           model_max_length: int | None = None) -> Path:
    """Write HF's `tokenizer_config.json` for a model folder (tf1/, tf2/, the SavedModel's assets), so
    that `ChineseTokenizer.from_pretrained` and HF's `BertTokenizer` tokenize as the model was
    trained: a cased model (do_lower_case=false) stays cased in every format."""
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(do_lower_case)}
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    path = Path(folder) / TOKENIZER_CONFIG
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class ChineseTokenizer:
    """BERT-Chinese WordPiece tokenizer for GPT-2: HF's slow `BertTokenizer` ids, clean decoding.

    What a round trip keeps: `decode(encode(t)) == normalise(t)` for every text `t`, where
    `normalise` applies what `BertTokenizer` does to text, in this order:

    * `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` written literally in `t` are those special
      tokens (as in HF); so a literal `[SEP]` ends the decoded text and `[CLS]` etc. vanish;
    * lower-cased (do_lower_case) and accents stripped (NFD, combining marks dropped; on whenever
      lower-casing is, unless strip_accents=False); the result is NFC-normalised before this;
    * NUL, U+FFFD and control/format/unassigned characters are deleted;
    * the text is split into words at whitespace (which is dropped), around every CJK ideograph
      and around every punctuation character (Unicode P*, plus all non-alphanumeric ASCII);
    * a word WordPiece cannot spell from vocab pieces (a character not in the vocab, or a word
      over 100 characters) becomes the literal "[UNK]" as a whole; we keep `[UNK]` visible rather
      than dropping it, so that a reader sees that text was lost (the curly quotes “ ” and rare
      characters are `[UNK]` in the standard vocab);
    * the words are joined with one space between two neighbours only when both touching
      characters are "word-like" (a letter or digit that is not a CJK ideograph); never next to
      CJK, punctuation or `[UNK]`.

    Whitespace is not stored in the ids, so it cannot come back: "明月 几时" decodes to "明月几时",
    "hello   world" to "hello world", "hello, world" to "hello,world" (a space after punctuation
    cannot be told from none). Text made only of vocab CJK characters and Chinese punctuation
    round-trips exactly.

    The ids are those of HF's slow `BertTokenizer` (transformers 4.57), computed by our own code
    (`cngpt_tf.wordpiece`, which names every rule it mirrors) without importing transformers, torch
    or TensorFlow; tests/cngpt_tf/test_tokenizer_matches_hf.py proves them equal to HF's over every
    code point, under each casing setting, on random and real text and on odd vocabs. One HF rule
    is not followed: a literal `[MASK]` with a vocab that lacks `[MASK]` is HF's id len(distinct
    vocab tokens) (a token it adds past the vocab: outside the model's embedding table, or, where a
    token repeats, another vocab line's id); here it is `[UNK]`, as in the SavedModel's in-graph
    tokenizer (`text_graph`), so that every face gives the model the same ids.

    The slow tokenizer is what we match, not `BertTokenizerFast`. On the 2,500-line CLUE sample
    the fast one gave identical ids about 7x faster, but over single code points it disagrees with
    the slow one on ~760 assigned characters (newer Unicode punctuation, CJK extension E, Arabic
    marks): whole words become `[UNK]`. The models were trained with the slow tokenizer's behaviour.
    """

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> ChineseTokenizer:
        """Load `folder/vocab.txt`, with the casing options of `folder/tokenizer_config.json` if any."""
        folder = Path(folder)
        kwargs = read_tokenizer_settings(folder)
        kwargs.update(overrides)
        return cls(folder / "vocab.txt", **kwargs)

    def __init__(self, vocab_file: str | Path, do_lower_case: bool = True, add_cls: bool = True,
                 add_sep: bool = False, *, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True):
        # Our own id -> token list (read as HF does, "\n" only) is the model's embedding table
        # size and decodes every id, also ones HF's dict would lose to a duplicated token.
        self._tokens = read_vocab(vocab_file)
        self._ids = special_token_ids(self._tokens, vocab_file)
        self._bert = BertWordPiece(self._tokens, do_lower_case=do_lower_case, strip_accents=strip_accents,
                                   tokenize_chinese_chars=tokenize_chinese_chars, absent_specials_as_unk=True)
        self.add_cls, self.add_sep = add_cls, add_sep
        hidden = {self._ids[t] for t in (PAD, CLS, SEP, MASK) if t in self._ids}
        hidden.update(i for i, t in enumerate(self._tokens) if _UNUSED_RE.fullmatch(t))
        self._hidden = frozenset(hidden)

    vocab_size = property(lambda self: len(self._tokens))
    tokens = property(lambda self: list(self._tokens), doc="the vocab, in id order")
    pad_token_id = property(lambda self: self._ids[PAD])
    unk_token_id = property(lambda self: self._ids[UNK])
    cls_token_id = property(lambda self: self._ids[CLS])
    sep_token_id = property(lambda self: self._ids[SEP])
    bos_token_id = property(lambda self: self._ids[CLS], doc="`[CLS]`: every training text began with it.")
    eos_token_id = property(lambda self: self._ids[SEP], doc="`[SEP]`: every training text ended with it.")

    def encode(self, text: str, *, add_cls: bool | None = None, add_sep: bool | None = None,
               max_tokens: int | None = None) -> list[int]:
        """Ids of `text`, `[CLS]` first and no `[SEP]` unless told otherwise.

        max_tokens: at most this many ids, by `keep_end` (the text's ids lose their START; the
        `[CLS]`/`[SEP]` added here stay and count): the rule of every text face, the SavedModel's
        in-graph `TextGraph.encode` included. None: never truncated."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        ids = self._bert.encode(text)
        cls = self.add_cls if add_cls is None else add_cls
        sep = self.add_sep if add_sep is None else add_sep
        if max_tokens is not None:
            ids = keep_end(ids, max_tokens - int(cls) - int(sep))
        return [self.cls_token_id] * int(cls) + ids + [self.sep_token_id] * int(sep)

    def encode_batch(self, texts: Iterable[str], *, add_cls: bool | None = None, add_sep: bool | None = None,
                     max_tokens: int | None = None) -> list[list[int]]:
        return [self.encode(t, add_cls=add_cls, add_sep=add_sep, max_tokens=max_tokens) for t in texts]

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Clean text of `ids` (list or 1-D numpy array); see the class docstring for the rules.

        With `stop_at_eos` the text ends before the first `[SEP]`; otherwise `[SEP]` is dropped
        like `[CLS]`, `[PAD]`, `[MASK]` and `[unusedN]`. `[UNK]` stays visible.
        """
        words: list[str] = []
        size = len(self._tokens)
        for i in map(operator.index, ids):  # operator.index: numpy ints pass, floats do not
            if not 0 <= i < size:
                raise VocabError(f"token id {i} is outside the vocab (size {size})")
            if stop_at_eos and i == self.sep_token_id:
                break
            if i in self._hidden:
                continue
            token = self._tokens[i]
            if token.startswith("##") and len(token) > 2:
                if words:
                    words[-1] += token[2:]
                    continue
                token = token[2:]  # a continuation with nothing before it: show the piece
            words.append(token)
        return _join(words)

    def decode_batch(self, batch_ids: Iterable[Iterable[int]], *, stop_at_eos: bool = True) -> list[str]:
        return [self.decode(ids, stop_at_eos=stop_at_eos) for ids in batch_ids]

    def continue_text(self, prompt: str, new_ids: Iterable[int]) -> str:
        """The reply to `prompt`: the prompt exactly as given + the clean decode of the new tokens
        only (`decode(new_ids)`, ending at `[SEP]`), joined by `join_continuation`'s rule.

        Only the new tokens are decoded, so a literal `[SEP]` (or `[CLS]`, an emoji, a capital, a
        tab) in the prompt neither hides the continuation nor is normalised away: the prompt is
        never re-created from its ids. The SavedModel's `serving_default` applies the same rule
        in-graph (`cngpt_tf.text_graph.TextGraph.continue_text`)."""
        ids = [operator.index(i) for i in new_ids]
        continuation = self.decode(ids)
        return join_continuation(prompt, continuation, self._first_shown_is_piece(ids))

    def _first_shown_is_piece(self, ids: list[int]) -> bool:
        """Whether the first token `decode` shows is a "##" piece (it continues the word before it)."""
        for i in ids:
            if i == self.sep_token_id:
                return False
            token = self._tokens[i]
            if i in self._hidden or not token:
                continue
            return token.startswith("##") and len(token) > 2
        return False

    def normalise(self, text: str, *, stop_at_eos: bool = True) -> str:
        """The text `decode(encode(text))` gives, computed from `text` by the rules of the class docstring."""
        words: list[str] = []
        unk = self._bert.unk_id
        # The words encode() turns into ids (one implementation), shown as decode() shows their ids.
        for word, ids in self._bert.words(text):
            if ids == (unk,):  # a word WordPiece cannot spell, or [UNK] itself
                words.append(UNK)
            elif word in SPECIALS and len(ids) == 1:  # a literal special token (or one cleaning made)
                if word == SEP and stop_at_eos:
                    break
            else:
                words.append(word)
        return _join(words)


def keep_end(ids: list[int], room: int) -> list[int]:
    """The last `room` ids (none for room <= 0): how every text face fits a prompt into the context.

    A prompt longer than the context minus the new tokens loses its start, as a chat or a story
    keeps its latest text: the end of a prompt is what the model continues. The special tokens a
    tokenizer adds are not part of `ids` and stay (`ChineseTokenizer.encode(max_tokens=)`, and
    in-graph `cngpt_tf.text_graph.TextGraph.encode` for the SavedModel). The reply still starts with
    the whole prompt as sent (`join_continuation`)."""
    return list(ids[len(ids) - max(0, min(room, len(ids))):])


def join_continuation(prompt: str, continuation: str, continues_word: bool) -> str:
    """The one rule that joins a prompt and its decoded continuation, for every face (the Python
    `Generator.generate` / pipeline and the SavedModel's `serving_default`, in-graph).

    The prompt is kept byte for byte as sent; the continuation (the clean decode of the new tokens
    only) follows it. One space goes between them only where decoding the two together would put
    one: the prompt's last character and the continuation's first are both word-like (a letter or
    digit that is not a CJK ideograph: "a Latin word after a Latin word gets its space") and the
    continuation does not start with a "##" piece, which continues the prompt's last word:

        ("GPT-2 is", "a model", False) -> "GPT-2 is a model"     ("hello ", "world", False) -> "hello world"
        ("明月", "几时有", False)        -> "明月几时有"            ("hello", "s", True)      -> "hellos"
    """
    if continues_word or not prompt or not continuation:
        return prompt + continuation
    space = is_wordlike(prompt[-1]) and is_wordlike(continuation[0])
    return prompt + (" " if space else "") + continuation


def _join(words: list[str]) -> str:
    """Join words, with a space only where both touching characters are word-like."""
    out: list[str] = []
    for word in words:
        if not word:
            continue  # an empty vocab line decodes to nothing
        if out and is_wordlike(out[-1][-1]) and is_wordlike(word[0]):
            out.append(" ")
        out.append(word)
    return "".join(out)


def is_wordlike(c: str) -> bool:
    return unicodedata.category(c)[0] in "LN" and not is_cjk(c)
