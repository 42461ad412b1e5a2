"""Tests of `cngpt_tf.vocab.read_vocab`: a vocab.txt read exactly as BERT reads it, and bounded."""

from __future__ import annotations

import os
import re
import threading

import pytest

from cngpt_tf import vocab
from cngpt_tf.errors import VocabError
from cngpt_tf.vocab import read_vocab

# Characters that `str.splitlines()` treats as line breaks (and `str.strip()` eats) but BERT does not:
# each is a token of its own (the real vocab holds U+2028 as id 343), as are whitespace-edged ones.
NOT_LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "##\u2028", " ", "\t",
                   " a ", "\u3000", "\ufeff"]
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *NOT_LINE_BREAKS, "明", ""]


def test_only_newlines_end_a_token(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("".join(t + "\n" for t in TOKENS).encode("utf-8"))
    assert read_vocab(path) == TOKENS


def hf_load_vocab(path) -> list[str]:
    """transformers' `tokenization_bert.load_vocab`, line for line (importing transformers takes 6 s)."""
    with open(path, "r", encoding="utf-8") as reader:
        return [token.rstrip("\n") for token in reader.readlines()]


def test_line_ends_as_hf_reads_them(tmp_path):
    """HF's load_vocab opens in text mode: "\\r\\n" and a lone "\\r" end a line; the last line may lack one."""
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\r\n[UNK]\r[CLS]\n\u2028\r\n[SEP]".encode("utf-8"))
    assert read_vocab(path) == ["[PAD]", "[UNK]", "[CLS]", "\u2028", "[SEP]"] == hf_load_vocab(path)
    path.write_bytes("".join(t + "\n" for t in TOKENS).encode("utf-8"))
    assert read_vocab(path) == hf_load_vocab(path)


def test_not_utf8_is_one_vocab_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\n明\n".encode("gbk"))
    with pytest.raises(VocabError, match=rf"^{re.escape(str(path))}: vocab is not UTF-8 \(byte 6\)$"):
        read_vocab(path)


def test_oversized_vocab_is_refused_unsplit(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"\n" * (vocab.MAX_BYTES + 1))
    with pytest.raises(VocabError, match=rf"^{re.escape(str(path))}: vocab is larger than 16 MiB$"):
        read_vocab(path)


def test_vocab_at_the_size_limit_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(vocab, "MAX_BYTES", 1000)
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"a\n" * 500)
    assert read_vocab(path) == ["a"] * 500
    path.write_bytes(b"a\n" * 500 + b"a")
    with pytest.raises(VocabError, match="larger than"):
        read_vocab(path)


def test_empty_missing_or_not_a_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(VocabError, match="empty"):
        read_vocab(tmp_path / "empty.txt")
    with pytest.raises(VocabError, match="missing.txt: file not found"):
        read_vocab(tmp_path / "missing.txt")
    with pytest.raises(VocabError, match="not a regular file"):
        read_vocab(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "vocab.txt"
    os.mkfifo(fifo)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(pytest.raises(VocabError, read_vocab, fifo)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("read_vocab blocked on a FIFO")
    assert errors and "not a regular file" in str(errors[0].value)
