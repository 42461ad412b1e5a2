"""Which format a folder holds: the one place that decides it (`detect`), for every reader.

A pt2tf OUT_DIR holds one sub-folder per format, named after it (`tf1/`, `tf2/`, `saved_model/1/`);
a format's own folder is recognised by its marker file. `detect(path, accept)` takes either and
returns the first accepted format found, in the caller's order of preference:

    fmt, folder = detect("out/", accept=("tf2", "tf1"))     # out/tf2, or out/tf1, or out/ itself
    config, tensors = fmt.read(folder)                       # PyTorch-named numpy weights
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from ..errors import SourceError


@dataclasses.dataclass(frozen=True)
class Format:
    name: str  # also the sub-folder of a pt2tf OUT_DIR that holds it
    marker: str  # the file whose presence says a folder holds this format
    reader: str | None  # "module:function" -> (GPT2Config, PyTorch-named tensors); None: not readable back
    description: str

    def read(self, folder: str | Path):
        if self.reader is None:
            raise SourceError(f"{folder}: a {self.description} cannot be read back into weights here")
        module, function = self.reader.split(":")
        return getattr(importlib.import_module(module), function)(Path(folder))


FORMATS = {
    f.name: f
    for f in (
        Format("tf1", "hparams.json", "cngpt_tf.formats.tf1:read_tf1", "TF1 checkpoint in openai/gpt-2's layout"),
        Format("tf2", "tf_model.h5", "cngpt_tf.formats.hf_tf2:read_tf2", "HF TF2 folder (TFGPT2LMHeadModel)"),
        Format("saved_model", "saved_model.pb", None, "TF2 SavedModel"),
    )
}


def holds(folder: Path, name: str) -> bool:
    """Whether `folder` itself holds format `name` (its marker is a regular file there)."""
    return (folder / FORMATS[name].marker).is_file()


def detect(path: str | Path, accept: tuple[str, ...] = ("tf2", "tf1")) -> tuple[Format, Path]:
    """The first format of `accept` that `path` holds, itself or in its sub-folder of that name (a
    pt2tf OUT_DIR). SourceError naming the path and what was looked for otherwise."""
    path = Path(path)
    for name in accept:
        for folder in (path, path / name):
            if holds(folder, name):
                return FORMATS[name], folder
    wanted = " or ".join(f"{FORMATS[n].marker} ({n})" for n in accept)
    where = "here or in " + ", ".join(f"{n}/" for n in accept)
    raise SourceError(f"{path}: no {wanted} {where} (convert with pt2tf first)")
