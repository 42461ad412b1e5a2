"""`python -m converters.pt2tf`: a PyTorch Chinese GPT-2 -> TF1 checkpoint, HF TF2 and SavedModel, verified.

Everything is written into a temporary folder beside OUT_DIR and renamed into place only after every
format has been reloaded and its logits checked, so a failure, Ctrl-C, SIGTERM or SIGHUP leaves no
half-written OUT_DIR; OUT_DIR is never the source, nor holds it or lies inside it (`output.check_output`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from cngpt_tf import cli
from cngpt_tf.config import GPT2Config, with_vocab, write_json
from cngpt_tf.errors import ConfigError
from cngpt_tf.formats import names
from cngpt_tf.formats.pytorch import read_pytorch
from cngpt_tf.formats.source import HUB_PATTERNS, default_cache_dir, open_source

from .output import check_output, move_into_place, workspace

log = logging.getLogger("converters.pt2tf")

FORMATS = ("tf1", "tf2", "saved_model")
SAVED_MODEL_VERSION = 1
REPORT = "conversion_report.json"
PRODUCED = (*FORMATS, REPORT)  # what --overwrite may replace in OUT_DIR

EXAMPLE = """\
example:
  # the seed release, downloaded as a zip (files may sit in a sub-folder of the zip)
  python -m converters.pt2tf gpt2_L-12_H-768_A-12_CN.zip out/ --atol 1e-4
  # -> out/tf1/ (openai/gpt-2 checkpoint), out/tf2/ (TFGPT2LMHeadModel), out/saved_model/1/,
  #    out/conversion_report.json, and a table of the logits check per format

  # no weights at hand: the embedded demo, a small GPT-2 trained on Tang poems, converted the same way
  python -m converters.pt2tf --demo demo_out/
"""


def convert(
    src: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = FORMATS,
    overwrite: bool = False,
    atol: float = 1e-4,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    generation=None,
    no_generate: bool = False,
    saved_model_version: int = SAVED_MODEL_VERSION,
) -> dict:
    """Convert `src` into `out_dir`; return the conversion report. Raises CngptError subclasses.

    generation: `converters.saved_model.GenerationSettings` for the SavedModel's generation
    signatures (default: greedy, 50 new tokens); no_generate=True exports `logits` only.

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
            settings = None
            if "saved_model" in formats and not no_generate:
                from .saved_model import GenerationSettings

                settings = generation or GenerationSettings()
                try:
                    settings.check_for(config)  # before reading the weights
                except ValueError as e:
                    raise GenerationFlagError(f"{e} (model {files.shown(files.config)})") from e
            tensors = read_pytorch(files.weights, files.shown(files.weights))
            names.check(tensors, names.PT, config, origin=files.shown(files.weights))  # before writing anything
            log.info("%s: %d tensors, %s", files.shown(files.weights), len(tensors), _describe(config))
        written = {}
        for fmt in formats:
            with steps(fmt):
                written[fmt] = _write(fmt, work, tensors, config, files, settings, saved_model_version)
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


def _write(fmt: str, work: Path, tensors, config: GPT2Config, files, generation, version: int) -> Path:
    """Write one format under `work`; return the folder its verification reads."""
    if fmt == "tf1":
        from cngpt_tf.formats.tf1 import write_tf1

        write_tf1(work / "tf1", tensors, config, files.vocab)
        return work / "tf1"
    if fmt == "tf2":
        from cngpt_tf.formats.hf_tf2 import write_tf2

        write_tf2(work / "tf2", tensors, config, files.vocab, do_lower_case=_do_lower_case(files.folder))
        return work / "tf2"
    from .saved_model import export_saved_model

    folder = work / "saved_model" / str(version)
    export_saved_model(folder, tensors, config, files.vocab, generation)
    return folder


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
    serving = parser.add_argument_group("SavedModel generation signatures (fixed at export)")
    serving.add_argument("--no_generate", action="store_true", help="export the logits signature only")
    serving.add_argument("--saved_model_version", type=int, default=SAVED_MODEL_VERSION,
                         help="version folder under saved_model/ (TF Serving loads the highest)")
    serving.add_argument("--max_new_tokens", type=int, default=50)
    serving.add_argument("--do_sample", action="store_true", help="sample (default greedy)")
    serving.add_argument("--top_k", type=int, default=0)
    serving.add_argument("--top_p", type=float, default=1.0)
    serving.add_argument("--temperature", type=float, default=1.0)
    serving.add_argument("--repetition_penalty", type=float, default=1.0)
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
    cli.setup_logging(args.verbose)

    generation = _generation_settings(args, parser)

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


# ----- helpers ------------------------------------------------------------------------------------


class GenerationFlagError(ConfigError):
    """A generation setting the model cannot honour (`GenerationSettings.check_for`: max_new_tokens,
    top_k); the CLI shows it as a usage error."""


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
    path = folder / "tokenizer_config.json"
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True


def _generation_settings(args, parser):
    """The export's generation settings from the flags, checked before any work (argparse errors);
    those that depend on the model (max_new_tokens, top_k) are checked once config.json is read."""
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not 1 <= args.saved_model_version < 2**63:  # TF Serving reads the folder name as an int64
        parser.error(f"--saved_model_version must be an integer in [1, 2**63 - 1], got {args.saved_model_version}")
    from .saved_model import GenerationSettings

    settings = GenerationSettings(args.max_new_tokens, args.do_sample, args.top_k, args.top_p, args.temperature,
                                  args.repetition_penalty)
    try:
        settings.sampling  # noqa: B018  (validates)
    except ValueError as e:
        parser.error(str(e))
    return settings


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


if __name__ == "__main__":
    sys.exit(main())
