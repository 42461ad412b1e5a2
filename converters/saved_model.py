"""Export `OUT_DIR/saved_model/<version>/`: a TF2 SavedModel for TF Serving, built on `cngpt_tf.model`.

Signature `logits`: int32 `input_ids` and `attention_mask` [batch, seq] -> float32 `logits`
[batch, seq, vocab]. Rows may be left-padded: positions come from the mask, as in generation.
The SavedModel needs only core TensorFlow to load (no transformers, no custom ops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from cngpt_tf import model
from cngpt_tf.config import GPT2Config

IDS_SPEC = tf.TensorSpec([None, None], tf.int32, name="input_ids")
MASK_SPEC = tf.TensorSpec([None, None], tf.int32, name="attention_mask")


class GPT2Module(tf.Module):
    """The weights as variables under their TF1 names, and the serving functions over them."""

    def __init__(self, config: GPT2Config, pt_tensors: dict[str, np.ndarray], vocab: str | Path):
        super().__init__(name="cngpt")
        self.config = config
        packed = model.params_from_pt(pt_tensors, config)
        self.params = {name: tf.Variable(value, trainable=False, name=name) for name, value in packed.items()}
        self.vocab = tf.saved_model.Asset(str(vocab))

    @tf.function(input_signature=[IDS_SPEC, MASK_SPEC])
    def logits(self, input_ids, attention_mask):
        return {"logits": model.logits(self.params, self.config, input_ids, attention_mask)}


def export_saved_model(folder: str | Path, pt_tensors, config: GPT2Config, vocab: str | Path) -> None:
    """Write the SavedModel into `folder` (the versioned folder, e.g. `saved_model/1`)."""
    module = GPT2Module(config, pt_tensors, vocab)
    signatures = {"logits": module.logits.get_concrete_function()}
    tf.saved_model.save(module, str(folder), signatures=signatures)
