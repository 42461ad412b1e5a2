"""`python -m converters.tf2pt`: a `tf1/` or `tf2/` folder -> PyTorch `GPT2LMHeadModel` files.

The command line over `cngpt_tf.export.convert_back.convert_back`.
"""

from __future__ import annotations

import sys

from cngpt_tf import cli
from cngpt_tf.export.convert_back import convert_back

EXAMPLE = """\
example:
  python -m converters.tf2pt out/tf1 back_to_pt/            # from the openai/gpt-2 layout
  python -m converters.tf2pt out/tf2 back_to_pt/ --safetensors
  # then: GPT2LMHeadModel.from_pretrained("back_to_pt"), BertTokenizer.from_pretrained("back_to_pt")
"""


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
