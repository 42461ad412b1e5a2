"""Resolve a model SRC (folder, .zip, URL of a .zip, or hub id) to a local folder of model files.

Every converter starts here, so it gets config.json, vocab.txt and the weights the same way whatever
the user gave. Zips are checked member by member before anything is written, and each member
is capped: small limits for config.json and vocab.txt, and for the weights what config.json's sizes
allow, checked on the sizes the zip declares and again while copying (a header can lie).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import io
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zipfile import ZipInfo

from tqdm import tqdm

from ..errors import CheckpointError, CngptError, SourceError, UnsafeArchiveError

log = logging.getLogger(__name__)

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
OPTIONAL_NAMES = ("tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = ["config.json", "vocab.txt", *WEIGHT_NAMES, *OPTIONAL_NAMES]
# Zip-bomb guard: real GPT-2 checkpoints are a few GiB; claiming more means hostile or broken.
MAX_UNPACKED_BYTES = 20 * 2**30
# What each small member may unpack to; the weights' limit comes from config.json (_weights_limit).
MEMBER_LIMITS = {"config.json": 1 << 20, "vocab.txt": 16 << 20,
                 "tokenizer_config.json": 1 << 20, "special_tokens_map.json": 1 << 20}
HTTP_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
# `name` or `owner/name` as the hub spells them. `owner/name` contains os.sep on POSIX, so a missing
# path only counts as path-like when it cannot be a hub id (or ends with .zip).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model; all of them sit directly in `folder`."""
    folder: Path  # folder holding the files
    config: Path  # config.json
    vocab: Path  # vocab.txt
    weights: Path  # model.safetensors if present, else pytorch_model.bin
    origin: str  # what the user passed, for messages
    members: dict = dataclasses.field(default_factory=dict)  # file name -> "release.zip:member" (zips)

    def shown(self, path: Path) -> str:
        """How messages should name one of these files: the member inside the user's zip for a file
        extracted into a temporary folder (which they never see), else the path itself."""
        return self.members.get(Path(path).name, str(path))


@contextlib.contextmanager
def open_source(src: str | Path, *, cache_dir: str | Path | None = None,
                progress: bool = True) -> Iterator[ModelFiles]:
    """Yield the `ModelFiles` of `src`: a model folder, a .zip of one, an http(s) URL of such a zip
    (downloaded once into `cache_dir`, else $CNGPT_CACHE, else ~/.cache/cngpt_tf), or a hub model
    id. A zip's needed members go to a temporary folder deleted when the block exits. Raises
    SourceError (cannot find or fetch), UnsafeArchiveError (hostile zip), CheckpointError (corrupt).
    """
    src = str(src)
    if src.startswith(("http://", "https://")):
        with _open_url(src, cache_dir, progress) as files:
            yield files
        return
    path = Path(src).expanduser()
    if path.is_dir():
        yield _files_in_folder(path, src)
    elif path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise SourceError(f"{src}: not a model folder or a .zip archive")
        with _open_zip(path, src) as files:
            yield files
    elif src.lower().endswith(".zip") or not _HUB_ID.fullmatch(src):
        raise SourceError(f"{src}: no such file or directory")
    else:
        yield _files_in_folder(_hub_snapshot(src), src)


def default_cache_dir() -> Path:
    """Where downloads (and the demo model) are kept: $CNGPT_CACHE, else ~/.cache/cngpt_tf."""
    return Path(os.environ.get("CNGPT_CACHE") or "~/.cache/cngpt_tf").expanduser()


def _pick_weight(present: set[str], where: str) -> str:
    """Return the weight file to use among the `present` names; SourceError if a file is missing."""
    weight = next((w for w in WEIGHT_NAMES if w in present), None)
    missing = [n for n in ("config.json", "vocab.txt") if n not in present]
    missing += [] if weight else [" or ".join(reversed(WEIGHT_NAMES))]
    if missing:
        raise SourceError(f"{where}: missing {', '.join(missing)}")
    return weight


def _files_in_folder(folder: Path, origin: str) -> ModelFiles:
    present = {n for n in ("config.json", "vocab.txt", *WEIGHT_NAMES) if (folder / n).is_file()}
    weights = folder / _pick_weight(present, str(folder))
    return ModelFiles(folder, folder / "config.json", folder / "vocab.txt", weights, origin)


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # slow to import; only hub ids need it
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001  (hub, HTTP-client and offline errors share no base)
        msg = f"{repo_id}: not a local path, and the hub download failed: {_one_line(e)}"
        raise SourceError(msg) from e


