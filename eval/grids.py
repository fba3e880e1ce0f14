"""Qualitative grids of a benchmark run, like the paper's figures: context, then ground truth, SD and GILL.

One PNG per (benchmark, setting): a row per sample with the prompt's images (VIST: the first four photos), the
prompt text (wrapped), the ground-truth image, Stable Diffusion's image and GILL's images (``gill-gen``, and
``gill`` with its decision and p(retrieve)), each labelled with its scene-metric score where the answer key is
known; GILL's tile is framed in the colour of its decision (:data:`DECISION_FRAMES`: blue retrieved, orange
generated), which its label also names.
Everything comes from the ``samples`` table and the PNGs the benchmark saved, so a grid can be redrawn at any
time: ``gill report --workdir W``.

Text is set in DejaVu Sans, the TrueType font matplotlib ships (``matplotlib.font_manager.findfont``), so the grids
need no system font and look the same on every machine.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from matplotlib.font_manager import FontProperties, findfont
from PIL import Image, ImageDraw, ImageFont

from gill.utils.io import atomic_write_bytes
from gill.utils.paths import resolve_stored

logger = logging.getLogger(__name__)

TILE = 96
"""Side of one image tile in pixels."""
TEXT_WIDTH = 260
"""Width of the prompt-text column in pixels."""
LABEL_HEIGHT = 30
COLUMNS = (("reference", "ground truth"), ("sd", "SD"), ("gill-gen", "GILL (gen)"), ("gill", "GILL"))
"""(system or ``reference``, column title), after the context."""
GRID_SETTINGS = {"vist": ("1cap", "5cap", "5cap4img"), "visdial": ("1round", "10rounds"), "cc3m-fid": ("val",)}
DECISION_FRAMES = {"ret": (31, 119, 180), "gen": (255, 127, 14)}
"""GILL's decision -> the colour of the frame around its tile (retrieved: blue, generated: orange)."""
TEXT_LINES = 7
"""Lines of prompt text shown per sample (the rest is cut with an ellipsis)."""


@dataclass(frozen=True, kw_only=True)
class GridRow:
    """One sample of a grid: its prompt, context images and the outputs by column."""

    sample_id: str
    text: str
    context: tuple[Path | None, ...]
    outputs: dict[str, tuple[Path | None, str]]
    """Column -> (image, label under it)."""
    decision: str | None = None
    """GILL's decision for the sample (``ret`` or ``gen``), None when it made none."""


@lru_cache(maxsize=8)
def _font(size: int = 11, bold: bool = False) -> Any:
    """DejaVu Sans at ``size`` pixels: the TrueType font that ships with matplotlib."""
    path = findfont(FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size=size)


def wrap(text: str, font: Any, width: int, max_lines: int = TEXT_LINES) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in ``font`` (a word wider than the line
    is cut); at most ``max_lines``, the last ending in an ellipsis when text was left out."""
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(line) <= width:
            lines[-1] = line
            continue
        while font.getlength(word) > width and len(word) > 1:
            cut = max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width or i == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + " ...") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " ..."
    return lines


def _tile(path: Path | None) -> Image.Image:
    if path is None or not Path(path).is_file():
        return Image.new("RGB", (TILE, TILE), (235, 235, 235))
    with Image.open(path) as image:
        return image.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS)


def _label(row: Any) -> str:
    """What is written under an output (one line each): its scene score, and GILL's decision and p(retrieve)."""
    lines = []
    if row.get("scene_score") is not None and row["scene_score"] == row["scene_score"]:
        lines.append(f"scene score {row['scene_score']:.2f}")
    if row.get("decision") and row.get("system") == "gill":
        p_ret = row.get("p_ret")
        shown = f", p(ret) {p_ret:.2f}" if p_ret is not None and p_ret == p_ret else ""
        lines.append(("retrieved" if row["decision"] == "ret" else "generated") + shown)
    return "\n".join(lines)


