"""Tests of `cngpt_tf.formats.source.open_source`: folders, zips (hostile too), URLs, hub ids."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import stat
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

from cngpt_tf.errors import CheckpointError, SourceError, UnsafeArchiveError
from cngpt_tf.formats import source
from cngpt_tf.formats.source import ModelFiles, open_source
from tests.pickle_asm import Member, raw_zip, zip_bomb_member

CONFIG = b'{"n_layer": 1, "n_embd": 8}'
VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n\xe4\xbd\xa0\n"
WEIGHTS = b"fake weights " * 100


def model_files(weight: str = "pytorch_model.bin", prefix: str = "") -> dict[str, bytes]:
    names = ("config.json", "vocab.txt", weight)
    return {prefix + n: data for n, data in zip(names, (CONFIG, VOCAB, WEIGHTS))}


def write_dir(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_zip(path: Path, files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def assert_model(files: ModelFiles, weight: str = "pytorch_model.bin") -> None:
    assert files.config.read_bytes() == CONFIG
    assert files.vocab.read_bytes() == VOCAB
    assert files.weights.name == weight and files.weights.read_bytes() == WEIGHTS
    assert {files.config.parent, files.vocab.parent, files.weights.parent} == {files.folder}


# --- folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", ["pytorch_model.bin", "model.safetensors"])
def test_dir(tmp_path, weight):
    folder = write_dir(tmp_path / "m", model_files(weight))
    with open_source(str(folder)) as files:
        assert files.folder == folder and files.origin == str(folder)
        assert_model(files, weight)
    assert folder.is_dir()  # a user's folder is never cleaned up


def test_dir_prefers_safetensors(tmp_path):
    folder = write_dir(tmp_path / "m", {**model_files(), "model.safetensors": WEIGHTS})
    with open_source(folder) as files:
        assert files.weights == folder / "model.safetensors"


def test_dir_missing_vocab(tmp_path):
    folder = write_dir(tmp_path / "m", {"config.json": CONFIG, "pytorch_model.bin": WEIGHTS})
    with pytest.raises(SourceError, match=r"missing vocab\.txt") as e:
        with open_source(folder):
            pass
    assert str(folder) in str(e.value) and "\n" not in str(e.value)


def test_dir_missing_weights(tmp_path):
    folder = write_dir(tmp_path / "m", {"config.json": CONFIG, "vocab.txt": VOCAB})
    with pytest.raises(SourceError, match="pytorch_model.bin or model.safetensors"):
        with open_source(folder):
            pass


@pytest.mark.parametrize("src", ["no/such/dir", "./nothing", "missing.zip", "/abs/missing"])
def test_missing_path_like(tmp_path, monkeypatch, src):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", _no_hub)
    with pytest.raises(SourceError, match="no such file or directory"):
        with open_source(src):
            pass


def _no_hub(*a, **k):
    raise AssertionError("a path-like SRC must not reach the hub")


# --- zips -----------------------------------------------------------------------------------------


def test_zip_root(tmp_path):
    zp = write_zip(tmp_path / "m.zip", {**model_files("model.safetensors"), "README.md": b"x"})
    with open_source(str(zp)) as files:
        assert_model(files, "model.safetensors")
        assert files.origin == str(zp)
        assert sorted(p.name for p in files.folder.iterdir()) == [
            "config.json", "model.safetensors", "vocab.txt"]  # only what is needed


def test_zip_subfolder_like_seed_release(tmp_path):
    prefix = "gpt2_L-12_H-768_A-12_CN/"
    extra = {prefix: b"", f"{prefix}tokenizer_config.json": b"{}", "__MACOSX/._x": b"junk"}
    zp = tmp_path / "gpt2_L-12_H-768_A-12_CN.zip"
    write_zip(zp, {**model_files(prefix=prefix), **extra})
    with open_source(zp) as files:
        assert_model(files)
        assert (files.folder / "tokenizer_config.json").read_bytes() == b"{}"
        assert not (files.folder / "special_tokens_map.json").exists()


def test_zip_temp_folder_removed(tmp_path):
    zp = write_zip(tmp_path / "m.zip", model_files())
    with open_source(zp) as files:
        folder = files.folder
        assert folder.is_dir() and not folder.is_relative_to(tmp_path)
    assert not folder.exists()
    with pytest.raises(KeyError):
        with open_source(zp) as files:
            folder = files.folder
            raise KeyError("boom")
    assert not folder.exists()


def test_zip_two_candidate_folders(tmp_path):
    zp = write_zip(tmp_path / "m.zip", {**model_files(prefix="a/"), **model_files(prefix="b/")})
    with pytest.raises(SourceError, match="several folders") as e:
        with open_source(zp):
            pass
    assert str(zp) in str(e.value)


def test_zip_no_config(tmp_path):
    zp = write_zip(tmp_path / "m.zip", {"x/vocab.txt": VOCAB})
    with pytest.raises(SourceError, match="holds config.json"):
        with open_source(zp):
            pass


def test_zip_missing_vocab(tmp_path):
    zp = write_zip(tmp_path / "m.zip", {"m/config.json": CONFIG, "m/pytorch_model.bin": WEIGHTS})
    with pytest.raises(SourceError, match=r"vocab\.txt") as e:
        with open_source(zp):
            pass
    assert str(zp) in str(e.value) and "\n" not in str(e.value)


def _symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in model_files().items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("member, why", [
    ("/tmp/cngpt_evil_abs", "has an absolute path"),
    ("\\cngpt_evil_bs", "has an absolute path"),
    ("C:/cngpt_evil_drive", "has an absolute path"),
    ("../cngpt_evil_up", "escapes the archive with '..'"),
    ("a/../../cngpt_evil_up2", "escapes the archive with '..'"),
])
def test_hostile_member_names(tmp_path, member, why):
    zp = write_zip(tmp_path / "m.zip", {**model_files(), member: b"pwned"})
    with pytest.raises(UnsafeArchiveError, match=why) as e:
        with open_source(zp):
            pass
    assert str(e.value) == f"{zp}: member '{member}' {why}"
    name = member.replace("\\", "/").rsplit("/", 1)[-1]
    for base in (tmp_path, tmp_path.parent, Path(tempfile.gettempdir()), Path.cwd(), Path("/tmp")):
        assert not (base / name).exists()


def test_hostile_symlink(tmp_path):
    zp = _symlink_zip(tmp_path / "m.zip")
    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        with open_source(zp):
            pass
    assert not (tmp_path / "link").exists()


def test_zip_bomb_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "MAX_UNPACKED_BYTES", 1000)
    zp = write_zip(tmp_path / "m.zip", model_files())  # WEIGHTS alone is 1300 bytes unpacked
    with pytest.raises(UnsafeArchiveError, match="over the 1000 limit"):
        with open_source(zp):
            pass


def test_nothing_extracted_before_check(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(source.tempfile, "mkdtemp", lambda **k: made.append(1) or str(tmp_path))
    with pytest.raises(UnsafeArchiveError):
        with open_source(write_zip(tmp_path / "m.zip", {**model_files(), "../evil": b"x"})):
            pass
    assert made == []


def test_truncated_zip(tmp_path):
    zp = write_zip(tmp_path / "m.zip", model_files())
    zp.write_bytes(zp.read_bytes()[: zp.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        with open_source(zp):
            pass
    assert str(zp) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupt_member_bytes(tmp_path, compression):
    zp = write_zip(tmp_path / "m.zip", model_files(), compression)
    with zipfile.ZipFile(zp) as zf:
        info = zf.getinfo("pytorch_model.bin")
    # Local header: 30 fixed bytes, then the name and extra field, then the (compressed) payload.
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data = bytearray(zp.read_bytes())
    data[at] ^= 0xFF  # the CRC (or the deflate stream) covers this byte; the directory is intact
    zp.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        with open_source(zp):
            pass
    assert str(zp) in str(e.value) and "\n" not in str(e.value)


def test_file_that_is_not_a_zip(tmp_path):
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(WEIGHTS)
    with pytest.raises(SourceError, match="not a model folder or a .zip"):
        with open_source(f):
            pass


# --- URLs -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(root: Path, handler_cls=None):
    """Serve `root` on 127.0.0.1; yield (base URL, list of request paths)."""
    hits: list[str] = []

    class Handler(handler_cls or http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *a):  # keep pytest output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval keeps shutdown() fast (the default waits up to 0.5 s).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_url_download_and_cache(tmp_path, caplog):
    www, cache = tmp_path / "www", tmp_path / "cache"
    write_zip(write_dir(www, {}) / "gpt2_CN.zip", model_files(prefix="gpt2_CN/"))
    with serve(www) as (base, hits):
        url = f"{base}/gpt2_CN.zip"
        with open_source(url, cache_dir=cache, progress=True) as files:  # bar goes to stderr
            assert_model(files)
            assert files.origin == url
        cached = list(cache.iterdir())
        assert len(cached) == 1 and cached[0].name.endswith("-gpt2_CN.zip") and len(hits) == 1
        with caplog.at_level(logging.INFO, logger=source.__name__):
            with open_source(url, cache_dir=cache, progress=False) as files:
                assert_model(files)
        assert len(hits) == 1  # reused, not downloaded again
        assert "cached" in caplog.text


def test_url_cache_from_env(tmp_path, monkeypatch):
    www = write_dir(tmp_path / "www", {})
    write_zip(www / "m.zip", model_files())
    monkeypatch.setenv("CNGPT_CACHE", str(tmp_path / "envcache"))
    with serve(www) as (base, _):
        with open_source(f"{base}/m.zip", progress=False) as files:
            assert_model(files)
    assert len(list((tmp_path / "envcache").iterdir())) == 1


def test_url_404(tmp_path):
    with serve(write_dir(tmp_path / "www", {})) as (base, _):
        with pytest.raises(SourceError, match="HTTP 404"):
            with open_source(f"{base}/nope.zip", cache_dir=tmp_path / "cache", progress=False):
                pass
    assert not any((tmp_path / "cache").glob("*"))


class ShortBody(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04 only a little")


def test_url_short_body(tmp_path):
    cache = tmp_path / "cache"
    with serve(write_dir(tmp_path / "www", {}), ShortBody) as (base, _):
        with pytest.raises(SourceError, match="of 100000 bytes"):
            with open_source(f"{base}/m.zip", cache_dir=cache, progress=False):
                pass
    assert list(cache.iterdir()) == []  # neither the file nor its .part


def test_url_not_a_zip(tmp_path):
    www = write_dir(tmp_path / "www", {"page.zip": b"<html>oops</html>"})
    with serve(www) as (base, _):
        with pytest.raises(SourceError, match="not a zip"):
            with open_source(f"{base}/page.zip", cache_dir=tmp_path / "cache", progress=False):
                pass
    assert list((tmp_path / "cache").iterdir()) == []


def test_url_refused(tmp_path):
    with serve(tmp_path) as (base, _):
        pass  # server closed: the port now refuses connections
    with pytest.raises(SourceError, match=base):
        with open_source(f"{base}/m.zip", cache_dir=tmp_path / "cache", progress=False):
            pass


# --- hub ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["owner/name", "gpt2-chinese"])
def test_hub_id(tmp_path, monkeypatch, repo_id):
    snap = write_dir(tmp_path / "snap", model_files("model.safetensors"))
    calls = []

    def fake(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(snap)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    with open_source(repo_id) as files:
        assert_model(files, "model.safetensors")
        assert files.origin == repo_id and files.folder == snap
    assert calls[0][0] == repo_id and "vocab.txt" in calls[0][1]


def test_hub_failure(tmp_path, monkeypatch):
    def fake(repo_id, allow_patterns):
        raise OSError("offline\nand more")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    expected = "owner/name: not a local path, and the hub download failed: offline and more"
    with pytest.raises(SourceError, match=expected):
        with open_source("owner/name"):
            pass


# --- member limits --------------------------------------------------------------------------------


def _zip_with(tmp_path: Path, *members) -> Path:
    files = {"m/config.json": CONFIG, "m/vocab.txt": VOCAB, "m/pytorch_model.bin": WEIGHTS}
    given = {m.name.decode(): m for m in members}
    return raw_zip(tmp_path / "m.zip", [given.get(n, Member(n, d)) for n, d in files.items()]
                   + [m for n, m in given.items() if n not in files])


@pytest.mark.parametrize("name, mib", [("config.json", 2), ("vocab.txt", 17), ("tokenizer_config.json", 2)])
def test_small_members_capped_on_declared_size(tmp_path, monkeypatch, name, mib):
    made = []
    monkeypatch.setattr(source.tempfile, "mkdtemp", lambda **k: made.append(1) or str(tmp_path))
    zp = _zip_with(tmp_path, zip_bomb_member(f"m/{name}", mib))
    limit = source.MEMBER_LIMITS[name]
    with pytest.raises(UnsafeArchiveError) as e:
        with open_source(zp):
            pass
    assert str(e.value) == (f"{zp}: member 'm/{name}' would unpack to {mib << 20} bytes, "
                            f"over the {limit}-byte limit for {name}")
    assert made == []  # refused before anything was written


def test_member_cap_enforced_while_copying(tmp_path):
    """The count, not the header: a member that unpacks past its limit is cut off there."""
    zp = write_zip(tmp_path / "m.zip", {"config.json": b"x" * 5000})
    with zipfile.ZipFile(zp) as zf, open(tmp_path / "out", "wb") as out:
        with pytest.raises(UnsafeArchiveError, match="'config.json' unpacks to over 1000 bytes"):
            source._copy_member(zp, zf, zf.getinfo("config.json"), out, 1000)
    assert (tmp_path / "out").stat().st_size <= 1000


def test_member_whose_header_understates_its_size(tmp_path):
    bomb = zip_bomb_member("m/vocab.txt", 64)
    bomb.size = len(VOCAB)  # the headers claim a few bytes; the stream inflates to 64 MiB
    with pytest.raises(CheckpointError, match="m/vocab.txt") as e:
        with open_source(_zip_with(tmp_path, bomb)):
            pass
    assert "\n" not in str(e.value)


TINY_CONFIG = {"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}


def test_weights_capped_by_what_the_config_describes(tmp_path):
    config = Member("m/config.json", json.dumps(TINY_CONFIG).encode())
    limit = source._weights_limit(config.payload)
    assert 16 << 20 < limit < 17 << 20  # a model of a few KB, plus 16 MiB for pickle and padding
    over = Member("m/pytorch_model.bin", WEIGHTS, size=limit + 1, crc=0)  # refused on its header
    with pytest.raises(UnsafeArchiveError, match=f"over the {limit}-byte limit for pytorch_model.bin"):
        with open_source(_zip_with(tmp_path, config, over)):
            pass
    with open_source(_zip_with(tmp_path, config)) as files:  # real weights within the limit
        assert files.weights.read_bytes() == WEIGHTS


@pytest.mark.parametrize("config", [b"{}", b"[1]", b"not json", b'{"vocab_size": "10"}',
                                    json.dumps({**TINY_CONFIG, "n_layer": True}).encode()])
def test_weights_limit_falls_back_for_odd_configs(config):
    assert source._weights_limit(config) == source.MAX_UNPACKED_BYTES


def test_weights_limit_holds_real_checkpoints(tiny_pt_dir):
    """Above the real sizes (by about 3x: the bound allows float64 and an untied lm_head)."""
    config = (tiny_pt_dir / "config.json").read_bytes()
    size = (tiny_pt_dir / "pytorch_model.bin").stat().st_size
    assert size < source._weights_limit(config) - (16 << 20) < 4 * size
    gpt2 = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12}
    assert 548_118_077 < source._weights_limit(json.dumps(gpt2).encode()) < 3 * 548_118_077  # HF gpt2's .bin


# --- a corrupt download is not kept ---------------------------------------------------------------


def _corrupt_member(zp: Path, name: str) -> None:
    with zipfile.ZipFile(zp) as zf:
        info = zf.getinfo(name)
    data = bytearray(zp.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0xFF
    zp.write_bytes(bytes(data))


def test_corrupt_cached_download_is_fetched_again(tmp_path, caplog):
    www, cache = write_dir(tmp_path / "www", {}), tmp_path / "cache"
    write_zip(www / "m.zip", model_files(), zipfile.ZIP_STORED)
    with serve(www) as (base, hits):
        url = f"{base}/m.zip"
        with open_source(url, cache_dir=cache, progress=False):
            pass
        (cached,) = cache.iterdir()
        _corrupt_member(cached, "pytorch_model.bin")  # e.g. a bad disk sector: CRC mismatch
        with caplog.at_level(logging.WARNING, logger=source.__name__):
            with open_source(url, cache_dir=cache, progress=False) as files:
                assert_model(files)
        assert len(hits) == 2 and "corrupt" in caplog.text and str(cached) in caplog.text
        cached.write_bytes(cached.read_bytes()[:100])  # truncated: not even a zip any more
        with open_source(url, cache_dir=cache, progress=False) as files:
            assert_model(files)
        assert len(hits) == 3 and zipfile.ZipFile(cached).testzip() is None


def test_corrupt_download_is_not_kept(tmp_path):
    www, cache = write_dir(tmp_path / "www", {}), tmp_path / "cache"
    _corrupt_member(write_zip(www / "m.zip", model_files(), zipfile.ZIP_STORED), "pytorch_model.bin")
    with serve(www) as (base, hits):
        for attempt in (1, 2):  # each attempt downloads anew: nothing bad was cached
            with pytest.raises(CheckpointError, match="is corrupt; removed from the cache") as e:
                with open_source(f"{base}/m.zip", cache_dir=cache, progress=False):
                    pass
            assert len(hits) == attempt and list(cache.iterdir()) == []
    assert "pytorch_model.bin" in str(e.value) and "\n" not in str(e.value)
