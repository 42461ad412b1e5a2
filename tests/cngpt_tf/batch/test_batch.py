"""`python -m cngpt_tf.batch` on Beam's DirectRunner with the tiny converted model (64 positions).

Scoring equals HF PyTorch's sliding-window perplexity on the same weights; generated texts and poems
equal the Python API's for the seed each record carries; bad lines become error records; reruns
write byte-identical shards, in memory and on two worker processes; bad flags are usage errors
before anything runs. Pipelines run in-process (`--direct_running_mode in_memory`, one worker), so
each costs about the tiny model's compiles (~10 s); the two-process run starts two Python workers
(~45 s on 2 busy cores).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")  # the [beam] extra

from cngpt_tf.batch import command, inputs, options, records, scoring, tfrecord  # noqa: E402
from cngpt_tf.batch.staging import copy_model  # noqa: E402

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
TINY_CTX = 64
# characters of the tiny demo vocab (cngpt_tf.demo.demo_vocab), so lines are not all [UNK]
POEM_TEXT = "床前明月光疑是地上霜举头望明月低头思故乡白日依山尽黄河入海流欲穷千里目更上一层楼"
LONG_LINE = (POEM_TEXT * 4)[:150]  # 151 ids with [CLS]: four windows of the 64-position model


def run_batch(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = command.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def read_records(prefix: Path, shards: int = 1) -> list[dict]:
    found = []
    for i in range(shards):
        found += [json.loads(line) for line in Path(f"{prefix}-{i:05d}-of-{shards:05d}.jsonl").read_text("utf-8").splitlines()]
    return found


# ----- score -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(converted, tmp_path_factory, data_dir):
    """One score run: corpus lines, a poem line, one longer than the context, an empty line, a bad byte."""
    tmp = tmp_path_factory.mktemp("score")
    corpus = (data_dir / "clue_corpus_small_sample.txt").read_text("utf-8").splitlines()[:3]
    lines = [POEM_TEXT[:10], LONG_LINE, "", *[c[:40] for c in corpus]]
    path = tmp / "lines.txt"
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n\xff\xfe\n")
    out = tmp / "scores"
    return lines, out, command.main(["score", str(path), str(out), "--model", str(converted), *IN_MEMORY])


def hf_perplexity(model, ids: list[int], n_ctx: int) -> tuple[float, int]:
    """HF's perplexity guide (transformers docs, "Perplexity of fixed-length models"), verbatim in
    spirit: windows of n_ctx every n_ctx // 2, labels -100 except the tokens not scored before."""
    torch = pytest.importorskip("torch")
    seq = torch.tensor([ids])
    stride, nll, count, prev_end = n_ctx // 2, 0.0, 0, 0
    for begin in range(0, seq.size(1), stride):
        end = min(begin + n_ctx, seq.size(1))
        target_len = end - prev_end
        window = seq[:, begin:end]
        labels = window.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(window, labels=labels).loss  # mean over the shifted, unmasked labels
        valid = int((labels[:, 1:] != -100).sum())
        nll += float(loss) * valid
        count += valid
        prev_end = end
        if end == seq.size(1):
            break
    return math.exp(nll / count), count


def test_score_equals_hf_pytorch_perplexity_with_a_sliding_window(scored, converted, tiny_pt_dir):
    from transformers import GPT2LMHeadModel

    from cngpt_tf.tokenizer import ChineseTokenizer

    lines, out, code = scored
    assert code == 0
    got = {r["id"].rsplit(":", 1)[1]: r for r in read_records(out)}
    hf = GPT2LMHeadModel.from_pretrained(tiny_pt_dir).eval()
    tokenizer = ChineseTokenizer.from_pretrained(converted / "tf2")
    checked = 0
    for number, text in enumerate(lines, 1):
        ids = tokenizer.encode(text)
        if len(ids) < 2:
            continue
        record = got[str(number)]
        want, count = hf_perplexity(hf, ids, TINY_CTX)
        assert record["tokens"] == count == len(ids) - 1
        assert record["perplexity"] == pytest.approx(want, rel=1e-4), (number, text[:10])
        assert record["perplexity"] == pytest.approx(math.exp(-record["log_likelihood"] / record["tokens"]))
        checked += 1
    assert checked == len(lines) - 1 and len(tokenizer.encode(LONG_LINE)) > 2 * TINY_CTX


def test_score_records_bad_lines_as_errors(scored):
    lines, out, _ = scored
    got = {int(r["id"].rsplit(":", 1)[1]): r for r in read_records(out)}
    assert sorted(got) == list(range(1, len(lines) + 2))  # every line once, the undecodable one too
    assert got[3] == {"id": got[3]["id"], "input": "", "error": "nothing to score: the line has no tokens"}
    bad = got[len(lines) + 1]
    assert bad["error"] == "not valid UTF-8 (byte 0 of the line)" and bad["input"] == "\ufffd\ufffd"
    assert all("error" not in r for n, r in got.items() if n not in (3, len(lines) + 1))


