"""The `poem` signature's requests, parsed in-graph by the rules of `Generator.poem`.

`PoemTables` holds what the poem masks need (`cngpt_tf.poetry.PoemVocab`'s table, the rhyme groups of
the shipped 中华新韵 table, the vocab's CJK characters) as constants and lookup tables, and turns the
string inputs of a request into the inputs of `build_schedule` and `PoemConstraint`:

- form: a form name ("七言绝句") or "chars,lines" (1..32 each, surrounding whitespace allowed), as
  `cngpt_tf.generation_config.parse_form` reads a string;
- acrostic: "" for none, else one vocab CJK character per line (`PoemPlan.build`);
- rhyme: "" for none (the Python API's None), "auto" (even lines rhyme with line 2), a group name of
  the table (e.g. "十唐") or one vocab CJK character, whose group is used.

Every mistake `PoemPlan.build` refuses with a ValueError fails the request with INVALID_ARGUMENT, in
the same order (form, acrostic, rhyme) and with a message that starts with the field's name, as the
Python message does; the offending values follow it.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from ..generation_config import FORMS, MAX_FORM
from ..poetry import ANY_GROUP_ROW, FIRST_GROUP_ROW, PoemVocab

# Python's str.strip() whitespace, which parse_form allows around the numbers of "chars,lines".
_SPACE = "[" + "".join(f"\\x{{{cp:x}}}" for cp in range(sys.maxunicode + 1) if chr(cp).isspace()) + "]"
_NUMBER = "0*[0-9]{1,2}"  # more digits than leading zeros and two can only be out of range
_NUMERIC_FORM = f"{_SPACE}*{_NUMBER}{_SPACE}*,{_SPACE}*{_NUMBER}{_SPACE}*"


class PoemTables(tf.Module):
    """The poem masks' data for the `poem` signature, and in-graph parsing of its inputs."""

    def __init__(self, tokens: list[str], sep_id: int):
        super().__init__()
        vocab = PoemVocab(tokens, sep_id)  # ValueError for a vocab without "，" / "。"
        self.table = tf.constant(vocab.table)  # [5 + G, V] bool
        self.char_group = tf.constant(vocab.char_group)  # [V] int32, -1: in no group
        cjk = {t: i for i, t in enumerate(tokens) if vocab.cjk[i]}  # a repeated token: the last id, as HF
        self.char_ids = _table(list(cjk), list(cjk.values()))
        self.forms = _table(list(FORMS), [c * 100 + n for c, n in FORMS.values()])
        self.groups = _table(vocab.group_names, list(range(len(vocab.group_names))))
        self.group_filled = tf.constant(vocab.table[FIRST_GROUP_ROW:].any(axis=1))  # [G] has a vocab char
        self._any_group = bool(vocab.table[ANY_GROUP_ROW].any())

    def parse(self, form, acrostic, rhyme):
        """form, acrostic, rhyme: tf.string [B] -> (chars [B], lines [B], acrostic ids [B, A >= 1] (-1:
        none), rhyme on [B] bool, rhyme group [B] (-1: chosen at the first rhyme step, or none)).
        Returns them under control dependencies on every check, made in PoemPlan.build's order."""
        form, acrostic, rhyme = (_valid_utf8(x) for x in (form, acrostic, rhyme))
        checks = []

        def check(ok, message, bad_values):
            with tf.control_dependencies(checks):  # one check after the other: the first failure shows
                checks.append(tf.debugging.Assert(tf.reduce_all(ok), [message, tf.boolean_mask(bad_values, ~ok)],
                                                  summarize=8))

        # form: a name, or "chars,lines"
        named = self.forms.lookup(form)
        numeric = tf.strings.regex_full_match(form, _NUMERIC_FORM)
        digits = tf.strings.regex_replace(tf.where(numeric, form, "0,0"), _SPACE, "")
        pair = tf.strings.to_number(tf.strings.split(digits, ",").to_tensor("0", shape=[None, 2]), tf.int32)
        chars = tf.where(named >= 0, named // 100, pair[:, 0])
        lines = tf.where(named >= 0, named % 100, pair[:, 1])
        in_range = (chars >= 1) & (chars <= MAX_FORM) & (lines >= 1) & (lines <= MAX_FORM)
        check((named >= 0) | (numeric & in_range),
              f'form: use one of {", ".join(FORMS)} or "chars,lines" (1..{MAX_FORM} each), got', form)
        # acrostic: "" or one vocab CJK character per line
        letters = tf.strings.unicode_split(acrostic, "UTF-8")  # ragged [B, A]
        count = tf.cast(letters.row_lengths(), tf.int32)
        check((count == 0) | (count == lines), "acrostic: give one character per line of the form, got", acrostic)
        ids = self.char_ids.lookup(letters.to_tensor(""))  # [B, A]
        found = tf.reduce_all((ids >= 0) | (tf.range(tf.shape(ids)[1])[None, :] >= count[:, None]), axis=1)
        check(found, "acrostic: a character is not a Chinese character of the vocab, in", acrostic)
        ids = tf.where((count == 0)[:, None], -1, ids)
        ids = tf.pad(ids, [[0, 0], [0, 1]], constant_values=-1)  # at least one column
        # rhyme: "" / "auto" / a group name / one character
        none, auto = tf.equal(rhyme, ""), tf.equal(rhyme, "auto")
        by_name = self.groups.lookup(rhyme)
        single = tf.equal(tf.strings.length(rhyme, unit="UTF8_CHAR"), 1) & (by_name < 0)
        check(none | auto | (by_name >= 0) | single,
              "rhyme: expected '' (none), 'auto', a group name or one character, got", rhyme)
        char = self.char_ids.lookup(tf.where(single, rhyme, ""))
        check(~single | (char >= 0), "rhyme: character is not a Chinese character of the vocab:", rhyme)
        by_char = tf.where(single, tf.gather(self.char_group, tf.maximum(char, 0)), -1)
        check(~single | (by_char >= 0), "rhyme: character is in no rhyme group:", rhyme)
        group = tf.where(by_name >= 0, by_name, by_char)  # -1: "" or "auto"
        filled = tf.gather(self.group_filled, tf.maximum(group, 0))
        check((group < 0) | filled, "rhyme: group has no character in the vocab:", rhyme)
        check(~auto | self._any_group, "rhyme: no character of the vocab is in any rhyme group of the table", rhyme)
        with tf.control_dependencies(checks):
            return (tf.identity(chars), tf.identity(lines), tf.identity(ids), tf.identity(~none),
                    tf.identity(group))


def _valid_utf8(text):
    """Bytes that are not UTF-8 become U+FFFD (never a form, a vocab character or a group name)."""
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)


def _table(keys: list[str], values: list[int]) -> tf.lookup.StaticHashTable:
    """str -> int32, -1 for a missing key; a repeated key keeps its last value (as `dict` does)."""
    pairs = dict(zip(keys, values))
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(pairs), tf.string), tf.constant(np.array(list(pairs.values()), np.int32))), default_value=-1)
