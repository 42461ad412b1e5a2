"""What every command-line entry point shares: flags, logging, and errors turned into exit codes.

Library code raises `cngpt_tf.errors` types; only here do they become a one-line message on stderr
and a non-zero exit code, so tests can call each CLI's `main(argv)` in-process.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import sys
import tempfile
import traceback
import unicodedata
from typing import NoReturn

from . import interrupts
from .errors import CngptError
from .generation_config import DEFAULT_LENGTH_RULE, GenerationConfig


def make_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """An argparse parser whose --help ends with a worked example, kept as written, and has the
    common flags (--verbose, --quiet)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=example,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    return parser


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


# ----- generation flags: one definition for `cngpt_tf.generate` and `converters.pt2tf` -----------------
# Each flag is a `GenerationConfig` field of the same name. Their argparse defaults are None (not
# given): the only defaults are GenerationConfig's, and a model's own generation_config.json still
# applies under flags that were not given.

# (flag, type, help) of what a run takes and an export fixes as well
_EXPORT_FLAGS = (
    ("max_new_tokens", int, f"new tokens (default {DEFAULT_LENGTH_RULE})"),
    ("top_k", int, "keep the k most likely tokens (default 0: off)"),
    ("top_p", float, "nucleus sampling mass (default 1.0: off)"),
    ("temperature", float, "divide the logits by this when sampling (default 1.0)"),
    ("repetition_penalty", float, "CTRL's penalty of seen tokens (default 1.0: off)"),
)
# (flag, type, help, why an export has no such setting) of what only a run takes
_RUN_FLAGS = (
    ("max_length", int, "total length in tokens, prompt included (instead of --max_new_tokens)",
     "an export fixes --max_new_tokens (its prompts' lengths vary per request)"),
    ("min_new_tokens", int, "no end-of-text before this many new tokens (default 0)",
     "an export fixes --max_new_tokens only"),
    ("num_return_sequences", int, "texts per prompt (default 1; more need --do_sample)",
     "the SavedModel writes one text per prompt (send a prompt again for another)"),
    ("seed", int, "makes sampling reproducible (default: a fresh one)",
     "the SavedModel takes a seed per request (serving_seeded, poem)"),
)
_POEM_FLAGS = (
    ("form", "五言绝句, 七言绝句, 五言律诗, 七言律诗, or CHARS,LINES (e.g. 5,4)"),
    ("acrostic", "藏头诗: one character per line"),
    ("rhyme", "'auto' (even lines rhyme with line 2), a rhyme group, or a character"),
)
POEM_FLAGS = tuple(name for name, _ in _POEM_FLAGS)
_NOT_EXPORTED = {name: why for name, _, _, why in _RUN_FLAGS}
_NOT_EXPORTED.update((name, "the SavedModel's poem signature takes it per request") for name in POEM_FLAGS)


def add_generation_flags(parser: argparse.ArgumentParser, *, export: bool = False) -> None:
    """Add the `GenerationConfig` flags. export=True (pt2tf): only what an exported SavedModel fixes;
    the others (--seed, --max_length, the poem flags, ...) are refused by `generation_flags`, saying
    why, rather than left to argparse (which would read --form as an abbreviation of --formats)."""
    group = parser.add_argument_group(
        "generation settings (fixed at export)" if export else "generation settings (GenerationConfig)")
    group.add_argument("--do_sample", action="store_const", const=True, default=None,
                       help="sample instead of greedy decoding" + ("" if export else " (poems always sample)"))
    lengths = group if export else group.add_mutually_exclusive_group()
    for name, kind, text in _EXPORT_FLAGS:
        (lengths if name == "max_new_tokens" else group).add_argument(f"--{name}", type=kind, help=text)
    poem = group if export else parser.add_argument_group(
        "classical poems (the prompt is a title or context; form is enforced)")
    for name, kind, text, _ in _RUN_FLAGS:
        where = lengths if name == "max_length" else group
        where.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS if export else text)
    for name, text in _POEM_FLAGS:
        poem.add_argument(f"--{name}", help=argparse.SUPPRESS if export else text)
    parser.set_defaults(generation_export=export)


