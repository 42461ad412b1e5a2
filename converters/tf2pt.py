"""`python -m converters.tf2pt`: a `tf1/` or `tf2/` folder -> PyTorch `GPT2LMHeadModel` files.

Goes through the shared name table (`transformers`' `from_pretrained(..., from_tf=True)` silently
leaves GPT-2's weights empty in 4.57). Writes `pytorch_model.bin` (or `model.safetensors`),
`config.json` and `vocab.txt` into a temp folder renamed into place at the end.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from cngpt_tf import cli
from cngpt_tf.config import with_vocab, write_json
from cngpt_tf.errors import SourceError
from cngpt_tf.formats.pytorch import write_pytorch

from .output import check_output, move_into_place, workspace

log = logging.getLogger("converters.tf2pt")

EXAMPLE = """\
example:
  python -m converters.tf2pt out/tf1 back_to_pt/            # from the openai/gpt-2 layout
  python -m converters.tf2pt out/tf2 back_to_pt/ --safetensors
  # then: GPT2LMHeadModel.from_pretrained("back_to_pt"), BertTokenizer.from_pretrained("back_to_pt")
"""


# What --overwrite may replace in OUT_DIR: what this writes, and the tokenizer files of a model folder.
PRODUCED = ("pytorch_model.bin", "model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json",
            "special_tokens_map.json", "tokenizer.json")


def convert_back(src: str | Path, out_dir: str | Path, *, safetensors: bool = False, overwrite: bool = False) -> Path:
    """Convert a tf1/ or tf2/ folder into a PyTorch model folder; return out_dir."""
    src, out_dir = Path(src), Path(out_dir)
    # the folder and every file in it (a linked file may live in OUT_DIR)
    inputs = [src, *(src.iterdir() if src.is_dir() else ())]
    target = check_output(out_dir, overwrite, PRODUCED, inputs)
    if (src / "hparams.json").is_file():
        from cngpt_tf.formats.tf1 import read_tf1 as read
    elif (src / "tf_model.h5").is_file():
        from cngpt_tf.formats.hf_tf2 import read_tf2 as read
    else:
        raise SourceError(f"{src}: neither a tf1/ folder (hparams.json) nor a tf2/ folder (tf_model.h5)")
    vocab = src / "vocab.txt"
    config, tensors = read(src)
    config, _ = with_vocab(config, vocab)
    with workspace(target, inputs) as work:
        weights = write_pytorch(work, tensors, safetensors=safetensors)
        write_json(work / "config.json", config.to_hf_dict())
        shutil.copyfile(vocab, work / "vocab.txt")
        log.info("wrote %s (%d tensors)", weights.name, len(tensors))
        move_into_place(work, target)
    return out_dir


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m converters.tf2pt",
        "Convert a tf1/ (openai/gpt-2 checkpoint) or tf2/ (HF TF) folder back to PyTorch.", EXAMPLE)
    parser.add_argument("src", help="a tf1/ or tf2/ folder written by pt2tf (or any such model folder)")
    parser.add_argument("out_dir", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--safetensors", action="store_true", help="write model.safetensors, not pytorch_model.bin")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)

    def run():
        out = convert_back(args.src, args.out_dir, safetensors=args.safetensors, overwrite=args.overwrite)
        print(f"done: {out}")

    return cli.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
