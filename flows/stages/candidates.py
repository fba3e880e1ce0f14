"""Candidates for the retrieve-vs-generate judgements (paper section 3.3, "Deciding to generate or retrieve").

For each prompt, the Stable Diffusion baseline generates an image from the prompt text, and GILL's retrieval
head picks the top image of the local bank (``gill index build``). Judges later compare the two. The pairs are
written to ``<workdir>/annotations/candidates/<prompt_id>-{gen,ret}.png`` and the DuckDB table
``decision_candidates`` (prompt id, text, category, challenge, note, both image paths relative to the workdir,
the retrieval key and scores, the checkpoint id and SD seed).

Prompts: on a work folder with a synthetic shapes world (the embedded default) they are **world prompts**
(:func:`world_prompts`): half are fresh captions of scenes of the CC3M training split, whose composition the
retrieval bank holds, and half are captions of new scenes with a (colour, kind) pair the training split never
shows (:data:`gill.synth.scenes.NOVEL_PAIRS`), which the bank cannot hold but the toy Stable Diffusion can draw:
so retrieval should win on some and generation on others, as section 3.3 argues for real images. Each row keeps
the prompt's true scene (``scene``, JSON) so the answer-key judges of :mod:`flows.stages.votes` can score both
images. Elsewhere (the paper preset) prompts come from the shipped PartiPrompts votes file (1,632 prompts) or any
TSV with a ``Prompt`` column (``Category``, ``Challenge`` and ``Note`` are optional).

Work resumes: a prompt whose two images and row (with the same prompt text) exist is skipped; images are written
atomically and rows are committed every ``flush_every`` prompts, so a crash loses at most that many.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from annotations.store import CANDIDATES_DIR, JudgingStore
from annotations.votes import default_votes_path
from eval.scene_answers import scene_from_dict
from flows.stages.candidates_import import TABLE, import_candidates
from flows.stages.index import existing_bank
from flows.store import connect, db_path, replace_rows
from flows.workdir import Workdir
from gill.errors import InputError
from gill.pipeline import GILLPipeline
from gill.retrieval import checkpoint_id
from gill.synth.scenes import COLORS, NOVEL_PAIRS, Scene, sample_scene
from gill.synth.text import cc3m_caption
from gill.utils.io import atomic_write_bytes
from gill.utils.paths import resolve_stored, to_stored

logger = logging.getLogger(__name__)

WORLD = "world"
"""``prompts=WORLD``: the world prompts of :func:`world_prompts` (the default when the workdir has a world)."""
WORLD_CATEGORY = "Shapes world"
DEFAULT_WORLD_PROMPTS = 400
HELD_NOTE = "composition in the bank"
NOVEL_NOTE = "novel composition (not in the bank)"


@dataclass(frozen=True, kw_only=True)
class PromptRow:
    """One prompt to judge."""

    prompt_id: int
    """Row number in the prompts file (0-based), stable across runs."""
    prompt: str
    category: str = ""
    challenge: str = ""
    note: str = ""
    scene: str | None = None
    """JSON of the prompt's true scene (world prompts), else None."""


@dataclass(frozen=True, kw_only=True)
class CandidateOptions:
    """How the judging candidates are built (:func:`build_candidates`'s options)."""

    prompts: str | None = None
    """TSV with a Prompt column, or 'world' for world prompts (default: world prompts when the work folder holds a
    synthetic world, else the shipped PartiPrompts)."""
    limit: int | None = None
    """Only the first N prompts (world prompts: how many, default 400)."""
    sd_steps: int = 50
    """Denoising steps of the SD baseline."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of the SD baseline."""
    seed: int = 1337
    """SD seed used for every prompt (as the official demo seeds each request with 1337)."""
    device: str = "cpu"
    """Torch device."""
    gen_batch_size: int = 16
    """Prompts per Stable Diffusion call (each image with its own seeded generator, so the images do not depend on
    it, up to float rounding; the same option as the benchmarks' --gen-batch-size)."""

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)!r} (must be an int >= 1)"
            for name in ("limit", "sd_steps", "gen_batch_size")
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), int) or getattr(self, name) < 1)
        ]
        if problems:
            raise InputError("invalid candidate options", problems)


@dataclass(frozen=True, kw_only=True)
class CandidateSummary:
    """What :func:`build_candidates` did."""

    total: int
    """Prompts in the file (after ``limit``)."""
    built: int
    """Prompts computed in this run."""
    skipped: int
    """Prompts already complete from an earlier run."""
    database: Path
    images_dir: Path


