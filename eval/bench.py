"""Benchmark runners: VIST and VisDial contextual image generation and retrieval, CC3M FID, the mapper ablation.

Implements every setting of the GILL paper's Tables 1 and 2 (section 4), the retrieval recall of its
FROMAGe-style evaluation and the CC3M FID of its mapper ablation (section 5), with the baselines of
:mod:`eval.bench_systems`. Every sample is a row of ``samples`` in the workdir's DuckDB file, every aggregate a
row of ``results`` with a 95% bootstrap interval over samples and the spread over SD seeds (schema:
``eval/README.md``). Images go to ``W/bench/<run_id>/<benchmark>/<setting>/<system>/seed<seed>/``.

A benchmark is three pieces, run by :class:`BenchSession`: :class:`ImageProducer` makes each sample's images
(through the systems of :mod:`eval.bench_systems`) and saves them, :mod:`eval.bench_scoring` scores them (pure
functions of the images and the metric models), and :class:`eval.bench_record.BenchRecorder` writes the ``runs``,
``samples`` and ``results`` rows (the only piece that touches the database).

Robustness: a sample whose images are missing or unreadable is recorded as ``skipped`` with the reason and
counted (``n_skipped``), never a crash; rows are written every few samples, so a re-run with the same options
(same ``run_id``) scores only what is missing; DuckDB writes go through :func:`eval.db.replace_rows` (one
short transaction per write, retrying on the single-writer lock).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eval import bench_data as data
from eval.bench_record import BenchRecorder, Counts
from eval.bench_scoring import fid_features, fid_fields, pick_oracle, result_rows, score_images
from eval.bench_systems import SYSTEMS, UNSUPPORTED_SYSTEMS, ClipBank, ImageOptions, Produced, SystemRunner, derive_seed
from eval.metrics import target_ranks
from eval.scene_answers import SceneTarget, scene_target
from gill.checkpoint import source_git_sha
from gill.config import _Validated
from gill.errors import InputError
from gill.pipeline import image_size_problems

logger = logging.getLogger(__name__)

GENERATION_SYSTEMS = ("gill", "gill-gen", "gill-ret", "gill-oracle", "sd", "clip-retrieval", "fromage-retrieval")
FID_SYSTEMS = ("gill-gen", "sd")
RETRIEVAL_SYSTEMS = ("fromage-retrieval", "clip-retrieval")
"""Systems of the recall@k tasks: GILL's retrieval head (FROMAGe-style) and CLIP, ranking the true image."""
VIST_CONTEXT_LENGTH = {"1cap": 1, "5cap": 5, "5cap4img": 9}
"""Prompt items per VIST setting (captions + images): the x axis of the effect-of-context figure."""


