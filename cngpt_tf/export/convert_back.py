"""`convert_back()`: a `tf1/` or `tf2/` folder -> PyTorch `GPT2LMHeadModel` files (the library behind
`python -m converters.tf2pt`).

Goes through the shared name table (`transformers`' `from_pretrained(..., from_tf=True)` silently
leaves GPT-2's weights empty in 4.57). Writes `pytorch_model.bin` (or `model.safetensors`),
`config.json` and `vocab.txt` into a temp folder renamed into place at the end.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..config import with_vocab, write_json
from ..formats.pytorch import write_pytorch
from ..tokenizer import read_tokenizer_settings, write_tokenizer_config
from ..formats.registry import detect

from .output import check_output, move_into_place, workspace

log = logging.getLogger("cngpt_tf.export.convert_back")


# What --overwrite may replace in OUT_DIR: what this writes, and the tokenizer files of a model folder.
PRODUCED = ("pytorch_model.bin", "model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json", "tokenizer.json")


def convert_back(src: str | Path, out_dir: str | Path, *, safetensors: bool = False, overwrite: bool = False) -> Path:
    """Convert a tf1/ or tf2/ folder (or a pt2tf OUT_DIR: its tf1/, else its tf2/) into a PyTorch
    model folder; return out_dir. `cngpt_tf.formats.registry.detect` decides what `src` holds."""
    src, out_dir = Path(src), Path(out_dir)
    fmt, folder = detect(src, accept=("tf1", "tf2"))  # SourceError naming src when it holds neither
    # the folders and every file of the one read (a linked file may live in OUT_DIR)
    inputs = list(dict.fromkeys([src, folder, *folder.iterdir()]))
    target = check_output(out_dir, overwrite, PRODUCED, inputs)
    vocab = folder / "vocab.txt"
    config, tensors = fmt.read(folder)
    config, _ = with_vocab(config, vocab)
    with workspace(target, inputs) as work:
        weights = write_pytorch(work, tensors, safetensors=safetensors)
        write_json(work / "config.json", config.to_hf_dict())
        shutil.copyfile(vocab, work / "vocab.txt")
        casing = read_tokenizer_settings(folder)  # a cased model stays cased
        write_tokenizer_config(work, do_lower_case=casing.get("do_lower_case", True))
        log.info("wrote %s (%d tensors)", weights.name, len(tensors))
        move_into_place(work, target)
    return out_dir
