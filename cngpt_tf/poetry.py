"""Classical-poem forms as a logits constraint inside the XLA decode loop.

A form is (characters per line, lines): 五言/七言 × 绝句 (4 lines) / 律诗 (8 lines), or any pair.
The new tokens are laid out as L lines of C characters, each followed by its punctuation ("，"
after odd lines, "。" after even ones), then [SEP]. At every step a mask allows only:
- a single CJK character of the vocab at character positions (no punctuation, digits, Latin, `##`
  pieces, specials or [UNK]);
- the acrostic character at the start of each line (藏头诗), when one is given;
- with rhyme, at the last character of even lines, characters of one rhyme group: a given one, or
  (rhyme="auto") the group of the character the model chose to end line 2;
- the line's punctuation, and [SEP] at the end.

The schedule of masks is data (tensors), not code: one compiled decoder serves every form,
acrostic and rhyme, and every row of a batch can have its own. `PoemConstraint` is the in-loop
part; `PoemPlan` builds its tensors in NumPy.

Rhyme groups: the 14 groups of 中华新韵 (the modern standard for new classical verse), built from
pinyin finals with pypinyin by `scripts/build_rhyme_table.py` and shipped as
`cngpt_tf/data/rhyme_groups.json`, covering U+4E00–U+9FFF (most common reading of each character).
We chose it over 平水韵 because a 平水韵 table needs a source we cannot fetch here and it is judged
against Middle Chinese readings; pass `rhyme_table=` to use your own grouping.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from .generation_config import FORMS, parse_form  # noqa: F401  (FORMS: the forms by name, defined there once)
from .tokenizer import is_cjk

COMMA, PERIOD = "，", "。"
RHYME_TABLE = Path(__file__).with_name("data") / "rhyme_groups.json"

# Schedule codes: >= 0 is a row of the mask table; these two are decided per step in the loop.
FORCE = -1  # exactly the token in `forced` (the acrostic character)
RHYME = -2  # a character of the row's rhyme group (chosen at the first such step under rhyme="auto")
CJK_ROW, COMMA_ROW, PERIOD_ROW, SEP_ROW, ANY_GROUP_ROW, FIRST_GROUP_ROW = 0, 1, 2, 3, 4, 5


def load_rhyme_table(path_or_dict=None) -> dict[str, str]:
    """{group name: characters}; the shipped 中华新韵 table by default."""
    if isinstance(path_or_dict, dict):
        return path_or_dict
    return json.loads(Path(path_or_dict or RHYME_TABLE).read_text(encoding="utf-8"))


class PoemVocab:
    """What the masks need from a vocab: the CJK character tokens, punctuation, [SEP], rhyme groups."""

    def __init__(self, tokens: list[str], sep_id: int, rhyme_table=None):
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}  # a repeated token: the last wins, as in HF
        missing = [p for p in (COMMA, PERIOD) if p not in self.index]
        if missing:
            raise ValueError(f"vocab lacks the poem punctuation {' '.join(missing)}")
        self.sep_id = sep_id
        self.cjk = np.array([len(t) == 1 and is_cjk(t) for t in tokens])  # [V]
        groups = load_rhyme_table(rhyme_table)
        self.group_names = list(groups)
        self.char_group = np.full(len(tokens), -1, np.int32)  # [V] rhyme group of each token
        for g, chars in enumerate(groups.values()):
            for c in chars:
                if c in self.index and self.cjk[self.index[c]]:
                    self.char_group[self.index[c]] = g

    @functools.cached_property
    def table(self) -> np.ndarray:
        """[5 + G, V] bool: the rows the schedule codes name."""
        v = len(self.tokens)
        rows = [self.cjk, _one_hot(self.index[COMMA], v), _one_hot(self.index[PERIOD], v), _one_hot(self.sep_id, v),
                self.cjk & (self.char_group >= 0)]
        rows += [self.cjk & (self.char_group == g) for g in range(len(self.group_names))]
        return np.stack(rows)

    def char_id(self, c: str, what: str) -> int:
        if c not in self.index or not self.cjk[self.index[c]]:
            raise ValueError(f"{what}: character {c!r} is not a Chinese character of the vocab")
        return self.index[c]


@dataclasses.dataclass(frozen=True)
class PoemPlan:
    """Everything the constraint needs for one batch of poems.

    table [K, V] bool and char_group [V] come from the vocab; schedule/forced [B, N] say, per row
    and new-token step, which table row applies (or FORCE / RHYME); rhyme_group [B] starts each
    row's group (-1: chosen at the first rhyme step, or no rhyme).
    """

    chars: int
    lines: int
    table: np.ndarray
    char_group: np.ndarray
    schedule: np.ndarray
    forced: np.ndarray
    rhyme_group: np.ndarray

    def inputs(self, n_steps: int) -> tuple:
        """The decoder's constraint inputs, the schedule padded to `n_steps` (the bucketed buffer)."""
        pad = n_steps - self.schedule.shape[1]
        schedule = np.pad(self.schedule, ((0, 0), (0, pad)), constant_values=SEP_ROW)
        forced = np.pad(self.forced, ((0, 0), (0, pad)))
        return tuple(tf.constant(a) for a in (self.table, schedule, forced, self.char_group, self.rhyme_group))

    @property
    def n_new(self) -> int:  # every character, every punctuation mark, then [SEP]
        return self.lines * (self.chars + 1) + 1

    @classmethod
    def build(cls, vocab: PoemVocab, form, batch: int, acrostic: str | None = None, rhyme=None) -> "PoemPlan":
        """The plan of `batch` poems; ValueError naming form, acrostic or rhyme (checked in that order,
        the order of the `poem` signature). acrostic and rhyme: None or "" for none (the signature's
        string inputs spell none ""), so that every face reads the same request the same way."""
        acrostic = None if acrostic == "" else acrostic
        rhyme = None if rhyme == "" else rhyme
        chars, lines = parse_form(form)
        if acrostic is not None and len(acrostic) != lines:
            raise ValueError(f"acrostic: {len(acrostic)} characters for a {lines}-line poem")
        acrostic_ids = [vocab.char_id(c, "acrostic") for c in acrostic] if acrostic else None
        group = -1
        if rhyme not in (None, "auto"):
            if isinstance(rhyme, str) and rhyme in vocab.group_names:
                group = vocab.group_names.index(rhyme)
            elif isinstance(rhyme, str) and len(rhyme) == 1:
                group = int(vocab.char_group[vocab.char_id(rhyme, "rhyme")])
                if group < 0:
                    raise ValueError(f"rhyme: character {rhyme!r} is in no rhyme group")
            else:
                raise ValueError(f"rhyme: expected None, 'auto', a group name or one character, got {rhyme!r}")
            if not vocab.table[FIRST_GROUP_ROW + group].any():
                raise ValueError(f"rhyme: group {vocab.group_names[group]!r} has no character in the vocab")
        elif rhyme == "auto" and not vocab.table[ANY_GROUP_ROW].any():
            raise ValueError("rhyme: no character of the vocab is in any rhyme group of the table")
        acrostic_row = np.array([acrostic_ids or [-1] * lines], np.int32)
        schedule, forced = build_schedule(np.array([chars]), np.array([lines]), acrostic_row,
                                          np.array([rhyme is not None]), lines * (chars + 1) + 1)
        tile = lambda a: np.tile(a.numpy(), (batch, 1))  # noqa: E731
        return cls(chars, lines, vocab.table, vocab.char_group, tile(schedule), tile(forced),
                   np.full(batch, group, np.int32))


