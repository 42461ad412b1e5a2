"""The three commands as tasks: how a line becomes model input, and how a batch of lines runs.

`prepare` runs where lines are tokenized (before batching): it returns a `Prepared` line with its
length bucket, or the error that line's record will carry (empty for scoring, too long for the
context, a max_length the prompt already reaches). `run` runs in the model's worker on one batch of
lines of one bucket and returns, per line, the record's result fields and its token count (the
`tokens` counter: tokens scored, or tokens generated).

TensorFlow is imported only inside the methods: unpickling a task in a worker must not load it
before `handler.worker_setup` can hold back its start-up lines.
"""

from __future__ import annotations

import dataclasses
import math

from ..generation_config import SEED_MAX, GenerationConfig, parse_form
from .records import Line, Prepared, line_seed


@dataclasses.dataclass(frozen=True)
class Score:
    command = "score"

    def prepare(self, line: Line, tokenizer, config) -> Prepared | str:
        from ..decoding import round_up

        ids = tokenizer.encode(line.text)
        if len(ids) < 2:
            return "nothing to score: the line has no tokens"
        return Prepared(line, tuple(ids), min(round_up(len(ids)), config.n_ctx))

    def run(self, model, batch: list[Prepared], batch_size: int) -> list[tuple[dict, int]]:
        scored = model.scorer().score([p.ids for p in batch], _bucket(batch), batch_size)
        return [({"log_likelihood": ll, "tokens": n, "perplexity": math.exp(-ll / n)}, n) for ll, n in scored]


@dataclasses.dataclass(frozen=True)
class Generate:
    """settings: checked against the model (`GenerationConfig.validate`), seed set (the run's)."""

    settings: GenerationConfig
    command = "generate"

    def prepare(self, line: Line, tokenizer, config) -> Prepared | str:
        from ..decoding import round_up

        ids = tokenizer.encode(line.text)
        g = self.settings
        try:  # max_length counts this line's prompt (not a padded batch's)
            new = g.new_tokens(len(ids), config.n_ctx)
        except ValueError as e:
            return str(e)
        if len(ids) + new > config.n_ctx:
            return f"prompt of {len(ids)} tokens + {new} new tokens exceed n_positions={config.n_ctx}"
        if g.min_new_tokens > new:
            return f"min_new_tokens={g.min_new_tokens} exceeds the {new} new tokens to generate"
        return Prepared(line, tuple(ids), round_up(len(ids)))

    def run(self, model, batch: list[Prepared], batch_size: int) -> list[tuple[dict, int]]:
        g, n, eos = self.settings, self.settings.num_return_sequences, model.config.eos_token_id
        budgets = [g.new_tokens(len(p.ids), model.config.n_ctx) for p in batch]
        rows = _rows(g, batch, n)
        new = model.decode(g, [ids for ids, _ in rows], [seed for _, seed in rows], max(budgets), batch_size * n)
        results = []
        for i, p in enumerate(batch):
            outs = [new[i * n + k][: budgets[i]] for k in range(n)]
            texts = [model.tokenizer.continue_text(p.line.text, ids) for ids in outs]
            fields = {"generated_text": texts[0] if n == 1 else texts}
            if g.do_sample:
                fields["seed"] = line_seed(g.seed, p.line.id)
            results.append((fields, sum(_generated(ids, eos) for ids in outs)))
        return results


@dataclasses.dataclass(frozen=True)
class Poem:
    """settings: as for Generate, with the poem's form, acrostic and rhyme."""

    settings: GenerationConfig
    command = "poem"

    @property
    def n_new(self) -> int:  # every character and punctuation mark, then [SEP] (`PoemPlan.n_new`)
        chars, lines = parse_form(self.settings.form)
        return lines * (chars + 1) + 1

    def prepare(self, line: Line, tokenizer, config) -> Prepared | str:
        from ..decoding import round_up

        ids = tokenizer.encode(line.text)
        if len(ids) + self.n_new > config.n_ctx:
            return f"a {self.n_new}-token poem after a prompt of {len(ids)} tokens exceeds n_positions={config.n_ctx}"
        return Prepared(line, tuple(ids), round_up(len(ids)))

    def run(self, model, batch: list[Prepared], batch_size: int) -> list[tuple[dict, int]]:
        from ..poetry import PoemPlan, format_poem

        g, n, eos = self.settings, self.settings.num_return_sequences, model.config.eos_token_id
        rows = _rows(g, batch, n)
        plan = PoemPlan.build(model.poem_vocab(), g.form, batch_size * n, g.acrostic, g.rhyme)
        new = model.decode(g, [ids for ids, _ in rows], [seed for _, seed in rows], plan.n_new, batch_size * n, plan)
        results = []
        for i, p in enumerate(batch):
            outs = [new[i * n + k] for k in range(n)]
            poems = [format_poem(model.tokenizer.decode(ids)) for ids in outs]
            fields = {"poem": poems[0] if n == 1 else poems}
            if g.do_sample:
                fields["seed"] = line_seed(g.seed, p.line.id)
            results.append((fields, sum(_generated(ids, eos) for ids in outs)))
        return results


def _rows(g: GenerationConfig, batch: list[Prepared], n: int) -> list[tuple[tuple[int, ...], int]]:
    """(prompt ids, seed) per row: n rows per line; row k of a line samples from its seed + k."""
    return [(p.ids, (line_seed(g.seed, p.line.id) + k) % (SEED_MAX + 1)) for p in batch for k in range(n)]


def _bucket(batch: list[Prepared]) -> int:
    buckets = {p.bucket for p in batch}
    if len(buckets) != 1:
        raise ValueError(f"a batch must hold one length bucket, got {sorted(buckets)}")
    return buckets.pop()


def _generated(ids, eos: int) -> int:
    """New tokens a row produced: up to and including its end-of-text."""
    ids = list(ids)
    return ids.index(eos) + 1 if eos in ids else len(ids)
