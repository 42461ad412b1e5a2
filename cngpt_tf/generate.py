"""`python -m cngpt_tf.generate PATH PROMPT...`: generate Chinese text from a converted model.

Prints one generated text per line (several per prompt with --num_return_sequences). As a command
(`console`: `python -m`, `cngpt-generate`) it keeps XLA's compiled programs on disk
(`compile_cache`) and ends without Python's teardown, which with TensorFlow loaded takes 1-2 s
after the text is out; `main(argv)` does neither, so that tests call it in-process.
"""

from __future__ import annotations

import logging

from . import cli, compile_cache
from .config import WEIGHT_MODES
from .errors import CngptError

log = logging.getLogger("cngpt_tf.generate")

EXAMPLE = """\
example:
  python -m converters.pt2tf --demo demo_out/          # or convert a real model
  python -m cngpt_tf.generate demo_out/ "明月几时有，" --max_length 60 --do_sample --top_k 8 --seed 0
  python -m cngpt_tf.generate demo_out/ "床前明月光，" "春眠不觉晓，" --max_new_tokens 32   # a batch
  python -m cngpt_tf.generate demo_out/ "明月几时有，" --weights int8   # int8 weights, native kernel
  python -m cngpt_tf.generate demo_out/ "" --form 五言绝句 --acrostic 明月几时 --rhyme auto --seed 1
"""


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m cngpt_tf.generate",
        "Generate text with a Chinese GPT-2 converted by pt2tf (XLA-compiled, KV cache).", EXAMPLE)
    parser.add_argument("model", help="pt2tf OUT_DIR, or its tf2/ or tf1/ folder")
    parser.add_argument("prompts", nargs="+", help="one or more prompts (generated as one batch)")
    parser.add_argument("--weights", choices=WEIGHT_MODES, default="fp32",
                        help="the precision of the weights in the native CPU kernel, quantised at load: bf16 "
                             "halves the bytes read per token, int8 quarters them (default fp32)")
    cli.add_generation_flags(parser)
    args = parser.parse_args(argv)
    poem = any(getattr(args, name) is not None for name in cli.POEM_FLAGS)
    # checked before the model is loaded; a poem samples unless told otherwise (Generator.poem)
    settings = cli.generation_flags(parser, args, **({"do_sample": True} if poem else {}))
    if poem:
        for name in ("max_new_tokens", "max_length", "min_new_tokens"):
            if name in settings:
                parser.error(f"--{name}: a poem's form fixes its length")
    cli.setup_logging(args.verbose)

    def run():
        from .generator import Generator

        try:
            generator = Generator.from_pretrained(args.model, weights=args.weights)
            if poem:
                for prompt in args.prompts:
                    for text in generator.poem(prompt, **settings):
                        print(text + "\n")
                return
            texts = generator.generate(args.prompts, **settings)
        except ValueError as e:  # a setting this model (or CPU) cannot honour: the library names it
            if isinstance(e, CngptError):  # our typed errors stay errors
                raise
            parser.error(str(e))
        for text in texts:
            print(text)

    return cli.run_main(run)


def console() -> None:
    """The command: `main()` with the compile cache on, then a prompt exit (`cli.exit_now`)."""
    compile_cache.enable()
    cli.exit_now(main())


if __name__ == "__main__":
    console()