@dataclass(frozen=True, kw_only=True)
class BenchOptions(_Validated):
    """How a benchmark runs. Everything but ``seeds``, ``limit``, ``systems`` and the bootstrap sizes enters
    the default run id, so changing e.g. the SD steps starts a new run instead of mixing results."""

    seeds: tuple[int, ...] = (42,)
    """SD seeds (official evals: 42). Seed-free systems are evaluated once, under the first."""
    limit: int | None = None
    """Evaluate the first N samples only."""
    systems: tuple[str, ...] | None = None
    """Systems to run (default: every system the benchmark supports)."""
    sd_steps: int = 50
    """Denoising steps of every generated image (GILL and SD alike; the paper: 50)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    height: int | None = None
    """Generated image height (default: SD's native size)."""
    width: int | None = None
    """Generated image width (default: SD's native size)."""
    n_boot: int = 1000
    """Bootstrap resamples for the confidence intervals of per-sample metrics."""
    fid_bootstrap: int = 100
    """Bootstrap resamples for the FID interval (each is one FID per seed; 0: no interval)."""
    confidence: float = 0.95
    """Level of the confidence intervals."""
    retrieval: bool = True
    """Also run the recall@k tasks (VIST, VisDial)."""
    run_id: str | None = None
    """Benchmark run id (default: from the checkpoint and image settings; the same id resumes)."""
    device: str = "cpu"
    """Torch device (cpu, cuda, ...)."""
    write_every: int = 8
    """Write sample rows to DuckDB after this many samples (what a crash can lose)."""
    progress: bool = True
    """Show progress bars."""

    def _problems(self) -> list[str]:
        problems = []
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds: give one or more distinct integers, got {list(self.seeds)}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit: must be >= 1, got {self.limit}")
        known = set(SYSTEMS) | set(UNSUPPORTED_SYSTEMS)
        unknown = [s for s in self.systems or () if s not in known]
        if unknown:
            problems.append(f"systems: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name in ("sd_steps", "write_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_boot < 1 or self.fid_bootstrap < 0:
            problems.append(f"n_boot must be >= 1 and fid_bootstrap >= 0, got {self.n_boot}, {self.fid_bootstrap}")
        if not 0 < self.confidence < 1:
            problems.append(f"confidence: must be in (0, 1), got {self.confidence}")
        return problems + image_size_problems(self.height, self.width)

    @property
    def image_options(self) -> ImageOptions:
        return ImageOptions(
            sd_steps=self.sd_steps, guidance_scale=self.guidance_scale, height=self.height, width=self.width
        )


@dataclass(frozen=True, kw_only=True)
class BenchItem:
    """One sample of a benchmark setting, before any file is opened."""

    sample_id: str
    text: str
    """What the text-only baselines read."""
    reference: Path | None
    """The ground-truth image (None: not found)."""
    context: tuple[Path | None, ...] = ()
    """Prompt images (None: not found)."""
    context_length: int
    make_prompt: Callable[[list[Image.Image]], list[Any]]
    missing: str | None = None
    """Why a needed file is missing (names the ids), else None."""
    scene: SceneTarget | None = None
    """The scene the reference image shows, when it is an image of a synthetic shapes world (answer key)."""


@dataclass(frozen=True, kw_only=True)
class BenchSummary:
    """What one benchmark call did, and where to look."""

    run_id: str
    benchmark: str
    database: Path
    out_dir: Path
    scored: int = 0
    skipped: int = 0
    resumed: int = 0
    """Sample rows already scored by an earlier call and not recomputed."""
    results: Any = None
    """The benchmark's ``results`` rows (a DataFrame)."""
    unsupported: dict[str, str] = field(default_factory=dict)


# -- producing images ------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ItemImages:
    """What the systems produced for one sample at one seed, with the ground truth they are scored against."""

    reference: Image.Image
    produced: dict[str, Produced]
    """System -> its output (``gill-oracle`` asked for: ``gill-gen`` and ``gill-ret`` instead)."""
    sd_seed: int
    """The sample's SD seed (:func:`eval.bench_systems.derive_seed`)."""


class ImageProducer:
    """Makes the images of benchmark samples: loads a sample's prompt and ground-truth images, runs the systems on
    its prompt (:class:`eval.bench_systems.SystemRunner`) and saves their images as PNGs under ``out_dir``
    (``<benchmark>/<setting>/<system>/seed<seed>/<sample_id>.png``)."""

    def __init__(self, runner: SystemRunner, out_dir: Path) -> None:
        self.runner = runner
        self.out_dir = out_dir

    def produce(self, item: BenchItem, seed: int, systems: Sequence[str]) -> ItemImages:
        """The outputs of ``systems`` for ``item`` under run seed ``seed`` (``data.UnreadableImage``, saying why,
        when one of its images is missing or unreadable)."""
        reference, context = _load(item)
        sd_seed = derive_seed(seed, item.sample_id)
        wanted = set(systems) - {"gill-oracle"}
        if "gill-oracle" in systems:
            wanted |= {"gill-gen", "gill-ret"}
        produced = self.runner.produce(item.make_prompt(context), item.text, wanted, sd_seed)
        return ItemImages(reference=reference, produced=produced, sd_seed=sd_seed)

    def save(self, image: Image.Image, benchmark: str, setting: str, system: str, seed: int, sample_id: str) -> Path:
        """Write one system's image of one sample; its path."""
        path = self.out_dir / benchmark / setting / system / f"seed{seed}" / f"{_safe(sample_id)}.png"
        _save_png(image, path)
        return path


# -- the session: models loaded once, run registered ---------------------------------------------------------------


class BenchSession:
    """A checkpoint's pipeline, metric models, run id and output folder, shared by the benchmarks of one call.

    It runs each benchmark as producing images (:class:`ImageProducer`), scoring them (:mod:`eval.bench_scoring`)
    and recording rows (:class:`~eval.bench_record.BenchRecorder`).
    """

    def __init__(
        self, workdir: Path, checkpoint: Path, pipe: Any, metrics: Any, options: BenchOptions, run_id: str, config: Any
    ) -> None:
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.pipe = pipe
        self.metrics = metrics
        self.options = options
        self.run_id = run_id
        self.config = config
        self.recorder = BenchRecorder(workdir, run_id)
        self.database = self.recorder.database
        self.out_dir = workdir / "bench" / run_id
        self._clip_bank: ClipBank | None = None
        self.clip_override = False
        """Whether the metric CLIP was given by the user (then bank images are encoded, not their features)."""
        self.runner = SystemRunner(pipe, metrics.clip, options.image_options)
        self.producer = ImageProducer(self.runner, self.out_dir)

    @classmethod
    def open(
        cls,
        workdir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        options: BenchOptions = BenchOptions(),
        metric_spec: Any = None,
        need_fid: bool = False,
    ) -> BenchSession:
        """Resolve the checkpoint, check the metric models (failing before any heavy load), load the pipeline."""
        from eval.metric_models import MetricModelSpec, resolve_metric_models
        from gill.checkpoint import read_checkpoint_config
        from gill.pipeline import GILLPipeline, resolve_checkpoint
        from gill.retrieval import checkpoint_id

        workdir = Path(workdir)
        ckpt = resolve_checkpoint(workdir, checkpoint)
        config = read_checkpoint_config(ckpt)
        metrics = resolve_metric_models(
            config, metric_spec or MetricModelSpec(), device=options.device, need_fid=need_fid
        )
        chosen = options.systems or tuple(SYSTEMS)
        wants_bank = any(s in SYSTEMS and (SYSTEMS[s].needs_bank or s == "gill") for s in chosen)
        pipe = GILLPipeline.from_pretrained(ckpt, workdir=workdir if wants_bank else None, device=options.device)
        ckpt_id = checkpoint_id(ckpt)
        # FID is recomputed from the saved images at every call, so its feature model is not part of the identity
        scorers = {k: v for k, v in metrics.names.items() if k != "fid"}
        identity = {
            "checkpoint": ckpt_id,
            "images": dataclasses.asdict(options.image_options),
            "metric_models": scorers,
        }
        run_id = options.run_id or f"{ckpt_id[:10]}-{_digest(identity)[:6]}"
        session = cls(workdir, ckpt, pipe, metrics, options, run_id, config)
        session.clip_override = bool(getattr(metric_spec, "clip", None))
        session._register(identity)
        return session

    def _register(self, identity: dict[str, Any]) -> None:
        document = {"model": self.config.to_dict(), "bench": identity, "workdir": str(self.workdir)}
        self.recorder.register(
            checkpoint=self.checkpoint, preset=self.config.preset, git_sha=source_git_sha(), config=document
        )
        logger.info("benchmark run %s (checkpoint %s) -> %s", self.run_id, self.checkpoint, self.database)

    # -- systems ------------------------------------------------------------------------------------------------

    def resolve_systems(self, benchmark: str, defaults: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The systems to run and the unsupported ones with reasons (recorded in ``unsupported_systems``)."""
        requested = list(self.options.systems) if self.options.systems else list(defaults)
        unsupported = {s: UNSUPPORTED_SYSTEMS[s] for s in requested if s in UNSUPPORTED_SYSTEMS}
        if self.options.systems is None:
            unsupported.update({s: UNSUPPORTED_SYSTEMS[s] for s in UNSUPPORTED_SYSTEMS})
        systems = [s for s in requested if s in SYSTEMS]
        if self.pipe.bank is None:
            needing = [s for s in systems if SYSTEMS[s].needs_bank]
            if needing and self.options.systems is not None:
                raise InputError(
                    f"systems {', '.join(needing)} retrieve from a bank, but checkpoint {self.checkpoint} has none",
                    [f"no bank under {self.workdir / 'index'}"],
                    hint="build it with `gill index build --workdir W`, or leave those systems out of --systems",
                )
            reason = "no retrieval bank for this checkpoint (gill index build --workdir W)"
            unsupported.update({s: reason for s in needing})
            systems = [s for s in systems if s not in needing]
        if unsupported:
            self.recorder.record_unsupported(benchmark, unsupported)
            for system, reason in unsupported.items():
                logger.warning("%s: system %s not run: %s", benchmark, system, reason)
        return systems, unsupported

    @property
    def clip_bank(self) -> ClipBank | None:
        """CLIP embeddings of the bank (built on first use), for the ``clip-retrieval`` system."""
        if self._clip_bank is None and self.pipe.bank is not None:
            same = self.config.backbones.clip_metric == self.config.backbones.vision and not self.clip_override
            self._clip_bank = ClipBank.build(
                self.pipe,
                self.metrics.clip,
                self.workdir / "bench" / "clip-bank",
                from_features=same,
                progress=self.options.progress,
            )
        return self._clip_bank

    # -- generation benchmarks ----------------------------------------------------------------------------------

    def run_generation(
        self, benchmark: str, setting: str, items: Sequence[BenchItem], systems: Sequence[str]
    ) -> Counts:
        """Score ``systems`` on every item of one setting for every seed, skipping rows already scored."""
        from tqdm import tqdm

        counts = Counts()
        if "clip-retrieval" in systems:
            self.runner.clip_bank = self.clip_bank
        done = self.recorder.scored_keys(benchmark, setting)
        for seed_index, seed in enumerate(self.options.seeds):
            active = [s for s in systems if SYSTEMS[s].uses_seed or seed_index == 0]
            todo = []
            for item in items:
                need = [s for s in active if (s, seed, item.sample_id) not in done]
                counts.resumed += len(active) - len(need)
                if need:
                    todo.append((item, need))
            rows: list[dict[str, Any]] = []
            desc = f"{benchmark} {setting} seed {seed}"
            for item, need in tqdm(todo, desc=desc, unit="sample", disable=not self.options.progress):
                rows += self._sample_rows(benchmark, setting, seed, item, need)
                if len(rows) >= self.options.write_every * len(active):
                    counts.add(self.recorder.write_samples(rows))
                    rows = []
            counts.add(self.recorder.write_samples(rows))
        return counts

    def _sample_rows(
        self, benchmark: str, setting: str, seed: int, item: BenchItem, need: list[str]
    ) -> list[dict[str, Any]]:
        """Produce, score and save the images of ``need`` for one item: its ``samples`` rows."""
        base = _base_row(self.run_id, benchmark, setting, seed, item)
        try:
            images = self.producer.produce(item, seed, need)
        except data.UnreadableImage as err:
            return [{**base, "system": s, "status": "skipped", "skip_reason": str(err)} for s in need]
        produced = images.produced
        scores = score_images(produced, images.reference, item.scene, self.metrics)
        if "gill-oracle" in need:
            produced["gill-oracle"], scores["gill-oracle"] = pick_oracle(produced, scores)
        rows = []
        for system in need:
            result = produced.get(system) or Produced(image=None, skip_reason="system produced nothing")
            row = {
                **base,
                "system": system,
                "decision": result.decision,
                "p_ret": result.p_ret,
                "ret_key": result.ret_key,
                "sd_seed": images.sd_seed if SYSTEMS[system].uses_seed else None,
            }
            if result.image is None:
                rows.append({**row, "status": "skipped", "skip_reason": result.skip_reason})
                continue
            path = self.producer.save(result.image, benchmark, setting, system, seed, item.sample_id)
            rows.append({**row, "status": "ok", "generated_path": path, **scores[system]})
        return rows

    # -- retrieval tasks ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def run_retrieval(self, benchmark: str, setting: str, items: Sequence[BenchItem]) -> Counts:
        """Recall@k: rank each sample's true image among the true images of every evaluated sample (the pool)."""
        counts = Counts()
        seed = self.options.seeds[0]
        loaded, rows = [], []
        for item in items:
            base = _base_row(self.run_id, benchmark, setting, seed, item)
            try:
                _load(item)  # only readable samples join the pool (decoded again when embedded)
                loaded.append((item, base))
            except data.UnreadableImage as err:
                rows += [{**base, "system": s, "status": "skipped", "skip_reason": str(err)} for s in RETRIEVAL_SYSTEMS]
        ids = {item.sample_id for item, _ in loaded}
        previous = self.recorder.scored_pools(benchmark, setting)
        if len(loaded) >= 2 and all(_same_pool(previous[previous.system == s], ids) for s in RETRIEVAL_SYSTEMS):
            counts.resumed = len(ids) * len(RETRIEVAL_SYSTEMS)
            return counts + self.recorder.write_samples(rows)
        if len(loaded) < 2:
            reason = "fewer than 2 readable samples: no retrieval pool"
            rows += [
                {**b, "system": s, "status": "skipped", "skip_reason": reason}
                for _, b in loaded
                for s in RETRIEVAL_SYSTEMS
            ]
            return counts + self.recorder.write_samples(rows)
        queries, pools = self._retrieval_embeddings([item for item, _ in loaded])
        targets = torch.arange(len(loaded))
        for system in RETRIEVAL_SYSTEMS:
            ranks = target_ranks(queries[system], pools[system], targets).tolist()
            rows += [
                {**base, "system": system, "status": "ok", "target_rank": int(r), "pool_size": len(loaded)}
                for (_, base), r in zip(loaded, ranks, strict=True)
            ]
        return counts + self.recorder.write_samples(rows)

    def _retrieval_embeddings(self, items: list[BenchItem]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from tqdm import tqdm

        pipe, clip = self.pipe, self.metrics.clip
        q_gill, q_clip, p_gill, p_clip = [], [], [], []
        for item in tqdm(items, desc="retrieval queries", unit="sample", disable=not self.options.progress):
            reference, context = _load(item)
            q_gill.append(self.runner.fromage_query(item.make_prompt(context)))
            features = pipe.vision_features([reference]).to(pipe._adapter_dtype)
            embedding = pipe.model.image_retrieval_embeddings(features).float()
            p_gill.append(torch.nn.functional.normalize(embedding, dim=-1)[0])
            q_clip.append(clip.text_features([item.text])[0])
            p_clip.append(clip.image_features([reference])[0])
        stack = torch.stack
        return (
            {"fromage-retrieval": stack(q_gill), "clip-retrieval": stack(q_clip)},
            {"fromage-retrieval": stack(p_gill), "clip-retrieval": stack(p_clip)},
        )

    # -- FID ----------------------------------------------------------------------------------------------------

    def fid_rows(self, benchmark: str, setting: str, systems: Sequence[str]) -> list[dict[str, Any]]:
        """FID of each system's generated images against the real images of the same samples (per seed)."""
        samples = self.recorder.scored_images(benchmark, setting)
        cache: dict[Path, np.ndarray] = {}
        rows = []
        for system in systems:
            own = samples[samples.system == system]
            if own.empty:
                continue
            seeds = sorted(own.seed.unique())
            common = sorted(set.intersection(*(set(own[own.seed == s].sample_id) for s in seeds)))
            if len(common) < 2:
                continue
            by_seed = {s: own[own.seed == s].set_index("sample_id").loc[common] for s in seeds}
            ref = fid_features(self.metrics.fid, by_seed[seeds[0]].reference_path, cache)
            gens = [fid_features(self.metrics.fid, by_seed[s].generated_path, cache) for s in seeds]
            fields = fid_fields(gens, ref, n_boot=self.options.fid_bootstrap, confidence=self.options.confidence)
            rows.append(
                {
                    "run_id": self.run_id,
                    "benchmark": benchmark,
                    "setting": setting,
                    "system": system,
                    "metric": "fid",
                    **fields,
                    "metric_model": self.metrics.names["fid"],
                }
            )
        return rows

    # -- results ------------------------------------------------------------------------------------------------

    def summarise(self, benchmark: str, extra: Sequence[dict[str, Any]] = ()) -> Any:
        """Recompute ``results`` of one benchmark from its ``samples`` (replacing the benchmark's old rows)."""
        rows = list(extra) + result_rows(
            self.recorder.samples(benchmark),
            run_id=self.run_id,
            benchmark=benchmark,
            metric_models=self.metrics.names,
            confidence=self.options.confidence,
            n_boot=self.options.n_boot,
        )
        return self.recorder.write_results(benchmark, rows)

    def summary(self, benchmark: str, counts: Counts, unsupported: dict[str, str], extra=()) -> BenchSummary:
        results = self.summarise(benchmark, extra)
        return BenchSummary(
            run_id=self.run_id,
            benchmark=benchmark,
            database=self.database,
            out_dir=self.out_dir,
            scored=counts.scored,
            skipped=counts.skipped,
            resumed=counts.resumed,
            results=results,
            unsupported=unsupported,
        )


def _base_row(run_id: str, benchmark: str, setting: str, seed: int, item: BenchItem) -> dict[str, Any]:
    """The key and reference columns every ``samples`` row of ``item`` shares (paths as paths: the recorder stores
    them relative to the workdir)."""
    return {
        "run_id": run_id,
        "benchmark": benchmark,
        "setting": setting,
        "seed": seed,
        "sample_id": item.sample_id,
        "context_length": item.context_length,
        "reference_path": item.reference,
        "prompt": item.text,
        "context_paths": item.context,
    }


# -- benchmarks ------------------------------------------------------------------------------------------------------


def vist_items(stories: Sequence[data.VistStory], setting: str) -> list[BenchItem]:
    """The samples of one VIST setting (paper Table 1)."""
    items = []
    for story in stories:
        context = data.context_images(story, setting)
        needed = list(story.photo_ids[: len(context)]) + [story.photo_ids[-1]]
        paths = list(context) + [story.target_path]
        missing = [pid for pid, p in zip(needed, paths, strict=True) if p is None]
        items.append(
            BenchItem(
                sample_id=story.story_id,
                text=data.vist_text(story, setting),
                reference=story.target_path,
                context=context,
                context_length=VIST_CONTEXT_LENGTH.get(setting, len(story.captions)),
                make_prompt=lambda images, s=story: data.vist_prompt(s, setting, images),
                missing=f"photo(s) {', '.join(missing)} not found as {{id}}.jpg/.jpeg/.png/.gif" if missing else None,
                scene=scene_target(story.target_path),
            )
        )
    return items


def visdial_items(dialogs: Sequence[data.VisDialSample], rounds: int) -> list[BenchItem]:
    """The samples of one VisDial setting: the first ``rounds`` rounds (paper Table 2)."""
    items = []
    for d in dialogs:
        text = d.dialog_text(rounds)
        missing = None if d.image_path else f"image {data.VISDIAL_IMAGE.format(image_id=d.image_id)} not found"
        items.append(
            BenchItem(
                sample_id=str(d.image_id),
                text=text,
                reference=d.image_path,
                context_length=rounds,
                make_prompt=_text_prompt(text),
                missing=missing,
                scene=scene_target(d.image_path),
            )
        )
    return items


def _text_prompt(text: str) -> Callable[[list[Image.Image]], list[Any]]:
    return lambda images: [text]


def run_vist(
    workdir: str | Path,
    sis_json: str | Path,
    images: str | Path,
    *,
    settings: Sequence[str] = data.VIST_SETTINGS,
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    session: BenchSession | None = None,
) -> list[BenchSummary]:
    """VIST contextual generation (Table 1) for each setting, and recall@k (``vist-retrieval``)."""
    bad = [s for s in settings if s not in data.VIST_SETTINGS]
    if bad:
        raise InputError(f"unknown VIST settings {', '.join(bad)}", [f"known: {', '.join(data.VIST_SETTINGS)}"])
    stories = data.read_vist(sis_json, images, limit=options.limit)
    session = session or BenchSession.open(workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec)
    return _contextual(session, "vist", [(s, vist_items(stories, s)) for s in settings])


def run_visdial(
    workdir: str | Path,
    dialogs_json: str | Path,
    images: str | Path,
    *,
    rounds: Sequence[int] = (1, 5, 10),
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    session: BenchSession | None = None,
) -> list[BenchSummary]:
    """VisDial contextual generation (Table 2) for R rounds of dialog, and text-to-image recall@k."""
    if not rounds or any(r < 1 for r in rounds):
        raise InputError(f"rounds: give positive integers, got {list(rounds)}", [])
    dialogs = data.read_visdial(dialogs_json, images, limit=options.limit)
    session = session or BenchSession.open(workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec)
    return _contextual(session, "visdial", [(data.visdial_setting(r), visdial_items(dialogs, r)) for r in rounds])


def _contextual(
    session: BenchSession, benchmark: str, settings: list[tuple[str, list[BenchItem]]]
) -> list[BenchSummary]:
    """Generation for every setting, then (with ``options.retrieval``) the ``<benchmark>-retrieval`` recall task."""
    systems, unsupported = session.resolve_systems(benchmark, GENERATION_SYSTEMS)
    counts, retrieval = Counts(), Counts()
    for setting, items in settings:
        counts.add(session.run_generation(benchmark, setting, items, systems))
        if session.options.retrieval:
            retrieval.add(session.run_retrieval(f"{benchmark}-retrieval", setting, items))
    out = [session.summary(benchmark, counts, unsupported)]
    if session.options.retrieval:
        out.append(session.summary(f"{benchmark}-retrieval", retrieval, {}))
    return out


def run_cc3m_fid(
    workdir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    split: str = "val",
    session: BenchSession | None = None,
) -> BenchSummary:
    """clean-fid (mode ``clean``) of images generated from CC3M validation captions against the real images."""
    samples = data.read_cc3m_val(workdir, split=split, limit=options.limit)
    session = session or BenchSession.open(
        workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec, need_fid=True
    )
    systems, unsupported = session.resolve_systems("cc3m-fid", FID_SYSTEMS)
    reference_dir = session.out_dir / "cc3m-fid" / split / "reference"
    from tqdm import tqdm

    bar = tqdm(samples, desc="cc3m-fid reference images", unit="img", disable=not options.progress)
    items = [_cc3m_item(s, reference_dir) for s in bar]
    counts = session.run_generation("cc3m-fid", split, items, systems)
    return session.summary("cc3m-fid", counts, unsupported, extra=session.fid_rows("cc3m-fid", split, systems))


def _cc3m_item(sample: data.Cc3mSample, reference_dir: Path) -> BenchItem:
    path = reference_dir / f"{_safe(sample.key)}.png"
    missing = None
    if not path.is_file():
        try:
            _save_png(data.cc3m_image(sample), path)
        except InputError as err:
            missing = err.message
    return BenchItem(
        sample_id=sample.key,
        text=sample.caption,
        reference=path,
        context_length=1,
        make_prompt=_text_prompt(sample.caption),
        missing=missing,
        scene=scene_target(sample.url),
    )


def run_mapper_ablation(
    workdir: str | Path,
    checkpoints: Sequence[str | Path],
    *,
    sis_json: str | Path | None,
    images: str | Path | None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
) -> list[BenchSummary]:
    """The paper's mapper ablation: CC3M FID and VIST (5 captions + 4 images) CLIP similarity of ``gill-gen``,
    one benchmark run per checkpoint (rows of the ``table_mapper_ablation`` view)."""
    if not checkpoints:
        raise InputError("the mapper ablation needs checkpoints", [], hint="pass --checkpoint DIR (repeat)")
    options = dataclasses.replace(options, systems=("gill-gen",), retrieval=False, run_id=None)
    out = []
    for ckpt in checkpoints:
        session = BenchSession.open(workdir, checkpoint=ckpt, options=options, metric_spec=metric_spec, need_fid=True)
        out.append(run_cc3m_fid(workdir, options=options, session=session))
        if sis_json is not None and images is not None:
            out += run_vist(workdir, sis_json, images, settings=("5cap4img",), options=options, session=session)
    return out


# -- helpers ---------------------------------------------------------------------------------------------------------


def _load(item: BenchItem) -> tuple[Image.Image, list[Image.Image]]:
    """The ground-truth and prompt images of a sample (UnreadableImage, saying why, when one is missing)."""
    if item.missing:
        raise data.UnreadableImage(item.missing)
    return data.load_image(item.reference), list(data.load_images(item.context))


def _same_pool(previous: Any, ids: set[str]) -> bool:
    """Whether a retrieval system's stored rows rank exactly ``ids`` (then they are reused)."""
    return set(previous.sample_id) == ids and bool((previous.pool_size == len(ids)).all())


def _save_png(image: Image.Image, path: Path) -> Path:
    import io

    from gill.utils.io import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _safe(sample_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
