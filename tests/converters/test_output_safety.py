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
import stat
import time
from pathlib import Path

import pytest

from cngpt_tf import interrupts
from cngpt_tf.export import output
from converters import pt2tf, tf2pt

# Signals are raised in-process: heed them even where the suite was started with them ignored
# (nohup: SIGHUP; a shell's background job: SIGINT). See conftest.heeded_signals.
pytestmark = pytest.mark.usefixtures("heeded_signals")

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



def finetune_inputs(converted: Path, tmp_path: Path) -> tuple[Path, Path]:
    model = Path(shutil.copytree(converted / "tf2", tmp_path / "model"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("床前明月光\n" * 50, encoding="utf-8")
    return model, corpus


def test_finetune_resume_refuses_out_dir_holding_a_linked_model(converted, tmp_path, capsys):
    # The tf2/ folder used is reached through a link into OUT_DIR/converted, which export would replace.
    from cngpt_tf import finetune

    out = tmp_path / "ftout"
    shutil.copytree(converted, out / "converted")  # a previous fine-tune's export
    model = tmp_path / "m2"
    model.mkdir()
    (model / "tf2").symlink_to(out / "converted" / "tf2")
    _, corpus = finetune_inputs(converted, tmp_path)
    before = snapshot(tmp_path)
    rc, line = call(finetune.main, [model, corpus, out, "--block_size", "16", "--max_steps", "1", "-q", "--resume"],
                    capsys)
    assert rc == 2 and str(out) in line and "holds the input" in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["user_file", "user_file_resume", "link_resume"])
def test_finetune_refuses_out_dir_with_other_files(case, converted, tmp_path, capsys):
    # Without --resume OUT_DIR must be absent or empty; with it, hold only what a fine-tune writes.
    from cngpt_tf import finetune

    model, corpus = finetune_inputs(converted, tmp_path)
    out = tmp_path / "fo"
    (out / "pytorch").mkdir(parents=True)
    resume = ["--resume"] if case.endswith("resume") else []
    if case == "user_file":
        (out / "pytorch" / "config.json").write_text("notes\n", encoding="utf-8")
    elif case == "user_file_resume":
        (out / "notes.txt").write_text("notes\n", encoding="utf-8")
    else:  # a link in OUT_DIR: writing through it would overwrite the model's config.json
        (out / "pytorch" / "config.json").symlink_to(model / "config.json")
    before = snapshot(tmp_path)
    rc, line = call(finetune.main, [model, corpus, out, "--block_size", "16", "--max_steps", "1", "-q", *resume],
                    capsys)
    assert rc == 2 and str(out) in line, line
    assert {"user_file": "--resume", "user_file_resume": "notes.txt", "link_resume": "symbolic link"}[case] in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["dot", "holds_cwd"])
def test_finetune_refuses_the_current_folder(case, converted, tmp_path, monkeypatch, capsys):
    from cngpt_tf import finetune

    model, corpus = finetune_inputs(converted, tmp_path)
    out = tmp_path / "x"
    (out / "logs").mkdir(parents=True)  # a name a fine-tune writes: only the current-folder rule refuses
    monkeypatch.chdir(out if case == "dot" else out / "logs")
    before = snapshot(tmp_path)
    rc, line = call(finetune.main, [model, corpus, "." if case == "dot" else out, "--block_size", "16",
                                    "--max_steps", "1", "-q", "--resume"], capsys)
    assert rc == 2 and "current folder" in line, line
    assert snapshot(tmp_path) == before


# ----- temp folders -------------------------------------------------------------------------------------


def test_stale_temp_folders_are_removed_and_live_ones_kept(tmp_path):
    def folder(name: str, age_s: float = 0, ours: bool = True) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_bytes(b"x")
        if ours:
            (tmp_path / name / output.MARKER).touch()
        if age_s:
            then = time.time() - age_s
            os.utime(tmp_path / name, (then, then))
        return tmp_path / name

    me = os.getpid()
    stale = [folder(".out.tmp-99999999-abc"), folder(".out.old-99999999-abc"),
             folder(f".out.tmp-{me}-aged", age_s=2 * output.STALE_AFTER_S)]
    kept = [folder(f".out.tmp-{me}-live"), folder(".other.tmp-99999999-abc"), folder(".out.tmp-x-abc"),
            folder(".out.old-99999999-users", ours=False)]  # named like ours, but a user's folder
    with output.workspace(tmp_path / "out") as work:
        assert work.parent == tmp_path and re.fullmatch(rf"\.out\.tmp-{me}-\w+", work.name), work.name
        assert not any(p.exists() for p in stale)
        assert all(p.is_dir() for p in kept)
    assert not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_stale_temp_folder_removed_by_the_next_conversion(converted, tmp_path, capsys):
    stale = tmp_path / ".back.tmp-99999999-abc"
    (stale / "half").mkdir(parents=True)
    (stale / output.MARKER).touch()
    rc = tf2pt.main([str(converted / "tf1"), str(tmp_path / "back"), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["back"]


@pytest.mark.parametrize("marked", [False, True])
def test_an_input_named_like_a_stale_folder_is_never_removed(marked, tiny_pt_dir, tmp_path, capsys):
    """A source folder named `.out.old-<dead pid>-...` beside OUT is an input, not our leftover: even
    holding our marker (copied from somewhere), the run converts it and leaves it in place."""
    src = tmp_path / ".out.old-99999999-backup"
    shutil.copytree(tiny_pt_dir, src)
    if marked:
        (src / output.MARKER).touch()
    before = snapshot(src)
    rc = pt2tf.main([str(src), str(tmp_path / "out"), "--formats", "tf1", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert snapshot(src) == before


def test_output_gets_the_permissions_of_a_new_folder(converted, tmp_path, capsys):
    """mkdtemp makes 0700 folders; OUT must be readable by others as a new folder is (a model server
    often runs as another user), and holds no marker of ours."""
    old = os.umask(0o022)
    try:
        assert tf2pt.main([str(converted / "tf1"), str(tmp_path / "back"), "-q"]) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "back").stat().st_mode) == 0o755
    assert not (tmp_path / "back" / output.MARKER).exists()


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
