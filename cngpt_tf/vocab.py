"""Read a BERT `vocab.txt` exactly as BERT defines it: one token per `\\n`-terminated line.

`str.splitlines()` would be wrong here: the real BERT Chinese vocab holds U+2028 (LINE SEPARATOR) as
token 343 and `##\\u2028` as 13502, which `splitlines()` treats as line breaks, shifting every later
id. `str.strip()` would likewise eat whitespace tokens. We split on `"\\n"` only, as HF's
`load_vocab` does (it reads lines in text mode, so `"\\r\\n"` and `"\\r"` end a line too, and strips
only the trailing `"\\n"`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import VocabError
from .textfile import read_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"

# BERT's Chinese vocab is 110 KB (21128 lines). This bounds what a hostile file costs, and its lines
# to 1 << 24, the largest vocab_size a config may declare.
MAX_BYTES = 16 << 20


def read_vocab(path: str | Path) -> list[str]:
    """Return the tokens of `path` in id order (id = line index)."""
    text = read_text(path, MAX_BYTES, VocabError, "vocab")  # "\r\n" and "\r" read as "\n", as HF's text mode
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the final line's terminator, not an empty token
    if not tokens:
        raise VocabError(f"{path}: vocab is empty")
    return tokens


def special_token_ids(tokens: list[str], path: str | Path = "vocab.txt") -> dict[str, int]:
    """Ids of `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` (required) and `[MASK]` (optional) in `tokens`."""
    index = {token: i for i, token in enumerate(tokens)}  # a repeated token: the last wins, as in HF
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in index]
    if missing:
        raise VocabError(f"{path}: vocab lacks the special token(s) {', '.join(missing)}")
    ids = {t: index[t] for t in (PAD, UNK, CLS, SEP)}
    if MASK in index:
        ids[MASK] = index[MASK]
    return ids
