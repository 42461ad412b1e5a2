"""HF's slow `BertTokenizer` (transformers 4.57) text -> ids, in plain Python: no transformers, torch
or TensorFlow, so that building a tokenizer costs milliseconds, not the 3-6 s of importing them.

`BertWordPiece.encode(text)` equals
`BertTokenizer(vocab_file, do_lower_case=, strip_accents=, tokenize_chinese_chars=).convert_tokens_to_ids(
BertTokenizer.tokenize(text))` for every text (tests/cngpt_tf/test_tokenizer_matches_hf.py checks
every code point and random texts against HF itself). HF's steps, in its order:

1. `PreTrainedTokenizer.tokenize`: with do_lower_case, every character outside a literal special
   token is lower-cased on its own (a regex match each: str.lower()'s final-sigma rule never applies,
   "Σ" is always "σ"); then the special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` written literally
   are split out (its trie; these five can neither nest nor overlap, so a regex finds the same
   matches). They are AddedTokens with lstrip=rstrip=False: no whitespace beside them is stripped,
   and none could matter, as step 2 drops whitespace anyway. "[cls]" or "[Cls]" is no special
   token; with do_lower_case "[CLS]" still is (the lower-casing skips it). Each literal special
   is one id: the vocab's (a repeated token: its last line), and for one the vocab lacks the id
   HF gives the token it adds for it at construction, from len({token: id}) on in the order
   [UNK] [SEP] [PAD] [CLS] [MASK]. `ChineseTokenizer` requires the first four, so there only
   `[MASK]` can be missing: id len({token: id}), the vocab size when no token repeats (outside the
   model's embedding table), the id of a vocab line when some do.
2. `BasicTokenizer` on each text between them: delete NUL, U+FFFD and every control/format/
   unassigned/private-use/surrogate character (category C*, but \\t \\n \\r are whitespace); every
   whitespace character (" ", \\t, \\n, \\r, category Zs) -> " "; " c " around every CJK ideograph
   (tokenize_chinese_chars); NFC over the whole text; split at `str.split()`'s whitespace (which
   also splits at U+2028/U+2029, kept by the cleaning). A word that is one of the five special
   token strings (only cleaning or NFC can make one: "[CL\\x00S]", "[MAS\\u212a]") is kept whole;
   any other word is lower-cased (do_lower_case) and stripped of accents (NFD, combining marks Mn
   dropped: on with do_lower_case unless strip_accents=False, and with strip_accents=True alone),
   then kept whole if it *now* is a special token string ("[ĆLS]" cased with strip_accents=True),
   else split around every punctuation character.
3. `WordpieceTokenizer` on each word: a word over 100 characters is `[UNK]`; else greedy
   longest-match-first from the vocab, pieces after the first looked up as "##" + piece; a word
   it cannot spell to its end is one `[UNK]` as a whole. A vocab token holding whitespace, an empty
   vocab line or U+2028 can never match, as words hold no whitespace and are never empty.
4. Ids from the vocab {token: id}, read as `vocab.read_vocab` reads it; a repeated token: the last
   id wins (HF's `load_vocab` fills an OrderedDict line by line).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from .vocab import CLS, MASK, PAD, SEP, UNK

SPECIALS = (PAD, UNK, CLS, SEP, MASK)  # matched verbatim in the text; HF's never_split set too
_ADDED_ORDER = (UNK, SEP, PAD, CLS, MASK)  # the order HF adds the specials a vocab lacks, new ids
_SPECIAL_RE = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")
MAX_WORD_CHARS = 100  # HF WordpieceTokenizer.max_input_chars_per_word
_CACHE_LIMIT = 1 << 16  # entries per cache: bounds memory whatever text is fed


def is_cjk(c: str) -> bool:
    """A CJK ideograph, by the ranges BERT splits per character (not kana, hangul or CJK punctuation)."""
    cp = ord(c)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def is_punctuation(c: str) -> bool:
    """BERT's punctuation: Unicode P* plus every non-alphanumeric printable ASCII character."""
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def clean_char(c: str, split_cjk: bool = True) -> str:
    """What BasicTokenizer's cleaning and CJK spacing make of one code point, before NFC:
    "" (NUL, U+FFFD and controls, i.e. category C* but \\t \\n \\r: deleted), " " (BERT's
    whitespace: " ", \\t, \\n, \\r and category Zs), " c " (a CJK ideograph, when split_cjk),
    else c. The one statement of this rule, for `BertWordPiece` and `text_graph`."""
    if c in " \t\n\r":
        return " "
    category = unicodedata.category(c)
    if category[0] == "C" or c in "\x00\ufffd":
        return ""
    if category == "Zs":
        return " "
    return f" {c} " if split_cjk and is_cjk(c) else c


def strip_accents(word: str) -> str:
    """BasicTokenizer._run_strip_accents: NFD, then drop the combining marks (category Mn)."""
    if word.isascii():
        return word  # NFD and Mn leave ASCII alone
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def lower_chars(text: str) -> str:
    """HF's lower-casing of text: str.lower() of each character on its own."""
    if "\u03a3" not in text:  # capital sigma: the only character str.lower() maps by context
        return text.lower()
    return "".join([c.lower() for c in text])