def read_prompts(path: str | os.PathLike[str] | None = None, limit: int | None = None) -> list[PromptRow]:
    """Prompts from a TSV with a ``Prompt`` column (default: the shipped PartiPrompts votes file).

    Raises one :class:`~gill.errors.InputError` naming the file and every problem (missing column, empty prompts
    with their line numbers).
    """

    if path is None:
        path = default_votes_path()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read the prompts file {str(path)!r}", [str(err)]) from err
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    if reader.fieldnames is None or "Prompt" not in reader.fieldnames:
        message, hint = f"prompts file {str(path)!r} has no 'Prompt' column", "give a TSV with a Prompt column"
        raise InputError(message, [f"header: {reader.fieldnames}"], hint=hint)
    rows, problems = [], []
    for i, record in enumerate(reader):
        prompt = (record.get("Prompt") or "").strip()
        if not prompt:
            problems.append(f"line {i + 2}: empty prompt")
            continue
        rows.append(
            PromptRow(
                prompt_id=i,
                prompt=prompt,
                category=record.get("Category") or "",
                challenge=record.get("Challenge") or "",
                note=record.get("Note") or "",
            )
        )
    if problems:
        raise InputError(f"invalid prompts in {str(path)!r}", problems)
    return rows[:limit] if limit is not None else rows


def world_root(workdir: str | os.PathLike[str]) -> Path | None:
    """The synthetic world of a work folder (``<workdir>/world`` with its ``world.json``), or None."""
    root = Path(workdir) / "world"
    return root if (root / "world.json").is_file() and (root / "scenes.json").is_file() else None


def world_prompts(root: str | os.PathLike[str], n: int, seed: int = 0) -> list[PromptRow]:
    """``n`` world prompts: half bank compositions, half novel ones, interleaved in a seeded order.

    * **In the bank**: scenes drawn (without repeats) from the CC3M training split of the world at ``root``, each
      with a fresh caption (another phrasing than the one trained on), so the bank holds the very scene.
    * **Novel**: new world scenes in which one shape (chosen at random) takes a colour that makes its
      (colour, kind) pair one the training split never shows; the bank cannot hold such a scene.

    The ``note`` says which (``composition in the bank`` / ``novel composition (not in the bank)``); judges never
    see it. Deterministic in ``(root's scenes, n, seed)``.
    """

    document = json.loads((Path(root) / "scenes.json").read_text(encoding="utf-8"))
    train = [scene_from_dict(e["scene"]) for e in document.get("cc3m", {}).get("train", [])]
    n_held = n // 2
    if len(train) < n_held:
        raise InputError(
            f"the world at {root} has {len(train)} training scenes, fewer than the {n_held} needed",
            [],
            hint="ask for fewer candidates (--limit) or a bigger world (world_train)",
        )
    rng = random.Random(f"gill-world-prompts:{seed}")
    held = [(scene, HELD_NOTE) for scene in rng.sample(train, n_held)]
    novel = [(_novel_scene(rng), NOVEL_NOTE) for _ in range(n - n_held)]
    order = held + novel
    rng.shuffle(order)
    seen: set[str] = set()
    return [
        PromptRow(
            prompt_id=i,
            prompt=_unique_caption(scene, rng, seen),
            category=WORLD_CATEGORY,
            note=note,
            scene=json.dumps(scene.to_dict(), sort_keys=True),
        )
        for i, (scene, note) in enumerate(order)
    ]


def _unique_caption(scene: Scene, rng: random.Random, seen: set[str], attempts: int = 50) -> str:
    """A caption of ``scene`` that no earlier prompt of the set has (votes files match items by prompt text); the
    seeded draws only change when a caption collides."""
    for _ in range(attempts):
        caption = cc3m_caption(scene, rng)
        if caption not in seen:
            seen.add(caption)
            return caption
    caption = f"{caption} (again)"  # a scene so plain that every phrasing was taken: still a distinct prompt
    seen.add(caption)
    return caption


def _novel_scene(rng: random.Random) -> Scene:
    """A world scene whose shape ``i`` (random) is recoloured into a novel (colour, kind) pair."""
    scene = sample_scene(rng)
    i = rng.randrange(len(scene.shapes))
    shape = scene.shapes[i]
    colors = [c for c in COLORS if (c, shape.kind) in NOVEL_PAIRS]
    shapes = list(scene.shapes)
    shapes[i] = replace(shape, color=rng.choice(colors))
    return replace(scene, shapes=tuple(shapes))


def _done(workdir: Path, database: Path, rows: list[PromptRow]) -> set[int]:
    """Prompt ids whose row (with the same prompt text) and both images exist."""

    with connect(database) as con:
        records = con.execute(f"SELECT prompt_id, prompt, gen_image, ret_image FROM {TABLE}").fetchall()
    wanted = {row.prompt_id: row.prompt for row in rows}
    return {
        pid
        for pid, prompt, gen, ret in records
        if wanted.get(pid) == prompt
        and resolve_stored(gen, workdir).is_file()
        and resolve_stored(ret, workdir).is_file()
    }


