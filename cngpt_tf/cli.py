"""What every command-line entry point shares: flags, logging, and errors turned into exit codes.

Library code raises `cngpt_tf.errors` types; only here do they become a one-line message on stderr
and a non-zero exit code, so tests can call each CLI's `main(argv)` in-process.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import CngptError

INTERRUPTED = 130  # the shell's code for Ctrl-C


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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not verbose:  # TF and HF are chatty; keep our own lines readable
        for noisy in ("tensorflow", "absl", "h5py", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # HF logs "All model checkpoint layers were used..." and a TF deprecation notice per load.
        logging.getLogger("transformers").setLevel(logging.ERROR)


def run_main(fn) -> int:
    """Call fn(); map our errors to `error: <one line>` and their exit code, Ctrl-C to 130."""
    try:
        fn()
    except CngptError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return INTERRUPTED
    return 0


def _one_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n"))
