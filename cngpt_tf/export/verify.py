"""Prove a conversion kept the numbers: reload every written format and compare its logits.

The reference is `cngpt_tf.model` run on the source weights as read. Each format is reloaded the way
its users load it — `tf1/` through the checkpoint reader (tensors must be bit-equal), `tf2/` through
HF's own `TFGPT2LMHeadModel` (an independent implementation), `saved_model/` through
`tf.saved_model.load` — and run on a fixed batch that includes a left-padded row.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from .. import model
from ..config import GPT2Config
from ..errors import VerificationError
from ..formats.hf_tf2 import read_tf2
from ..formats.tf1 import read_tf1

log = logging.getLogger(__name__)

N_PAD = 5  # left padding of the batch's second row


@dataclasses.dataclass
class FormatResult:
    format: str
    max_abs_diff: float
    greedy_agree: bool
    tensors_equal: bool | None = None  # for formats whose tensors we can read back directly
    note: str = ""

    def passed(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.greedy_agree and self.tensors_equal is not False


def fixed_batch(config: GPT2Config, seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of deterministic ids: one full, one left-padded by N_PAD pads. [2, T] each."""
    seq_len = min(seq_len, config.n_ctx)
    ids = np.random.RandomState(0).randint(0, config.n_vocab, size=(2, seq_len)).astype(np.int32)
    if config.bos_token_id is not None:
        ids[:, 0] = config.bos_token_id
    mask = np.ones_like(ids)
    n_pad = min(N_PAD, seq_len - 1)
    ids[1, n_pad:] = ids[1, : seq_len - n_pad]  # the same text shifted right: its logits must match
    ids[1, :n_pad] = config.pad_token_id or 0
    mask[1, :n_pad] = 0
    return ids, mask


def reference_logits(pt_tensors, config: GPT2Config, ids, mask) -> np.ndarray:
    # NumPy params go straight into the eager ops: no second, long-lived copy of the weights as
    # tf.constant (this keeps the 12-layer conversion's peak memory down).
    return model.logits(model.params_from_pt(pt_tensors, config), config, ids, mask).numpy()


def compare(fmt: str, reference: np.ndarray, logits: np.ndarray, mask: np.ndarray, **extra) -> FormatResult:
    """Max |diff| over real (unpadded) positions, and whether every greedy next token agrees."""
    real = mask.astype(bool)
    diff = float(np.max(np.abs(reference[real] - logits[real])))
    agree = bool(np.array_equal(reference[real].argmax(-1), logits[real].argmax(-1)))
    return FormatResult(fmt, diff, agree, **extra)


def verify_tf1(folder: Path, pt_tensors, reference, ids, mask) -> FormatResult:
    config, reloaded = read_tf1(folder)
    equal = all(np.array_equal(reloaded[k], pt_tensors[k]) for k in pt_tensors)
    return compare("tf1", reference, reference_logits(reloaded, config, ids, mask), mask, tensors_equal=equal)


def verify_tf2(folder: Path, pt_tensors, reference, ids, mask) -> FormatResult:
    from transformers import TFGPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    if not log.isEnabledFor(logging.DEBUG):  # HF's per-load "All layers were used..." chatter
        hf_logging.set_verbosity_error()
    _, reloaded = read_tf2(folder)
    equal = all(np.array_equal(reloaded[k], pt_tensors[k]) for k in pt_tensors)
    del reloaded  # before HF loads its own copy
    hf, info = TFGPT2LMHeadModel.from_pretrained(str(folder), output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise VerificationError(f"{folder}: TFGPT2LMHeadModel reported loading problems: {info}")
    positions = model.positions_from_mask(mask)
    logits = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    return compare("tf2", reference, logits, mask, tensors_equal=equal, note="TFGPT2LMHeadModel")


def verify_saved_model(folder: Path, reference, ids, mask) -> FormatResult:
    loaded = tf.saved_model.load(str(folder))
    out = loaded.signatures["logits"](input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
    return compare("saved_model", reference, out["logits"].numpy(), mask, note="signature 'logits'")


def verify_all(written: dict[str, Path], pt_tensors, config: GPT2Config) -> list[FormatResult]:
    """Verify each written format ({format: folder}) against `pt_tensors`, the source weights."""
    ids, mask = fixed_batch(config)
    reference = reference_logits(pt_tensors, config, ids, mask)
    results = []
    for fmt, folder in written.items():
        gc.collect()  # the previous format's reloaded weights: one copy alive at a time
        if fmt == "saved_model":
            results.append(verify_saved_model(folder, reference, ids, mask))
        else:
            verify = verify_tf1 if fmt == "tf1" else verify_tf2
            results.append(verify(folder, pt_tensors, reference, ids, mask))
    return results


def check(results: list[FormatResult], atol: float) -> None:
    failed = [r for r in results if not r.passed(atol)]
    if failed:
        worst = ", ".join(f"{r.format} (max |diff| {r.max_abs_diff:.3g}, greedy agree {r.greedy_agree})" for r in failed)
        raise VerificationError(f"verification failed at atol={atol:g}: {worst}")


def table(results: list[FormatResult], atol: float) -> str:
    rows = [("format", "max |logits diff|", "greedy agree", "tensors equal", "ok")]
    for r in results:
        equal = "-" if r.tensors_equal is None else str(r.tensors_equal)
        rows.append((r.format, f"{r.max_abs_diff:.3e}", str(r.greedy_agree), equal, "yes" if r.passed(atol) else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
