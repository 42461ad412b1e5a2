"""Per-line log-likelihood and perplexity, with a sliding window for lines longer than the context.

A line is scored as the model saw its training texts: `[CLS]` then the line's tokens; every token
after `[CLS]` is scored by the model's next-token log-probability, and

    log_likelihood = sum of log p(token | the tokens before it),   perplexity = exp(-log_likelihood / tokens)

(no `[SEP]` is appended: a line is scored as written, not as a finished text).

A line of more than n_positions tokens is scored in windows, as HF's perplexity guide does
(https://huggingface.co/docs/transformers/perplexity): windows of n_positions tokens start every
stride = n_positions // 2 tokens, each scores only the tokens the windows before it did not, so every
token is scored exactly once, with at least n_positions - stride tokens before it in its window
(all of them while the line fits). Each window is its own row (positions from 0); the rows of a
line are summed in float64.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .. import model


def windows(n_tokens: int, n_ctx: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) per window of a sequence of n_tokens: the model reads tokens
    [begin, end) and scores tokens [first, end)."""
    stride = max(1, n_ctx // 2)
    out, begin, scored_to = [], 0, 0
    while True:
        end = min(begin + n_ctx, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        if end == n_tokens:
            return out
        scored_to, begin = end, begin + stride


class Scorer:
    """The compiled per-token log-probabilities of one model, traced and compiled once per [B, T]
    shape (one per length bucket); thread-safe."""

    def __init__(self, params: dict, config):
        self.config = config

        @tf.function(jit_compile=True, autograph=False)
        def token_logprobs(ids, mask):
            """[B, T] left-padded ids and mask -> [B, T - 1]: log p(ids[:, t + 1] | ids[:, :t + 1])."""
            logits = model.logits(params, config, ids, mask)[:, :-1]  # [B, T - 1, V]
            chosen = tf.gather(logits, ids[:, 1:], batch_dims=2)  # [B, T - 1]
            return chosen - tf.reduce_logsumexp(logits, axis=-1)

        self._token_logprobs = token_logprobs

    def score(self, sequences: list[tuple[int, ...]], width: int, batch_size: int) -> list[tuple[float, int]]:
        """(log-likelihood, scored tokens) per id sequence ([CLS] first, >= 2 ids). Every window
        is padded to `width` (the lines' bucket, <= n_positions) and run `batch_size` rows at a time
        (a last, partial chunk is padded to `batch_size` rows too: one compiled shape per bucket)."""
        rows = []  # (line index, window ids, first scored index within the window)
        for i, ids in enumerate(sequences):
            for begin, end, first in windows(len(ids), self.config.n_ctx):
                rows.append((i, ids[begin:end], first - begin))
        totals = [0.0] * len(sequences)
        counts = [0] * len(sequences)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = np.zeros((batch_size, width), np.int32)
            mask = np.zeros((batch_size, width), np.int32)
            for r in range(batch_size):  # rows past the chunk repeat its first row; their results are dropped
                window = chunk[r if r < len(chunk) else 0][1]
                ids[r, width - len(window):], mask[r, width - len(window):] = window, 1
            logprobs = self._token_logprobs(tf.constant(ids), tf.constant(mask)).numpy().astype(np.float64)
            for r, (i, window, first) in enumerate(chunk):
                pad = width - len(window)  # column c of logprobs scores window token c + 1 - pad
                totals[i] += float(logprobs[r, pad + first - 1:].sum())
                counts[i] += len(window) - first
        return list(zip(totals, counts))
