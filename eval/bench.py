"""Benchmark items and image producing: VIST and VisDial contextual generation, CC3M FID, the mapper ablation.

Implements every setting of the GILL paper's Tables 1 and 2 (section 4), the retrieval recall of its
FROMAGe-style evaluation and the CC3M FID of its mapper ablation (section 5), with the baselines of
:mod:`eval.bench_systems`. Every sample is a row of ``samples`` in the workdir's DuckDB file, every aggregate a
row of ``results`` with a 95% bootstrap interval over samples and the spread over SD seeds (schema:
``eval/README.md``). Images go to ``W/bench/<run_id>/<benchmark>/<setting>/<system>/seed<seed>/``.

A benchmark is three pieces, run by the bench stage (:mod:`flows.stages.bench`): :class:`ImageProducer` (here)
makes each sample's images through the systems of :mod:`eval.bench_systems` and saves them,
:mod:`eval.bench_scoring` scores them (pure functions of the images and the metric models), and the stage's
recorder writes the rows. This module also holds the benchmark items (:func:`vist_items`, :func:`visdial_items`,
:func:`cc3m_item`) and the options (:class:`BenchOptions`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eval import bench_data as data
from eval.bench_systems import (
    SYSTEMS,
    UNSUPPORTED_SYSTEMS,
    ImageOptions,
    Produced,
    ProduceRequest,
    SystemRunner,
    derive_seed,
)
from eval.scene_answers import SceneTarget, scene_target
from gill.config import _Validated
from gill.errors import InputError
from gill.pipeline import image_size_problems
from gill.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

GENERATION_SYSTEMS = ("gill", "gill-gen", "gill-ret", "gill-oracle", "sd", "clip-retrieval", "fromage-retrieval")
FID_SYSTEMS = ("gill-gen", "sd")
RETRIEVAL_SYSTEMS = ("fromage-retrieval", "clip-retrieval")
"""Systems of the recall@k tasks: GILL's retrieval head (FROMAGe-style) and CLIP, ranking the true image."""
VIST_CONTEXT_LENGTH = {"1cap": 1, "5cap": 5, "5cap4img": 9}
"""Prompt items per VIST setting (captions + images): the x axis of the effect-of-context figure."""


@dataclass(frozen=True, kw_only=True)
class BenchOptions(_Validated):
    """How a benchmark runs. The image options (``sd_steps``, ``guidance_scale``, ``height``, ``width``) enter the
    default run id with the checkpoint and the metric models, so changing e.g. the SD steps starts a new run instead
    of mixing results; the others (seeds, limit, systems, bootstrap sizes, ``gen_batch_size``, ...) do not."""

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
    gen_batch_size: int = 8
    """Samples generated together: one Stable Diffusion call for GILL's images of a batch and one for SD's, each
    image with its own seeded generator, so results do not depend on it (up to float rounding); not in the run id."""
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
        for name in ("sd_steps", "write_every", "gen_batch_size"):
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

    reference: Image.Image | None
    """The ground-truth image (None when the sample is unreadable)."""
    produced: dict[str, Produced]
    """System -> its output (``gill-oracle`` asked for: ``gill-gen`` and ``gill-ret`` instead)."""
    sd_seed: int
    """The sample's SD seed (:func:`eval.bench_systems.derive_seed`)."""
    unreadable: str | None = None
    """Why one of the sample's images is missing or unreadable (then nothing was produced), else None."""


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One sample of :meth:`ImageProducer.produce_batch` and the systems it needs."""

    item: BenchItem
    systems: tuple[str, ...]


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
        images = self.produce_batch([SampleRequest(item=item, systems=tuple(systems))], seed)[0]
        if images.unreadable is not None:
            raise data.UnreadableImage(images.unreadable)
        return images

    def produce_batch(self, requests: Sequence[SampleRequest], seed: int) -> list[ItemImages]:
        """The outputs of each request's systems under run seed ``seed``, in order, generated together
        (:meth:`eval.bench_systems.SystemRunner.produce_batch`); a sample with a missing or unreadable image gets
        ``unreadable`` saying why, and the others are produced as if it were not there."""
        out: list[ItemImages] = []
        runnable: list[tuple[ItemImages, ProduceRequest]] = []
        for request in requests:
            item = request.item
            sd_seed = derive_seed(seed, item.sample_id)
            try:
                reference, context = load_item_images(item)
            except data.UnreadableImage as err:
                out.append(ItemImages(reference=None, produced={}, sd_seed=sd_seed, unreadable=str(err)))
                continue
            wanted = set(request.systems) - {"gill-oracle"}
            if "gill-oracle" in request.systems:
                wanted |= {"gill-gen", "gill-ret"}
            images = ItemImages(reference=reference, produced={}, sd_seed=sd_seed)
            prompt = ProduceRequest(
                prompt=item.make_prompt(context), text=item.text, systems=frozenset(wanted), sd_seed=sd_seed
            )
            out.append(images)
            runnable.append((images, prompt))
        produced = self.runner.produce_batch([prompt for _, prompt in runnable])
        for (images, _), outputs in zip(runnable, produced, strict=True):
            images.produced = outputs
        return out

    def save(self, image: Image.Image, benchmark: str, setting: str, system: str, seed: int, sample_id: str) -> Path:
        """Write one system's image of one sample; its path."""
        path = self.out_dir / benchmark / setting / system / f"seed{seed}" / f"{_safe(sample_id)}.png"
        _save_png(image, path)
        return path


# -- the session: models loaded once, run registered ---------------------------------------------------------------


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
                make_prompt=text_prompt(text),
                missing=missing,
                scene=scene_target(d.image_path),
            )
        )
    return items


def text_prompt(text: str) -> Callable[[list[Image.Image]], list[Any]]:
    return lambda images: [text]


def cc3m_item(sample: data.Cc3mSample, reference_dir: Path) -> BenchItem:
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
        make_prompt=text_prompt(sample.caption),
        missing=missing,
        scene=scene_target(sample.url),
    )


# -- helpers ---------------------------------------------------------------------------------------------------------


def load_item_images(item: BenchItem) -> tuple[Image.Image, list[Image.Image]]:
    """The ground-truth and prompt images of a sample (UnreadableImage, saying why, when one is missing)."""
    if item.missing:
        raise data.UnreadableImage(item.missing)
    return data.load_image(item.reference), list(data.load_images(item.context))


def _save_png(image: Image.Image, path: Path) -> Path:

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _safe(sample_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
