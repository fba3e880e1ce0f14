"""``gill generate``, ``gill chat`` and ``gill index build|query``: the inference commands of the ``gill`` CLI.

Registered by :func:`add_inference_parsers`; each handler is a thin call into :mod:`gill.pipeline` and
:mod:`gill.retrieval`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from flows.command import add_command, add_group
from flows.options import add_options, options_from
from flows.stages import index as index_stage
from flows.workdir import Workdir
from gill.config import ConfigError
from gill.errors import GillError, InputError
from gill.pipeline import (
    ChatSession,
    GenerationSettings,
    GILLPipeline,
    ImageResult,
    load_prompt_images,
    save_images,
)

logger = logging.getLogger(__name__)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- shared options -------------------------------------------------------------------------------------------------


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """``--workdir``, ``--checkpoint`` and ``--device`` (what :func:`load_pipeline` reads)."""
    p.add_argument("--workdir", type=Path, required=True, help="the workdir of gill train / gill index build")
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the newest run's best/ or final/)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")


SETTINGS_DESTS = {"num_inference_steps": "sd_steps"}
"""``--sd-steps`` is GenerationSettings.num_inference_steps."""


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    """The decoding and image options: the fields of :class:`gill.pipeline.GenerationSettings` (declared there)."""
    how_often = (
        "Here the default 1.3: odds 30%% higher (not the official demo's 1.3, which is its ret_scale_factor: "
        "pass --ret-scale-factor for that)."
    )
    add_options(
        p.add_argument_group("decoding and images"),
        GenerationSettings,
        exclude=("use_cache",),
        defaults={"image_frequency": None},
        dests=SETTINGS_DESTS,
        notes={"image_frequency": how_often},
    )


DEFAULT_IMAGE_FREQUENCY = 1.3
"""``--image-frequency`` when neither it nor ``--ret-scale-factor`` is given."""


def _image_frequency(args: argparse.Namespace) -> float:
    if args.image_frequency is not None:
        return args.image_frequency
    return 1.0 if args.ret_scale_factor is not None else DEFAULT_IMAGE_FREQUENCY


def _settings(args: argparse.Namespace) -> GenerationSettings:
    try:
        return options_from(GenerationSettings, args, dests=SETTINGS_DESTS, image_frequency=_image_frequency(args))
    except ConfigError as err:
        raise InputError("invalid generation options", err.problems) from err


def load_pipeline(args: argparse.Namespace, load_sd: bool = True):  # -> GILLPipeline
    """The pipeline of ``--workdir`` / ``--checkpoint`` with that checkpoint's retrieval bank when it was built."""
    workdir = Workdir.at(args.workdir)
    checkpoint = workdir.checkpoint(args.checkpoint)
    bank = index_stage.existing_bank(workdir, checkpoint)
    if bank is None:
        logger.info("no retrieval bank for this checkpoint under %s: generation only", workdir.banks)
    return GILLPipeline.from_pretrained(checkpoint, bank=bank, device=args.device, load_sd=load_sd)


def _report(output, saved: list[Path], write: Callable[[str], None]) -> None:
    """Print the reply: text, then one line per image with where it was written."""

    pngs = iter(saved)
    for item in output.items:
        if not isinstance(item, ImageResult):
            write(item.text)
            continue
        where = "flagged by the safety checker, not saved" if item.safety_flagged else str(next(pngs))
        origin = f"bank key {item.key}" if item.kind == "ret" else f"seed {item.seed}"
        probs = "" if item.decision.p_ret is None else f", p_ret {item.decision.p_ret:.2f}"
        write(f"[{item.kind} image: {origin}, score {item.score:.3f} ({item.decision.reason}{probs})] {where}")
    for warning in output.warnings:
        write(f"warning: {warning}")


# -- gill generate ----------------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    """Run GILL on images (first) and text; print the reply and write each image with a JSON sidecar."""

    settings = _settings(args)
    images = load_prompt_images(args.image or [])
    pipe = load_pipeline(args)
    output = pipe([*images, args.prompt], settings)
    out_dir = args.out or Workdir.at(args.workdir).outputs("generated", time.strftime("%Y%m%d-%H%M%S"))
    saved = save_images(output, out_dir)
    _report(output, saved, _out)
    if output.images:
        _out(f"images and sidecars: {out_dir}")
    return 0


# -- gill chat --------------------------------------------------------------------------------------------------------

CHAT_HELP = "commands: /image PATH (attach to the next message), /reset, /quit"


