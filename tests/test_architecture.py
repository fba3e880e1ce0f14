"""Design rules as tests: the model library and metrics never import Prefect."""

from __future__ import annotations

import ast
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


# -- the layers (docs/architecture.md) ------------------------------------------------------------------------------

PROJECT = ("gill", "eval", "annotations", "flows", "data_manifests")
LAZY_THIRD_PARTY = frozenset(
    {
        "cleanfid",  # [eval] extra: FID features, only when FID is scored
        "lpips",  # [eval] extra: LPIPS, only when LPIPS is scored
        "img2dataset",  # [data] extra: only the download stage
        "webdataset",  # [data] extra
        "pyspark",  # [spark] extra: only the download's Spark session (flows.stages.download_spark)
        "prefect_dask",  # [flows] extra: only when a Dask task runner is asked for
        "uvicorn",  # the judging app's server, only when serving
        "requests",  # [flows] extra: only the Label Studio client
        "selenium",  # [dev] extra
        "fcntl",  # POSIX only: the download's split lock
        "ctypes",  # Linux only: the download workers' parent-death signal
    }
)
"""Third-party modules a function may import locally: heavy or optional ones, imported only where used."""


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module, at module top?, line) of every import statement of a file; ``if TYPE_CHECKING`` counts as top."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, top, child.lineno))
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            visit(child, inner)

    visit(tree, True)
    return out


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return _offenders_from(ROOT, files, forbidden)


def _offenders_from(root: Path, files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(root)}:{line} imports {module}"
        for p in files
        for module, _, line in _imports(p)
        if module.split(".")[0] in forbidden
    ]


def test_the_model_library_imports_no_application_room():
    """``gill/`` is the model library: it never imports metrics, judging, stages or front ends."""
    assert _offenders(_modules("gill"), ("eval", "annotations", "flows")) == []


def test_metrics_and_judging_do_not_import_each_other_nor_the_application():
    assert _offenders(_modules("eval"), ("annotations", "flows")) == []
    assert _offenders(_modules("annotations"), ("eval", "flows")) == []


def test_only_the_prefect_flows_import_prefect():
    """Runners, the work folder, the option declarations, the ``gill`` command and the demo run without Prefect."""
    plain = [*_modules("flows/stages", "flows/command"), *(ROOT / "flows" / n for n in PLAIN_FLOWS_MODULES)]
    assert _offenders(plain, ("prefect", "prefect_dask")) == []


PLAIN_FLOWS_MODULES = ("workdir.py", "options.py", "demo.py", "store.py")


ENTRY_POINTS = {
    "flows/cli.py": "points PREFECT_HOME at the right home before Prefect is imported (Prefect reads it on import)",
    "flows/command/__init__.py": "sets the Hugging Face defaults before huggingface_hub is imported (read on import), "
    "then imports only the module of the command it runs (gill --help and the judging commands start without torch)",
}
"""The two process entry points, which configure the process before importing the stack: the only files whose
functions import project modules."""


def test_imports_sit_at_module_top():
    """Every import of the project's own modules and of the core dependencies is at module top, so the dependency
    graph is visible; a function imports locally only the heavy optional modules of :data:`LAZY_THIRD_PARTY`
    (and the two :data:`ENTRY_POINTS` import the application after configuring the process)."""
    offenders = [
        f"{p.relative_to(ROOT)}:{line} imports {module} inside a function or class"
        for p in _modules(*PROJECT)
        if str(p.relative_to(ROOT)) not in ENTRY_POINTS
        for module, top, line in _imports(p)
        if not top and module.split(".")[0] not in LAZY_THIRD_PARTY
    ]
    assert offenders == []


def test_the_rules_see_a_violation(tmp_path):
    """The scanner finds a function-local import and a cross-room import (the rules above could not pass vacuously)."""
    sample = tmp_path / "m.py"
    sample.write_text("import os\n\ndef f():\n    from eval.metrics import recall_at_k\n    import torch\n")
    found = _imports(sample)
    assert ("os", True, 1) in found and ("eval.metrics", False, 4) in found and ("torch", False, 5) in found
    monkey_root = tmp_path.parent
    assert [o.split(":", 1)[1] for o in _offenders_from(monkey_root, [sample], ("eval",))] == ["4 imports eval.metrics"]


STAGE_WORK = {
    "flows.stages.download_manager": {"download_split"},
    "gill.synth": {"synthesize_world"},
    "gill.data.precompute": {"precompute_split", "precompute_shard"},
    "flows.stages.train": {"run_training", "train_or_resume"},
    "gill.retrieval": {"build_bank"},
    "flows.stages.candidates": {"build_candidates"},
    "flows.stages.votes": {"run_simulated_panel"},
    "flows.stages.decision": {"fit_decision", "fit_decision_stage"},
    "flows.stages.bench": {"run_vist", "run_visdial", "run_cc3m_fid"},
}
"""What a stage's runner does; a front end calling one of these directly would wire the stage a second time."""


def _front_ends() -> list[Path]:
    flows = ROOT / "flows"
    plain = {"workdir.py", "options.py", "store.py", "store_views.py", "params.py", "pipeline_support.py"}
    return [*_modules("flows/command"), *(p for p in sorted(flows.glob("*.py")) if p.name not in plain)]


def test_front_ends_call_the_stage_runners_not_the_work_they_wrap():
    """Each stage is wired once: the ``gill`` command, the Prefect flows and the demo reach a stage's work only
    through its runner (``flows.stages.<stage>.run`` and friends)."""
    offenders = []
    for path in _front_ends():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in STAGE_WORK:
                names = {a.name for a in node.names} & STAGE_WORK[node.module]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{n}" for n in names]
    assert offenders == []
    assert len(_front_ends()) >= 10  # the command's modules, the flows, the tasks, the demo


LAYOUT_WORDS = ("workdir", "work_dir", "work_folder")
"""Parameter names that would mean a library function derives its files from a work folder's layout."""


def _layout_parameters(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"{node.name}({a.arg})" for a in arguments if a.arg in LAYOUT_WORDS]
    return found


def test_the_model_library_takes_explicit_paths_not_a_work_folder(tmp_path):
    """Only ``flows.workdir.Workdir`` knows the work folder's layout: no function of the library takes a work folder
    (it takes a split's folders, a runs folder, a bank folder, a checkpoint), so any layout works with it."""
    offenders = [f"{p.relative_to(ROOT)}: {f}" for p in _modules("gill") for f in _layout_parameters(p)]
    assert offenders == []
    sample = tmp_path / "m.py"
    sample.write_text("def build(features, *, workdir=None):\n    pass\n")
    assert _layout_parameters(sample) == ["build(workdir)"]  # the scan sees one
