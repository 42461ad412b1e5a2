"""Every notebook in notebooks/ runs top to bottom, is committed without outputs, and draws Chinese.

Each notebook is copied to one temporary folder, shared by all of them, and executed there with
nbclient (kernel python3), in name order, so what they write (the demo model, the fine-tuned model)
lands in that folder: 02 finds the demo model 01 converted and skips converting it again, as it would
beside 01 in a user's checkout (run alone, it converts it). The demo zip cache goes there too.
Chinese plot labels need a CJK font: without one the notebooks still run but draw boxes, which fails
the test in CI (where the font is installed) and only warns elsewhere.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CJK_FONTS = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC",
             "SimHei", "Microsoft YaHei", "PingFang SC")
CELL_TIMEOUT = 300  # seconds per cell


def test_there_are_notebooks():
    assert {"01_convert_and_generate.ipynb", "02_finetune_keras.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cngpt_cache")  # the demo zip is built once for all notebooks


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")  # beside each other, as in the repository


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, notebook_dir, cache_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CNGPT_CACHE", str(cache_dir))  # the kernel inherits this environment
    work = notebook_dir / path.name
    shutil.copyfile(path, work)
    nb = nbformat.read(work, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(notebook_dir)}})
    try:
        client.execute()  # raises CellExecutionError, naming the cell, on any error
    finally:
        nbformat.write(nb, work)  # the executed copy, outputs included, for a look after a failure
    text = "\n".join(_output_text(cell) for cell in nb.cells if cell.cell_type == "code")
    if _has_cjk_font():
        assert "missing from font" not in text, "a Chinese label was drawn without its glyphs"
        assert "WARNING: no CJK font" not in text
    else:
        _missing_font(f"{path.name} ran, but its Chinese labels show as boxes")


def test_cjk_font_is_installed():
    pytest.importorskip("matplotlib")
    if not _has_cjk_font():
        _missing_font("no CJK font for matplotlib")


def _has_cjk_font() -> bool:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    keys = ("wqy", "notosanscjk", "sourcehansans", "simhei", "msyh")
    files = [p for p in font_manager.findSystemFonts() if any(k in p.lower() for k in keys)]
    return any(name in names for name in CJK_FONTS) or bool(files)


def _missing_font(message: str) -> None:
    message += " (install one: apt-get install -y fonts-wqy-microhei)"
    if os.environ.get("CI"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)


def _output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)
