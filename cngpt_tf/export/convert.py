"""`convert()`: a PyTorch Chinese GPT-2 -> TF1 checkpoint, HF TF2 and SavedModel, verified (the library
behind `python -m converters.pt2tf`).

Everything is written into a temporary folder beside OUT_DIR and renamed into place only after every
format has been reloaded and its logits checked, so a failure, Ctrl-C, SIGTERM or SIGHUP leaves no
half-written OUT_DIR; OUT_DIR is never the source, nor holds it or lies inside it (`output.check_output`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from ..config import GPT2Config, with_vocab, write_json
from ..errors import ConfigError
from ..formats import names
from ..formats.pytorch import read_pytorch
from ..formats.source import HUB_PATTERNS, default_cache_dir, open_source
from ..generation_config import GenerationConfig

from .output import check_output, move_into_place, workspace

log = logging.getLogger("cngpt_tf.export.convert")

FORMATS = ("tf1", "tf2", "saved_model")
SAVED_MODEL_VERSION = 1
REPORT = "conversion_report.json"
PRODUCED = (*FORMATS, REPORT)  # what --overwrite may replace in OUT_DIR



def convert(
    src: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = FORMATS,
    overwrite: bool = False,
    atol: float = 1e-4,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    generation: GenerationConfig | None = None,
    no_generate: bool = False,
    saved_model_version: int = SAVED_MODEL_VERSION,
) -> dict:
    """Convert `src` into `out_dir`; return the conversion report. Raises CngptError subclasses.

    generation: the settings of the SavedModel's generation signatures (default `GenerationConfig()`:
    greedy), checked against the model before its weights are read (GenerationFlagError); without
    max_new_tokens the export takes `default_max_new_tokens(n_positions)`. no_generate=True exports
    `logits` only.

    TensorFlow-heavy modules are imported inside the steps so that `--help` and bad-argument errors
    answer at once instead of after TensorFlow's multi-second import.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    inputs = _inputs(src, cache_dir)
    target = check_output(out_dir, overwrite, PRODUCED, inputs)  # OUT_DIR's real path
    steps = _Steps(["read", *formats, "verify"], progress)
    # logging first: every log line, the source's too, prints above the bar instead of through it
    with logging_redirect_tqdm(), open_source(src, cache_dir=cache_dir, progress=progress) as files, \
            workspace(target, inputs) as work:
        with steps("read"):
            config, vocab_ids = with_vocab(GPT2Config.from_file(files.config, files.shown(files.config)), files.vocab)
            lower_case = _do_lower_case(files.folder)  # read once, for every format written
            settings = None
            if "saved_model" in formats and not no_generate:  # checked before reading the weights
                settings = export_settings(generation, config, files.shown(files.config))
            tensors = read_pytorch(files.weights, files.shown(files.weights))
            names.check(tensors, names.PT, config, origin=files.shown(files.weights))  # before writing anything
            log.info("%s: %d tensors, %s", files.shown(files.weights), len(tensors), _describe(config))
        written = {}
        for fmt in formats:
            with steps(fmt):
                written[fmt] = _write(fmt, work, tensors, config, files, settings, saved_model_version, lower_case)
        with steps("verify"):
            from .verify import check, table, verify_all

            results = verify_all(written, tensors, config)
        steps.close()
        report = {
            "source": str(src),
            "weights": files.weights.name,
            "config": dataclasses.asdict(config),
            "special_tokens": vocab_ids,
            "atol": atol,
            "passed": all(r.passed(atol) for r in results),
            "formats": {r.format: dataclasses.asdict(r) for r in results},
            "seconds": steps.seconds,
        }
        write_json(work / REPORT, report)
        print(table(results, atol))
        check(results, atol)  # raises VerificationError: then nothing is moved into place
        move_into_place(work, target)
    log.info("wrote %s", out_dir)
    return report


def _write(fmt: str, work: Path, tensors, config: GPT2Config, files, generation, version: int,
           do_lower_case: bool) -> Path:
    """Write one format under `work`; return the folder its verification reads."""
    if fmt == "tf1":
        from ..formats.tf1 import write_tf1

        write_tf1(work / "tf1", tensors, config, files.vocab, do_lower_case=do_lower_case)
        return work / "tf1"
    if fmt == "tf2":
        from ..formats.hf_tf2 import write_tf2

        write_tf2(work / "tf2", tensors, config, files.vocab, do_lower_case=do_lower_case)
        return work / "tf2"
    from .saved_model import export_saved_model

    folder = work / "saved_model" / str(version)
    export_saved_model(folder, tensors, config, files.vocab, generation, do_lower_case=do_lower_case)
    return folder


# ----- helpers ------------------------------------------------------------------------------------


class GenerationFlagError(ConfigError):
    """A generation setting the model cannot honour (max_new_tokens >= n_positions, top_k > the vocab,
    ...); the CLI shows it as a usage error."""


def export_settings(generation: GenerationConfig | None, config: GPT2Config, shown: str = "the model",
                    ) -> GenerationConfig:
    """The SavedModel's generation settings: `generation` (default `GenerationConfig()`) as the
    export fixes them (`GenerationConfig.for_export`: checked against the model, a concrete
    max_new_tokens). GenerationFlagError naming the model (`shown`) otherwise."""
    generation = GenerationConfig() if generation is None else generation
    if not isinstance(generation, GenerationConfig):
        raise TypeError(f"generation must be a GenerationConfig, got {type(generation).__name__}")
    try:
        return generation.for_export(config.n_vocab, config.n_ctx)
    except ValueError as e:
        raise GenerationFlagError(f"{e} (model {shown})") from None


def _inputs(src: str, cache_dir) -> list[Path]:
    """What OUT_DIR must stay apart from: the source (and model files linked from its folder), or for
    a URL the download cache. A hub id's snapshot lives in the hub's own cache: nothing to check."""
    src = str(src)
    if src.startswith(("http://", "https://")):
        return [Path(cache_dir or default_cache_dir())]
    path = Path(src).expanduser()
    if path.is_dir():
        return [path, *(path / n for n in HUB_PATTERNS if (path / n).is_symlink())]
    return [path] if path.exists() or path.is_symlink() else []


def _do_lower_case(folder: Path) -> bool:
    """The source's casing (its tokenizer_config.json; BERT Chinese's default, lower-cased, without)."""
    from ..tokenizer import read_tokenizer_settings

    return read_tokenizer_settings(folder).get("do_lower_case", True)


class _Steps:
    """A tqdm bar over the conversion's steps that also records each step's wall time."""

    def __init__(self, names: list[str], progress: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=len(names), desc="pt2tf", unit="step", disable=not progress)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.debug("%s: %.1f s", name, self.seconds[name])
        _release_memory()
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _release_memory() -> None:
    """Free this step's garbage and hand freed heap pages back to the OS (glibc keeps them otherwise),
    so the next step's 400 MB of weights reuse memory instead of adding to the peak."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _describe(config: GPT2Config) -> str:
    return (f"{config.n_layer} layers, n_embd {config.n_embd}, {config.n_head} heads, "
            f"vocab {config.n_vocab}, n_ctx {config.n_ctx}")