def grid_rows(frame: Any, limit: int, workdir: str | Path) -> list[GridRow]:
    """The first ``limit`` samples of one setting's ``samples`` rows (first seed), as grid rows (the rows' paths
    resolved against ``workdir``)."""
    frame = frame[frame.seed == frame.seed.min()]
    rows = []
    for sample_id in sorted(set(frame.sample_id))[:limit]:
        own = frame[frame.sample_id == sample_id]
        by_system = {r["system"]: r for r in own.to_dict(orient="records")}
        first = next(iter(by_system.values()))
        reference = _path(first.get("reference_path"), workdir)
        outputs: dict[str, tuple[Path | None, str]] = {"reference": (reference, "")}
        for system, _ in COLUMNS[1:]:
            r = by_system.get(system)
            outputs[system] = (_path(r.get("generated_path"), workdir) if r else None, _label(r) if r else "not run")
        context = tuple(_path(p, workdir) for p in json.loads(first.get("context_paths") or "[]"))
        gill = by_system.get("gill")
        decision = gill.get("decision") if gill else None
        rows.append(
            GridRow(
                sample_id=sample_id,
                text=first.get("prompt") or "",
                context=context,
                outputs=outputs,
                decision=decision if decision in DECISION_FRAMES else None,
            )
        )
    return rows


def _path(value: Any, workdir: str | Path) -> Path | None:
    """The file a stored path column names (None for NULL)."""
    return resolve_stored(value, workdir) if isinstance(value, str) and value else None


def draw_grid(rows: list[GridRow], title: str) -> Image.Image:
    """The grid image: title, column titles, then one row per sample (columns no sample has are left out)."""
    n_context = max((len(r.context) for r in rows), default=0)
    columns = [(c, name) for c, name in COLUMNS if any(r.outputs[c][0] is not None for r in rows)]
    width = n_context * TILE + TEXT_WIDTH + len(columns) * TILE + 8 * (len(columns) + 2)
    row_height = TILE + LABEL_HEIGHT
    canvas = Image.new("RGB", (width, 40 + len(rows) * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    size = next((s for s in range(13, 8, -1) if _font(s, bold=True).getlength(title) <= width - 16), 9)
    draw.text((8, 4), title, fill="black", font=_font(size, bold=True))  # the largest size that fits the width
    x0 = n_context * TILE + TEXT_WIDTH + 16
    if n_context:
        draw.text((0, 23), "context images", fill=(90, 90, 90), font=_font(11))
    draw.text((n_context * TILE + 8, 23), "prompt", fill=(90, 90, 90), font=_font(11))
    for i, (_, name) in enumerate(columns):
        draw.text((x0 + i * (TILE + 8), 23), name, fill="black", font=_font(11, bold=True))
    for r, row in enumerate(rows):
        y = 40 + r * row_height
        for c, path in enumerate(row.context):
            canvas.paste(_tile(path), (c * TILE, y))
        text_font = _font(10)
        wrapped = "\n".join(wrap(row.text, text_font, TEXT_WIDTH - 16))
        draw.multiline_text((n_context * TILE + 8, y), wrapped, fill="black", font=text_font, spacing=2)
        for i, (column, _) in enumerate(columns):
            path, label = row.outputs[column]
            x = x0 + i * (TILE + 8)
            canvas.paste(_tile(path), (x, y))
            if column == "gill" and row.decision is not None:
                draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=DECISION_FRAMES[row.decision], width=3)
            draw.multiline_text((x, y + TILE + 2), label, fill="black", font=_font(9), spacing=1)
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def draw_run_grids(
    samples: Any, workdir: str | Path, run_id: str, out_dir: str | Path, *, limit: int = 4
) -> list[Path]:
    """One grid per benchmark setting of ``run_id`` that has samples (``GRID_SETTINGS``); the PNGs written.

    ``samples``: the run's scored ``samples`` rows (a DataFrame); their paths are resolved against ``workdir``.
    """
    written = []
    frame = samples
    for benchmark, settings in GRID_SETTINGS.items():
        for setting in settings:
            own = frame[(frame.benchmark == benchmark) & (frame.setting == setting)]
            if own.empty:
                continue
            title = f"{benchmark} {setting}: context -> ground truth / SD / GILL (run {run_id})"
            image = draw_grid(grid_rows(own, limit, workdir), title)
            written.append(save_png(image, Path(out_dir) / f"grid_{benchmark}_{setting}.png"))
    logger.info("qualitative grids: %s", ", ".join(str(p) for p in written))
    return written
