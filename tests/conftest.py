"""Shared fixtures: tiny GPT-2 checkpoints made by torch with a fixed seed, and their conversions.

Nothing is downloaded. The tiny model (2 layers, n_embd 64) uses a generated BERT-style Chinese
vocab; tests that need real data read `tests/data/` (the 21128-token BERT vocab, a corpus sample, the
Tang poems), which ships with the repo.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tensorflow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub (none is reachable here)

import logging  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Hypothesis keeps its example database and caches in ./.hypothesis/ by default, i.e. in the checkout:
# keep them in the temp folder instead (the environment variable also reaches subprocesses).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "cngpt_tf-hypothesis"))
# The generate command keeps XLA's compiled programs in ~/.cache/cngpt_tf/xla (cngpt_tf.compile_cache);
# the commands the tests run keep theirs in the temp folder (content-keyed, so sessions may share it).
os.environ.setdefault("CNGPT_TF_XLA_CACHE", str(Path(tempfile.gettempdir()) / "cngpt_tf-xla-tests"))
try:
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # hypothesis is a test extra; the tests that need it import it themselves
    pass
else:  # in case hypothesis resolved its folder before this file was read
    set_hypothesis_home_dir(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])

DATA = Path(__file__).resolve().parent / "data"  # real vocab, corpus and poems: see data/README.md
TINY = dict(n_positions=64, n_embd=64, n_layer=2, n_head=4)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size (12-layer) checks; kept in CI")


@pytest.fixture(autouse=True)
def _drop_cli_log_handler():
    """`main()` calls `logging.basicConfig(force=True)`, which binds a root handler to capsys' stream;
    remove it afterwards, or later tests log into a closed file ("--- Logging error ---")."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def heeded_signals():
    """SIGINT, SIGTERM and SIGHUP at their defaults for one test, whatever the suite was started
    under: `nohup` (or a shell's background job) starts it with SIGHUP (SIGINT) ignored, and the CLIs
    rightly leave an ignored signal ignored (`cngpt_tf.interrupts`), so a test of how they handle
    one must first make it heeded."""
    import signal

    from cngpt_tf import interrupts

    ignored = [s for s in interrupts.SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
    for s in ignored:
        signal.signal(s, signal.SIG_DFL)
    yield
    for s in ignored:
        signal.signal(s, signal.SIG_IGN)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: the real BERT Chinese vocab, the CLUE corpus sample and the Tang poems."""
    return DATA


def corpus_head(folder: Path, n_lines: int) -> Path:
    """folder/corpus.txt: the first n_lines of the CLUE corpus sample (real Chinese, one document a line)."""
    lines = (DATA / "clue_corpus_small_sample.txt").read_text(encoding="utf-8").split("\n")[:n_lines]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_torch_model(folder: Path, vocab: list[str], seed: int = 0, safetensors: bool = False, **shape) -> Path:
    """Save a random GPT2LMHeadModel with torch (as a real release is made) plus vocab.txt.

    Every parameter gets extra noise, so biases and LayerNorm gains are not the trivial 0 / 1 of
    GPT-2's init: a swapped or dropped tensor then changes the logits.
    """
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), **{**TINY, **shape})  # bos/eos stay GPT-2's 50256
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=safetensors)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return folder


def torch_logits(folder_or_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HF PyTorch logits with positions from the mask (left padding), as generation computes them."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    model = folder_or_model
    if not hasattr(model, "forward"):
        model = GPT2LMHeadModel.from_pretrained(folder_or_model).eval()
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.numpy()


@pytest.fixture(scope="session")
def tiny_vocab() -> list[str]:
    from cngpt_tf.demo import demo_vocab

    return demo_vocab()


@pytest.fixture(scope="session")
def tiny_pt_dir(tmp_path_factory, tiny_vocab) -> Path:
    """A tiny torch-written GPT2LMHeadModel folder: pytorch_model.bin, config.json, vocab.txt."""
    return write_torch_model(tmp_path_factory.mktemp("tiny_pt") / "model", tiny_vocab)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_pt_dir) -> Path:
    """`pt2tf` output (all formats) of the tiny model."""
    from cngpt_tf.export.convert import convert

    out = tmp_path_factory.mktemp("converted") / "out"
    convert(str(tiny_pt_dir), out, progress=False)
    return out
