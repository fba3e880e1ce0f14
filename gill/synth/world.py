"""Build a complete, deterministic shapes world on disk in CC3M, VIST and VisDial formats.

:func:`synthesize_world` plans every scene and text from string-seeded ``random.Random`` streams
(one per dataset, so e.g. changing ``n_val`` leaves the train split unchanged), renders the images,
and writes everything into a temporary directory that is renamed onto ``out`` only when complete
(:func:`gill.utils.io.atomic_directory`). Besides the three datasets it writes ``scenes.json`` (the
true structured state of every image and story step) and ``world.json`` (manifest).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gill.errors import ConfigError, InputError
from gill.synth.render import render_jpeg
from gill.synth.scenes import NOVEL_PAIRS, Scene, novel_shapes, sample_scene, sample_story
from gill.synth.text import cc3m_caption, dialog_rounds, story_sentences
from gill.synth.writers import (
    CC3MRow,
    ImageJob,
    VisDialRecord,
    VistStoryRecord,
    file_uri,
    visdial_document,
    vist_sis_document,
    write_cc3m_tsv,
    write_image,
    write_json,
)
from gill.utils.io import atomic_directory, sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: the CC3M training split holds no (colour, kind) pair of :data:`~gill.synth.scenes.NOVEL_PAIRS`."""
MANIFEST = "world.json"
SCENES = "scenes.json"
REL = {
    "cc3m_train_tsv": "cc3m/cc3m_train.tsv",
    "cc3m_val_tsv": "cc3m/cc3m_val.tsv",
    "cc3m_images_dir": "cc3m/images",
    "vist_sis_json": "vist/sis/val.story-in-sequence.json",
    "vist_images_dir": "vist/images",
    "visdial_json": "visdial/visdial_1.0_val.json",
    "visdial_images_dir": "visdial/VisualDialog_val2018",
    "scenes_json": SCENES,
    "manifest_json": MANIFEST,
}
HASHED_FILES = ("cc3m_train_tsv", "cc3m_val_tsv", "vist_sis_json", "visdial_json", "scenes_json")
FORMAT_NOTES = {
    "cc3m": "Google Conceptual Captions TSV: caption<TAB>url, no header; url is a file:// URI.",
    "vist": "VIST SIS JSON (val.story-in-sequence.json); annotations of a story are stored shuffled, "
    "sort by worker_arranged_photo_order.",
    "visdial": "VisDial v1.0 val JSON; questions without '?', 10 rounds, 100 answer_options, gt_index.",
    "scenes": "scenes.json: true structured state (background, shapes) of every image and story step.",
}
LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**63 - 1),
    "n_train": (1, 1_000_000),
    "n_val": (1, 1_000_000),
    "n_stories": (1, 100_000),
    "n_dialogs": (1, 100_000),
    "image_size": (32, 1024),
}


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Size and seed of a synthetic world. Invalid values raise one ValueError listing all of them."""

    seed: int = 0
    """Seed of the world: scenes, captions, stories and dialogs."""
    n_train: int = 256
    """CC3M-style training pairs."""
    n_val: int = 64
    """CC3M-style validation pairs."""
    n_stories: int = 24
    """VIST stories (5 images each)."""
    n_dialogs: int = 24
    """VisDial dialogs (10 rounds each)."""
    image_size: int = 128
    """Side of the rendered images in pixels."""

    def __post_init__(self) -> None:
        problems = []
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{name}={value!r} (must be an int in [{low}, {high}])")
        if problems:
            raise ConfigError("invalid SynthConfig", problems)


@dataclass(frozen=True, kw_only=True)
class WorldSummary:
    """Where everything of a built world lives, and how much there is."""

    root: Path
    cc3m_train_tsv: Path
    cc3m_val_tsv: Path
    cc3m_images_dir: Path
    vist_sis_json: Path
    vist_images_dir: Path
    visdial_json: Path
    visdial_images_dir: Path
    scenes_json: Path
    manifest_json: Path
    n_train: int
    n_val: int
    n_stories: int
    n_dialogs: int
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class WorldPlan:
    """Everything to write, decided before any file is touched."""

    cc3m: dict[str, list[tuple[Scene, str]]]
    stories: list[VistStoryRecord]
    dialogs: list[VisDialRecord]


def _stream(seed: int, name: str) -> random.Random:
    """An independent deterministic random stream for one part of the world."""
    return random.Random(f"gill-synth-{seed}-{name}")


def _unique(rng: random.Random, seen: set[int], low: int, high: int) -> int:
    """A random int in [low, high) not in ``seen`` (added to it)."""
    while (value := rng.randrange(low, high)) in seen:
        pass
    seen.add(value)
    return value


def _plan_cc3m(seed: int, split: str, n: int) -> list[tuple[Scene, str]]:
    """``n`` (scene, caption) pairs for one CC3M split; the training split never shows a novel (colour, kind) pair
    (:data:`~gill.synth.scenes.NOVEL_PAIRS`), so the retrieval bank cannot hold those compositions."""
    rng = _stream(seed, f"cc3m-{split}")
    pairs = []
    for _ in range(n):
        scene = sample_scene(rng)
        while split == "train" and novel_shapes(scene):
            scene = sample_scene(rng)
        pairs.append((scene, cc3m_caption(scene, rng)))
    return pairs


def _date(rng: random.Random, day_offset: int, minute: int) -> str:
    """A Flickr-style ``datetaken`` string."""
    month, day = 1 + day_offset // 28 % 12, 1 + day_offset % 28
    return f"2008-{month:02d}-{day:02d} {10 + minute // 60:02d}:{minute % 60:02d}:00"


def _plan_vist(seed: int, n: int) -> list[VistStoryRecord]:
    """``n`` five-step stories with VIST-like numeric string ids."""
    rng = _stream(seed, "vist")
    base = rng.randrange(30_000, 50_000)
    photos: set[int] = set()
    albums: set[int] = set()
    workers = [f"A{rng.randrange(16**12):012X}" for _ in range(5)]
    records = []
    for i in range(n):
        story = sample_story(rng)
        day, minute = rng.randrange(300), rng.randrange(400)
        records.append(
            VistStoryRecord(
                story_id=str(base + i),
                album_id=f"72157{_unique(rng, albums, 10**11, 10**12)}",
                worker_id=rng.choice(workers),
                photo_ids=tuple(str(_unique(rng, photos, 10**9, 10**10)) for _ in story.steps),
                dates=tuple(_date(rng, day, minute + 3 * k) for k in range(len(story.steps))),
                sentences=tuple(story_sentences(story, rng)),
                story=story,
            )
        )
    return records


def _plan_visdial(seed: int, n: int) -> list[VisDialRecord]:
    """``n`` dialogs of 10 truthful rounds on random scenes with COCO-like image ids."""
    rng = _stream(seed, "visdial")
    ids: set[int] = set()
    records = []
    for _ in range(n):
        scene = sample_scene(rng)
        records.append(
            VisDialRecord(
                image_id=_unique(rng, ids, 1, 581_930),
                caption=cc3m_caption(scene, rng),
                rounds=tuple(dialog_rounds(scene, rng)),
                scene=scene,
            )
        )
    return records


def plan_world(config: SynthConfig) -> WorldPlan:
    """Decide every scene, text and id of the world (no I/O)."""
    return WorldPlan(
        cc3m={
            "train": _plan_cc3m(config.seed, "train", config.n_train),
            "val": _plan_cc3m(config.seed, "val", config.n_val),
        },
        stories=_plan_vist(config.seed, config.n_stories),
        dialogs=_plan_visdial(config.seed, config.n_dialogs),
    )


def vist_image_relpath(photo_id: str) -> str:
    """Relative path of a VIST photo."""
    return f"{REL['vist_images_dir']}/{photo_id}.jpg"


def visdial_image_relpath(image_id: int) -> str:
    """Relative path of a VisDial val2018 image."""
    return f"{REL['visdial_images_dir']}/VisualDialog_val2018_{image_id:012d}.jpg"


def image_jobs(plan: WorldPlan) -> list[ImageJob]:
    """Every image of the world with its relative path, in a fixed order."""
    jobs = [
        ImageJob(relpath=f"{REL['cc3m_images_dir']}/{split}/{i:07d}.jpg", scene=scene)
        for split, pairs in plan.cc3m.items()
        for i, (scene, _) in enumerate(pairs)
    ]
    for record in plan.stories:
        jobs += [
            ImageJob(relpath=vist_image_relpath(pid), scene=step.scene)
            for pid, step in zip(record.photo_ids, record.story.steps, strict=True)
        ]
    jobs += [ImageJob(relpath=visdial_image_relpath(d.image_id), scene=d.scene) for d in plan.dialogs]
    return jobs


def _story_steps(record: VistStoryRecord) -> list[dict[str, Any]]:
    """The sidecar entries of one story: order, photo id, sentence, event and resulting scene."""
    triples = zip(record.photo_ids, record.sentences, record.story.steps, strict=True)
    return [
        {
            "order": k,
            "photo_flickr_id": pid,
            "original_text": text,
            "event": step.event.to_dict(),
            "scene": step.scene.to_dict(),
        }
        for k, (pid, text, step) in enumerate(triples)
    ]


def _scenes_document(plan: WorldPlan) -> dict[str, Any]:
    """The ground-truth sidecar: scene of every image, and each story's events and states."""
    stories = [{"story_id": r.story_id, "album_id": r.album_id, "steps": _story_steps(r)} for r in plan.stories]
    return {
        "cc3m": {
            split: [{"index": i, "caption": cap, "scene": scene.to_dict()} for i, (scene, cap) in enumerate(pairs)]
            for split, pairs in plan.cc3m.items()
        },
        "vist": stories,
        "visdial": [{"image_id": d.image_id, "scene": d.scene.to_dict()} for d in plan.dialogs],
    }


