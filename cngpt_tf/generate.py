"""`python -m cngpt_tf.generate PATH PROMPT...`: generate Chinese text from a converted model.

Prints one generated text per line (several per prompt with --num_return_sequences).
"""

from __future__ import annotations

import logging
import sys

from . import cli
from .errors import CngptError

log = logging.getLogger("cngpt_tf.generate")

EXAMPLE = """\
example:
  python -m converters.pt2tf --demo demo_out/          # or convert a real model
  python -m cngpt_tf.generate demo_out/ "明月几时有，" --max_length 60 --do_sample --top_k 8 --seed 0
  python -m cngpt_tf.generate demo_out/ "床前明月光，" "春眠不觉晓，" --max_new_tokens 32   # a batch
  python -m cngpt_tf.generate demo_out/ "" --form 五言绝句 --acrostic 明月几时 --rhyme auto --seed 1
"""


def main(argv=None) -> int:
    parser = cli.make_parser(
        "python -m cngpt_tf.generate",
        "Generate text with a Chinese GPT-2 converted by pt2tf (XLA-compiled, KV cache).", EXAMPLE)
    parser.add_argument("model", help="pt2tf OUT_DIR, or its tf2/ or tf1/ folder")
    parser.add_argument("prompts", nargs="+", help="one or more prompts (generated as one batch)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max_length", type=int, help="total length in tokens, prompt included")
    length.add_argument("--max_new_tokens", type=int, help="new tokens (default 50 unless --max_length)")
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="CTRL penalty (1.0: off)")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    poem = parser.add_argument_group("classical poems (the prompt is a title or context; form is enforced)")
    poem.add_argument("--form", help="五言绝句, 七言绝句, 五言律诗, 七言律诗, or CHARS,LINES (e.g. 5,4)")
    poem.add_argument("--acrostic", help="藏头诗: one character per line")
    poem.add_argument("--rhyme", help="'auto' (even lines rhyme with line 2), a rhyme group, or a character")
    args = parser.parse_args(argv)
    for flag in ("max_length", "max_new_tokens", "num_return_sequences"):  # before loading the model
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    cli.setup_logging(args.verbose)

    def run():
        from .generator import Generator

        generator = Generator.from_pretrained(args.model)
        length = ({"max_length": args.max_length} if args.max_length is not None
                  else {"max_new_tokens": args.max_new_tokens or 50})  # both were checked >= 1
        try:
            if args.form or args.acrostic:
                for prompt in args.prompts:
                    for text in generator.poem(
                        prompt, _form(args.form or "七言绝句"), args.acrostic, args.rhyme, do_sample=True,
                        top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                        repetition_penalty=args.repetition_penalty, seed=args.seed,
                        num_return_sequences=args.num_return_sequences,
                    ):
                        print(text + "\n")
                return
            texts = generator.generate(
                args.prompts, do_sample=args.do_sample, top_k=args.top_k, top_p=args.top_p,
                temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                num_return_sequences=args.num_return_sequences, seed=args.seed, **length,
            )
        except ValueError as e:  # a bad parameter: the library names it (our typed errors stay errors)
            if isinstance(e, CngptError):
                raise
            parser.error(str(e))
        for text in texts:
            print(text)

    return cli.run_main(run)


def _form(text: str):
    """"七言绝句" stays a name; "5,4" becomes (5, 4)."""
    parts = text.replace("x", ",").split(",")
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.strip().isdigit() for p in parts) else text


if __name__ == "__main__":
    sys.exit(main())
