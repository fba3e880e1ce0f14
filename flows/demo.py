"""``gill demo``: the pipeline's first stages without Prefect, on the embedded default (tiny zoo + shapes world).

Stages: check the backbones (failing at once when weights are missing), build the synthetic world, read the
derived dims, download the world's CC3M-format url lists with img2dataset (file:// urls) into webdataset
shards, precompute the frozen targets, train the adapters briefly, build the retrieval bank, and run the
inference pipeline on a held-out caption (one generated and one retrieved image, each compared with the
ground truth by the metric CLIP). The report is printed and saved as ``<workdir>/demo_report.json``;
yields, precompute rows and training metrics go to ``<workdir>/gill.duckdb``. The Prefect flow ``gill``
(``make demo``, ``flows/full_pipeline.py``) runs these stages and the later ones (decision, benchmarks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
from PIL import Image

from flows.stages import download, index, precompute, train
from flows.stages import world as world_stage
from flows.stages.download import DownloadOptions
from flows.stages.train import TrainOptions
from flows.workdir import Workdir
from gill.config import GILLConfig
from gill.data.precompute import PrecomputeOptions
from gill.factory import derive_dims, load_backbones
from gill.hub import require_backbones
from gill.pipeline import GenerationSettings, GILLPipeline, save_images
from gill.presets import tiny_component, tiny_zoo_dir
from gill.synth import SynthConfig
from gill.utils.io import atomic_write_json
from gill.zoo import ensure_tiny_zoo

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StageResult:
    """One demo stage: what it produced and how long it took."""

    name: str
    seconds: float
    outputs: dict[str, Any]


@dataclass(kw_only=True)
class DemoReport:
    """All stages of a demo run."""

    workdir: Path
    preset: str
    stages: list[StageResult] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], Any], summarise: Callable[[Any], dict[str, Any]] | None = None) -> Any:
        """Run and time one stage; record ``summarise(result)`` (or the result itself) as its outputs."""
        logger.info("stage %s ...", name)
        start = time.perf_counter()
        result = fn()
        outputs = summarise(result) if summarise else result
        self.stages.append(StageResult(name=name, seconds=round(time.perf_counter() - start, 2), outputs=outputs))
        return result

    def render(self) -> str:
        """Human-readable summary."""
        lines = [f"gill demo ({self.preset} preset) -> {self.workdir}"]
        for stage in self.stages:
            lines.append(f"  [{stage.seconds:6.2f} s] {stage.name}")
            lines += [f"      {k}: {v}" for k, v in stage.outputs.items()]
        lines.append(f"report: {self.workdir / 'demo_report.json'}")
        return "\n".join(lines)


def run_demo(workdir: str | Path, config: GILLConfig, seed: int = 0) -> DemoReport:
    """Run the demo stages into ``workdir`` and return (and save) the report."""

    workdir = Path(workdir).resolve()
    report = DemoReport(workdir=workdir, preset=config.preset)
    if config.preset == "tiny":
        report.run("tiny model zoo", lambda: _ensure_zoo(config))
    report.run(
        "backbones available",
        lambda: {r: str(p) for r, p in require_backbones(config.backbones, preset=config.preset).items()},
    )
    world = report.run(
        "synthetic shapes world",
        lambda: world_stage.run(Workdir(workdir), SynthConfig(seed=seed)),
        summarise=_world_outputs,
    )
    dims = report.run("derived dims", lambda: derive_dims(config), summarise=asdict)
    for split, tsv in (("train", world.cc3m_train_tsv), ("val", world.cc3m_val_tsv)):
        report.run(f"download cc3m {split}", lambda s=split, t=tsv: download_stage(workdir, s, t, dims))
    for split in ("train", "val"):
        report.run(f"precompute targets {split}", lambda s=split: precompute_stage(workdir, s, config))
    report.run("train adapters", lambda: train_stage(workdir, config, seed))
    report.run("retrieval bank", lambda: bank_stage(workdir))
    report.run("inference", lambda: inference_stage(workdir, world, Workdir(workdir).samples, seed))
    atomic_write_json(
        Workdir(workdir).demo_report, {"preset": report.preset, "stages": [asdict(s) for s in report.stages]}
    )
    return report


def download_stage(workdir: Path, split: str, urls: Path, dims: Any) -> dict[str, Any]:
    """img2dataset over the world's file:// url list, yield recorded in DuckDB."""
    image_size = min(224, max(64, dims.vision_image_size))  # 64 px for tiny, 224 px for the paper's CLIP
    options = DownloadOptions(image_size=image_size, shard_size=100, threads=8, timeout=5, retries=0)
    wd = Workdir(workdir)
    result = download.run(wd, split, urls, options, progress=False)
    return {"yield": result.summary().splitlines()[0], "shards": len(result.shards), "database": str(wd.database)}