def generation_flags(parser: argparse.ArgumentParser, args, **defaults) -> dict:
    """The generation flags given on the command line, as `GenerationConfig` keyword arguments,
    checked by `GenerationConfig.validate` over `defaults` (what the caller applies under them, e.g.
    a poem's do_sample=True): a bad value is a usage error with validate's message, before
    TensorFlow is imported. Rules that need the model (top_k <= vocab, lengths <= n_positions)
    are checked once it is read."""
    names = [f.name for f in dataclasses.fields(GenerationConfig)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.generation_export:
        for name in given.keys() & _NOT_EXPORTED.keys():
            parser.error(f"--{name}: not an export setting; {_NOT_EXPORTED[name]}")
    try:
        GenerationConfig(**{**defaults, **given}).validate()
    except ValueError as e:
        parser.error(str(e))
    return given


def setup_logging(verbose: bool) -> None:
    global _verbose
    _verbose = verbose  # run_main then prints tracebacks too
    quiet_tensorflow(verbose)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:  # TF and HF are chatty; keep our own lines readable
        for noisy in ("tensorflow", "absl", "h5py", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # HF logs "All model checkpoint layers were used..." and a TF deprecation notice per load.
        logging.getLogger("transformers").setLevel(logging.ERROR)


_verbose = False

# What TensorFlow's native code prints to fd 2 while it loads, whatever TF_CPP_MIN_LOG_LEVEL says:
# absl's "before InitializeLog" banner and glog-style INFO/WARNING lines (oneDNN, the CUDA probe).
_NATIVE_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] ")


def quiet_tensorflow(verbose: bool) -> None:
    """Load TensorFlow with its native start-up lines held back, and its later native log at ERROR+
    hidden too (on a machine without a GPU it logs "E... failed call to cuInit: CUDA error", which
    reads like a failure). --verbose, or a TF_CPP_MIN_LOG_LEVEL the user set, keeps everything.
    Lines that are not TensorFlow's native log are replayed on stderr."""
    from ._keras_env import USER_TF_LOG_LEVEL

    if "tensorflow" in sys.modules or USER_TF_LOG_LEVEL is not None:
        return
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
            if not _NATIVE_NOISE.match(line):
                sys.stderr.write(line)


def run_main(fn) -> int:
    """Call fn() and return the exit code; a failure is one line, `error: ...`, on stderr.

    Our errors exit with their `exit_code`; an interrupt (Ctrl-C, SIGTERM, SIGHUP: see
    `interrupts`) with 128 + the signal number, also when its KeyboardInterrupt was swallowed on the
    way and fn() returned; anything else (OSError such as a full disk, ValueError, TensorFlow's
    errors, MemoryError) with 1. With --verbose the traceback is printed first. argparse's usage
    errors (SystemExit) raised inside fn() pass through.
    """
    with interrupts.handled():
        try:
            fn()
            interrupts.hold()
        except SystemExit:
            raise
        except BaseException as e:  # noqa: BLE001  (the CLI boundary: no traceback reaches the user)
            interrupts.hold()
            return _report(e)
        signum = interrupts.received()
        return 0 if signum is None else _report(interrupts.Interrupted(signum))


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once stdout and stderr are flushed, skipping Python's teardown
    (TensorFlow's takes 1-2 s after the work is done). Only for a command's own process: nothing
    may be left for atexit or finalisers to write. A stdout that cannot be flushed (a closed pipe)
    makes a successful exit 1, as Python's own exit would."""
    logging.shutdown()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = code or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _report(e: BaseException) -> int:
    """Print `error: <one line>` for e; return its exit code."""
    if _verbose:
        traceback.print_exception(e, file=sys.stderr)
    signum = interrupts.received()
    if signum is not None or isinstance(e, KeyboardInterrupt):  # the signal wins over what it caused
        signum = signum or signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return interrupts.exit_code(signum)
    if isinstance(e, CngptError):
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, MemoryError):
        print(f"error: out of memory{': ' + _one_line(e) if str(e) else ''}", file=sys.stderr)
    elif isinstance(e, (OSError, ValueError)):
        print(f"error: {_one_line(e)}", file=sys.stderr)
    else:  # unexpected: name the type, it is all the user has to report
        print(f"error: {type(e).__name__}: {_one_line(e)} (rerun with --verbose for the traceback)",
              file=sys.stderr)
    return 1


def _one_line(e: BaseException, limit: int = 2000) -> str:
    text = printable(" ".join(str(e)[: 4 * limit].split()) or type(e).__name__)
    return text if len(text) <= limit else text[:limit] + " ..."


def printable(text: str) -> str:
    """`text` with control and format characters escaped (\\x1b, \\u202e, a newline): a file or
    member name from a hostile zip must not move the cursor, retitle the terminal or split a line."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}  # controls, bidi and zero-width formats, line/paragraph separators


class _PrintableFormatter(logging.Formatter):
    """Log lines as our error lines: the message escaped by `printable`, so one record is one line."""

    def formatMessage(self, record):
        return printable(super().formatMessage(record))
