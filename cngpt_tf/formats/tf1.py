"""Write and read `OUT_DIR/tf1`: a TF1 checkpoint in the original openai/gpt-2 variable layout.

The tensors are written directly with the checkpoint save op (`SaveV2`), without building a graph of
constant-initialised variables: a TF1 `Saver` over such a graph embeds every weight in the `.meta`
(408 MB for the 12-layer model, and protobuf's 2 GB limit on bigger ones). openai/gpt-2's
`sample.py` never reads a `.meta`: it rebuilds the graph and restores by name, which this supports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import GPT2Config, write_json
from ..errors import CheckpointError, SourceError
from . import names

PREFIX = "model.ckpt"
FILES = ("checkpoint", f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001", "hparams.json", "vocab.txt")


def write_tf1(folder: str | Path, pt_tensors: dict[str, np.ndarray], config: GPT2Config, vocab: str | Path) -> None:
    """Write `pt_tensors` (PyTorch names) as `folder/model.ckpt.*` plus `checkpoint`, `hparams.json`, `vocab.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = names.convert(pt_tensors, names.PT, names.TF1, config)
    keys = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(folder / PREFIX),
        tensor_names=keys,
        shape_and_slices=[""] * len(keys),
        tensors=[tf.constant(tensors[k], tf.float32) for k in keys],
    )
    # Relative paths, so `tf.train.latest_checkpoint(folder)` still works once the folder is moved.
    (folder / "checkpoint").write_text(
        f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n', encoding="utf-8"
    )
    write_json(folder / "hparams.json", config.to_hparams_dict())
    shutil.copyfile(vocab, folder / "vocab.txt")


def read_tf1(folder: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Read a `tf1/` folder (or an openai/gpt-2 model folder) into (config, PyTorch-named tensors)."""
    folder = Path(folder)
    config = GPT2Config.from_file(folder / "hparams.json")
    prefix = tf.train.latest_checkpoint(str(folder))
    if prefix is None:
        raise SourceError(f"{folder}: no TF1 checkpoint found (missing or unreadable 'checkpoint' file)")
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        tensors = {name: reader.get_tensor(name) for name in shapes}
    except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", str(e)).splitlines()[0]
        raise CheckpointError(f"{prefix}: cannot read TF1 checkpoint ({message})") from None
    for name, value in tensors.items():
        if value.dtype != np.float32:
            raise CheckpointError(f"{prefix}: tensor {name!r} is {value.dtype}, expected float32")
    return config, names.convert(tensors, names.TF1, names.PT, config, origin=prefix)
