"""The paper-scale cost model, the paper-shaped run, the GPU check script and the benches' device options.

Nothing here needs a GPU: the CUDA paths are checked for how they refuse on a machine without one (every bench
subprocess runs with ``CUDA_VISIBLE_DEVICES=""``, so the checks hold on a GPU machine too), and the paper-shaped run
is exercised at its smoke scale on the CPU. The benches are scripts: they run as subprocesses from the repo root.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHES = (
    "tiny_zoo",
    "train_step",
    "retrieval",
    "scene_metric",
    "world_sd",
    "startup",
    "paper_scale",
    "paper_shaped",
    "precompute",
    "generation",
)
"""Every bench this project asks to take --device/--dtype."""
STAGES = ("download", "precompute", "train", "bank", "candidates", "vist", "visdial", "cc3m-fid")


def _env(**extra: str) -> dict[str, str]:
    """The tests' environment (offline, session caches), this checkout first on the path, no CUDA device."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", **extra}


def _bench(name: str, *args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), *map(str, args)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def paper_scale(tiny_zoo):
    """bench/paper_scale.py imported in-process (its siblings resolve from bench/)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import paper_scale as module
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def _run_main(name: str, *args: str) -> int | None:
    """``bench/<name>.py ARGS`` run as ``__main__`` in this process (imports shared: a second each, not ten); its
    exit code."""
    argv, path = sys.argv, list(sys.path)
    sys.argv, sys.path = [f"bench/{name}.py", *args], [str(REPO / "bench"), *sys.path]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(REPO / "bench" / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv, sys.path = argv, path
    return exit_.value.code


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_lists_device_and_dtype_and_refuses_cuda_it_cannot_see(name, capsys, monkeypatch, tiny_zoo):
    assert _run_main(name, "--help") in (0, None)
    out = capsys.readouterr().out
    assert re.search(r"--device DEVICE", out) and re.search(r"--dtype \{bf16,fp16,fp32\}", out), out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # holds on a GPU machine too
    assert _run_main(name, "--device", "cuda") == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before anything ran
    assert re.fullmatch(r"error: --device cuda: (no CUDA GPU is visible|this torch build has no CUDA support); run "
                        r"on a GPU machine or use --device cpu", captured.err.strip()), captured.err  # fmt: skip


def test_the_new_benches_refuse_cuda_as_scripts_with_exit_2(tiny_zoo):
    """The same refusal from a process: the exit status a shell script (bench/gpu_check.sh) sees."""
    procs = {name: _bench(name, "--device", "cuda") for name in ("paper_scale", "paper_shaped")}
    for name, proc in procs.items():
        rc, out, err = _finish(proc)
        assert rc == 2, f"{name} --device cuda: rc {rc}\n{out[-1000:]}\n{err[-2000:]}"
        assert re.search(r"error: --device cuda: (no CUDA GPU is visible|this torch build has no CUDA)", err), err
        assert "Traceback" not in err and out == "", f"{name}: {out}\n{err}"


def test_gpu_check_exits_2_with_one_line_before_running_anything_without_cuda():
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        cwd=REPO,
        env=_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # no bench started
    pattern = r"gpu_check: no CUDA device visible \(torch [^,\s]+, CUDA build: (yes|no)\); run it on a GPU machine"
    assert re.fullmatch(pattern, proc.stderr.strip()), proc.stderr


def test_paper_shaped_smoke_runs_the_real_precompute_trainer_and_pipeline_on_cpu(tiny_zoo, tmp_path):
    keep, report = tmp_path / "run", tmp_path / "phases.json"
    rc, out, err = _finish(_bench("paper_shaped", "--scale", "smoke", "--keep", keep, "--json", report), timeout=300)
    assert rc == 0, f"{out[-2000:]}\n{err[-4000:]}"
    phases = {p["name"]: p["figures"] for p in json.loads(report.read_text(encoding="utf-8"))}
    assert list(phases) == ["build", "precompute", "train", "generate"]
    assert phases["precompute"]["samples/s"] > 0
    assert phases["train"]["steps/s"] > 0 and phases["train"]["samples/s"] > 0
    assert phases["train"]["loss (last)"] == pytest.approx(phases["train"]["loss (last)"])  # finite, not NaN
    assert phases["generate"]["images/s"] > 0
    # what gill's own stages wrote: a feature shard of the 16 pairs, the run's checkpoint and its final export
    import numpy as np

    vision = np.load(keep / "features" / "train" / "00000" / "vision.npy")
    assert vision.shape == (16, 64)  # --scale smoke: 16 pairs, vision width 64
    assert (keep / "runs" / "paper-shaped" / "final" / "adapters.safetensors").is_file()
    assert re.search(r"^train\s+[\d.]+ s\s+steps/s [\d.]+, samples/s", out, re.MULTILINE), out


def test_precompute_and_generation_benches_print_their_ratios_on_a_small_run(tiny_zoo):
    """Both throughput benches end to end at a size that runs in seconds (the figures themselves mean nothing
    here: too few images, one round)."""
    precompute = _bench(
        "precompute", "--sizes", "tiny", "--images", "64", "--per-shard", "16", "--rounds", "1", "--processes", "2"
    )
    generation = _bench("generation", "--sizes", "tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1")
    rc, out, err = _finish(precompute, timeout=300)
    assert rc == 0, f"{out[-2000:]}\n{err[-4000:]}"
    assert re.search(r"^  bound 1/\(1/F \+ 1/P\) \(the parts share the cores\): \d+\.\d$", out, re.MULTILINE), out
    ratio = r" +\d+\.\d  (\d+\.\d\d), \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\) \| \d+\.\d\d, "
    for layout in ("--processes 2: 2 shard processes", "default: 1 process", "--num-workers 2", "--prefetch 0"):
        row = re.search(rf"^  {re.escape(layout)}.*?{ratio}", out, re.MULTILINE)
        assert row and float(row.group(1)) > 0, f"{layout}:\n{out}"
    assert "64 images in shards of 16" in out and "Traceback" not in err
    rc, out, err = _finish(generation)
    assert rc == 0, f"{out[-2000:]}\n{err[-4000:]}"
    for path in ("gill-gen", "sd"):
        row = re.search(rf"^tiny +{path} +[\d.]+ +[\d.]+ +(\d\.\d+) \[", out, re.MULTILINE)
        assert row and float(row.group(1)) > 0, f"{path}:\n{out}"


def test_paper_shaped_refuses_bad_sizes_all_at_once(capsys):
    assert _run_main("paper_shaped", "--scale", "smoke", "--batch", "3", "--sd-px", "100", "--steps", "0") == 2
    err = capsys.readouterr().err
    for option in ("--batch 3: must be even", "--sd-px 100: must be a multiple of 64", "--steps 0: must be >= 1"):
        assert f"  - {option}" in err, err


def test_paper_scale_fast_mode_prints_the_table_and_writes_sourced_rows(tmp_path, paper_scale):
    db, work = tmp_path / "costs.duckdb", tmp_path / "W"
    args = ("--no-measure", "--gpu", "a100", "--gpus", "8", "--db", db, "--workdir", work)
    rc, out, err = _finish(_bench("paper_scale", *args), timeout=300)
    assert rc == 0, f"{out[-2000:]}\n{err[-4000:]}"
    for stage in (*STAGES, "total"):
        assert re.search(rf"^{re.escape(stage)}\s", out, re.MULTILINE), f"no {stage} row:\n{out}"
    for path in (db, work / "gill.duckdb"):
        with duckdb.connect(str(path), read_only=True) as con:
            rows = con.execute("SELECT stage, items, hours, disk_gb, gpu, gpus FROM paper_scale_costs").fetchall()
            sources = con.execute("SELECT name, source, quote FROM paper_scale_assumptions").fetchall()
            tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        # the work folder's file keeps gill's schema; a standalone file holds only the cost tables
        assert ("runs" in tables) == (path.name == "gill.duckdb"), tables
        assert sorted(r[0] for r in rows) == sorted((*STAGES, "total"))
        assert {(r[4], r[5]) for r in rows} == {("a100", 8)}
        by_stage = {r[0]: r for r in rows}
        assert all(by_stage[s][2] > 0 and by_stage[s][3] > 0 for s in STAGES)
        assert by_stage["total"][2] == pytest.approx(sum(by_stage[s][2] for s in STAGES))
        assert len(sources) >= len(paper_scale.ASSUMPTIONS) + len(paper_scale.GPUS)
        for name, source, quote in sources:
            assert source.startswith(("https://", "bench/")) or source == "assumption", name
            assert quote.strip(), name
    # the train row is the stated rule: items x FLOPs / (GPUs x DDP efficiency x peak x OPT utilisation)
    train = next(r for r in rows if r[0] == "train")
    components = paper_scale.paper_components()
    a = paper_scale.ASSUMPTIONS
    sustained = paper_scale.GPUS["a100"].peak_tflops * 1e12 * a["lm_utilisation"].value
    expected = 4_000_000 * components["train_sample"].paper_gflop * 1e9 / (8 * a["dp_efficiency"].value * sustained)
    assert train[2] == pytest.approx(expected / 3600, rel=1e-6)


def test_paper_scale_replaces_the_rows_of_the_same_hardware_only(tmp_path, paper_scale):
    components = paper_scale.paper_components()
    measured = paper_scale.STORED
    db = tmp_path / "costs.duckdb"

    def write(gpu: str, gpus: int) -> None:
        options = paper_scale.RunOptions(gpu=gpu, gpus=gpus)
        stages = paper_scale.build_stages(options, measured, paper_scale.adapter_parameters())
        rows = [paper_scale.cost_stage(s, components, measured, options) for s in stages]
        paper_scale.write_db(db, [*rows, paper_scale.total_row(rows, options)], options, measured)

    def counts() -> dict[str, int]:
        with duckdb.connect(str(db), read_only=True) as con:
            return dict(con.execute("SELECT hardware, count(*) FROM paper_scale_costs GROUP BY hardware").fetchall())

    write("a6000", 2)
    write("a100", 8)
    write("a6000", 2)
    assert counts() == {"2 x a6000": len(STAGES) + 1, "8 x a100": len(STAGES) + 1}


def test_paper_scale_gpu_hours_scale_inversely_with_gpus_and_peak(paper_scale):
    components, measured = paper_scale.paper_components(), paper_scale.STORED

    def hours(gpu: str, gpus: int) -> dict[str, float]:
        options = paper_scale.RunOptions(gpu=gpu, gpus=gpus)
        stages = paper_scale.build_stages(options, measured, paper_scale.adapter_parameters())
        return {s.name: paper_scale.cost_stage(s, components, measured, options).hours for s in stages}

    two, four, h100 = hours("a100", 2), hours("a100", 4), hours("h100", 2)
    for stage in ("train", "vist", "visdial", "cc3m-fid", "candidates"):
        assert four[stage] == pytest.approx(two[stage] / 2, rel=1e-9)  # DDP efficiency is the same at 2 and 4
        assert h100[stage] == pytest.approx(two[stage] * 312.0 / 989.4, rel=1e-9)
    for stage in ("download", "bank"):  # network and CPU stages do not depend on the GPUs
        assert four[stage] == two[stage] == h100[stage]


def test_paper_scale_every_figure_has_a_source_or_says_assumption(paper_scale):
    for item in [*paper_scale.ASSUMPTIONS.values(), *paper_scale.GPUS.values()]:
        assert item.source.startswith(("https://", "bench/")) or item.source == "assumption", item
        assert len(item.quote) > 20, item


def test_paper_scale_counts_the_paper_models_as_published(paper_scale):
    """Counted FLOPs match the closed forms within the stated tolerance (attention and LM head explain the rest)."""
    c = paper_scale.paper_components()
    opt_params = 6.66e9  # OPT-6.7B without the tied LM head, data_manifests/backbones/README.md
    assert c["lm_token"].paper_gflop == pytest.approx(2 * opt_params / 1e9, rel=0.02)
    # a training sample: 2 x (36 + 32) tokens of 2 x params, plus the adapters' ~6 x 50M x tokens, within 3%
    assert c["train_sample"].paper_gflop == pytest.approx(2 * 68 * 2 * opt_params / 1e9, rel=0.03)
    assert paper_scale.adapter_parameters() == 50_096_385  # the released GILL's trainable count
    # SD-1.5: 50 steps x 2 (guidance) x UNet forward dominate; the VAE decode adds ~3%
    assert 70_000 < c["sd_image"].paper_gflop < 100_000


def test_cpu_fit_recovers_rate_and_overhead(paper_scale):
    rate, overhead = paper_scale.cpu_fit((12.0, 0.1), (112.0, 10.1))  # 11 ms overhead + 0.1 GFLOP at 100 GFLOP/s
    assert rate == pytest.approx(100.0)
    assert overhead == pytest.approx(11.0)
    rate, overhead = paper_scale.cpu_fit((50.0, 0.1), (40.0, 2.0))  # noise: no positive slope
    assert (rate, overhead) == (pytest.approx(50.0), 0.0)


def test_paper_scale_refuses_bad_options_all_at_once(capsys):
    assert _run_main("paper_scale", "--no-measure", "--gpus", "0", "--seeds", "0", "--bandwidth-gbps", "0") == 2
    err = capsys.readouterr().err
    for option in ("--gpus 0: must be >= 1", "--seeds 0: must be >= 1", "--bandwidth-gbps 0.0: must be > 0"):
        assert f"  - {option}" in err, err
