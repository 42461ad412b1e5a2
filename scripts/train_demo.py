"""Train the embedded demo: a small GPT-2 on the Tang poems, shipped as a PyTorch-format release zip.

    python scripts/train_demo.py                 # ~30 min on 2 CPU cores; writes cngpt_tf/data/<NAME>.zip
    python scripts/train_demo.py --minutes 2 --release /tmp/demo.zip     # a quick smoke run

The route is the one a user of this project takes: random GPT-2 init -> a PyTorch release folder ->
`converters.pt2tf` -> `cngpt_tf.finetune` (Keras) -> the fine-tuned PyTorch weights, stored as float16
in `pytorch_model.bin` (the reader upcasts them to float32) with `config.json` and `vocab.txt` in a zip
like the seed release's. Everything derives from the data and fixed seeds.

Data: `tests/data/tang_regular_poems.tsv` (title<TAB>author<TAB>poem, shuffled with seed 0), one
document a line, `title：poem` — the model learns that a title and "：" lead into a poem — or the poem
alone where the title has characters outside the vocab. The last 5% of the lines are held out; the
held-out perplexity is printed before (random init) and after training.

Vocab: the first VOCAB_SIZE ids of BERT's 21128-token Chinese vocab, so every id means the same
token as in BERT's (a prefix, not a re-numbered subset): it covers [PAD] [UNK] [CLS] [SEP], ASCII,
the CJK block and the full-width "，" "：" that the poems use (the largest id they need is 8038).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cngpt_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

DATA = ROOT / "tests" / "data"
NAME = "gpt2_poem_demo_CN"
RELEASE = ROOT / "cngpt_tf" / "data" / f"{NAME}.zip"
VOCAB_SIZE = 8064  # 1 + the largest id the poems and kept titles use (8038), rounded up to 64
SHAPE = dict(n_ctx=128, n_embd=256, n_head=4, n_layer=4)
SEED = 20261129


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, default=RELEASE, help="the zip to write (default %(default)s)")
    parser.add_argument("--work", type=Path, help="keep the intermediate folders here (default: a temp folder)")
    parser.add_argument("--max_steps", type=int, default=1000, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    args = parser.parse_args(argv)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="train_demo_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        vocab = read_prefix_vocab(DATA / "bert_chinese_vocab.txt", VOCAB_SIZE)
        corpus = write_corpus(DATA / "tang_regular_poems.tsv", set(vocab), work / "poems.txt")
        init = write_init_release(work / "init_pt", vocab)

        from cngpt_tf.export.convert import convert
        from cngpt_tf.finetune import finetune

        convert(str(init), work / "init", formats=("tf2",), overwrite=True, progress=False)
        result = finetune(work / "init", corpus, work / "ft", batch_size=args.batch_size, block_size=SHAPE["n_ctx"],
                          learning_rate=args.learning_rate, warmup_steps=min(200, args.max_steps // 10),
                          max_steps=args.max_steps, seed=SEED, verbose=2)
        digest = write_release(work / "ft" / "pytorch", args.release)
    minutes = (time.time() - start) / 60
    print(json.dumps({
        "release": str(args.release), "bytes": args.release.stat().st_size, "sha256": digest,
        "held_out_perplexity_random_init": round(result.perplexity_before, 2),
        "held_out_perplexity": round(result.perplexity_after, 2),
        "steps": result.last_step, "steps_per_second": round(result.steps_per_second, 3),
        "minutes": round(minutes, 1)}, indent=2, ensure_ascii=False))
    return 0


def read_prefix_vocab(path: Path, size: int) -> list[str]:
    tokens = path.read_text(encoding="utf-8").split("\n")  # one token a "\n"-line, as BERT reads it
    return tokens[:size]


def write_corpus(tsv: Path, vocab: set[str], out: Path) -> Path:
    """One poem a line, `title：poem`; the title is dropped where a character of it is not in `vocab`."""
    lines = []
    for row in tsv.read_text(encoding="utf-8").split("\n"):
        if not row:
            continue
        title, _author, poem = row.split("\t")
        lines.append(f"{title}：{poem}" if set(title) <= vocab else poem)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def write_init_release(folder: Path, vocab: list[str]) -> Path:
    """GPT-2's init (N(0, 0.02), fixed seed) as a PyTorch release folder."""
    from cngpt_tf.config import GPT2Config, write_json
    from cngpt_tf.formats.pytorch import write_pytorch
    from cngpt_tf.demo import demo_weights

    config = GPT2Config(n_vocab=len(vocab), **SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    write_pytorch(folder, demo_weights(config, seed=SEED))
    write_json(folder / "config.json", config.to_hf_dict())
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return folder


def write_release(pt_folder: Path, zip_path: Path) -> str:
    """Zip the fine-tuned weights as float16 with config.json and vocab.txt; return the zip's sha256."""
    import numpy as np

    from cngpt_tf.formats import torch_pickle

    state = torch_pickle.load_state_dict(pt_folder / "pytorch_model.bin")
    # lm_head.weight is wte's tie: HF ties it again on load, and a second copy would cost 4 MB.
    half = {k: v.astype(np.float16) for k, v in state.items() if k != "lm_head.weight"}
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=zip_path.parent) as tmp:
        weights = Path(tmp) / "pytorch_model.bin"
        torch_pickle.save_state_dict(half, weights)
        part = Path(tmp) / "release.zip"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for name in ("config.json", "vocab.txt"):
                z.write(pt_folder / name, f"{NAME}/{name}")
            z.write(weights, f"{NAME}/pytorch_model.bin")
        part.replace(zip_path)
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