def test_windows_score_every_token_once_with_the_guides_context():
    for n in (2, 63, 64, 65, 97, 151, 200):
        spans = scoring.windows(n, TINY_CTX)
        scored = [t for _, end, first in spans for t in range(first, end)]
        assert scored == list(range(1, n))
        for begin, end, first in spans:
            assert end - begin <= TINY_CTX and (first - begin >= TINY_CTX // 2 or begin == 0)


# ----- generate, poem --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen(converted):
    from cngpt_tf.generator import Generator

    return Generator.from_pretrained(converted)


PROMPTS = ["床前明月光，", "白日依山尽", "", "举头望"]


def test_generate_from_gzip_equals_the_api_for_each_lines_seed(converted, gen, tmp_path, capsys):
    path = tmp_path / "prompts.txt.gz"
    path.write_bytes(gzip.compress("\r\n".join(PROMPTS).encode("utf-8")))  # CRLF, no final newline
    flags = ["--max_new_tokens", "12", "--do_sample", "--top_k", "8", "--seed", "7"]
    code, out, _ = run_batch(["generate", path, tmp_path / "gen", "--model", converted, *flags, *IN_MEMORY], capsys)
    assert code == 0 and out.startswith(f"done: {len(PROMPTS)} lines, ")
    got = read_records(tmp_path / "gen")
    assert [r["input"] for r in got] == PROMPTS
    for r in got:
        assert r["seed"] == records.line_seed(7, r["id"])
        want = gen.generate([r["input"]], max_new_tokens=12, do_sample=True, top_k=8, seed=r["seed"])
        assert r["generated_text"] == want[0]


def write_tfrecord(path: Path, payloads: list[bytes]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for p in payloads:
            writer.write(p)


def test_poem_from_tfrecord_equals_the_api(converted, gen, tmp_path, capsys):
    path = tmp_path / "titles.tfrecord"
    write_tfrecord(path, [t.encode("utf-8") for t in ("春晓", "静夜思")])
    flags = ["--form", "五言绝句", "--rhyme", "auto"]
    code, _, _ = run_batch(["poem", path, tmp_path / "poems", "--model", converted, *flags, *IN_MEMORY], capsys)
    assert code == 0
    got = read_records(tmp_path / "poems")
    assert [r["id"] for r in got] == [f"{path}:1", f"{path}:2"]
    for r in got:
        assert r["poem"] == gen.poem(r["input"], form="五言绝句", rhyme="auto", seed=r["seed"])[0]
        assert [len(line) for line in r["poem"].split("\n")] == [6, 6, 6, 6]


def test_generate_errors_reruns_and_shards(converted, tmp_path, capsys):
    """Bad lines are records; a rerun writes byte-identical shards; every line lands in one shard."""
    lines = [f"{POEM_TEXT[i % 20:i % 20 + 5]}" for i in range(40)] + [(POEM_TEXT * 2)[:55], "x" * 300]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["generate", path, None, "--model", converted, "--max_new_tokens", "10", "--do_sample",
            "--num_shards", "3", "--batch_size", "4", "--max_line_bytes", "200", *IN_MEMORY]
    files = []
    for run in ("a", "b"):
        argv[2] = tmp_path / run
        code, out, _ = run_batch(argv, capsys)
        assert code == 0 and out.startswith(f"done: {len(lines)} lines, ") and ", 2 errors -> " in out
        files.append([Path(f"{tmp_path / run}-{i:05d}-of-00003.jsonl").read_bytes() for i in range(3)])
    assert files[0] == files[1] and all(files[0])
    got = read_records(tmp_path / "a", 3)
    assert sorted(int(r["id"].rsplit(":", 1)[1]) for r in got) == list(range(1, len(lines) + 1))
    errors = {int(r["id"].rsplit(":", 1)[1]): r["error"] for r in got if "error" in r}
    assert errors == {41: "prompt of 56 tokens + 10 new tokens exceed n_positions=64",
                      42: "line of 300 bytes exceeds --max_line_bytes=200"}


def test_two_worker_processes_write_the_same_files(converted, tmp_path, capsys):
    """The embedded default: DirectRunner in multi-process mode (2 workers), same bytes as in memory."""
    path = tmp_path / "in.txt"
    path.write_text("\n".join(POEM_TEXT[i:i + 6] for i in range(0, 36, 3)) + "\n", encoding="utf-8")
    outputs = []
    for name, runner in (("mem", IN_MEMORY), ("procs", ["--direct_num_workers", "2"])):
        code, _, _ = run_batch(["generate", path, tmp_path / name, "--model", converted, "--max_new_tokens", "8",
                                "--do_sample", "--batch_size", "2", *runner], capsys)
        assert code == 0
        outputs.append((tmp_path / f"{name}-00000-of-00001.jsonl").read_bytes())
    assert outputs[0] == outputs[1]


# ----- usage errors before anything runs ---------------------------------------------------------------


@pytest.mark.parametrize("argv, text", [
    (["score", "IN", "OUT", "--model", "M", "--bogus"], "unrecognized arguments: --bogus"),
    (["generate", "IN", "OUT", "--model", "M", "--top_k", "-1"], "top_k must be an integer >= 0"),
    (["generate", "IN", "OUT", "--model", "M", "--form", "五言绝句"], "--form: a poem setting; use the poem command"),
    (["poem", "IN", "OUT", "--model", "M", "--max_new_tokens", "8"], "--max_new_tokens: a poem's form fixes its length"),
    (["score", "IN", "OUT", "--model", "M", "--batch_size", "0"], "batch_size must be an integer >= 1"),
    (["score", "IN", "OUT", "--model", "M", "--direct_running_mode", "nope"], "invalid choice: 'nope'"),
    (["score", "OUT", "--model", "M"], "give at least one INPUT and then the OUTPUT prefix"),
    (["score", "NO_SUCH_*.txt", "OUT", "--model", "M"], "NO_SUCH_*.txt: no file matches"),
])
def test_bad_flags_are_one_line_usage_errors(argv, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IN").write_text("春\n", encoding="utf-8")
    code, out, err = run_batch(argv, capsys)
    assert code == 2 and out == "" and text in err.splitlines()[-1], err
    assert err.splitlines()[-1].startswith(f"python -m cngpt_tf.batch {argv[0]}: error:")


@pytest.mark.parametrize("flags, text", [
    (["--top_k", "5000"], "top_k=5000 exceeds the vocab of 1803 tokens"),
    (["--max_new_tokens", "64"], "max_new_tokens=64 leaves no room for a prompt in n_positions=64"),
])
def test_settings_the_model_cannot_honour_are_usage_errors(flags, text, converted, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("春\n", encoding="utf-8")
    code, _, err = run_batch(["generate", tmp_path / "in.txt", tmp_path / "out", "--model", converted, *flags,
                              *IN_MEMORY], capsys)
    assert code == 2 and text in err.splitlines()[-1], err
    assert not list(tmp_path.glob("out*"))


def test_poem_characters_missing_from_the_vocab_are_usage_errors(converted, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("春\n", encoding="utf-8")
    code, _, err = run_batch(["poem", tmp_path / "in.txt", tmp_path / "out", "--model", converted,
                              "--acrostic", "ABCD", *IN_MEMORY], capsys)
    assert code == 2 and "acrostic: character 'A' is not a Chinese character of the vocab" in err.splitlines()[-1], err


# ----- the pieces -----------------------------------------------------------------------------------


def test_beam_flags_are_split_from_ours_with_their_values():
    ours, beam = options.split_beam_args(
        ["score", "in", "--runner", "DirectRunner", "out", "--model=m", "--direct_num_workers=2",
         "--experiments", "a", "--save_main_session", "--batch_size", "4"])
    assert ours == ["score", "in", "out", "--model=m", "--batch_size", "4"]
    assert beam == ["--runner", "DirectRunner", "--direct_num_workers=2", "--experiments", "a", "--save_main_session"]


def test_lines_split_crlf_and_stay_bounded():
    data = b"a\r\nbb\n\n" + b"x" * 10 + b"\nlast"
    got = list(inputs.split_lines(io.BytesIO(data), limit=4))
    assert got == [(b"a", 1), (b"bb", 2), (b"", 0), (b"xxxx", 10), (b"last", 4)]


def test_tfrecord_reader_checks_every_record(tmp_path):
    path = tmp_path / "r.tfrecord"
    write_tfrecord(path, [b"one", b"two" * 10, b"three"])
    data = bytearray(path.read_bytes())
    assert [d for d, _ in tfrecord.read_records(io.BytesIO(bytes(data)), 100)] == [b"one", b"two" * 10, b"three"]
    got = list(tfrecord.read_records(io.BytesIO(bytes(data)), 10))
    assert got[1] == (None, "record of 30 bytes exceeds --max_line_bytes=10") and got[2] == (b"three", None)
    data[12] ^= 1  # a byte of the first record's data
    assert list(tfrecord.read_records(io.BytesIO(bytes(data)), 100))[0] == (
        None, "corrupt TFRecord record (data checksum mismatch)")
    assert list(tfrecord.read_records(io.BytesIO(bytes(data[:-3])), 100))[-1] == (
        None, "truncated TFRecord file (a partial record)")
    header = struct.pack("<Q", 3)
    assert tfrecord.masked_crc32c(header) == struct.unpack("<I", bytes(data[8:12]))[0]


def test_seeds_and_shards_are_stable_hashes():
    assert records.line_seed(0, "corpus.txt:1") == records.line_seed(0, "corpus.txt:1")
    assert records.line_seed(0, "corpus.txt:1") != records.line_seed(1, "corpus.txt:1")
    assert records.line_seed(0, "corpus.txt:1") == 2112342443  # sha256: the same on every machine and run
    counts = np.bincount([records.shard_of(f"f:{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900


def test_a_model_on_another_filesystem_is_copied_without_its_other_formats(converted, tmp_path):
    folder = copy_model(str(converted), tmp_path, weights=False)
    assert (folder / "config.json").is_file() and (folder / "vocab.txt").is_file()
    assert not (folder / "tf_model.h5").exists()
    full = copy_model(str(converted), tmp_path / "full")
    assert (full / "tf_model.h5").read_bytes() == (converted / "tf2" / "tf_model.h5").read_bytes()
