"""Typed errors raised by cngpt_tf and the converters.

Library code raises these; only the command-line entry points turn them into a one-line message and
a non-zero exit code. Each subclasses the built-in error it refines, so callers that catch
`ValueError` / `OSError` keep working.
"""


class CngptError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 2


class ConfigError(CngptError, ValueError):
    """A config.json / hparams.json is missing a field, or asks for something we cannot compute."""


class VocabError(CngptError, ValueError):
    """A vocab.txt is empty, disagrees with the config, or lacks a required special token."""


class CheckpointError(CngptError, ValueError):
    """A weight file is truncated, corrupt, or not in a format we read."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list (e.g. `os.system`); nothing was run."""


class WeightMappingError(CheckpointError):
    """A tensor name is unknown, missing, duplicated, or has the wrong shape for the name table."""


class UnsafeArchiveError(CngptError, ValueError):
    """A zip member would land outside the extraction folder (absolute path, `..`, link)."""


class SourceError(CngptError, OSError):
    """A model source (folder, zip, URL, hub id) cannot be found or fetched."""


class OutputExistsError(CngptError, FileExistsError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


class CorpusError(CngptError, ValueError):
    """A fine-tuning corpus is missing, unreadable, empty, or too small for one batch."""


class VerificationError(CngptError, ValueError):
    """A converted format's logits differ from the source's by more than the tolerance."""

    exit_code = 3