def _write_texts(build: Path, final: Path, plan: WorldPlan, seed: int) -> None:
    """Write the TSVs, the VIST and VisDial JSON files and the scenes sidecar under ``build``."""
    for split, pairs in plan.cc3m.items():
        rows = [
            CC3MRow(caption=cap, url=file_uri(final, f"{REL['cc3m_images_dir']}/{split}/{i:07d}.jpg"))
            for i, (_, cap) in enumerate(pairs)
        ]
        write_cc3m_tsv(build / REL[f"cc3m_{split}_tsv"], rows)
    relpaths = {pid: vist_image_relpath(pid) for r in plan.stories for pid in r.photo_ids}
    write_json(
        build / REL["vist_sis_json"], vist_sis_document(plan.stories, final, relpaths, _stream(seed, "vist-order"))
    )
    write_json(build / REL["visdial_json"], visdial_document(plan.dialogs, _stream(seed, "visdial-options")))
    write_json(build / SCENES, _scenes_document(plan))


def _write_images(build: Path, jobs: list[ImageJob], size: int, progress: bool) -> None:
    """Render and write every image, with a tqdm bar when ``progress``."""
    for job in tqdm(jobs, desc="synth images", unit="img", disable=not progress):
        write_image(build / job.relpath, render_jpeg(job.scene, size))


