"""In-graph BERT-Chinese tokenization for a SavedModel served by stock `tensorflow/serving`.

Stock TF Serving has no (or an old) tensorflow-text, so `TextGraph` uses core TensorFlow ops only:
`tf.strings`, `tf.lookup.StaticHashTable`, ragged tensors and a `tf.while_loop`. `encode` gives the
ids of HF's slow `BertTokenizer` (BasicTokenizer then WordPiece) with `[CLS]` in front, `decode` the
clean text of `ChineseTokenizer.decode`, `continue_text` the reply of `ChineseTokenizer.continue_text`
(the request text as sent + the decoded new tokens). Core TF has no Unicode normalisation or full
`lower()`, so at construction we precompute, with Python's `unicodedata` (the one HF uses), what BERT
does to each single code point (lower, clean, CJK spacing, NFC, lower, NFD, strip Mn, punctuation
spacing) and store it as code-point ranges plus a table; the graph maps each code point and splits at
spaces. Casing follows the model's tokenizer settings as `ChineseTokenizer` does: `do_lower_case`, and
accents stripped whenever lower-casing is on unless strip_accents=False (strip_accents=True strips
them in a cased model too).

Differences from HF (everything else gives identical ids; see tests/cngpt_tf/test_text_graph.py):

* accents stripped: BERT's NFC then NFD of a whole word equal NFD per code point, except the
  canonical reordering of adjacent *spacing* marks (category Mc with a non-zero combining class; 25
  code points such as U+302E, U+1D165-U+1D172) that NFD reorders and we do not. It can only change
  ids if a vocab piece holds such a mark; the BERT Chinese vocab holds none (the word is `[UNK]`
  either way), so there the ids are identical.
* accents kept (do_lower_case=False): NFC composition of multi-code-point sequences ("e" + U+0301 -> "é") is not
  done, only single code point NFC (U+212B -> "Å", CJK compatibility ideographs); ids differ where
  the vocab spells the two forms differently (in the BERT Chinese vocab both are `[UNK]`). A
  special token interrupted by dropped characters ("[CL\\x00S]") is `[`, `CL`/`[UNK]`, `]` here,
  `[CLS]` in HF (its never_split check runs after cleaning; with lower-casing it cannot match).
* Bytes that are not UTF-8 become U+FFFD, which BERT's cleaning drops: such input never raises.
  `continue_text` keeps a text's bytes as sent, except that such bytes become U+FFFD there too, so
  that every reply is valid UTF-8 (a JSON reply of the REST API needs it).
* `decode` drops ids outside the vocab where `ChineseTokenizer.decode` raises VocabError.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import tensorflow as tf

from .tokenizer import is_wordlike
from .vocab import CLS, MASK, PAD, SEP, UNK, special_token_ids
from .wordpiece import MAX_WORD_CHARS as _MAX_WORD_CHARS  # HF WordpieceTokenizer.max_input_chars_per_word
from .wordpiece import SPECIALS as _SPECIALS  # matched literally in the text, as HF's added-token trie does
from .wordpiece import clean_char, is_punctuation, strip_accents

_SENTINEL = 0x110000  # code points past Unicode stand for the literal special tokens
_KEEP, _SPACED, _TABLE = 0, 1, 2  # code point classes: unchanged, " c ", looked up ("" if absent)


class TextGraph(tf.Module):
    """`encode`: text -> left-padded `[CLS]` + BERT ids; `decode`: ids -> clean text. Serializable.

    `vocab_tokens` is `read_vocab(path)` (id = index); do_lower_case / strip_accents as in
    `ChineseTokenizer` (the model's tokenizer_config.json). The first build takes 1-2 s (a pass over
    all code points, cached per casing). The methods are `tf.function`s with fixed signatures, so
    `tf.saved_model.save` keeps them and the tables (module attributes) without tensorflow-text or
    Python callbacks.
    """

    def __init__(self, vocab_tokens: list[str], *, do_lower_case: bool = True, add_cls: bool = True,
                 strip_accents: bool | None = None):
        super().__init__()
        strip = strip_accents is not False if do_lower_case else bool(strip_accents)  # HF's BasicTokenizer
        ids = {t: i for i, t in enumerate(vocab_tokens)}  # last duplicate wins, as HF's load_vocab
        self._unk, self._cls, self._pad = ids[UNK], ids[CLS], ids[PAD]
        self._add_cls = add_cls
        self._vocab = _table(list(ids), list(ids.values()), -1)
        # A literal special token becomes the word "\0k"; its id is the vocab's, or [UNK] where the vocab
        # lacks it (HF would give an id past the vocab; ChineseTokenizer gives [UNK] too).
        self._special_words = _table([f"\0{k}" for k in range(len(_SPECIALS))],
                                     [ids.get(s, self._unk) for s in _SPECIALS], -1)
        # Longest piece in characters: WordPiece never needs to try a longer prefix.
        self._max_piece = max(len(t[2:] if t.startswith("##") else t) for t in ids) or 1
        bounds, classes, table = _code_point_map(bool(do_lower_case), strip)
        self._bounds = tf.constant(bounds, tf.int32)  # [R] first code point of each run
        self._classes = tf.constant(classes, tf.int32)  # [R] class of each run
        self._chars = _table(list(table), list(table.values()), "")
        starts, wordlike = _wordlike_runs()
        self._wordlike_bounds = tf.constant(starts, tf.int32)  # [R'] first code point of each run
        self._wordlike_runs = tf.constant(wordlike)  # [R'] bool: is_wordlike of that run
        self._decode_init(vocab_tokens)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)], autograph=False)
    def encode(self, text, max_tokens):
        """text [B] -> (input_ids int32 [B, T], attention_mask int32 [B, T]), left-padded with [PAD].

        Rows longer than `max_tokens` lose their START (the end of a prompt is what the model
        continues); `[CLS]` stays first and counts: `cngpt_tf.tokenizer.keep_end`'s rule, the one
        `ChineseTokenizer.encode(text, max_tokens=)` applies for the Python text faces. T is the
        longest row, at most `max_tokens` (at least 1 with `[CLS]`). "" -> [CLS].
        """
        # Valid UTF-8 (bad bytes -> U+FFFD), then NUL (dropped by BERT anyway) -> U+FFFD, so that
        # "\0k" can mark the k-th literal special token.
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
        text = tf.strings.regex_replace(text, "\x00", "\ufffd")
        for k, special in enumerate(_SPECIALS):  # they cannot overlap: order does not matter
            text = tf.strings.regex_replace(text, re.escape(special), f"\0{k}")
        cps = tf.strings.unicode_decode(text, "UTF-8")  # ragged [B, L]
        v = cps.values
        marker = tf.equal(v, 0)
        after = tf.concat([v[1:], tf.zeros_like(v[:1])], 0)  # a marker is always followed by its digit
        v = tf.where(marker, _SENTINEL + after - ord("0"), v)
        keep = tf.logical_not(tf.concat([tf.zeros_like(marker[:1]), marker[:-1]], 0))  # drop the digits
        cps = tf.ragged.boolean_mask(cps.with_values(v), cps.with_values(keep))
        # Map every code point to what BERT makes of it ("" = dropped, " c " = own word).
        v = cps.values
        cls = tf.gather(self._classes, tf.searchsorted(self._bounds, v, side="right") - 1)
        chars = tf.strings.unicode_encode(v[:, None], "UTF-8")  # [L'] one string per code point
        mapped = tf.where(tf.equal(cls, _KEEP), chars,
                          tf.where(tf.equal(cls, _SPACED), tf.strings.join([" ", chars, " "]),
                                   self._chars.lookup(v)))
        words = tf.strings.split(tf.strings.reduce_join(cps.with_values(mapped), axis=1))  # [B, W]
        pieces = self._wordpiece(words.values)  # ragged [N, P]
        ids = tf.RaggedTensor.from_row_splits(pieces.values, tf.gather(pieces.row_splits, words.row_splits))
        # Left truncation (`keep_end`): keep the last `room` ids of each row.
        room = tf.maximum(max_tokens - int(self._add_cls), 0)
        limits = ids.row_limits()
        starts = limits - tf.minimum(ids.row_lengths(), tf.cast(room, tf.int64))
        ids = tf.gather(ids.values, tf.ragged.range(starts, limits))  # ragged [B, <=room]
        batch = tf.shape(text, out_type=tf.int64)[0]
        if self._add_cls:
            ids = tf.concat([tf.RaggedTensor.from_tensor(tf.fill([batch, 1], self._cls)), ids], axis=1)
        # Left padding: position j of a row of length n holds id j - (T - n) when that is >= 0.
        lengths = ids.row_lengths()
        width = tf.reduce_max(tf.concat([lengths, [0]], 0))
        dense = ids.to_tensor(default_value=self._pad, shape=tf.stack([batch, width]))  # right-padded
        src = tf.range(width)[None, :] - (width - lengths)[:, None]  # [B, T]
        valid = src >= 0
        input_ids = tf.where(valid, tf.gather(dense, tf.maximum(src, 0), batch_dims=1), self._pad)
        return input_ids, tf.cast(valid, tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)], autograph=False)
    def decode(self, ids, eos_id):
        """ids [B, N] -> text [B]: `ChineseTokenizer.decode`, also ending at the first `eos_id`."""
        return self._decode(ids, eos_id)[0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([], tf.int32)], autograph=False)
    def continue_text(self, text, new_ids, eos_id):
        """text [B] (the requests as sent), new_ids [B, N] -> [B]: each text byte for byte (bytes that
        are not UTF-8 become U+FFFD), then the decode of its new tokens, joined by
        `cngpt_tf.tokenizer.join_continuation`'s rule (one space only between a word-like last
        character of the text and a word-like first character of the continuation, unless that
        starts with a "##" piece)."""
        continuation, first_id, has_first = self._decode(new_ids, eos_id)
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        cps = tf.strings.unicode_decode(text, "UTF-8")  # ragged [B, L]: the last code point decides
        nonempty = cps.row_lengths() > 0
        last = tf.gather(tf.concat([cps.values, [0]], 0), tf.where(nonempty, cps.row_limits() - 1, 0))
        runs = tf.searchsorted(self._wordlike_bounds, tf.cast(last, tf.int32), side="right") - 1
        text_wordlike = nonempty & tf.gather(self._wordlike_runs, runs)
        space = (text_wordlike & has_first & tf.gather(self._starts_wordlike, first_id)
                 & ~tf.gather(self._is_cont, first_id))
        return tf.strings.join([text, tf.where(space, " ", ""), continuation])

    def _decode(self, ids, eos_id):
        """decode's text [B], and per row the first shown token's id [B] (0 when none) and whether
        there is one [B]."""
        inside = (ids >= 0) & (ids < self._size)
        safe = tf.where(inside, ids, 0)
        stop = tf.equal(ids, self._sep) | tf.equal(ids, eos_id)
        before_stop = tf.equal(tf.cumsum(tf.cast(stop, tf.int32), axis=1), 0)
        kept = tf.ragged.boolean_mask(safe, before_stop & inside & ~tf.gather(self._hidden, safe))
        # A word starts at each non-"##" token and at a row's first token; the running count of
        # word starts tells whether two tokens belong to one word.
        first = tf.equal(_row_positions(kept), 0)
        word_no = tf.cumsum(tf.cast(first | ~tf.gather(self._is_cont, kept.values), tf.int32))
        nonempty = tf.gather(self._nonempty, kept.values)
        tok = tf.ragged.boolean_mask(kept, kept.with_values(nonempty))  # [B, K'] empty pieces out
        word_no = tf.boolean_mask(word_no, nonempty)
        prev = tf.concat([tf.zeros_like(tok.values[:1]), tok.values[:-1]], 0)  # [K'] id before
        prev_word = tf.concat([tf.zeros_like(word_no[:1]), word_no[:-1]], 0)
        # One space only between two words whose touching characters are both word-like.
        space = ((_row_positions(tok) > 0) & tf.not_equal(word_no, prev_word)
                 & tf.gather(self._ends_wordlike, prev) & tf.gather(self._starts_wordlike, tok.values))
        pieces = tf.gather(self._pieces, tok.values)
        text = tf.where(space, tf.strings.join([" ", pieces]), pieces)
        has_first = tok.row_lengths() > 0
        first_id = tf.gather(tf.concat([tok.values, [0]], 0),
                             tf.where(has_first, tok.row_starts(), tf.size(tok.values, out_type=tf.int64)))
        return tf.strings.reduce_join(tok.with_values(text), axis=1), first_id, has_first

    def _wordpiece(self, words):
        """HF's greedy longest-match-first WordPiece over words [N] -> ragged ids [N, P].

        A word in the vocab as a whole (every CJK character) is one lookup. The others loop: each
        step takes one piece from every unfinished word, looking up all its prefixes of up to
        `_max_piece` characters at once ([M, K] strings).
        """
        length = tf.strings.length(words, unit="UTF8_CHAR")  # [N]
        special = self._special_words.lookup(words)
        head = tf.where(special >= 0, special, tf.where(length > _MAX_WORD_CHARS, self._unk,
                                                         self._vocab.lookup(words)))  # -1: loop
        rest = tf.where(head < 0)[:, 0]  # [M] the words to split
        word, size = tf.gather(words, rest), tf.gather(length, rest)
        kmax = tf.minimum(self._max_piece, tf.reduce_max(tf.concat([size, [1]], 0)))
        k = tf.range(1, kmax + 1)  # [K] candidate lengths
        tiled = tf.broadcast_to(word[:, None], tf.stack([tf.size(word), kmax]))  # [M, K]

        def step(start, done, bad, out):
            pos = tf.broadcast_to(start[:, None], tf.shape(tiled))
            sub = tf.strings.substr(tiled, pos, tf.broadcast_to(k, tf.shape(tiled)), unit="UTF8_CHAR")
            sub = tf.where(pos > 0, tf.strings.join(["##", sub]), sub)
            found = self._vocab.lookup(sub)  # [M, K]
            ok = (found >= 0) & (pos + k[None, :] <= size[:, None])
            best = tf.reduce_max(tf.where(ok, k, 0), axis=1)  # [M] longest match, 0 = none
            best_id = tf.gather(found, tf.maximum(best - 1, 0), batch_dims=1)
            active = ~done
            failed = active & tf.equal(best, 0)
            start = tf.where(active, start + best, start)
            out = tf.concat([out, tf.where(active & ~failed, best_id, -1)[:, None]], 1)
            return start, done | failed | (start >= size), bad | failed, out

        none = tf.zeros_like(size, tf.bool)
        _, _, bad, out = tf.while_loop(
            lambda start, done, bad, out: tf.reduce_any(~done), step,
            (tf.zeros_like(size), none, none, tf.zeros([tf.size(word), 0], tf.int32)),
            shape_invariants=(tf.TensorShape([None]),) * 3 + (tf.TensorShape([None, None]),))
        # A word WordPiece cannot spell is one [UNK]; put the split words back in place.
        out = tf.concat([tf.where(bad, self._unk, -1)[:, None], tf.where(bad[:, None], -1, out)], 1)
        split = tf.tensor_scatter_nd_update(tf.fill(tf.stack([tf.size(words), tf.shape(out)[1]]), -1),
                                            rest[:, None], out)
        ids = tf.concat([head[:, None], split], 1)  # [N, 1 + 1 + steps], -1 = nothing
        return tf.ragged.boolean_mask(ids, ids >= 0)

    def _decode_init(self, tokens: list[str]) -> None:
        """Per-id constants mirroring ChineseTokenizer.decode (its special ids, first occurrence)."""
        specials = special_token_ids(tokens)
        hidden = {specials[t] for t in (PAD, CLS, SEP, MASK) if t in specials}
        hidden.update(i for i, t in enumerate(tokens) if re.fullmatch(r"\[unused\d+\]", t))
        cont = [t.startswith("##") and len(t) > 2 for t in tokens]
        pieces = [t[2:] if c else t for t, c in zip(tokens, cont)]
        self._size, self._sep = len(tokens), specials[SEP]
        self._hidden = tf.constant([i in hidden for i in range(len(tokens))])
        self._is_cont = tf.constant(cont)
        self._pieces = tf.constant(pieces)
        self._nonempty = tf.constant([bool(p) for p in pieces])
        self._starts_wordlike = tf.constant([bool(p) and is_wordlike(p[0]) for p in pieces])
        self._ends_wordlike = tf.constant([bool(p) and is_wordlike(p[-1]) for p in pieces])


def _row_positions(rt: tf.RaggedTensor) -> tf.Tensor:
    """Index of each value of a 2-D ragged tensor within its row."""
    return tf.range(tf.size(rt.values, out_type=tf.int64)) - tf.gather(rt.row_starts(), rt.value_rowids())


def _table(keys, values, default) -> tf.lookup.StaticHashTable:
    """A lookup table; a key given twice (a vocab may repeat a token) maps to its last value, as HF's
    `load_vocab` reads it (TensorFlow's initializer would refuse the whole table)."""
    pairs = dict(zip(keys, values))
    keys, values = list(pairs), list(pairs.values())
    key_dtype = tf.string if keys and isinstance(keys[0], str) else tf.int32
    value_dtype = tf.string if isinstance(default, str) else tf.int32
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, key_dtype), tf.constant(values, value_dtype))
    return tf.lookup.StaticHashTable(init, default)


