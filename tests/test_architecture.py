"""Design rules as tests: the model library and metrics never import Prefect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FREE = ("gill", "eval", "annotations")


def test_no_prefect_import_statement_in_library_packages():
    pattern = re.compile(r"^\s*(import prefect|from prefect)", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in PREFECT_FREE
        for p in (ROOT / pkg).rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_importing_every_library_module_loads_no_prefect_and_leaves_the_environment_alone():
    """A guest in its host's process: importing any library module changes no environment variable (in particular
    not ``HF_HUB_OFFLINE``: a host program's own Hub downloads keep working) and imports no Prefect. (diffusers
    itself sets ``TORCHINDUCTOR_CACHE_DIR`` when imported, so the third-party stack is imported first.)"""
    code = (
        "import importlib, os, pkgutil, sys\n"
        "import diffusers, torch, transformers  # what these do to the environment on import is theirs, not gill's\n"
        "before = dict(os.environ)\n"
        f"for pkg in {PREFECT_FREE!r}:\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "import huggingface_hub.constants as c\n"
        "print(len(sys.modules)); assert not bad, bad; assert not changed, changed; assert not c.HF_HUB_OFFLINE\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_") and k != "TOKENIZERS_PARALLELISM"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) > 50  # the walk really imported the packages
