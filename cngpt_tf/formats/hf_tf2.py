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
from ..errors import CheckpointError, SourceError, WeightMappingError, short_repr
from ..tokenizer import write_tokenizer_config
from ..vocab import CLS, MASK, PAD, SEP, UNK
from . import names

WEIGHTS = "tf_model.h5"
MODEL_NAME = "tfgpt2lm_head_model"  # Keras' auto-name of TFGPT2LMHeadModel; HF strips it on load
LAYER = "transformer"
FILES = (WEIGHTS, "config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# What h5py raises on a corrupt, truncated or oddly built file.
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError)


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
    write_tokenizer_config(folder, do_lower_case=do_lower_case, model_max_length=config.n_ctx)
    write_json(
        folder / "special_tokens_map.json",
        {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK},
    )


def read_tf2(folder: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Read a `tf2/` folder (any HF TF GPT-2 `tf_model.h5`) into (config, PyTorch-named tensors).

    Names, shapes and dtypes are checked from the file's metadata, and the declared size against
    the file's, before any tensor is read: a small file cannot make us allocate more than it holds
    (HDF5 reads an unwritten or compressed dataset as a full-size array). Links and datasets whose
    data lives in other files are refused, so a weights file cannot pull in other files' bytes.
    Floating-point tensors are returned as float32; any other dtype is refused.
    """
    folder = Path(folder)
    config = GPT2Config.from_file(folder / "config.json")
    path = folder / WEIGHTS
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    origin = str(path)
    try:
        with h5py.File(path, "r") as f:
            datasets = _datasets(f, origin)
            names.check_shapes({name: ds.shape for name, ds in datasets.items()}, names.HF_TF, config, origin)
            for name, ds in datasets.items():
                if ds.dtype.kind != "f":
                    raise CheckpointError(f"{origin}: tensor {name!r} is {ds.dtype}, expected floating point")
            declared = sum(ds.size * ds.dtype.itemsize for ds in datasets.values())
            if declared > path.stat().st_size:
                raise CheckpointError(
                    f"{origin}: declares {declared} bytes of tensors but the file holds {path.stat().st_size} "
                    f"(truncated, compressed or unwritten datasets are not read)"
                )
            tensors = {name: np.asarray(ds[()], dtype=np.float32) for name, ds in datasets.items()}
    except CheckpointError:
        raise
    except _H5_ERRORS as e:
        raise CheckpointError(f"{origin}: not a readable HF TF2 weights file ({str(e)[:200]})") from None
    names.check(tensors, names.HF_TF, config, origin)
    return config, names.convert(tensors, names.HF_TF, names.PT, config, origin=origin)


def _datasets(f: h5py.File, origin: str) -> dict[str, h5py.Dataset]:
    """The datasets that the `transformer` group's `weight_names` lists, by name without the model's
    own name (tfgpt2lm_head_model/, tfgpt2_model/...), as HF's loader strips it."""
    group = f.get(LAYER)
    if not isinstance(group, h5py.Group):
        raise CheckpointError(f"{origin}: no {LAYER!r} group (not an HF TF GPT-2 weights file)")
    listed = group.attrs.get("weight_names")
    if not isinstance(listed, np.ndarray) or listed.ndim != 1:
        raise CheckpointError(f"{origin}: the {LAYER!r} group has no weight_names list")
    out = {}
    for raw in listed:
        weight_name = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not isinstance(weight_name, str) or "/" not in weight_name:
            raise CheckpointError(f"{origin}: weight name {short_repr(weight_name)} is not <model>/<tensor>")
        name = weight_name.split("/", 1)[1]
        dataset = group.get(weight_name)
        if not isinstance(dataset, h5py.Dataset):
            raise WeightMappingError(f"{origin}: weight_names lists {short_repr(weight_name)}, not a dataset here")
        if dataset.file.filename != f.filename or dataset.external or dataset.is_virtual:
            raise CheckpointError(f"{origin}: tensor {short_repr(name)} is stored in another file, which is refused")
        if name in out:
            raise WeightMappingError(f"{origin}: tensor {short_repr(name)} is listed twice")
        out[name] = dataset
    return out
