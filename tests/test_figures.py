"""The report's figures: drawn by matplotlib from the store's rows, showing exactly those rows.

Each test writes known rows into a store (with the functions the stages use), draws, and reads the numbers back
from the returned figure's artists (line points, bar heights, interval segments, confusion cells) to compare them
with the rows; the report stage writes PNG and PDF files; missing data gives no figure, an impossible request an
InputError.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image, ImageFont

from eval.grids import _font, wrap
from eval.plots import (
    SYSTEM_COLOURS,
    context_effect_figure,
    decision_figure,
    mapper_ablation_figure,
    save_figure,
    training_figure,
)
from flows.command.parser import main
from flows.stages import report as report_stage
from flows.stages.decision import CONFUSION_COLUMNS, _rows, macro_f1_interval, record_decision
from flows.stages.train import TrainingReporter
from flows.store import query, record_metrics, replace_rows
from flows.workdir import Workdir
from gill.decision import confusion_matrix, fit_and_evaluate, macro_f1
from gill.errors import InputError

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
VIST = ("1cap", "5cap", "5cap4img")
VISDIAL = ("1round", "5rounds", "10rounds")


def _result(run, benchmark, setting, system, metric, mean, low, high):
    return {
        "run_id": run,
        "benchmark": benchmark,
        "setting": setting,
        "system": system,
        "metric": metric,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": 20,
        "n_seeds": 1,
    }


def _context_rows(run="r1"):
    """Known CLIP similarities (and VIST scene scores) of two systems; one interval is missing (NULL)."""
    rows = []
    for b, (benchmark, settings) in enumerate((("vist", VIST), ("visdial", VISDIAL))):
        for s, system in enumerate(("sd", "gill")):
            for i, setting in enumerate(settings):
                mean = 0.1 * (i + 1) + 0.05 * s + 0.01 * b
                low, high = (
                    (None, None)
                    if (benchmark, system, setting) == ("vist", "gill", "5cap")
                    else (
                        mean - 0.03 - 0.01 * i,
                        mean + 0.02 + 0.01 * i,
                    )
                )
                rows.append(_result(run, benchmark, setting, system, "clip_sim", mean, low, high))
                if benchmark == "vist":
                    rows.append(_result(run, benchmark, setting, system, "scene_score", 0.3 + 0.1 * i, 0.2, 0.6))
    rows.append(_result(run, "cc3m-fid", "val", "sd", "fid", 30.0, 25.0, 35.0))
    return rows


@pytest.fixture
def work(tmp_path):
    workdir = Workdir.at(tmp_path / "w")
    replace_rows(workdir.database, "results", _context_rows())
    return workdir


def _axis(figure: Figure, title: str):
    found = [ax for ax in figure.axes if ax.get_title() == title]
    assert len(found) == 1, [ax.get_title() for ax in figure.axes]
    return found[0]


def _line(ax, gid):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def _segments(ax, gid):
    """The interval segments with this gid as [(x, low, high), ...]."""
    found = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == gid]
    if not found:
        return []
    return [(float(seg[0][0]), float(seg[0][1]), float(seg[1][1])) for seg in found[0].get_segments()]


def _ends(segments) -> list[float]:
    """The low and high ends of interval segments, flat: [low, high, low, high, ...]."""
    return [end for _, low, high in segments for end in (low, high)]


def _bboxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# -- the effect of context --------------------------------------------------------------------------------------------


def test_the_context_figure_shows_each_systems_means_and_intervals_from_the_results_rows(work):
    results = query(work.database, "SELECT * FROM results WHERE run_id = 'r1'")
    figure = context_effect_figure(results)
    assert isinstance(figure, Figure)
    assert sorted(ax.get_title() for ax in figure.axes if ax.get_lines()) == ["VIST", "VIST: scene score", "VisDial"]
    (empty,) = [ax for ax in figure.axes if not ax.get_lines()]  # VisDial has no scene score: a note, no frame
    assert [t.get_text() for t in empty.texts] == ["VisDial: no scene score"] and not empty.axison
    for benchmark, title, settings in (("vist", "VIST", VIST), ("visdial", "VisDial", VISDIAL)):
        ax = _axis(figure, title)
        assert [t.get_text() for t in ax.get_xticklabels()][0] in ("1 caption", "1 round")
        for system in ("sd", "gill"):
            own = results[(results.benchmark == benchmark) & (results.system == system)]
            own = own[own.metric == "clip_sim"].set_index("setting").loc[list(settings)]
            line = _line(ax, system)
            assert list(line.get_ydata()) == pytest.approx(list(own["mean"]))
            assert [round(x) for x in line.get_xdata()] == [0, 1, 2]  # one point per setting, in context order
            assert line.get_color() == SYSTEM_COLOURS[system]
            with_ci = own[own.ci_low.notna()]
            segments = _segments(ax, f"{system}:interval")
            expected = [end for pair in zip(with_ci.ci_low, with_ci.ci_high, strict=True) for end in pair]
            assert _ends(segments) == pytest.approx(expected)
            xs = dict(zip(own.index, line.get_xdata(), strict=True))
            assert [x for x, *_ in segments] == pytest.approx([xs[s] for s in with_ci.index])
    assert len(_segments(_axis(figure, "VIST"), "gill:interval")) == 2  # the NULL interval is not drawn
    scene = _axis(figure, "VIST: scene score")
    assert list(_line(scene, "sd").get_ydata()) == pytest.approx([0.3, 0.4, 0.5])
    assert "CLIP similarity" in _axis(figure, "VIST").get_ylabel() and "scene score" in scene.get_ylabel()
    assert all(ax.get_xlabel() for ax in (scene, _axis(figure, "VisDial")))


def test_the_legend_sits_outside_every_panel(work):
    figure = context_effect_figure(query(work.database, "SELECT * FROM results"))
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    (legend,) = figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["Stable Diffusion", "GILL"]  # baselines first, one entry per system
    box = legend.get_window_extent(renderer)
    assert not any(_bboxes_overlap(box, ax.get_window_extent(renderer)) for ax in figure.axes)


def test_a_system_keeps_its_colour_in_every_figure():
    rows = pd.DataFrame(
        [_result("r", "vist", "1cap", s, "clip_sim", 0.5, 0.4, 0.6) for s in ("gill-oracle", "sd", "novel-system")]
    )
    alone = pd.DataFrame([_result("r", "vist", "1cap", "novel-system", "clip_sim", 0.5, 0.4, 0.6)])
    ax_all, ax_alone = context_effect_figure(rows).axes[0], context_effect_figure(alone).axes[0]
    assert _line(ax_all, "gill-oracle").get_color() == SYSTEM_COLOURS["gill-oracle"]
    assert _line(ax_all, "novel-system").get_color() == _line(ax_alone, "novel-system").get_color()


def test_no_vist_or_visdial_results_gives_no_context_figure():
    rows = pd.DataFrame([_result("r", "cc3m-fid", "val", "sd", "fid", 30.0, 25.0, 35.0)])
    assert context_effect_figure(rows) is None
    assert context_effect_figure(rows.iloc[0:0]) is None


# -- mapper ablation ------------------------------------------------------------------------------------------------


def _ablation_store(workdir, kinds=("gill_mapper", "linear")):
    runs, results = [], []
    for i, kind in enumerate(kinds):
        run = f"abl-{kind}"
        config = {"model": {"adapters": {"mapper": {"kind": kind}}}}
        runs.append({"run_id": run, "started_at": T0, "checkpoint": f"runs/{kind}/final", "config": json.dumps(config)})
        results.append(_result(run, "cc3m-fid", "val", "gill-gen", "fid", 20.0 + 5 * i, 15.0 + 4 * i, 27.0 + 6 * i))
        if i == 0:  # the second mapper has no VIST figure
            results.append(_result(run, "vist", "5cap4img", "gill-gen", "clip_sim", 0.6, 0.5, 0.7))
    replace_rows(workdir.database, "runs", runs)
    replace_rows(workdir.database, "results", results)


def test_the_ablation_figure_shows_fid_and_clip_similarity_per_mapper_with_intervals(tmp_path):
    workdir = Workdir.at(tmp_path)
    _ablation_store(workdir)
    rows = report_stage.mapper_ablation_rows(workdir.database)
    assert list(rows.mapper) == ["gill_mapper", "linear"] and list(rows.cc3m_fid_low) == [15.0, 19.0]
    figure = mapper_ablation_figure(rows)
    fid = _axis(figure, "CC3M FID (lower is better)")
    bars = [p for p in fid.patches if p.get_gid() == "cc3m_fid"]
    assert [b.get_height() for b in bars] == pytest.approx(list(rows.cc3m_fid))
    assert [t.get_text() for t in fid.get_xticklabels()] == ["gill_mapper", "linear"]
    assert _ends(_segments(fid, "cc3m_fid:interval")) == [15.0, 27.0, 19.0, 33.0]
    vist = _axis(figure, "VIST, 5 captions + 4 images")
    shown = [p for p in vist.patches if p.get_gid() == "vist_clip_sim" and p.get_visible()]
    assert [b.get_height() for b in shown] == pytest.approx([0.6])  # linear has no VIST figure: no bar, "n/a"
    assert "n/a" in [t.get_text() for t in vist.texts]
    assert _segments(vist, "vist_clip_sim:interval") == [(0, 0.5, 0.7)]
    assert fid.get_ylabel() == "FID" and "CLIP" in vist.get_ylabel()


def test_the_report_draws_the_ablation_only_when_the_ablation_ran(tmp_path):
    one, two = Workdir.at(tmp_path / "one"), Workdir.at(tmp_path / "two")
    _ablation_store(one, kinds=("gill_mapper",))
    _ablation_store(two)
    assert "mapper_ablation" not in report_stage.draw_figures(one, "abl-gill_mapper", one.bench_reports)
    drawn = report_stage.draw_figures(two, "abl-gill_mapper", two.bench_reports)
    assert drawn["mapper_ablation"] == two.bench_reports / "mapper_ablation.png"
    assert drawn["mapper_ablation"].with_suffix(".pdf").is_file()


# -- training curves ------------------------------------------------------------------------------------------------


def _train_rows(workdir, run="main"):
    for step in (10, 20, 30, 40):
        record_metrics(
            workdir.database,
            run,
            step,
            {name: 5.0 - 0.1 * step / (k + 1) for k, name in enumerate(("loss", "loss_cap", "loss_lp", "loss_ret"))}
            | {"loss_gen": 2.0 + 1 / step, "lr": 1e-3, "grad_norm": 1.0},
        )
    for step in (20, 40):
        record_metrics(
            workdir.database,
            run,
            step,
            {
                "val_loss_cap": 4.0 - step / 100,
                "val_loss_gen": 2.5,
                "val_t2i_r1": step / 100,
                "val_i2t_r1": step / 200,
                "val_acc1": 0.5,
                "val_samples": 64.0,
                "val_novel": 7.0,
            },
        )


def test_the_training_figure_draws_each_loss_with_its_validation_and_every_validation_figure(tmp_path):
    workdir = Workdir.at(tmp_path)
    _train_rows(workdir)
    metrics = query(workdir.database, "SELECT step, name, value FROM train_metrics WHERE run_id = 'main'")
    figure = training_figure(metrics, title="run main")
    visible = [ax for ax in figure.axes if ax.get_visible()]
    drawn = {line.get_gid(): ax for ax in visible for line in ax.get_lines()}
    assert set(drawn) == {
        "loss",
        "loss_cap",
        "loss_lp",
        "loss_ret",
        "loss_gen",
        "val_loss_cap",
        "val_loss_gen",
        "val_t2i_r1",
        "val_i2t_r1",
        "val_acc1",
        "val_novel",
    }  # not lr or grad_norm (no loss), nor val_samples (a pool size: in the title)
    assert drawn["val_loss_cap"] is drawn["loss_cap"] and drawn["val_t2i_r1"] is drawn["val_i2t_r1"]
    for name, ax in drawn.items():
        own = metrics[metrics.name == name].sort_values("step")
        line = _line(ax, name)
        assert list(line.get_xdata()) == list(own.step) and list(line.get_ydata()) == pytest.approx(list(own.value))
    assert all(ax.get_ylabel() and ax.get_xlabel() == "optimizer step" for ax in visible)
    assert "validation pool 64 pairs" in figure.get_suptitle()


def test_the_train_stage_writes_the_curves_as_loss_curve_png_and_pdf(tmp_path):
    workdir = Workdir.at(tmp_path)
    _train_rows(workdir, run="cli")
    png = TrainingReporter(workdir.root, "cli").finish()
    assert png == workdir.run("cli") / "loss_curve.png" and png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1000
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]  # nothing in the store: the trainer's records
    assert TrainingReporter(workdir.root, "fresh").finish(history, [{"step": 2, "val_acc1": 0.4}]).is_file()
    assert TrainingReporter(workdir.root, "empty").finish() is None


# -- decision classifier ---------------------------------------------------------------------------------------------


def _decision_rows(run, *, minutes, recipe, score, f1, folds, confusion=None, ci=None):
    common = {
        "run_id": run,
        "created": T0 + dt.timedelta(minutes=minutes),
        "checkpoint": "runs/main/best",
        "checkpoint_id": "abc",
        "votes": "votes.tsv",
        "with_retrieval_score": score,
        "recipe": recipe,
    }
    rows = [
        {**common, "protocol": "official-180", "metric": "macro_f1", "value": f1, "n": 120}
        | (dict(zip(CONFUSION_COLUMNS, confusion, strict=True)) if confusion else {})
        | ({"ci_low": ci[0], "ci_high": ci[1]} if ci else {}),
        {**common, "protocol": "cv5", "metric": "macro_f1", "value": float(np.mean(folds)), "n": 300},
        {**common, "protocol": "cv5", "metric": "macro_f1_std", "value": float(np.std(folds, ddof=1)), "n": 300},
        *({**common, "protocol": "cv5", "metric": f"macro_f1_fold{k}", "value": v} for k, v in enumerate(folds)),
        {**common, "protocol": "simulated-panel", "metric": "macro_f1_leave_one_out", "value": 0.9},
        {**common, "protocol": "simulated-panel", "metric": "macro_f1_official", "value": 0.95, "n": 300},
    ]
    return rows


def test_the_decision_figure_shows_macro_f1_intervals_baselines_and_the_confusion_matrix(tmp_path):
    workdir = Workdir.at(tmp_path)
    folds = [0.5, 0.55, 0.6, 0.45, 0.5]
    old = _decision_rows("d-old", minutes=0, recipe="official", score=False, f1=0.2, folds=[0.1] * 5)
    new = _decision_rows(
        "d-new",
        minutes=5,
        recipe="official",
        score=False,
        f1=0.52,
        folds=folds,
        confusion=(70, 10, 25, 15),
        ci=(0.4, 0.6),
    )
    record_decision(workdir.root, old + new)
    rows = report_stage.latest_decision_fits(workdir.database)
    assert set(rows.run_id) == {"d-new"}  # the newest fit of the head
    figure = decision_figure(rows)
    bars_ax = _axis(figure, "macro-F1 (segments: 95% interval / ± 1 s.d.)")
    heights = {p.get_gid(): p.get_height() for p in bars_ax.patches if p.get_gid()}
    assert heights == pytest.approx(
        {
            "d-new:official": 0.52,
            "d-new:cv": np.mean(folds),
            "judges:macro_f1_leave_one_out": 0.9,
            "judges:macro_f1_official": 0.95,
        }
    )
    assert _ends(_segments(bars_ax, "d-new:official:interval")) == [0.4, 0.6]
    std = np.std(folds, ddof=1)
    assert _ends(_segments(bars_ax, "d-new:cv:interval")) == pytest.approx([np.mean(folds) - std, np.mean(folds) + std])
    assert list(_line(bars_ax, "d-new:folds").get_ydata()) == pytest.approx(folds)
    assert bars_ax.get_ylabel() == "macro-F1"
    assert "judges (simulated panel)\nbaseline" in [t.get_text() for t in bars_ax.get_xticklabels()]
    (matrix_ax,) = [ax for ax in figure.axes if ax.images]
    assert matrix_ax.images[0].get_array().tolist() == [[70, 10], [25, 15]]
    assert sorted(t.get_text() for t in matrix_ax.texts) == sorted(["70", "10", "25", "15"])
    assert matrix_ax.get_xlabel() == "predicted" and matrix_ax.get_ylabel() == "judges' label"


def test_a_fit_without_stored_counts_gets_the_bars_only_and_each_head_its_latest_fit(tmp_path):
    workdir = Workdir.at(tmp_path)
    rows = _decision_rows("d-off", minutes=0, recipe="official", score=False, f1=0.45, folds=[0.4] * 5)
    rows += _decision_rows("d-aware", minutes=1, recipe="balanced", score=True, f1=0.6, folds=[0.6] * 5)
    replace_rows(workdir.database, "decision_eval", rows)  # as an older gill wrote them: no counts, no interval
    chosen = report_stage.latest_decision_fits(workdir.database)
    assert list(dict.fromkeys(chosen.run_id)) == ["d-off", "d-aware"]
    figure = decision_figure(chosen)
    assert len(figure.axes) == 1 and "no confusion counts" in figure.get_suptitle()
    assert _segments(figure.axes[0], "d-off:official:interval") == []  # no interval stored: none drawn
    heights = {p.get_gid(): p.get_height() for p in figure.axes[0].patches if p.get_gid()}
    assert heights["d-aware:official"] == pytest.approx(0.6) and heights["d-off:official"] == pytest.approx(0.45)
    assert decision_figure(chosen.iloc[0:0]) is None


def test_the_decision_stage_stores_confusion_counts_and_an_interval_that_match_its_f1():
    torch.manual_seed(0)
    y = torch.tensor([0] * 30 + [1] * 20)
    x = torch.randn(50, 4) + y[:, None] * 1.5
    result, _ = fit_and_evaluate(x, y, steps=30, folds=5, n_train=30)
    (tn, fp), (fn, tp) = result.official_confusion
    assert tn + fp + fn + tp == result.n_test and tn + fp == result.n_test_gen
    from_counts = macro_f1([0] * (tn + fp) + [1] * (fn + tp), [0] * tn + [1] * fp + [0] * fn + [1] * tp)
    assert from_counts == pytest.approx(result.official_test_f1)
    assert sum(sum(r) for r in result.cv_confusion) == 50
    rows = {(r["protocol"], r["metric"]): r for r in _rows(result, {"run_id": "d"})}
    stored = rows[("official-30", "macro_f1")]
    assert [stored[c] for c in CONFUSION_COLUMNS] == [tn, fp, fn, tp]
    assert stored["ci_low"] <= result.official_test_f1 <= stored["ci_high"]
    assert [rows[("cv5", "macro_f1")][c] for c in CONFUSION_COLUMNS] == [c for r in result.cv_confusion for c in r]
    assert "ci_low" not in rows[("cv5", "macro_f1")] and CONFUSION_COLUMNS[0] not in rows[("cv5", "macro_f1_std")]


def test_the_confusion_matrix_and_its_interval():
    assert confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == ((1, 1), (1, 2))
    perfect = macro_f1_interval(((5, 0), (0, 5)))
    assert (perfect.low, perfect.high) == (1.0, 1.0)
    assert macro_f1_interval(((0, 0), (0, 0))) is None
    spread = macro_f1_interval(((30, 10), (10, 30)))
    assert spread.low < 0.75 < spread.high


# -- the report stage -------------------------------------------------------------------------------------------------


def test_the_report_writes_each_figure_it_has_data_for_as_png_and_pdf(work):
    _train_rows(work, run="main")
    replace_rows(
        work.database, "runs", [{"run_id": "r1", "started_at": T0, "checkpoint": "runs/main/best", "config": "{}"}]
    )
    record_decision(work.root, _decision_rows("d1", minutes=0, recipe="official", score=False, f1=0.5, folds=[0.5] * 5))
    outcome = report_stage.run(work, "r1")
    reports = work.bench_reports
    assert outcome.figures == {
        "context_effect": reports / "context_effect.png",
        "training": reports / "training_main.png",  # the run of the benchmarked checkpoint
        "decision": reports / "decision.png",
    }  # no mapper ablation ran
    assert outcome.plot == outcome.figures["context_effect"]
    for png in outcome.figures.values():
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 600
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert report_stage.run(work, "r1", figures=False).figures == {}


def test_a_report_without_figure_data_draws_none_and_an_impossible_request_is_an_input_error(tmp_path):
    workdir = Workdir.at(tmp_path)
    replace_rows(workdir.database, "results", [_result("r", "cc3m-fid", "val", "sd", "fid", 30.0, 25.0, 35.0)])
    outcome = report_stage.run(workdir, "r")
    assert outcome.figures == {} and outcome.plot is None
    with pytest.raises(InputError) as err:
        report_stage.run(workdir, "r", plot=tmp_path / "figure.jpg", training_run="nope")
    assert len(err.value.problems) == 2  # both problems at once
    assert ".png" in err.value.problems[0] and "'nope'" in err.value.problems[1]


def test_gill_report_prints_where_each_figure_is(work, capsys):
    assert main(["report", "--workdir", str(work.root), "--run-id", "r1"]) == 0
    out = capsys.readouterr().out
    assert f"figure context_effect: {work.bench_reports / 'context_effect.png'} (and context_effect.pdf)" in out


# -- the library's manners ------------------------------------------------------------------------------------------


def test_drawing_and_saving_changes_nothing_in_the_host_process(work, tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    figure = context_effect_figure(query(work.database, "SELECT * FROM results"))
    saved = save_figure(figure, tmp_path / "f.png")
    assert (matplotlib.get_backend(), dict(matplotlib.rcParams)) == before
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # no pyplot, no global figure manager
    again = save_figure(context_effect_figure(query(work.database, "SELECT * FROM results")), tmp_path / "g.png")
    assert saved.pdf == tmp_path / "f.pdf" and saved.pdf.read_bytes() == again.pdf.read_bytes()  # no creation date
    with pytest.raises(ValueError, match=".png"):
        save_figure(figure, tmp_path / "f.svg")


def test_grid_text_is_set_in_a_truetype_font_and_keeps_its_spaces():
    font = _font(10)
    assert isinstance(font, ImageFont.FreeTypeFont) and "DejaVu" in font.getname()[0]
    text = "we see a large red square on the left , on a checkered background"
    lines = wrap(text, font, 120)
    assert " ".join(lines) == text and all(font.getlength(line) <= 120 for line in lines)
    cut = wrap("word " * 200, font, 120, max_lines=3)
    assert len(cut) == 3 and cut[-1].endswith("...")
    space = font.getlength(" ")
    assert space > 1 and math.isclose(font.getlength("a b"), font.getlength("ab") + space, abs_tol=1)  # spaces kept