class _CharTable(dict):
    """code point -> `clean_char` of it, filled as characters are met (for str.translate)."""

    def __init__(self, split_cjk: bool):
        super().__init__()
        self._split_cjk = split_cjk

    def __missing__(self, cp: int) -> str:
        out = clean_char(chr(cp), self._split_cjk)
        if len(self) < _CACHE_LIMIT:
            self[cp] = out
        return out


_CHAR_TABLES = {True: _CharTable(True), False: _CharTable(False)}  # shared: the rule has no other input


class BertWordPiece:
    """Text -> ids exactly as HF's slow BertTokenizer (see the module docstring for the rules).

    tokens: the vocab in id order (`vocab.read_vocab`); the settings as `BertTokenizer`'s.
    `words(text)` yields, in order, each literal special token and each basic word with its ids:
    the one list that both `encode` and `ChineseTokenizer.normalise` read.
    """

    def __init__(self, tokens: list[str], *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, absent_specials_as_unk: bool = False):
        """absent_specials_as_unk: a literal special token the vocab lacks is the vocab's `[UNK]`
        (which must then exist) instead of HF's id past the vocab (`ChineseTokenizer` asks this)."""
        self.vocab = {t: i for i, t in enumerate(tokens)}  # a repeated token: the last id, as HF's load_vocab
        # The specials as HF adds them at construction: the vocab's id, or a new id past len(vocab).
        self.special_ids, new = {}, len(self.vocab)
        for token in _ADDED_ORDER:
            if token in self.vocab:
                self.special_ids[token] = self.vocab[token]
            elif absent_specials_as_unk:
                self.special_ids[token] = self.vocab[UNK]
            else:
                self.special_ids[token], new = new, new + 1
        self.unk_id = self.special_ids[UNK]  # what convert_tokens_to_ids gives the piece "[UNK]"
        self.lower = bool(do_lower_case)
        self.strip = strip_accents is not False if self.lower else bool(strip_accents)
        self._chars = _CHAR_TABLES[bool(tokenize_chinese_chars)]
        # No vocab piece is longer than this (in characters): WordPiece need not try longer prefixes.
        self._longest = max(map(len, self.vocab), default=0)
        self._words: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}  # cache of _analyse

    def encode(self, text: str) -> list[int]:
        """HF's `convert_tokens_to_ids(tokenize(text))`."""
        ids: list[int] = []
        for _, word_ids in self.words(text):
            ids += word_ids
        return ids

    def words(self, text: str) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(word, its ids) in order: a literal special token with its one id; a basic word with its
        WordPiece ids, `(unk_id,)` when WordPiece cannot spell it."""
        for k, part in enumerate(_SPECIAL_RE.split(text)):  # odd k: a special token the regex matched
            if k % 2:
                yield part, (self.special_ids[part],)
            elif part:
                if self.lower:
                    part = lower_chars(part)
                cleaned = part.translate(self._chars)  # [L] -> [L'] chars, CJK spaced
                if not cleaned.isascii():
                    cleaned = unicodedata.normalize("NFC", cleaned)
                for token in cleaned.split():  # whitespace-free tokens, as BasicTokenizer splits them
                    analysed = self._words.get(token)
                    if analysed is None:
                        analysed = self._analyse(token)
                        if len(self._words) >= _CACHE_LIMIT:
                            self._words.clear()
                        self._words[token] = analysed
                    yield from analysed

    def _analyse(self, token: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """One whitespace-free token of cleaned, NFC text -> its basic words, each with its ids."""
        if token in SPECIALS:  # BasicTokenizer's never_split: not lower-cased, stripped or split
            words = [token]
        else:
            if self.lower:
                token = token.lower()
            if self.strip:
                token = strip_accents(token)  # "" when the token was combining marks only: no word
            words = [token] if token in SPECIALS else _split_punctuation(token)
            # HF then re-splits the words at whitespace: a no-op, as neither str.lower() nor NFD
            # maps a character that is not whitespace to one that is (true of every code point).
        return tuple([(word, self._wordpiece(word)) for word in words])

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """WordpieceTokenizer.tokenize of one word, as ids: greedy longest match first."""
        n = len(word)
        if n > MAX_WORD_CHARS:
            return (self.unk_id,)
        whole = self.vocab.get(word)
        if whole is not None:  # every CJK character of the vocab, most words
            return (whole,)
        ids, start = [], 0
        while start < n:
            end = min(n, start + self._longest)  # a longer piece is in no vocab
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                i = self.vocab.get(piece)
                if i is not None:
                    break
                end -= 1
            else:
                return (self.unk_id,)  # a word WordPiece cannot spell is one [UNK]
            ids.append(i)
            start = end
        return tuple(ids)


def _split_punctuation(word: str) -> list[str]:
    """BasicTokenizer._run_split_on_punc: each punctuation character a word, the runs between too."""
    if len(word) < 2:
        return [word] if word else []
    pieces: list[str] = []
    run = 0  # start of the current run of non-punctuation
    for i, c in enumerate(word):
        if is_punctuation(c):
            if run < i:
                pieces.append(word[run:i])
            pieces.append(c)
            run = i + 1
    if run < len(word):
        pieces.append(word[run:])
    return pieces
