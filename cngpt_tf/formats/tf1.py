"""Write and read `OUT_DIR/tf1`: a TF1 checkpoint in the original openai/gpt-2 variable layout.

The tensors are written directly with the checkpoint save op (`SaveV2`), without building a graph of
constant-initialised variables: a TF1 `Saver` over such a graph embeds every weight in the `.meta`
(408 MB for the 12-layer model, and protobuf's 2 GB limit on bigger ones). openai/gpt-2's
`sample.py` never reads a `.meta`: it rebuilds the graph and restores by name, which this supports.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import GPT2Config, write_json
from ..errors import CheckpointError, SourceError, short_repr
from ..tokenizer import TOKENIZER_CONFIG, write_tokenizer_config
from . import names

PREFIX = "model.ckpt"
FILES = ("checkpoint", f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001", "hparams.json", "vocab.txt",
         TOKENIZER_CONFIG)
MAX_CHECKPOINT_FILE = 1 << 20  # the `checkpoint` state file is a few lines of text
# What TensorFlow's checkpoint reader raises on a corrupt or truncated file (IndexError: a short read).
_TF_ERRORS = (tf.errors.OpError, ValueError, IndexError, RuntimeError, TypeError, OSError)


def write_tf1(folder: str | Path, pt_tensors: dict[str, np.ndarray], config: GPT2Config, vocab: str | Path,
              do_lower_case: bool = True) -> None:
    """Write `pt_tensors` (PyTorch names) as `folder/model.ckpt.*` plus `checkpoint`, `hparams.json`,
    `vocab.txt` and `tokenizer_config.json` (do_lower_case: the source model's casing, which
    `ChineseTokenizer.from_pretrained` and so the `Generator` read back)."""
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
    write_tokenizer_config(folder, do_lower_case=do_lower_case, model_max_length=config.n_ctx)


def read_tf1(folder: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Read a `tf1/` folder (or an openai/gpt-2 model folder) into (config, PyTorch-named tensors).

    Names, shapes and dtypes are checked from the checkpoint's index, and its declared size against
    the data files, before any tensor is read: a tiny index cannot make us allocate more than the
    files hold. TensorFlow's own errors (and the IndexError it raises on a truncated data file)
    become one CheckpointError naming the checkpoint.
    """
    folder = Path(folder)
    config = GPT2Config.from_file(folder / "hparams.json")
    prefix = _checkpoint_prefix(folder)
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except _TF_ERRORS as e:
        raise CheckpointError(f"{prefix}: cannot read TF1 checkpoint ({_first_line(e)})") from None
    names.check_shapes(shapes, names.TF1, config, origin=prefix)
    for name, dtype in dtypes.items():
        if dtype != tf.float32:
            raise CheckpointError(f"{prefix}: tensor {name!r} is {dtype.name}, expected float32")
    declared = sum(4 * math.prod(shape) for shape in shapes.values())
    data = Path(prefix).name + ".data-"
    stored = sum(p.stat().st_size for p in Path(prefix).parent.iterdir() if p.name.startswith(data))
    if declared > stored:
        raise CheckpointError(
            f"{prefix}: truncated: its index declares {declared} bytes of tensors, the data files hold {stored}"
        )
    try:
        tensors = {name: reader.get_tensor(name) for name in shapes}
    except _TF_ERRORS as e:
        raise CheckpointError(f"{prefix}: cannot read TF1 checkpoint ({_first_line(e)})") from None
    names.check(tensors, names.TF1, config, origin=prefix)
    return config, names.convert(tensors, names.TF1, names.PT, config, origin=prefix)


def _checkpoint_prefix(folder: Path) -> str:
    """The prefix that `folder/checkpoint` names, as `tf.train.latest_checkpoint` finds it, but with a
    one-line SourceError (naming the file) where that logs an ERROR, returns None, or raises
    UnicodeDecodeError on a garbage file."""
    from google.protobuf import text_format
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    path = folder / "checkpoint"
    if not path.is_file():
        raise SourceError(f"{path}: no TF1 checkpoint state file found")
    state = CheckpointState()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CHECKPOINT_FILE + 1)
        if len(data) > MAX_CHECKPOINT_FILE:
            raise ValueError(f"larger than {MAX_CHECKPOINT_FILE >> 20} MiB")
        text_format.Parse(data.decode("utf-8"), state)
    except (OSError, ValueError, text_format.ParseError) as e:  # UnicodeDecodeError is a ValueError
        raise SourceError(f"{path}: not a TF1 checkpoint state file ({str(e)[:200]})") from None
    if not state.model_checkpoint_path:
        raise SourceError(f"{path}: names no checkpoint (no model_checkpoint_path)")
    prefix = folder / state.model_checkpoint_path  # an absolute path stays as it is
    try:
        found = Path(f"{prefix}.index").is_file()
    except (OSError, ValueError):  # e.g. a NUL in the path
        found = False
    if not found:
        raise SourceError(f"{path}: names checkpoint {short_repr(str(prefix), 200)}, which has no .index file")
    return str(prefix)


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().split("\n")[0][:200]
