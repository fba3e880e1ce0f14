"""Scoring of benchmark outputs: pure functions from images (or sample rows) and the metric models to score fields.

The middle piece of a benchmark (:mod:`eval.bench` produces the images, the bench stage's recorder writes the rows):

* :func:`score_images`: one sample's outputs against its ground truth: CLIP similarity, LPIPS and, where the
  answer key is known, the scene-metric columns;
* :func:`pick_oracle`: the ``gill-oracle`` system, the better of ``gill-gen`` and ``gill-ret`` by CLIP similarity;
* :func:`result_rows`: the ``results`` rows of a benchmark from its ``samples`` rows (mean over samples of each
  sample's mean over seeds, a percentile-bootstrap interval over samples, the spread over seeds);
* :func:`fid_fields`: FID of generated images against their references, averaged over seeds, with a paired
  bootstrap interval over samples.

The statistics come from :mod:`eval.metrics`; nothing here touches the database or writes a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from eval.bench_data import load_image
from eval.bench_systems import Produced
from eval.metrics import bootstrap_ci, frechet_distance, paired_fid_bootstrap_ci, recall_hits
from eval.scene_answers import SceneTarget
from eval.scene_metric import SCENE_COLUMNS, score_image

RECALL_KS = (1, 5, 10)
GENERATION_METRICS = ("clip_sim", "lpips")
SCENE_METRIC_MODEL = "answer key (scenes.json), eval.scene_metric"
"""What the ``scene_*`` results were measured with."""


def scene_metric_name(column: str) -> str:
    """The ``results.metric`` of a scene column: ``scene_color_ok`` -> ``scene_color``."""
    return column.removesuffix("_ok")


def score_images(
    produced: dict[str, Produced], reference: Image.Image, scene: SceneTarget | None, metrics: Any
) -> dict[str, dict[str, float]]:
    """``{system: score fields}`` of every system that produced an image: CLIP similarity and LPIPS to the
    reference (``metrics.clip``, ``metrics.lpips``), and the scene-metric columns when the answer key is known."""
    names = [s for s, p in produced.items() if p.image is not None]
    if not names:
        return {}
    images = [produced[s].image for s in names]
    refs = [reference] * len(images)
    clip = metrics.clip.similarity(images, refs).tolist()
    lpips = metrics.lpips.distance(images, refs).tolist()
    scores = {s: {"clip_sim": float(c), "lpips": float(d)} for s, c, d in zip(names, clip, lpips, strict=True)}
    if scene is not None:
        for name, image in zip(names, images, strict=True):
            scores[name].update(score_image(image, scene.scene, scene.described).columns())
    return scores


def pick_oracle(
    produced: dict[str, Produced], scores: dict[str, dict[str, float]]
) -> tuple[Produced, dict[str, float]]:
    """The better of gill-gen and gill-ret by CLIP similarity to the ground truth (its output and its scores)."""
    candidates = [s for s in ("gill-gen", "gill-ret") if s in scores]
    if not candidates:
        return Produced(image=None, skip_reason="neither generation nor retrieval produced an image"), {}
    best = max(candidates, key=lambda s: scores[s]["clip_sim"])
    chosen = produced[best]
    return dataclasses.replace(chosen, decision=best.removeprefix("gill-")), scores[best]


def result_rows(
    samples: Any, *, run_id: str, benchmark: str, metric_models: dict[str, str], confidence: float, n_boot: int
) -> list[dict[str, Any]]:
    """The ``results`` rows of one benchmark from its ``samples`` rows (a DataFrame), per (setting, system, metric).

    ``metric_models`` names the models (``clip_sim``, ``lpips``) that the rows record in ``metric_model``.
    The rows are sorted by setting, system, seed and sample first, so the figures (float sums, bootstrap
    resamples over the samples in sample-id order) do not depend on the order the rows were written or read in,
    e.g. by one process or merged from several.
    """
    rows = []
    samples = samples.sort_values(["setting", "system", "seed", "sample_id"], kind="stable")
    for (setting, system), group in samples.groupby(["setting", "system"], sort=True):
        rows += _metric_rows(
            group,
            run_id=run_id,
            benchmark=benchmark,
            setting=str(setting),
            system=str(system),
            metric_models=metric_models,
            confidence=confidence,
            n_boot=n_boot,
        )
    return rows


def _metric_rows(
    group: Any,
    *,
    run_id: str,
    benchmark: str,
    setting: str,
    system: str,
    metric_models: dict[str, str],
    confidence: float,
    n_boot: int,
) -> list[dict[str, Any]]:
    ok = group[group.status == "ok"].copy()
    skipped = len(set(group[group.status == "skipped"].sample_id) - set(ok.sample_id))
    if benchmark.endswith("-retrieval"):
        metrics = {f"recall@{k}": recall_hits(ok.target_rank, k) for k in RECALL_KS}
        model = "GILL retrieval head" if system == "fromage-retrieval" else f"CLIP {metric_models['clip_sim']}"
        models = dict.fromkeys(metrics, model)
    else:
        metrics = {m: ok[m] for m in GENERATION_METRICS}
        models = {m: metric_models[m] for m in GENERATION_METRICS}
        for column in SCENE_COLUMNS:  # synthetic-world samples only: NULL on real data
            if column in ok and ok[column].notna().any():
                metrics[scene_metric_name(column)] = ok[column]
                models[scene_metric_name(column)] = SCENE_METRIC_MODEL
    rows = []
    for metric, values in metrics.items():
        ok["value"] = values
        per_sample = ok.groupby("sample_id")["value"].mean().to_numpy(dtype=float)
        per_seed = ok.groupby("seed")["value"].mean().to_numpy(dtype=float)
        row = {
            "run_id": run_id,
            "benchmark": benchmark,
            "setting": setting,
            "system": system,
            "metric": metric,
            "n": len(per_sample),
            "n_skipped": skipped,
            "n_seeds": len(per_seed),
            "metric_model": models[metric],
            "pool_size": int(ok.pool_size.max()) if ok.pool_size.notna().any() else None,
        }
        if len(per_sample):
            ci = bootstrap_ci(per_sample, confidence=confidence, n_boot=n_boot)
            row.update(
                mean=float(per_sample.mean()),
                ci_low=ci.low,
                ci_high=ci.high,
                seed_std=float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
            )
        rows.append(row)
    return rows


def fid_fields(gens: Sequence[np.ndarray], ref: np.ndarray, *, n_boot: int, confidence: float) -> dict[str, Any]:
    """The FID columns of a ``results`` row: ``mean`` over seeds of each seed's FID against the references,
    the paired bootstrap interval over samples (none when ``n_boot`` is 0), ``n``, ``n_seeds``, ``seed_std``.

    Row ``i`` of ``ref`` and of each array of ``gens`` (one per seed) are the features of sample ``i``.
    """
    per_seed = [frechet_distance(g, ref) for g in gens]
    low = high = None
    if n_boot:
        ci = paired_fid_bootstrap_ci(gens, ref, n_boot=n_boot, confidence=confidence)
        low, high = ci.low, ci.high
    return {
        "mean": float(np.mean(per_seed)),
        "ci_low": low,
        "ci_high": high,
        "n": len(ref),
        "n_seeds": len(gens),
        "seed_std": float(np.std(per_seed, ddof=1)) if len(gens) > 1 else None,
    }


def fid_features(fid: Any, paths: Iterable[Path], cache: dict[Path, np.ndarray]) -> np.ndarray:
    """(N, D) float64 FID features (``fid.image_features``) of the images at ``paths``, 32 at a time; ``cache``
    keeps the features of images already seen."""

    paths = list(paths)
    missing = [p for p in paths if p not in cache]
    for first in range(0, len(missing), 32):
        chunk = missing[first : first + 32]
        feats = fid.image_features([load_image(Path(p)) for p in chunk])
        cache.update(zip(chunk, np.asarray(feats, dtype=np.float64), strict=True))
    return np.stack([cache[p] for p in paths])
