"""The README's Layout section is the tree: every path it names exists, and every module of the two
packages is named there (a module added or moved without updating the README fails here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cngpt_tf", "converters")


def layout_paths() -> list[str]:
    """The paths of the ```text tree block under '## Layout': indentation (2 spaces) gives nesting;
    a name is the first word of a line, a trailing '/' marks a folder."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "README's Layout section has no ```text tree block"
    return parse_tree(block.group(1))


def parse_tree(text: str) -> list[str]:
    paths, parents = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        parents = parents[:depth]
        paths.append("".join(parents) + name)
        if name.endswith("/"):
            parents.append(name)
    return paths


def test_every_path_in_the_layout_exists():
    paths = layout_paths()
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README Layout names paths that do not exist: {missing}"
    wrong_kind = [p for p in paths if p.endswith("/") != (ROOT / p).is_dir()]
    assert not wrong_kind, f"README Layout: folder/file mismatch for {wrong_kind}"


def test_every_module_of_the_packages_is_in_the_layout():
    named = set(layout_paths())
    modules = {
        str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*")
        if p.is_file() and p.suffix in (".py", ".cc", ".json", ".zip") and p.name != "__init__.py"
        and "__pycache__" not in p.parts
    }
    unnamed = sorted(modules - named)
    assert not unnamed, f"README Layout does not name: {unnamed}"


def test_the_layout_parser_reads_nesting():
    # a nested name is joined to its folder; a line back at the margin is not; comments are ignored
    text = "a/      x\n  b.py  y\n  c/\n    d.py\n\ne.py  the end\n"
    assert parse_tree(text) == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.py"]