def build_schedule(chars, lines, acrostic_ids, rhyme, n_steps):
    """The per-step mask codes of a batch of poems, in TF ops (used eagerly and inside SavedModels).

    chars, lines: [B] int32; acrostic_ids: [B, A] int32, -1 where a row has no acrostic; rhyme: [B]
    bool. Returns schedule and forced, [B, n_steps] int32: step t of row b is character `t % (C+1)`
    of line `t // (C+1)`; position C is the line's punctuation; step L*(C+1) is [SEP] (and so is
    anything after it: the row has finished by then).
    """
    chars, lines = tf.cast(chars, tf.int32)[:, None], tf.cast(lines, tf.int32)[:, None]  # [B, 1]
    t = tf.range(n_steps)[None, :]  # [1, N]
    line, pos = t // (chars + 1), t % (chars + 1)  # [B, N]
    schedule = tf.fill(tf.shape(line), CJK_ROW)
    punctuation = tf.where(line % 2 == 0, COMMA_ROW, PERIOD_ROW)
    schedule = tf.where(pos == chars, punctuation, schedule)
    rhymes = rhyme[:, None] & (line % 2 == 1) & (pos == chars - 1)  # an acrostic (below) wins at pos 0
    schedule = tf.where(rhymes, RHYME, schedule)
    acrostic = tf.gather(acrostic_ids, tf.minimum(line, tf.shape(acrostic_ids)[1] - 1), batch_dims=1)  # [B, N]
    force = (pos == 0) & (acrostic >= 0)
    schedule = tf.where(force, FORCE, schedule)
    forced = tf.where(force, acrostic, 0)
    schedule = tf.where(t >= lines * (chars + 1), SEP_ROW, schedule)
    return schedule, forced


class PoemConstraint:
    """The in-loop part: masks a step's logits, and remembers each row's rhyme group."""

    def __init__(self, table, schedule, forced, char_group):
        self.table, self.schedule, self.forced, self.char_group = table, schedule, forced, char_group

    @classmethod
    def from_inputs(cls, table, schedule, forced, char_group, rhyme_group):
        """From `PoemPlan.inputs()` tensors: (constraint, its initial state: the rhyme groups [B])."""
        return cls(table, schedule, forced, char_group), rhyme_group

    def apply(self, logits, step, group):
        """logits [B, V] at new-token index `step` -> logits with disallowed tokens at -inf."""
        code = self.schedule[:, step]  # [B]
        rhyme_row = tf.where(group >= 0, FIRST_GROUP_ROW + group, ANY_GROUP_ROW)
        row = tf.where(code == RHYME, rhyme_row, tf.maximum(code, 0))
        allowed = tf.gather(self.table, row)  # [B, V]
        forced = tf.one_hot(self.forced[:, step], tf.shape(logits)[-1], on_value=True, off_value=False)
        allowed = tf.where((code == FORCE)[:, None], forced, allowed)
        return tf.where(allowed, logits, tf.constant(float("-inf"), logits.dtype))

    def update(self, token, step, group):
        """After a rhyme step, a row without a group takes the group of the character it chose."""
        chosen = tf.gather(self.char_group, token)
        return tf.where(tf.logical_and(self.schedule[:, step] == RHYME, group < 0), chosen, group)


def format_poem(text: str) -> str:
    """"床前明月光，疑是地上霜。" -> one line per 句, each ending in its punctuation."""
    return text.replace(COMMA, COMMA + "\n").replace(PERIOD, PERIOD + "\n").rstrip("\n")


def _one_hot(i: int, n: int) -> np.ndarray:
    row = np.zeros(n, bool)
    row[i] = True
    return row


def missing_punctuation(tokens: list[str]) -> list[str]:
    """The poem punctuation ("，", "。") a vocab lacks; poems need both (`PoemVocab` refuses such a vocab)."""
    present = set(tokens)
    return [p for p in (COMMA, PERIOD) if p not in present]