def precompute_stage(workdir: Path, split: str, config: GILLConfig) -> dict[str, Any]:
    """Frozen vision features and SD text targets for every shard, one row per shard in DuckDB."""
    wd = Workdir(workdir)
    results = precompute.run(wd, split, config, PrecomputeOptions(batch_size=32))
    computed = [r for r in results if not r.skipped]
    rate = sum(r.samples_per_s * r.count for r in computed) / max(1, sum(r.count for r in computed))
    return {
        "shards": f"{len(results)} ({len(computed)} computed, {len(results) - len(computed)} up to date)",
        "samples": sum(r.count for r in results),
        "samples_per_s": round(rate, 1) if computed else "n/a (all up to date)",
        "features": str(wd.features(split)),
    }


DEMO_TRAIN_STEPS = 200


def train_stage(workdir: Path, config: GILLConfig, seed: int) -> dict[str, Any]:
    """A short adapter training run on the precomputed targets (metrics in DuckDB, loss curve PNG)."""
    steps = min(DEMO_TRAIN_STEPS, config.train.steps)
    overrides = {"steps": steps, "val_every": steps, "ckpt_every": steps, "seed": seed}
    outcome = train.run(Workdir(workdir), config, TrainOptions(run_id=f"demo-seed{seed}", overrides=overrides))
    result, curve = outcome.result, outcome.loss_curve
    first, last = result.history[0], result.history[-1]
    outputs = {
        f"{name} (step {first['step']} -> {last['step']})": f"{first[name]:.3f} -> {last[name]:.3f}"
        for name in ("loss_cap", "loss_lp", "loss_ret", "loss_gen")
    }
    if result.validations:
        val = result.validations[-1]
        chance = 1 / max(val["val_samples"], 1)
        outputs["val t2i/i2t R@1"] = f"{val['val_t2i_r1']:.3f} / {val['val_i2t_r1']:.3f} (chance {chance:.3f})"
    outputs.update({"run": str(result.run_dir), "loss curve": str(curve)})
    return outputs


def _ensure_zoo(config: GILLConfig) -> dict[str, Any]:

    lm = config.backbones.lm.id
    zoo_dir = tiny_zoo_dir() if tiny_component(lm) is not None else Path(lm).parent  # the cache's, or a given zoo
    manifest = ensure_tiny_zoo(zoo_dir)
    return {"zoo": str(zoo_dir), "components": ", ".join(manifest.components)}


def _world_outputs(world: Any) -> dict[str, Any]:
    return {
        "root": str(world.root),
        "cc3m": f"{world.n_train} train + {world.n_val} val pairs",
        "vist": f"{world.n_stories} stories",
        "visdial": f"{world.n_dialogs} dialogs",
        "images": world.n_images,
    }


def bank_stage(workdir: Path) -> dict[str, Any]:
    """Embed the downloaded training images with the demo run's retrieval head (``gill index build``)."""
    info = index.run(Workdir(workdir), splits=("train",))
    return {"bank": str(info.path), "images": info.count, "dim": info.dim, "approximate index": info.approximate}


def inference_stage(workdir: Path, world: Any, out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """GILLPipeline on a held-out caption: a forced [IMG] run, then one generated and one retrieved image.

    Reports the reply text, the retrieved image's key and caption, and the CLIP similarity (metric model) of
    each returned image to the caption's ground-truth image.
    """

    caption, image_path = _first_val_pair(world.cc3m_val_tsv)
    work = Workdir.at(workdir)
    checkpoint = work.checkpoint()
    pipe = GILLPipeline.from_pretrained(checkpoint, bank=index.existing_bank(work, checkpoint))
    settings = GenerationSettings(force_image=True, max_new_tokens=8, num_inference_steps=10, seed=seed)
    gen = pipe([caption], settings, mode="gen")
    ret = pipe([caption], settings, mode="ret")
    save_images(gen, out_dir, prefix="gen-")
    save_images(ret, out_dir, prefix="ret-")
    metric = load_backbones(pipe.model.config, roles=("clip_metric",))
    truth = Image.open(image_path).convert("RGB")
    generated, retrieved = gen.images[0], ret.images[0]
    return {
        "prompt": caption,
        "reply text": gen.text or "(none)",
        "generated": f"{out_dir / 'gen-00-gen.png'} (CLIP similarity to ground truth "
        f"{_clip_similarity(metric, generated.image, truth):.3f})",
        "retrieved": f"key {retrieved.key}: {retrieved.caption!r} (CLIP similarity to ground truth "
        f"{_clip_similarity(metric, retrieved.image, truth):.3f})",
        "scores gen / ret": f"{generated.score:.3f} / {retrieved.score:.3f}",
    }


def _clip_similarity(models: Any, a: Any, b: Any) -> float:

    inputs = models.clip_processor(images=[a, b], return_tensors="pt")
    with torch.no_grad():
        feats = models.clip_metric.get_image_features(pixel_values=inputs.pixel_values)
    feats = feats if torch.is_tensor(feats) else feats.pooler_output  # transformers 5 returns an output object
    feats = torch.nn.functional.normalize(feats, dim=-1)
    return float(feats[0] @ feats[1])


def _first_val_pair(tsv: Path) -> tuple[str, Path]:

    caption, url = tsv.read_text(encoding="utf-8").splitlines()[0].split("\t")
    return caption, Path(unquote(urlparse(url).path))
