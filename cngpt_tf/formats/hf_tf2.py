"""Write and read `OUT_DIR/tf2`: HF's TF2 format, loadable by `TFGPT2LMHeadModel.from_pretrained`.

`tf_model.h5` is the Keras 2 HDF5 weights format that HF's `load_tf_weights_from_h5` reads: a root
attribute `layer_names` (the top-level Keras layers: just `transformer`), and in the `transformer`
group an attribute `weight_names` listing `<model name>/transformer/...:0` paths, each a dataset.
We write it with h5py straight from the name table rather than building the Keras model first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from ..config import GPT2Config, write_json
from ..errors import CheckpointError, SourceError
from ..vocab import CLS, MASK, PAD, SEP, UNK
from . import names

WEIGHTS = "tf_model.h5"
MODEL_NAME = "tfgpt2lm_head_model"  # Keras' auto-name of TFGPT2LMHeadModel; HF strips it on load
LAYER = "transformer"
FILES = (WEIGHTS, "config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def write_tf2(
    folder: str | Path,
    pt_tensors: dict[str, np.ndarray],
    config: GPT2Config,
    vocab: str | Path,
    do_lower_case: bool = True,
) -> None:
    """Write `folder/tf_model.h5`, `config.json` and the BertTokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = names.convert(pt_tensors, names.PT, names.HF_TF, config)
    with h5py.File(folder / WEIGHTS, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["layer_names"] = np.array([LAYER.encode()])
        group = f.create_group(LAYER)
        weight_names = [f"{MODEL_NAME}/{name}" for name in tensors]
        group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
        for path, value in zip(weight_names, tensors.values()):
            group.create_dataset(path, data=np.asarray(value, np.float32))
    write_json(folder / "config.json", config.to_hf_dict())
    shutil.copyfile(vocab, folder / "vocab.txt")
    write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case, "model_max_length": config.n_ctx},
    )
    write_json(
        folder / "special_tokens_map.json",
        {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK},
    )


def read_tf2(folder: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Read a `tf2/` folder (any HF TF GPT-2 `tf_model.h5`) into (config, PyTorch-named tensors)."""
    folder = Path(folder)
    config = GPT2Config.from_file(folder / "config.json")
    path = folder / WEIGHTS
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            group = f[LAYER]
            tensors = {}
            for raw in group.attrs["weight_names"]:
                weight_name = raw.decode() if isinstance(raw, bytes) else str(raw)
                # Drop the model's own name (tfgpt2lm_head_model/, tfgpt2_model/...), as HF does.
                tensors[weight_name.split("/", 1)[1]] = np.asarray(group[weight_name])
    except (OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable HF TF2 weights file ({e})") from None
    return config, names.convert(tensors, names.HF_TF, names.PT, config, origin=str(path))
