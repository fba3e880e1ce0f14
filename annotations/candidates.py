"""Candidates for the retrieve-vs-generate judgements (paper section 3.3, "Deciding to generate or retrieve").

For each prompt, the Stable Diffusion baseline generates an image from the prompt text, and GILL's retrieval
head picks the top image of the local bank (``gill index build``). Judges later compare the two. The pairs are
written to ``<workdir>/annotations/candidates/<prompt_id>-{gen,ret}.png`` and the DuckDB table
``decision_candidates`` (prompt id, text, category, challenge, note, both image paths relative to the workdir,
the retrieval key and scores, the checkpoint id and SD seed).

Prompts come from the shipped PartiPrompts votes file (1,632 prompts, the embedded default) or any TSV with
a ``Prompt`` column (``Category``, ``Challenge`` and ``Note`` are optional). Work resumes: a prompt whose two
images and row exist is skipped; images are written atomically and rows are committed every ``flush_every``
prompts, so a crash loses at most that many.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CANDIDATES_DIR = Path("annotations") / "candidates"
TABLE = "decision_candidates"


@dataclass(frozen=True, kw_only=True)
class PromptRow:
    """One prompt to judge."""

    prompt_id: int
    """Row number in the prompts file (0-based), stable across runs."""
    prompt: str
    category: str = ""
    challenge: str = ""
    note: str = ""


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
    from gill.errors import InputError

    if path is None:
        from annotations.votes import default_votes_path

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
        rows.append(PromptRow(prompt_id=i, prompt=prompt, category=record.get("Category") or "",
                              challenge=record.get("Challenge") or "", note=record.get("Note") or ""))  # fmt: skip
    if problems:
        raise InputError(f"invalid prompts in {str(path)!r}", problems)
    return rows[:limit] if limit is not None else rows


def _done(workdir: Path, database: Path) -> set[int]:
    """Prompt ids whose row and both images exist."""
    from eval.db import connect

    with connect(database) as con:
        records = con.execute(f"SELECT prompt_id, gen_image, ret_image FROM {TABLE}").fetchall()
    return {pid for pid, gen, ret in records if (workdir / gen).is_file() and (workdir / ret).is_file()}


def _save_png(image: Any, path: Path) -> None:
    from gill.utils.io import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def build_candidates(
    workdir: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None, limit: int | None = None, sd_steps: int = 50,
    guidance_scale: float = 7.5, seed: int = 1337, device: str = "cpu", flush_every: int = 32, progress: bool = True,
) -> CandidateSummary:  # fmt: skip
    """Generate (SD baseline) and retrieve (GILL's bank) one image per prompt; rows into ``decision_candidates``.

    Args:
        workdir: the work folder with a trained checkpoint and its retrieval bank.
        checkpoint: checkpoint folder (default: the newest run's ``best/`` or ``final/``).
        prompts: TSV with a ``Prompt`` column (default: the shipped PartiPrompts votes).
        limit: only the first ``limit`` prompts.
        sd_steps: denoising steps of the SD baseline.
        guidance_scale: its classifier-free guidance.
        seed: SD seed, the same for every prompt (as the official demo seeds each request with 1337).
        device: torch device.
        flush_every: commit rows every this many prompts.
        progress: show a progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    from eval.db import db_path, replace_rows
    from gill.errors import InputError
    from gill.pipeline import GILLPipeline, resolve_checkpoint
    from gill.retrieval import checkpoint_id

    workdir = Path(workdir)
    rows = read_prompts(prompts, limit)
    ckpt = resolve_checkpoint(workdir, checkpoint)
    pipe = GILLPipeline.from_pretrained(ckpt, workdir=workdir, device=device)
    if pipe.bank is None:
        raise InputError("decision candidates need a retrieval bank", [f"none for checkpoint {ckpt}"],
                         hint=f"run: gill index build --workdir {workdir} --checkpoint {ckpt}")  # fmt: skip
    database, images = db_path(workdir), workdir / CANDIDATES_DIR
    done = _done(workdir, database)
    todo = [row for row in rows if row.prompt_id not in done]
    ckpt_id, pending = checkpoint_id(ckpt), []
    for row in tqdm(todo, desc="decision candidates", unit="prompt", disable=not progress):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            generated = pipe.sd(row.prompt, num_inference_steps=sd_steps, guidance_scale=guidance_scale,
                                generator=generator).images[0]  # fmt: skip
            (hit,) = pipe.retrieve(pipe.text_query(row.prompt), k=1)
        gen_rel = CANDIDATES_DIR / f"{row.prompt_id:05d}-gen.png"
        ret_rel = CANDIDATES_DIR / f"{row.prompt_id:05d}-ret.png"
        _save_png(generated, workdir / gen_rel)
        _save_png(pipe.bank.image(hit), workdir / ret_rel)
        pending.append({"prompt_id": row.prompt_id, "prompt": row.prompt, "category": row.category,
                        "challenge": row.challenge, "note": row.note, "gen_image": str(gen_rel),
                        "ret_image": str(ret_rel), "ret_key": hit.key, "ret_score": hit.score,
                        "ret_scaled_score": hit.scaled_score, "checkpoint_id": ckpt_id, "sd_seed": seed})  # fmt: skip
        if len(pending) >= flush_every:
            replace_rows(database, TABLE, pending)
            pending = []
    if pending:
        replace_rows(database, TABLE, pending)
    logger.info("decision candidates: %d built, %d already done, in %s", len(todo), len(rows) - len(todo), images)
    return CandidateSummary(total=len(rows), built=len(todo), skipped=len(rows) - len(todo), database=database,
                            images_dir=images)  # fmt: skip
