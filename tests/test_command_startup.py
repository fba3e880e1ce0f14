"""The ``gill`` console command imports only the command it runs: ``gill --help``, the help of a light group and the
judging commands start without the model stack (torch, transformers, diffusers), only ``gill ui`` imports gradio,
and the lazy dispatch prints what the full parser prints. (Start-up times: ``python bench/startup.py``.)"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flows.command import COMMANDS, resolve_parser
from flows.command.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
STACK = ("torch", "transformers", "diffusers", "gradio")
ENTRY = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["gill"]


def gill(*argv: str) -> tuple[int, str, list[str]]:
    """Run ``gill ARGV`` in a fresh interpreter through the console entry point; return its exit status, its
    output and which of :data:`STACK` it imported."""
    code = (
        "import importlib, json, sys\n"
        f"module, _, name = {ENTRY!r}.partition(':')\n"
        "main = getattr(importlib.import_module(module), name)\n"
        "try:\n"
        "    rc = main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    rc = exit.code\n"
        f"print(json.dumps({{'rc': rc, 'stack': sorted(m for m in {STACK!r} if m in sys.modules)}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    *lines, last = proc.stdout.splitlines() or [""]
    assert last.startswith("{"), proc.stderr[-2000:]
    report = json.loads(last)
    return report["rc"], "\n".join(lines), report["stack"]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [(["--help"], "annotate"), (["annotate", "--help"], "label-studio-pull"), (["db", "--help"], "query")],
    ids=" ".join,
)
def test_help_imports_no_model_stack(argv, shown):
    rc, out, stack = gill(*argv)
    assert rc == 0 and shown in out
    assert stack == []


def test_only_gill_ui_imports_gradio():
    rc, out, stack = gill("ui", "--help")
    assert rc == 0 and "--image-frequency" in out and "gradio" in stack
    rc, out, stack = gill("chat", "--help")
    assert rc == 0 and "--image-frequency" in out and "torch" in stack and "gradio" not in stack


def test_a_judging_session_imports_no_model_stack(tmp_path):
    """add-judge, status and export on a fresh work folder, and the human baseline and confident labels of the
    shipped votes, each as its own ``gill`` process."""
    workdir = str(tmp_path / "w")
    rc, out, stack = gill("annotate", "add-judge", "alice", "--workdir", workdir)
    assert (rc, stack) == (0, []) and "/judge?token=" in out
    rc, out, stack = gill("annotate", "status", "--workdir", workdir)
    assert (rc, stack) == (0, []) and "alice" in out
    rc, out, stack = gill("annotate", "export", "--workdir", workdir, "--format", "official-tsv", "--out", workdir)
    assert (rc, stack) == (0, []) and "wrote" in out
    rc, _, stack = gill("annotate", "status", "--workdir", str(tmp_path / "none"))  # bad input: exit 2, still light
    assert (rc, stack) == (2, [])
    rc, out, stack = gill("annotate", "human-baseline")  # the shipped PartiPrompts votes, scored with the macro-F1
    assert (rc, stack) == (0, []) and "human macro-F1, leave-one-out" in out
    rc, out, stack = gill("annotate", "aggregate", "--out", str(tmp_path / "confident.tsv"))
    assert (rc, stack) == (0, []) and (tmp_path / "confident.tsv").is_file()


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*path, name))


def _parse(parser_of, argv: list[str], capsys) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as exit:
        parser_of(argv).parse_args(argv)
    out, err = capsys.readouterr()
    return exit.value.code, out, err


def test_the_lazy_dispatch_prints_what_the_full_parser_prints(capsys):
    """Every command's help, and the errors of bad input at each level, are those of the full parser."""
    paths = list(_command_paths(build_parser()))
    assert {p[0] for p in paths if p} == set(COMMANDS) and len(paths) > 40
    cases = [[*path, "--help"] for path in paths] + [
        [],
        ["bogus"],
        ["annotate"],
        ["annotate", "nope"],
        ["annotate", "status"],
        ["annotate", "status", "--workdir", "w", "--bogus"],
        ["annotate", "build", "--bogus"],
        ["--bogus", "db", "query", "SELECT 1", "--workdir", "w"],
        ["-v", "annotate", "-v"],
        ["train"],
    ]
    for argv in cases:
        full = _parse(lambda _: build_parser(), argv, capsys)
        assert _parse(resolve_parser, argv, capsys) == full, argv