def _manifest(build: Path, final: Path, config: SynthConfig, n_images: int) -> dict[str, Any]:
    """The ``world.json`` content: config, counts, file hashes and format notes."""
    return {
        "format_version": FORMAT_VERSION,
        "generator": "gill.synth",
        "root": str(final),
        "config": asdict(config),
        "counts": {
            "n_train": config.n_train,
            "n_val": config.n_val,
            "n_stories": config.n_stories,
            "n_dialogs": config.n_dialogs,
            "n_images": n_images,
        },
        "paths": {key: REL[key] for key in REL},
        "sha256": {REL[key]: sha256_file(build / REL[key]) for key in HASHED_FILES},
        "formats": FORMAT_NOTES,
        "novel_pairs": {"held_out_of": "cc3m train", "pairs": sorted(map(list, NOVEL_PAIRS))},
    }


def _summary(root: Path, config: SynthConfig, n_images: int) -> WorldSummary:
    """The :class:`WorldSummary` of a world at ``root``."""
    return WorldSummary(
        root=root,
        **{key: root / rel for key, rel in REL.items()},
        n_train=config.n_train,
        n_val=config.n_val,
        n_stories=config.n_stories,
        n_dialogs=config.n_dialogs,
        n_images=n_images,
    )


def _reusable(root: Path, config: SynthConfig) -> int | None:
    """The image count of an intact world at ``root`` built with ``config``, else None."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if (
            manifest.get("format_version") != FORMAT_VERSION
            or manifest.get("config") != asdict(config)
            or manifest.get("root") != str(root)
        ):
            return None
        if any(sha256_file(root / rel) != digest for rel, digest in manifest["sha256"].items()):
            return None
        return int(manifest["counts"]["n_images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def synthesize_world(out: str | Path, config: SynthConfig = SynthConfig(), *, progress: bool = True) -> WorldSummary:
    """Build (or reuse) the shapes world under ``out`` and return where everything is.

    If ``out/world.json`` describes an intact world built with the same config at the same place,
    it is reused without rebuilding. Otherwise the world is built in a temporary sibling directory
    and swapped onto ``out`` atomically (an existing world is replaced). A non-empty ``out`` that is
    not a shapes world is refused rather than overwritten.
    """
    final = Path(out).expanduser().resolve()
    if (n_images := _reusable(final, config)) is not None:
        logger.info("reusing existing shapes world at %s (%d images)", final, n_images)
        return _summary(final, config, n_images)
    if final.exists() and any(final.iterdir()) and not (final / MANIFEST).exists():
        raise InputError(
            f"{final} is not empty and holds no {MANIFEST}; refusing to replace it",
            hint="pass a new or empty folder to --out, or delete this one",
        )
    start = time.perf_counter()
    plan = plan_world(config)
    jobs = image_jobs(plan)
    with atomic_directory(final) as build:
        _write_images(build, jobs, config.image_size, progress)
        _write_texts(build, final, plan, config.seed)
        write_json(build / MANIFEST, _manifest(build, final, config, len(jobs)))
    logger.info("built shapes world at %s: %d images in %.2fs", final, len(jobs), time.perf_counter() - start)
    return _summary(final, config, len(jobs))
