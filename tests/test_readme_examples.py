"""The README's examples run on the embedded demo, so the docs cannot rot.

Every ```python block that uses a model and every `python -m ...` command of a ```bash block (or a
`$ ` line of a plain block) is extracted from README.md and run against `demo_out`, the demo
converted as the README's first command converts it. What is changed, and only that: `out/` becomes
`demo_out/` and `model.zip` the demo release; fine-tuning runs a few steps instead of thousands;
the serving client talks to the local stand-in of TF Serving. Commands that need what no test
machine has (a hub, a URL, a Docker engine, the 400 MB seed release) are listed as skipped below,
so a new example is run unless someone decides otherwise.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cngpt_tf.demo import DEMO_RELEASE

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
# Commands that cannot run here, by a substring: each with the reason.
NOT_HERE = {
    "gpt2_L-12_H-768_A-12_CN.zip": "the seed release is not on the test machine",
    "path/to/model_dir": "a placeholder folder",
    "https://": "no network",
    "uer/gpt2-chinese-poem": "no model hub",
    "python -m pytest": "the suite itself",
    "benchmarks/": "benchmarks are not tests",
    "tensorboard": "a server, not an example of ours",
    "--strategy multiworker": "one process per machine with TF_CONFIG (test_finetune_multiworker.py runs two)",
    "prompts/*.txt.gz": "a Beam pipeline costs ~40 s: tests/cngpt_tf/batch runs generate (gz input too)",
    "out/poems": "a Beam pipeline costs ~35 s: tests/cngpt_tf/batch runs poem (the README's score runs here)",
    "--demo demo_out/ --overwrite": "the README's first command, which CI runs, and test_pt2tf.py::test_demo",
}
RUNNABLE = re.compile(r"python -m (converters\.(pt2tf|tf2pt)|cngpt_tf\.(generate|finetune|serving_client|batch))\b")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def python_examples() -> list[str]:
    return [body for lang, body in fenced_blocks(README) if lang == "python" and "demo_out" in body]


def shell_commands() -> list[str]:
    """`python -m` commands of bash blocks (continuation lines joined) and `$ ` lines of plain blocks;
    the README's own first block (install + demo + tests) is what CI runs, so it is left out."""
    commands = []
    for i, (lang, body) in enumerate(fenced_blocks(README)):
        if i == 0:
            continue
        if lang in ("bash", "sh"):
            lines = body.replace("\\\n", " ").split("\n")
        elif lang == "":
            lines = [line[2:] for line in body.split("\n") if line.startswith("$ ")]
        else:
            continue
        for line in lines:
            command = line.split(" #")[0].strip()
            if RUNNABLE.match(command) and not any(key in command for key in NOT_HERE):
                commands.append(command)
    return commands


def on_the_demo(command: str, work: Path, out: Path) -> list[str]:
    """The README's command as argv for the demo in `work`: `out/` becomes `demo_out/` where it is the
    model read, and `out` where a converter writes it (so is `back/`); `model.zip` is the demo release,
    `corpus.txt` a small poem corpus, `titles.txt` a few titles, thousands of fine-tuning steps become
    a few, and a batch command's OUTPUT goes to `out`."""
    argv = shlex.split(command)
    writes = {"converters.pt2tf": ("out/", "demo_out/"), "converters.tf2pt": ("back/",)}.get(argv[2], ())
    swap = {"out/": "demo_out/", "model.zip": str(DEMO_RELEASE), "corpus.txt": str(work / "corpus.txt"),
            "ft_out/": str(work / "ft_out"), "titles.txt": str(work / "titles.txt")}  # one fine-tuning folder, so that --resume continues it
    argv = [str(out) if a in writes else swap.get(a, re.sub(r"^out/", "demo_out/", a)) for a in argv]
    if argv[2] == "cngpt_tf.batch":
        argv[5] = str(out / "result")  # python -m cngpt_tf.batch TASK INPUT OUTPUT
    if argv[2] == "cngpt_tf.finetune":
        argv = [str(min(int(a), 4)) if argv[i - 1] in ("--max_steps", "--warmup_steps") else a
                for i, a in enumerate(argv)]
    return [sys.executable if a == "python" else a for a in argv]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding demo_out/ (the README's first command) and a poem corpus."""
    from cngpt_tf.export.convert import convert

    work = tmp_path_factory.mktemp("readme")
    convert(str(DEMO_RELEASE), work / "demo_out", progress=False)
    poems = (REPO / "tests" / "data" / "tang_regular_poems.tsv").read_text(encoding="utf-8").split("\n")[:300]
    (work / "corpus.txt").write_text("".join(line.split("\t")[-1] + "\n" for line in poems if line),
                                     encoding="utf-8")
    (work / "titles.txt").write_text("春日\n秋夜\n江上\n", encoding="utf-8")
    return work


def test_the_readme_has_examples_to_run():
    assert len(python_examples()) >= 3 and len(shell_commands()) >= 6, shell_commands()


def test_python_examples_run(workdir):
    script = "\n\n".join(python_examples())
    proc = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("command", shell_commands())
def test_shell_command_runs(command, workdir, tmp_path):
    argv = on_the_demo(command, workdir, tmp_path / "out")
    server = None
    if "cngpt_tf.serving_client" in argv:
        from tests.cngpt_tf.export.serving_stand_in import StandIn

        server = StandIn(workdir / "demo_out" / "saved_model" / "1")
        if "--grpc" in argv:
            argv[argv.index("--grpc") + 1] = server.start_grpc()
        else:
            argv += ["--url", server.start_rest()]
    try:
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600)
    finally:
        if server is not None:
            server.stop()
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    if "cngpt_tf.generate" in argv or "cngpt_tf.serving_client" in argv:
        assert proc.stdout.strip(), "it printed no text"
    if "cngpt_tf.batch" in argv:  # one record per input line, none of them an error
        records = [line for shard in sorted((tmp_path / "out").glob("result-*-of-*.jsonl"))
                   for line in shard.read_text(encoding="utf-8").splitlines()]
        lines = Path(argv[4]).read_text(encoding="utf-8").splitlines()
        assert len(records) == len(lines) and not [r for r in records if '"error"' in r], records[:3]


def test_copied_output_is_what_the_demo_prints(workdir):
    """The README shows greedy output `copied from a run`: it must still be what the demo prints."""
    block = next(body for lang, body in fenced_blocks(README) if lang == "" and body.startswith("$ "))
    command, *expected = block.strip().split("\n")
    proc = subprocess.run(on_the_demo(command[2:], workdir, workdir / "unused"), cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().split("\n") == expected