@contextlib.contextmanager
def _open_zip(path: Path, origin: str) -> Iterator[ModelFiles]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable zip archive ({_one_line(e)})") from e
    tmp = None
    try:
        with zf:
            wanted = _wanted_members(path, _checked_members(path, zf))  # every check before a write
            limits = _member_limits(path, zf, wanted)
            tmp = Path(tempfile.mkdtemp(prefix="cngpt_src_"))
            log.info("%s: extracting %s into %s", path, ", ".join(n for _, n in wanted), tmp)
            _extract(path, zf, wanted, tmp, limits)
        members = {name: f"{path}:{info.filename}" for info, name in wanted}
        try:
            yield dataclasses.replace(_files_in_folder(tmp, origin), members=members)
        except CngptError as e:
            # Errors about an extracted file would name a temp folder the user never sees (and
            # that is gone by now): name the member inside their zip instead.
            shown = lambda m: members.get(m.group(1), f"{path}:{m.group(1)}")  # noqa: E731
            raise type(e)(re.sub(re.escape(str(tmp)) + r"/([^\s:]+)", shown, str(e))) from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _checked_members(path: Path, zf: zipfile.ZipFile) -> dict[str, ZipInfo]:
    """Refuse the whole archive if any member is hostile; map normalized names to file members."""
    members, total = {}, 0
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")  # zips made on Windows may use backslashes
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            raise UnsafeArchiveError(f"{path}: member '{name}' has an absolute path")
        if ".." in parts:
            raise UnsafeArchiveError(f"{path}: member '{name}' escapes the archive with '..'")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{path}: member '{name}' is a symbolic link")
        total += info.file_size
        if not info.is_dir():
            members["/".join(parts)] = info
    if total > MAX_UNPACKED_BYTES:
        msg = f"{path}: members would unpack to {total} bytes, over the {MAX_UNPACKED_BYTES} limit"
        raise UnsafeArchiveError(msg)
    return members


def _wanted_members(path: Path, members: dict[str, ZipInfo]) -> list[tuple[ZipInfo, str]]:
    """Find the one folder holding config.json; return its needed members with their file names."""
    holders = [n for n in members if posixpath.basename(n) == "config.json"]
    folders = sorted({posixpath.dirname(n) for n in holders})
    if not folders:
        raise SourceError(f"{path}: no folder in the archive holds config.json")
    if len(folders) > 1:
        shown = ", ".join(f"'{f or '.'}'" for f in folders)
        raise SourceError(f"{path}: several folders hold config.json ({shown}); expected one")
    here = {posixpath.basename(n): info for n, info in members.items()
            if posixpath.dirname(n) == folders[0]}
    weight = _pick_weight(set(here), f"{path} (folder '{folders[0] or '.'}')")
    names = ["config.json", "vocab.txt", weight, *(n for n in OPTIONAL_NAMES if n in here)]
    return [(here[n], n) for n in names]


def _member_limits(path: Path, zf: zipfile.ZipFile, wanted: list[tuple[ZipInfo, str]]) -> dict[str, int]:
    """Each wanted member's size limit, checked against the size the zip declares for it. The small
    members are checked first; then config.json, read into memory, gives the weights' limit."""
    limits = dict(MEMBER_LIMITS)
    _check_declared(path, wanted, limits)
    config = io.BytesIO()
    _copy_member(path, zf, wanted[0][0], config, limits["config.json"])  # wanted[0]: config.json
    weight = next(name for _, name in wanted if name in WEIGHT_NAMES)
    limits[weight] = _weights_limit(config.getvalue())
    _check_declared(path, wanted, limits)
    return limits


def _check_declared(path: Path, wanted: list[tuple[ZipInfo, str]], limits: dict[str, int]) -> None:
    for info, name in wanted:
        if name in limits and info.file_size > limits[name]:
            raise UnsafeArchiveError(f"{path}: member '{info.filename}' would unpack to "
                                     f"{info.file_size} bytes, over the {limits[name]}-byte limit for {name}")


