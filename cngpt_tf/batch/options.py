"""Beam's pipeline options beside ours on one command line, and the embedded default runner.

`split_beam_args` takes Beam's flags (any option a `PipelineOptions` class defines: --runner,
--project, --flink_master, ...) out of argv, with their values, so that our parser sees only ours and
refuses anything else (a typo is a usage error, not a flag Beam silently discards). Beam's values
are then checked by Beam's own parser, also before anything runs.

Without --runner the pipeline runs on the DirectRunner in multi-process mode, one worker process per
local core (`--direct_running_mode multi_processing --direct_num_workers <cores>`), each worker's
TensorFlow on cores / workers threads: the command runs on one machine with no cluster.
"""

from __future__ import annotations

import argparse
import logging
import os


def import_beam() -> None:
    """Import Beam with its import-time warning held back: without the GCP extras it logs
    "apitools not found, and bigquery client libraries are not available" on the root logger
    (configuring it on the way); BigQuery is not used here. Without Beam, nothing: the command
    says how to install it (`__main__`)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam  # noqa: F401
    except ModuleNotFoundError:
        pass
    finally:
        root.setLevel(level)


def _beam_parser():
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():  # as PipelineOptions.get_all_options collects them
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001  (Beam's own way to build its parser)
    return parser


def split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our args, Beam's args) of argv, each in its order; a Beam flag keeps its value(s)."""
    takes = {}  # option string -> how many following tokens it takes: 0, 1 or "?"
    for action in _beam_parser()._actions:  # noqa: SLF001
        for option in action.option_strings:
            takes[option] = 0 if action.nargs == 0 else "?" if action.nargs == "?" else 1
    ours, beam, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token == "--":  # everything after is ours (positionals)
            ours += argv[i:]
            break
        if name not in takes:
            ours.append(token)
            i += 1
            continue
        n = 0 if "=" in token else takes[name]
        if n == "?":
            n = 1 if i + 1 < len(argv) and not argv[i + 1].startswith("-") else 0
        beam += argv[i:i + 1 + n]
        i += 1 + n
    return ours, beam


def pipeline_options(beam_args: list[str], parser: argparse.ArgumentParser, verbose: bool = False):
    """PipelineOptions from Beam's args, with the embedded default (see the module docstring) and
    Beam's workers logging warnings only (unless verbose); a bad Beam value is a usage error of
    `parser`. Returns (options, the DirectRunner's worker count or None)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    checker = _beam_parser()
    checker.error = parser.error  # Beam's own messages, as our one-line usage error
    given = checker.parse_args(beam_args)
    defaults = [] if verbose or _given(beam_args, "--default_sdk_harness_log_level") else [
        "--default_sdk_harness_log_level", "WARNING"]
    direct = given.runner in (None, "DirectRunner", "direct")
    workers = None
    if direct:
        if given.runner is None:
            defaults += ["--runner", "DirectRunner"]
        if not _given(beam_args, "--direct_running_mode"):
            defaults += ["--direct_running_mode", "multi_processing"]
        if not _given(beam_args, "--direct_num_workers"):
            defaults += ["--direct_num_workers", str(local_cores())]
        workers = checker.parse_args(beam_args + defaults).direct_num_workers or local_cores()  # 0: all cores
    return PipelineOptions(beam_args + defaults), workers


def _given(args: list[str], flag: str) -> bool:
    return any(a.split("=", 1)[0] == flag for a in args)


def local_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
