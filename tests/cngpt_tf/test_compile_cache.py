"""cngpt_tf.compile_cache: XLA's compiled programs on disk, vouched for by an index, bounded. The
generate command reading them back in a fresh process is tests/test_first_screen.py's (a user's
second run, on the demo model: the native kernel's call in a program read back crashed there)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cngpt_tf import compile_cache


@pytest.fixture
def flags(monkeypatch):
    """A clean TF_XLA_FLAGS (restored afterwards: enable() writes it)."""
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.delenv(compile_cache.VARIABLE, raising=False)
    return monkeypatch


def program(folder: Path, name: str, size: int = 100) -> Path:
    path = folder / f"xla_compile_cache__{name}__XLA_CPU_JIT.pb"
    path.write_bytes(os.urandom(size))
    return path


def test_enable_sets_the_flag_and_record_vouches(tmp_path, flags):
    folder = compile_cache.enable(tmp_path / "xla")
    assert folder == tmp_path / "xla" and folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
    assert os.environ["TF_XLA_FLAGS"] == f"{compile_cache.FLAG}={folder}"
    assert compile_cache.enabled_directory() == folder
    kept = program(folder, "1")
    compile_cache.record()
    index = json.loads((folder / compile_cache.INDEX).read_text())
    assert list(index) == [kept.name] and len(index[kept.name]["sha256"]) == 64
    flags.delenv("TF_XLA_FLAGS")
    compile_cache.enable(folder)  # a second process: the recorded program stays
    assert kept.exists()


def test_enable_deletes_what_the_index_does_not_vouch_for(tmp_path, flags):
    folder = tmp_path / "xla"
    folder.mkdir()
    whole, truncated, unknown = program(folder, "whole"), program(folder, "truncated"), None
    compile_cache.record(folder)
    unknown = program(folder, "unrecorded")  # e.g. written by a process that died before its call ended
    truncated.write_bytes(truncated.read_bytes()[:10])
    compile_cache.enable(folder)
    assert whole.exists() and not truncated.exists() and not unknown.exists()


@pytest.mark.parametrize("index", ["not json", "[1, 2]", '{"x.pb": 3}', ""])
def test_a_damaged_index_vouches_for_nothing(tmp_path, flags, index):
    folder = tmp_path / "xla"
    folder.mkdir()
    path = program(folder, "p")
    (folder / compile_cache.INDEX).write_text(index)
    compile_cache.enable(folder)
    assert not path.exists()
    assert compile_cache.enabled_directory() == folder  # still on: only the untrusted file went


def test_oldest_programs_go_past_the_size_bound(tmp_path, flags):
    folder = tmp_path / "xla"
    folder.mkdir()
    paths = [program(folder, str(i), size=1000) for i in range(5)]
    for i, path in enumerate(paths):
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    compile_cache.record(folder)
    flags.setattr(compile_cache, "MAX_BYTES", 2500)
    compile_cache.enable(folder)
    assert [p.exists() for p in paths] == [False, False, False, True, True]


def test_links_in_the_folder_go(tmp_path, flags):
    folder = tmp_path / "xla"
    folder.mkdir()
    elsewhere = program(tmp_path, "elsewhere")
    link = folder / elsewhere.name
    link.symlink_to(elsewhere)
    compile_cache.record(folder)  # a link is never vouched for
    compile_cache.enable(folder)
    assert not link.is_symlink() and elsewhere.exists()


def test_a_folder_tf_xla_flags_cannot_hold_leaves_it_off(tmp_path, flags):
    assert compile_cache.enable(tmp_path / "my cache") is None and "TF_XLA_FLAGS" not in os.environ


def test_stale_temporaries_go_fresh_ones_stay(tmp_path, flags):
    folder = tmp_path / "xla"
    folder.mkdir()
    stale, fresh = folder / "x.pb.tmp_1_2", folder / "y.pb.tmp_3_4"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")  # another process may be writing it right now
    os.utime(stale, (time.time() - 2 * compile_cache.STALE_SECONDS,) * 2)
    compile_cache.enable(folder)
    assert not stale.exists() and fresh.exists()


def test_off_and_user_choices(tmp_path, flags):
    flags.setenv(compile_cache.VARIABLE, "0")
    assert compile_cache.enable(tmp_path / "a") is None and "TF_XLA_FLAGS" not in os.environ
    flags.delenv(compile_cache.VARIABLE)
    flags.setenv("TF_XLA_FLAGS", f"--tf_xla_auto_jit=0 {compile_cache.FLAG}={tmp_path / 'mine'}")
    assert compile_cache.enable(tmp_path / "b") == tmp_path / "mine"
    assert not (tmp_path / "b").exists()
    flags.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    assert compile_cache.enable(tmp_path / "c") == tmp_path / "c"
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 {compile_cache.FLAG}={tmp_path / 'c'}"


def test_not_writable_or_full_disk_leaves_it_off(tmp_path, flags):
    flags.setattr(compile_cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    assert compile_cache.enable(tmp_path / "full") is None and "TF_XLA_FLAGS" not in os.environ
    blocker = tmp_path / "file"
    blocker.write_text("")
    flags.undo()
    flags.delenv("TF_XLA_FLAGS", raising=False)
    flags.delenv(compile_cache.VARIABLE, raising=False)
    assert compile_cache.enable(blocker / "xla") is None  # mkdir under a file: OSError, off


def test_directory_is_keyed_by_cpu_and_kernel(tmp_path, flags):
    flags.setenv(compile_cache.VARIABLE, str(tmp_path))
    first = compile_cache.directory()
    assert first.parent == tmp_path
    flags.setattr(compile_cache, "_cpu_identity", lambda: "vendor_id: another")
    assert compile_cache.directory() != first


@pytest.mark.parametrize("kind", ["shared", "link"])
def test_a_folder_others_may_write_is_refused(tmp_path, flags, kind):
    """XLA runs the machine code it reads from the folder: one that others may write, or a link to
    one, leaves the cache off."""
    target = tmp_path / "xla"
    target.mkdir()
    if kind == "shared":
        target.chmod(0o777)
        folder = target
    else:
        folder = tmp_path / "link"
        folder.symlink_to(target, target_is_directory=True)
    assert compile_cache.enable(folder) is None and "TF_XLA_FLAGS" not in os.environ


def test_the_python_face_vouches_for_what_it_compiled(converted, tmp_path):
    """A program that enables the cache and generates gets its programs recorded by the Generator
    (in a subprocess: XLA reads TF_XLA_FLAGS once per process)."""
    import subprocess
    import sys

    folder = tmp_path / "xla"
    script = ("import sys\nfrom cngpt_tf import compile_cache\ncompile_cache.enable(sys.argv[1])\n"
              "from cngpt_tf.generator import Generator\n"
              "print(Generator.from_pretrained(sys.argv[2]).generate('明月', max_new_tokens=3)[0])\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(converted)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("明月"), done.stderr[-2000:]
    programs = {p.name for p in folder.glob("*.pb")}
    assert programs and set(json.loads((folder / compile_cache.INDEX).read_text())) == programs