@functools.lru_cache(maxsize=4)  # about 1.5 s each; the result is only read
def _code_point_map(lower: bool, strip: bool) -> tuple[list[int], list[int], dict[int, str]]:
    """Runs of code points with one class, and the table of the code points BERT rewrites."""
    bounds, classes, table = [], [], {}
    for cp in range(0x110000):
        c = chr(cp)
        out = _bert_char(c, lower, strip)
        cls = _KEEP if out == c else _SPACED if out == f" {c} " else _TABLE
        if cls == _TABLE and out:
            table[cp] = out
        if not classes or classes[-1] != cls:
            bounds.append(cp)
            classes.append(cls)
    for k in range(len(_SPECIALS)):  # the literal special tokens: their own words
        table[_SENTINEL + k] = f" \0{k} "
    bounds.append(_SENTINEL)
    classes.append(_TABLE)
    return bounds, classes, table


@functools.lru_cache(maxsize=1)
def _wordlike_runs() -> tuple[list[int], list[bool]]:
    """Runs of code points by `is_wordlike` (the joining rule's test): first code point, and value."""
    starts, values = [], []
    for cp in range(0x110000):
        value = is_wordlike(chr(cp))
        if not values or values[-1] != value:
            starts.append(cp)
            values.append(value)
    return starts, values


def _bert_char(c: str, lower: bool, strip: bool) -> str:
    """What HF BertTokenizer makes of one code point, in HF's order; spaces separate words."""
    s = c.lower() if lower else c  # PreTrainedTokenizer.tokenize lowers each character first
    # BasicTokenizer._clean_text, then _tokenize_chinese_chars: the rule cngpt_tf.wordpiece states
    cleaned = "".join(clean_char(x) for x in s)
    out = []
    for y in unicodedata.normalize("NFC", cleaned):
        if y.isspace():  # str.split() also splits at U+2028/U+2029, which cleaning keeps
            out.append(" ")
            continue
        if lower:  # token.lower() ...
            y = y.lower()
        if strip:  # ... then NFD and drop the combining marks (Mn)
            y = strip_accents(y)
        out.extend(f" {z} " if is_punctuation(z) else z for z in y)
    return "".join(out)
