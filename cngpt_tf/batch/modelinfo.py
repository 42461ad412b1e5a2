"""What the pipeline needs to know about the model before any weights are read.

The launcher checks the flags against it (top_k within the vocab, lengths within n_positions, the
poem's characters in the vocab) before the pipeline starts; the workers that only tokenize read it
instead of the weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import GPT2Config, with_vocab
from ..errors import SourceError
from ..formats.registry import detect
from ..generation_config import GenerationConfig
from ..generator import GENERATION_CONFIG
from .staging import local_model


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    folder: Path  # the local folder holding config, vocab and (when staged with weights) the weights
    config: GPT2Config  # with pad/bos/eos from the vocab, as the Generator sets them
    defaults: GenerationConfig  # the folder's generation_config.json, or GenerationConfig()

    def tokenizer(self):
        from ..tokenizer import ChineseTokenizer

        return ChineseTokenizer.from_pretrained(self.folder)


def read_model_info(path: str) -> ModelInfo:
    """The config, vocab and default settings of the model at `path` (a pt2tf OUT_DIR, its tf2/ or
    tf1/, on any Beam filesystem); the errors `Generator.from_pretrained` would raise for them."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) is None:  # local: the folder Generator.from_pretrained loads
        folder = detect(path, accept=("tf2", "tf1"))[1]
    else:  # the staged copy of that folder, without its weights
        folder = local_model(path, weights=False)
    config_file = folder / "config.json" if (folder / "config.json").is_file() else folder / "hparams.json"
    config = GPT2Config.from_file(config_file)
    if not (folder / "vocab.txt").is_file():
        raise SourceError(f"{folder}: no vocab.txt beside the weights (the batch commands read text)")
    config, _ = with_vocab(config, folder / "vocab.txt")
    defaults = GenerationConfig()
    if (folder / GENERATION_CONFIG).is_file():
        defaults = GenerationConfig.from_json_file(folder / GENERATION_CONFIG, config.n_vocab, config.n_ctx)
    return ModelInfo(folder, config, defaults)
