"""OUT_DIR can never destroy an input: pt2tf, tf2pt and fine-tuning refuse, with one line and exit 2, an
OUT_DIR that is, holds or lies inside what they read (symbolic links resolved), with or without
--overwrite; --overwrite replaces only a previous conversion's output; stale temp folders of a killed
run are removed by the next run into the same OUT_DIR.

Each refused case starts from a source that would convert, so a missing check shows as lost data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from cngpt_tf import interrupts
from converters import output, pt2tf, tf2pt

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root (links not followed) with its content or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def call(main, argv, capsys) -> tuple[int, str]:
    """Run a CLI's main in-process; return (exit code, its one error line), asserting it is one line."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # a usage error would be the wrong answer here: report it
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return rc, lines[0]


def model_copy(tiny_pt_dir: Path, where: Path) -> Path:
    return Path(shutil.copytree(tiny_pt_dir, where))


def previous_conversion(out: Path) -> Path:
    """What pt2tf leaves in OUT_DIR (contents do not matter to the checks)."""
    (out / "tf1").mkdir(parents=True)
    (out / "tf1" / "checkpoint").write_text("model_checkpoint_path: \"model.ckpt\"\n", encoding="utf-8")
    (out / "conversion_report.json").write_text("{}", encoding="utf-8")
    return out


# ----- pt2tf: OUT_DIR against the source --------------------------------------------------------------


def case_same_folder(tmp, model):
    same = model(tmp / "same")
    return [same, same, "--overwrite"], same, "is the input"


def case_zip_inside_out(tmp, model):
    out = tmp / "out"
    out.mkdir()
    shutil.make_archive(str(out / "release"), "zip", model(tmp / "m"))
    return [out / "release.zip", out, "--overwrite"], out, "holds the input"


def case_model_inside_out(tmp, model):
    out = tmp / "out"
    model(out / "model")
    return [out / "model", out, "--overwrite"], out, "holds the input"


def case_out_inside_model(tmp, model):
    src = model(tmp / "model")
    return [src, src / "out"], src / "out", "lies inside the input"


def case_out_links_to_src_parent(tmp, model):
    src = model(tmp / "parent" / "model")
    (tmp / "link").symlink_to(tmp / "parent", target_is_directory=True)
    return [src, tmp / "link", "--overwrite"], tmp / "link", "holds the input"


def case_src_links_to_out(tmp, model):
    real = model(tmp / "model")
    (tmp / "link").symlink_to(real, target_is_directory=True)
    return [tmp / "link", real, "--overwrite"], real, "is the input"


def case_weights_linked_from_out(tmp, model):
    """A source whose weight file is a link into a previous conversion in OUT_DIR."""
    out = previous_conversion(tmp / "out")
    src = model(tmp / "model")
    (src / "pytorch_model.bin").rename(out / "tf1" / "pytorch_model.bin")
    (src / "pytorch_model.bin").symlink_to(out / "tf1" / "pytorch_model.bin")
    return [src, out, "--overwrite"], out, "holds the input"


def case_url_cache_inside_out(tmp, model):
    cache = tmp / "out" / "cache"
    cache.mkdir(parents=True)
    (cache / "0123-release.zip").write_bytes(b"a cached download")
    # refused before any download: nothing listens on port 9 of this machine
    return ["http://127.0.0.1:9/release.zip", tmp / "out", "--cache_dir", cache, "--overwrite"], tmp / "out", \
        "holds the input"


OVERLAPS = [case_same_folder, case_zip_inside_out, case_model_inside_out, case_out_inside_model,
            case_out_links_to_src_parent, case_src_links_to_out, case_weights_linked_from_out,
            case_url_cache_inside_out]


@pytest.mark.parametrize("make", OVERLAPS, ids=lambda f: f.__name__[5:])
def test_pt2tf_refuses_out_dir_over_its_input(make, tiny_pt_dir, tmp_path, capsys):
    argv, shown, why = make(tmp_path, lambda where: model_copy(tiny_pt_dir, where))
    before = snapshot(tmp_path)
    rc, line = call(pt2tf.main, [*argv, "--formats", "tf1", "-q"], capsys)
    assert rc == 2
    assert str(shown) in line and why in line, line
    assert snapshot(tmp_path) == before  # nothing written, moved or removed, the demo zip not even built


def test_tf2pt_refuses_out_dir_over_its_input(converted, tmp_path, capsys):
    src = Path(shutil.copytree(converted / "tf1", tmp_path / "same" / "tf1"))
    before = snapshot(tmp_path)
    for out, why in ((src, "is the input"), (src.parent, "holds the input"), (src / "pt", "lies inside the input")):
        rc, line = call(tf2pt.main, [src, out, "--overwrite", "-q"], capsys)
        assert rc == 2 and why in line, line
    assert snapshot(tmp_path) == before