def _weights_limit(config: bytes) -> int:
    """The most bytes weights of the sizes in `config` can take: 8 (float64) for each parameter and
    for an untied lm_head, 4 for each element of the causal masks older checkpoints saved, and 16 MiB
    for the pickle and padding. MAX_UNPACKED_BYTES when a size is missing or odd: the config's
    reader reports that, with a better message than a limit could."""
    try:
        d = json.loads(config)
        vocab, embd, layers = d["vocab_size"], d["n_embd"], d["n_layer"]
        positions = d.get("n_positions", d.get("n_ctx"))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return MAX_UNPACKED_BYTES
    if not all(type(v) is int and v > 0 for v in (vocab, embd, layers, positions)):
        return MAX_UNPACKED_BYTES
    params = (2 * vocab + positions) * embd + layers * (12 * embd * embd + 13 * embd) + 2 * embd
    return min(MAX_UNPACKED_BYTES, 8 * params + 4 * layers * positions**2 + (16 << 20))


def _extract(path: Path, zf: zipfile.ZipFile, wanted: list[tuple[ZipInfo, str]], tmp: Path,
             limits: dict[str, int]) -> None:
    # Output names are our fixed basenames, never the member path, so nothing can land outside tmp.
    for info, name in wanted:
        try:
            with open(tmp / name, "wb") as dst:
                _copy_member(path, zf, info, dst, limits.get(name, MAX_UNPACKED_BYTES))
        except OSError as e:  # our side (disk full, permissions), not the archive's fault
            raise SourceError(f"{path}: cannot write {tmp / name}: {_one_line(e)}") from e


def _copy_member(path: Path, zf: zipfile.ZipFile, info: ZipInfo, dst, limit: int) -> None:
    """Stream one member into `dst`, counting: past `limit` bytes it stops, whatever the header said."""
    copied = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):  # streamed: weight files are GiBs
                copied += len(chunk)
                if copied > limit:
                    raise UnsafeArchiveError(
                        f"{path}: member '{info.filename}' unpacks to over {limit} bytes, its limit")
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
        # BadZipFile covers a CRC mismatch, RuntimeError an encrypted member.
        raise CheckpointError(f"{path}: member '{info.filename}': {_one_line(e)}") from e


@contextlib.contextmanager
def _open_url(url: str, cache_dir: str | Path | None, progress: bool) -> Iterator[ModelFiles]:
    """`_open_zip` of the download of `url`. A corrupt download never stays cached: a cached copy
    that fails to read is fetched again once; a fresh one that fails is removed, and the error says so."""
    path, cached = _download(url, cache_dir, progress)
    with contextlib.ExitStack() as stack:
        try:
            files = stack.enter_context(_open_zip(path, url))
        except CheckpointError as e:  # the archive or a member is corrupt, not hostile or incomplete
            path.unlink(missing_ok=True)
            if not cached:
                raise CheckpointError(f"{e} (the download from {url} is corrupt; removed from the cache)") from e
            log.warning("%s: the cached %s is corrupt (%s); downloading it again", url, path, e)
            path, _ = _download(url, cache_dir, progress)
            files = stack.enter_context(_open_zip(path, url))
        yield files


def _download(url: str, cache_dir: str | Path | None, progress: bool) -> tuple[Path, bool]:
    """Return the cached copy of `url` and True, or download it first and return it and False."""
    cache = Path(cache_dir or default_cache_dir())
    base = re.sub(r"[^\w.-]", "_", posixpath.basename(urllib.parse.urlsplit(url).path))
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()}-{base or 'download.zip'}"
    if target.is_file():  # only ever created by os.replace of a finished, checked download
        if zipfile.is_zipfile(target):
            log.info("%s: using cached %s", url, target)
            return target, True
        log.warning("%s: the cached %s is not a zip archive (damaged?); downloading it again", url, target)
    cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    log.info("%s: downloading to %s", url, target)
    try:
        _fetch(url, part, base, progress)
        if not zipfile.is_zipfile(part):  # e.g. an HTML error page sent with 200: never cache it
            raise SourceError(f"{url}: the download is not a zip archive")
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)  # never leave a half file behind, also on Ctrl-C
        raise
    return target, False


def _fetch(url: str, part: Path, label: str, progress: bool) -> None:
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "cngpt-tf"})
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=not progress) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise SourceError(f"{url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise SourceError(f"{url}: {_one_line(e.reason)}") from e
    except (OSError, http.client.HTTPException) as e:
        raise SourceError(f"{url}: download failed ({_one_line(e)})") from e
    # http.client returns b"" rather than raising when the server closes early, so count ourselves.
    if expected is not None and (got := part.stat().st_size) != expected:
        raise SourceError(f"{url}: download stopped after {got} of {expected} bytes")


def _one_line(e: object) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:300]