def cmd_chat(args: argparse.Namespace) -> int:
    """Multi-turn terminal chat; images are saved under --out."""

    session = ChatSession(load_pipeline(args), _settings(args))
    out_dir = args.out or Workdir.at(args.workdir).outputs("chat", time.strftime("%Y%m%d-%H%M%S"))
    run_chat(session, out_dir, sys.stdin, _out)
    return 0


def run_chat(session, out_dir: Path, lines: TextIO, write: Callable[[str], None]) -> int:
    """The chat loop over ``lines`` (stdin in the CLI); returns the number of turns answered."""

    write(f"GILL chat. {CHAT_HELP}")
    turns = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            write("(conversation reset)")
            continue
        if line.startswith("/image"):
            try:
                (image,) = load_prompt_images([line[len("/image") :].strip()])
            except (InputError, ValueError) as err:
                write(f"error: {err}")
                continue
            session.add_image(image)
            write(f"(image attached to your next message; {len(session.pending_images)} pending)")
            continue
        if line.startswith("/"):
            write(f"unknown command {line.split()[0]!r}; {CHAT_HELP}")
            continue
        try:
            output = session.turn(line)
        except GillError as err:
            write(f"error: {err.render()}")
            continue
        turns += 1
        saved = save_images(output, out_dir, prefix=f"turn{turns:03d}-")
        _report(output, saved, lambda text: write(f"A: {text}"))
    write("bye")
    return turns


# -- gill index -------------------------------------------------------------------------------------------------------


def cmd_index_build(args: argparse.Namespace) -> int:
    """Embed every precomputed image with the checkpoint's retrieval head into a local bank."""

    workdir = Workdir.at(args.workdir)
    checkpoint = workdir.checkpoint(args.checkpoint)
    approximate = {"auto": "auto", "yes": True, "no": False}[args.approximate]
    info = index_stage.run(workdir, checkpoint, progress=True, splits=tuple(args.splits), approximate=approximate)
    _out(
        f"bank {info.path}: {info.count} images, {info.dim}-d, approximate index: {info.approximate} "
        f"(checkpoint {checkpoint}, id {info.checkpoint_id})"
    )
    return 0


def cmd_index_query(args: argparse.Namespace) -> int:
    """Search the bank with a text query; print the top-k keys, scores and captions (and save the images)."""
    pipe = load_pipeline(args, load_sd=False)
    if pipe.bank is None:
        raise InputError(
            f"no retrieval bank for this checkpoint under {args.workdir}",
            [],
            hint=f"run: gill index build --workdir {args.workdir}",
        )
    hits = pipe.bank.search(pipe.text_query(args.query)[None], k=args.k, method=args.method)[0]
    rows = []
    for rank, hit in enumerate(hits, start=1):
        rows.append(
            {
                "rank": rank,
                "key": hit.key,
                "score": round(hit.score, 4),
                "split": hit.split,
                "caption": pipe.bank.caption(hit),
            }
        )
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            pipe.bank.image(hit).save(args.out / f"{rank:02d}-{hit.key}.png")
    if args.json:
        _out(json.dumps(rows, indent=2))
    else:
        for row in rows:
            _out(f"{row['rank']:>3}  {row['key']}  {row['score']:.4f}  {row['caption']}")
    return 0


# -- parsers ----------------------------------------------------------------------------------------------------------


def add_inference_parsers(groups: argparse._SubParsersAction) -> None:
    """Register ``generate``, ``chat`` and ``index`` on the top-level ``gill`` parser."""
    p = add_command(groups, "generate")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--image", action="append", metavar="PATH", help="an input image, placed before the text (repeat)")
    p.add_argument("--out", type=Path, help="where images and sidecars go (default W/generated/<time>)")
    add_checkpoint_args(p)
    _add_settings_args(p)
    p.set_defaults(func=cmd_generate)

    p = add_command(groups, "chat")
    p.add_argument("--out", type=Path, help="where images go (default W/chat/<time>)")
    add_checkpoint_args(p)
    _add_settings_args(p)
    p.set_defaults(func=cmd_chat)

    index = add_group(groups, "index")
    p = index.add_parser("build", help="embed the precomputed images with a checkpoint's retrieval head")
    add_checkpoint_args(p)
    p.add_argument("--splits", nargs="+", default=["train"], help="feature splits to index (default: train)")
    p.add_argument(
        "--approximate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also build a FAISS index (auto: for large banks)",
    )
    p.set_defaults(func=cmd_index_build)
    p = index.add_parser("query", help="search the bank with text")
    p.add_argument("query", help="the text to search for")
    p.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    p.add_argument("--method", choices=("auto", "exact", "approx"), default="auto")
    p.add_argument("--out", type=Path, help="also save the retrieved images here")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_checkpoint_args(p)
    p.set_defaults(func=cmd_index_query)