# ----- pt2tf: what OUT_DIR may be ---------------------------------------------------------------------


def test_overwrite_replaces_only_a_previous_conversion(tiny_pt_dir, tmp_path, capsys):
    out = previous_conversion(tmp_path / "out")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = snapshot(tmp_path)
    rc, line = call(pt2tf.main, [tiny_pt_dir, out, "--formats", "tf1", "--overwrite", "-q"], capsys)
    assert rc == 2 and "notes.txt" in line and "previous conversion" in line, line
    assert snapshot(tmp_path) == before

    (out / "notes.txt").unlink()
    capsys.readouterr()
    assert pt2tf.main([str(tiny_pt_dir), str(out), "--formats", "tf1", "--overwrite", "-q"]) == 0
    assert {p.name for p in out.iterdir()} == {"tf1", "conversion_report.json"}
    assert (out / "tf1" / "model.ckpt.index").is_file()  # the new conversion, not the stand-in
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_out_dir_through_a_link_keeps_the_link(tiny_pt_dir, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert pt2tf.main([str(tiny_pt_dir), str(tmp_path / "link"), "--formats", "tf1", "-q"]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "tf1" / "checkpoint").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


@pytest.mark.parametrize("kind", ["dangling_link", "dot", "file"])
def test_unusable_out_dir_is_one_line(kind, tiny_pt_dir, tmp_path, capsys, monkeypatch):
    out = {"dangling_link": tmp_path / "gone", "dot": Path("."), "file": tmp_path / "out.txt"}[kind]
    if kind == "dangling_link":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "file":
        out.write_text("precious", encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        rc, line = call(pt2tf.main, [tiny_pt_dir, out, "--formats", "tf1", "-q", *extra], capsys)
        assert rc == 2, line
        assert {"dangling_link": "does not exist", "dot": "current folder", "file": "not a folder"}[kind] in line
    assert snapshot(tmp_path) == before


# ----- fine-tuning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["is_model", "inside_model", "holds_corpus", "is_a_file"])
def test_finetune_refuses_out_dir_over_its_inputs(case, converted, tmp_path, capsys):
    from cngpt_tf import finetune

    model = Path(shutil.copytree(converted / "tf2", tmp_path / "model"))
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("床前明月光\n" * 50, encoding="utf-8")
    out = {"is_model": model, "inside_model": model / "ft", "holds_corpus": corpus.parent,
           "is_a_file": tmp_path / "ft.txt"}[case]
    if case == "is_a_file":
        out.write_text("precious", encoding="utf-8")
    before = snapshot(tmp_path)
    rc, line = call(finetune.main, [model, corpus, out, "--block_size", "16", "--max_steps", "1", "-q"], capsys)
    assert rc == 2 and str(out) in line, line
    assert snapshot(tmp_path) == before


# ----- temp folders -------------------------------------------------------------------------------------


def test_stale_temp_folders_are_removed_and_live_ones_kept(tmp_path):
    def folder(name: str, age_s: float = 0) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_bytes(b"x")
        if age_s:
            then = time.time() - age_s
            os.utime(tmp_path / name, (then, then))
        return tmp_path / name

    me = os.getpid()
    stale = [folder(".out.tmp-99999999-abc"), folder(".out.old-99999999-abc"),
             folder(f".out.tmp-{me}-aged", age_s=2 * output.STALE_AFTER_S)]
    kept = [folder(f".out.tmp-{me}-live"), folder(".other.tmp-99999999-abc"), folder(".out.tmp-x-abc")]
    with output.workspace(tmp_path / "out") as work:
        assert work.parent == tmp_path and re.fullmatch(rf"\.out\.tmp-{me}-\w+", work.name), work.name
        assert not any(p.exists() for p in stale)
        assert all(p.is_dir() for p in kept)
    assert not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_stale_temp_folder_removed_by_the_next_conversion(converted, tmp_path, capsys):
    stale = tmp_path / ".back.tmp-99999999-abc"
    (stale / "half").mkdir(parents=True)
    rc = tf2pt.main([str(converted / "tf1"), str(tmp_path / "back"), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["back"]


def test_nothing_moves_into_place_after_a_swallowed_interrupt(tmp_path):
    work = tmp_path / ".out.tmp-1-abc"
    work.mkdir()
    with interrupts.handled():
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # lost, as in a __del__ or TensorFlow's cleanup
        with pytest.raises(KeyboardInterrupt):
            output.move_into_place(work, tmp_path / "out")
    assert not (tmp_path / "out").exists() and work.is_dir()
