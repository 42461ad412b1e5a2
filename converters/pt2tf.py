"""`python -m converters.pt2tf`: a PyTorch Chinese GPT-2 -> TF1 checkpoint, HF TF2 and SavedModel, verified.

The command line over `cngpt_tf.export.convert.convert`; everything it does is library code there.
"""

from __future__ import annotations

import sys

from cngpt_tf import cli
from cngpt_tf.export.convert import FORMATS, SAVED_MODEL_VERSION, GenerationFlagError, convert
from cngpt_tf.generation_config import GenerationConfig

EXAMPLE = """\
example:
  # the seed release, downloaded as a zip (files may sit in a sub-folder of the zip)
  python -m converters.pt2tf gpt2_L-12_H-768_A-12_CN.zip out/ --atol 1e-4
  # -> out/tf1/ (openai/gpt-2 checkpoint), out/tf2/ (TFGPT2LMHeadModel), out/saved_model/1/,
  #    out/conversion_report.json, and a table of the logits check per format

  # no weights at hand: the embedded demo, a small GPT-2 trained on Tang poems, converted the same way
  python -m converters.pt2tf --demo demo_out/
"""


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m converters.pt2tf",
        "Convert a PyTorch Chinese GPT-2 (folder, .zip, URL or hub id) to TF1, HF TF2 and SavedModel "
        "formats, and verify the logits of each against the source weights.", EXAMPLE)
    parser.add_argument("src", nargs="?", help="model folder, .zip, http(s):// URL of a zip, or hub model id")
    parser.add_argument("out_dir", nargs="?", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs logits difference (default %(default)s)")
    parser.add_argument("--cache_dir", help="download cache for URLs (default $CNGPT_CACHE or ~/.cache/cngpt_tf)")
    parser.add_argument("--demo", action="store_true", help="convert the embedded demo release (a small GPT-2 trained on Tang poems)")
    serving = parser.add_argument_group("SavedModel")
    serving.add_argument("--no_generate", action="store_true", help="export the logits signature only")
    serving.add_argument("--saved_model_version", type=int, default=SAVED_MODEL_VERSION,
                         help="version folder under saved_model/ (TF Serving loads the highest)")
    cli.add_generation_flags(parser, export=True)  # the generation signatures' settings
    args = parser.parse_args(argv)
    paths = [p for p in (args.src, args.out_dir) if p is not None]
    if len(paths) != (1 if args.demo else 2):
        parser.error("give SRC OUT_DIR, or --demo OUT_DIR")
    formats = tuple(dict.fromkeys(f.strip() for f in args.formats.split(",") if f.strip()))  # once each
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        parser.error(f"--formats: unknown format(s) {unknown or formats}; choose from {','.join(FORMATS)}")
    if not 0 <= args.atol < float("inf"):  # NaN fails too
        parser.error(f"--atol must be a finite number >= 0, got {args.atol}")
    if not 1 <= args.saved_model_version < 2**63:  # TF Serving reads the folder name as an int64
        parser.error(f"--saved_model_version must be an integer in [1, 2**63 - 1], got {args.saved_model_version}")
    # checked here without the model; what needs it (max_new_tokens < n_positions, top_k <= vocab)
    # once config.json is read, before the weights (GenerationFlagError)
    generation = GenerationConfig(**cli.generation_flags(parser, args))
    cli.setup_logging(args.verbose)

    def run():
        if args.demo:
            from cngpt_tf.demo import demo_release

            src, out = str(demo_release()), paths[0]
        else:
            src, out = paths
        try:
            convert(src, out, formats=formats, overwrite=args.overwrite, atol=args.atol, cache_dir=args.cache_dir,
                    progress=not args.quiet, generation=generation, no_generate=args.no_generate,
                    saved_model_version=args.saved_model_version)
        except GenerationFlagError as e:  # a flag this model cannot honour: a usage error
            parser.error(str(e))
        print(f"done: {out}")

    return cli.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
