"""Typed errors raised by cngpt_tf and the converters.

Library code raises these; only the command-line entry points turn them into a one-line message and
a non-zero exit code. Each subclasses the built-in error it refines, so callers that catch
`ValueError` / `OSError` keep working.
"""

import itertools
import reprlib


class _BoundedRepr(reprlib.Repr):
    """reprlib with small limits, no sorting (reprlib sorts a whole dict or set), and objects it has
    no rule for shown by type name: the builtin repr of a structure of shared references takes
    exponential time, and that of a big int quadratic time."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 40, 40
        self.maxtuple = self.maxlist = self.maxdict = 4

    def repr_int(self, x, level):
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

    def repr_dict(self, x, level):
        if level <= 0 and x:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items + ["..."] * (len(x) > self.maxdict)) + "}"

    def repr_instance(self, x, level):
        return repr(x) if type(x) in (float, bool, type(None)) else f"<{type(x).__name__}>"

    repr_set = repr_frozenset = repr_instance


_REPR = _BoundedRepr()


def short_repr(value, limit: int = 100) -> str:
    """A one-line repr of at most ~`limit` characters, made in bounded time, for messages built from
    untrusted data (a config value, a tensor name, a pickle's persistent id, a user's argument):
    it never builds the full repr of a long string, a big int or a deep or shared structure first."""
    try:
        text = " ".join(_REPR.repr(value).split())
    except Exception:  # noqa: BLE001  (a message must never fail)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