def _save_png(image: Any, path: Path) -> None:

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def build_candidates(
    workdir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    sd_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 1337,
    device: str = "cpu",
    flush_every: int = 32,
    progress: bool = True,
    gen_batch_size: int = 16,
) -> CandidateSummary:
    """Generate (SD baseline) and retrieve (GILL's bank) one image per prompt; rows into ``decision_candidates``.

    Args:
        workdir: the work folder with a trained checkpoint and its retrieval bank.
        checkpoint: checkpoint folder (default: the newest run's ``best/`` or ``final/``).
        prompts: TSV with a ``Prompt`` column, or ``"world"`` for :func:`world_prompts` (default: ``"world"`` when
            the workdir holds a synthetic world, else the shipped PartiPrompts votes).
        limit: only the first ``limit`` prompts (world prompts: how many; default 400).
        sd_steps: denoising steps of the SD baseline.
        guidance_scale: its classifier-free guidance.
        seed: SD seed, the same for every prompt (as the official demo seeds each request with 1337).
        device: torch device.
        flush_every: commit rows every this many prompts.
        progress: show a progress bar.
        gen_batch_size: prompts per Stable Diffusion call (each with its own generator seeded ``seed``).
    """

    workdir = Path(workdir)
    root = world_root(workdir)
    if (prompts is None and root is not None) or str(prompts) == WORLD:
        if root is None:
            raise InputError(
                f"{workdir} has no synthetic world for world prompts",
                [],
                hint="build it (gill data synth --out WORKDIR/world) or pass a prompts TSV",
            )
        rows = world_prompts(root, DEFAULT_WORLD_PROMPTS if limit is None else limit, seed=seed)
    else:
        rows = read_prompts(prompts, limit)
    work = Workdir.at(workdir)
    ckpt = work.checkpoint(checkpoint)
    pipe = GILLPipeline.from_pretrained(ckpt, bank=existing_bank(work, ckpt), device=device)
    if pipe.bank is None:
        raise InputError(
            "decision candidates need a retrieval bank",
            [f"none for checkpoint {ckpt}"],
            hint=f"run: gill index build --workdir {workdir} --checkpoint {ckpt}",
        )
    database, images = db_path(workdir), workdir / CANDIDATES_DIR
    done = _done(workdir, database, rows)
    todo = [row for row in rows if row.prompt_id not in done]
    ckpt_id, pending = checkpoint_id(ckpt), []
    bar = tqdm(total=len(todo), desc="decision candidates", unit="prompt", disable=not progress)
    for start in range(0, len(todo), gen_batch_size):
        chunk = todo[start : start + gen_batch_size]
        # one generator per prompt, each seeded alike: the batch draws what one prompt at a time would
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in chunk]
        with torch.no_grad():
            generated = pipe.sd(
                [row.prompt for row in chunk],
                num_inference_steps=sd_steps,
                guidance_scale=guidance_scale,
                generator=generators,
            ).images
            hits = [pipe.retrieve(pipe.text_query(row.prompt), k=1)[0] for row in chunk]
        for row, image, hit in zip(chunk, generated, hits, strict=True):
            gen_rel = CANDIDATES_DIR / f"{row.prompt_id:05d}-gen.png"
            ret_rel = CANDIDATES_DIR / f"{row.prompt_id:05d}-ret.png"
            _save_png(image, workdir / gen_rel)
            _save_png(pipe.bank.image(hit), workdir / ret_rel)
            pending.append(
                {
                    "prompt_id": row.prompt_id,
                    "prompt": row.prompt,
                    "category": row.category,
                    "challenge": row.challenge,
                    "note": row.note,
                    "gen_image": to_stored(workdir / gen_rel, workdir),
                    "ret_image": to_stored(workdir / ret_rel, workdir),
                    "ret_key": hit.key,
                    "ret_score": hit.score,
                    "ret_scaled_score": hit.scaled_score,
                    "checkpoint_id": ckpt_id,
                    "sd_seed": seed,
                    "scene": row.scene,
                }
            )
        bar.update(len(chunk))
        if len(pending) >= flush_every:
            replace_rows(database, TABLE, pending)
            pending = []
    bar.close()
    if pending:
        replace_rows(database, TABLE, pending)
    logger.info("decision candidates: %d built, %d already done, in %s", len(todo), len(rows) - len(todo), images)
    return CandidateSummary(
        total=len(rows), built=len(todo), skipped=len(rows) - len(todo), database=database, images_dir=images
    )


def run(
    workdir: Workdir, checkpoint: Path | None = None, options: CandidateOptions | None = None, progress: bool = False
) -> CandidateSummary:
    """Stage ``candidates``: build the judging candidates and load them into the judging store, open to people."""
    options = options or CandidateOptions()
    summary = build_candidates(workdir.root, checkpoint=checkpoint, progress=progress, **dataclasses.asdict(options))
    import_candidates(workdir.root, JudgingStore(workdir.root))
    return summary
