"""Cost of the poem masks: `Generator.poem` against unconstrained `generate_ids`, same model, same
number of new tokens, measured in one run.

A random-init model with the real GPT-12L-CN shape (12 layers, n_embd 768, 12 heads, vocab 21128;
the real vocab of tests/data), built as benchmarks/serving.py builds it, converted to
tf2 and loaded with `Generator.from_pretrained`. A 七言绝句 with
acrostic "春夏秋冬" and rhyme="auto" is 33 new tokens (4 lines x (7 characters + punctuation) +
[SEP]); the unconstrained side generates exactly 33 tokens after the same prompt ids (min_new_tokens),
both sampling with top_k=8 and the same seeds. Three contenders alternate within each round (order
rotated) so that machine noise hits all alike; medians of --rounds runs; first calls (trace + XLA
compile + one run) reported apart.

- generate_ids: the unconstrained decoder;
- poem(): the whole user-facing call (plan, masks in the loop, decode and formatting of the text);
- poem loop: the compiled constrained decoder alone (`Generator._run` with a prebuilt plan), i.e.
  the in-loop cost of the masks without the Python around them.

    python benchmarks/poetry.py            # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.full_size import bench_vocab, make_model  # noqa: E402

FORM, ACROSTIC, RHYME, TOP_K = "七言绝句", "春夏秋冬", "auto", 8
NEW_TOKENS = 4 * (7 + 1) + 1  # 33
PROMPT = "春日"


def check_poem(poem: str) -> None:
    lines = poem.split("\n")
    assert len(lines) == 4 and all(len(line) == 8 for line in lines), poem
    assert "".join(line[0] for line in lines) == ACROSTIC, poem
    assert [line[-1] for line in lines] == ["，", "。", "，", "。"], poem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per contender (median reported)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)

    import numpy as np

    from cngpt_tf.generator import Generator
    from cngpt_tf.poetry import PoemPlan, PoemVocab
    from cngpt_tf.generation_config import GenerationConfig
    from cngpt_tf.export.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        src = make_model(Path(tmp) / "model", bench_vocab())
        convert(str(src), Path(tmp) / "out", formats=("tf2",), progress=False)
        gen = Generator.from_pretrained(Path(tmp) / "out")
        build_s = time.perf_counter() - start

    prompt_ids = gen.tokenizer.encode(PROMPT)
    sampling = GenerationConfig(do_sample=True, top_k=TOP_K).validate()
    c = gen.config
    rows = []
    for batch in args.batch:
        many = dict(num_return_sequences=batch) if batch > 1 else {}

        def run_generate(seed):
            out = gen.generate_ids([prompt_ids], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=True,
                                   top_k=TOP_K, seed=seed, **many)
            assert out.shape == (batch, len(prompt_ids) + NEW_TOKENS), out.shape

        def run_poem(seed):
            poems = gen.poem(PROMPT, form=FORM, acrostic=ACROSTIC, rhyme=RHYME, do_sample=True, top_k=TOP_K, seed=seed,
                             num_return_sequences=batch)
            assert len(poems) == batch
            for poem in poems:
                check_poem(poem)

        vocab = PoemVocab(gen.tokenizer.tokens, c.eos_token_id)
        plan = PoemPlan.build(vocab, FORM, batch, ACROSTIC, RHYME)
        ids = np.array([prompt_ids] * batch, np.int32)

        def run_loop(seed):
            out = gen._run(sampling, ids, np.ones_like(ids), plan.n_new, 0, c.eos_token_id, gen._pad_id(None), seed,
                           constraint=plan)
            assert out.shape == (batch, len(prompt_ids) + NEW_TOKENS), out.shape

        contenders = {"generate_ids": run_generate, "poem()": run_poem, "poem loop": run_loop}
        first, times = {}, {name: [] for name in contenders}
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn(0)
            first[name] = time.perf_counter() - start
        names = list(contenders)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
                start = time.perf_counter()
                contenders[name](r + 1)
                times[name].append(time.perf_counter() - start)
            print(f"  batch {batch}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        rows.append((batch, first, {name: statistics.median(t) for name, t in times.items()}))

    print(f"model: 12 layers, n_embd 768, 12 heads, vocab 21128 (real BERT vocab), random init; {FORM} "
          f"acrostic {ACROSTIC} rhyme={RHYME}: {NEW_TOKENS} new tokens, top_k={TOP_K}; {os.cpu_count()} CPUs; "
          f"median of {args.rounds}; model build + conversion {build_s:.0f} s")
    print("| batch | generate_ids tok/s | poem() tok/s | poem() overhead | poem loop tok/s | loop overhead | "
          "first call s (generate_ids / poem() / loop) |")
    print("|---|---|---|---|---|---|---|")
    for batch, first, med in rows:
        tps = {name: batch * NEW_TOKENS / t for name, t in med.items()}
        over = {name: (med[name] - med["generate_ids"]) / med["generate_ids"] * 100 for name in med}
        print(f"| {batch} | {tps['generate_ids']:.1f} | {tps['poem()']:.1f} | {over['poem()']:+.1f}% | "
              f"{tps['poem loop']:.1f} | {over['poem loop']:+.1f}% | "
              f"{first['generate_ids']:.1f} / {first['poem()']:.1f} / {first['poem loop']:.1f} |")


if __name__ == "__main__":
    main()
