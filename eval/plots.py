"""Small, dependency-free charts (Pillow only): loss curves for training runs.

``plot_curves`` draws one line per named series on shared step/value axes, with a legend and tick labels,
and writes the PNG atomically. Good enough to eyeball a run; query ``train_metrics`` for exact numbers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from gill.utils.io import atomic_write_bytes

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
Series = Sequence[tuple[float, float]]


def plot_curves(
    series: Mapping[str, Series],
    out: str | Path,
    title: str = "",
    size: tuple[int, int] = (800, 480),
    xlabel: str = "step",
) -> Path:
    """Draw ``{name: [(step, value), ...]}`` as lines and save a PNG; non-finite values are skipped."""

    points = {name: [(x, y) for x, y in pts if math.isfinite(y)] for name, pts in series.items()}
    points = {name: pts for name, pts in points.items() if pts}
    if not points:
        raise ValueError(f"nothing to plot: every series is empty or non-finite ({sorted(series)})")
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    box = _Box(left=70, top=40, right=size[0] - 20, bottom=size[1] - 50, points=points)
    _axes(draw, box, title, xlabel)
    for i, (name, pts) in enumerate(sorted(points.items())):
        colour = PALETTE[i % len(PALETTE)]
        xy = [box.map(x, y) for x, y in pts]
        draw.line(xy, fill=colour, width=2) if len(xy) > 1 else draw.ellipse(_dot(xy[0]), fill=colour)
        legend_y = box.top + 10 + 14 * i
        draw.line((box.right - 170, legend_y, box.right - 150, legend_y), fill=colour, width=2)
        draw.text((box.right - 145, legend_y - 6), name, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(out, buffer.getvalue())


class _Box:
    """Plot area and the data-to-pixel mapping."""

    def __init__(self, *, left: int, top: int, right: int, bottom: int, points: Mapping[str, Series]) -> None:
        self.left, self.top, self.right, self.bottom = left, top, right, bottom
        xs = [x for pts in points.values() for x, _ in pts]
        ys = [y for pts in points.values() for _, y in pts]
        self.x0, self.x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 1.0
        self.y0, self.y1 = min(ys) - pad, max(ys) + pad

    def map(self, x: float, y: float) -> tuple[float, float]:
        """Data coordinates -> pixel coordinates."""
        px = self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)
        py = self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)
        return px, py


def _axes(draw, box: _Box, title: str, xlabel: str) -> None:
    draw.rectangle((box.left, box.top, box.right, box.bottom), outline=(80, 80, 80))
    for i in range(5):
        y = box.y0 + (box.y1 - box.y0) * i / 4
        _, py = box.map(box.x0, y)
        draw.line((box.left, py, box.right, py), fill=(230, 230, 230))
        draw.text((4, py - 6), f"{y:.3g}", fill=(60, 60, 60))
        x = box.x0 + (box.x1 - box.x0) * i / 4
        px, _ = box.map(x, box.y0)
        draw.text((px - 10, box.bottom + 6), f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}", fill=(60, 60, 60))
    draw.text((box.left, 12), title, fill=(0, 0, 0))
    draw.text(((box.left + box.right) // 2 - 3 * len(xlabel), box.bottom + 28), xlabel, fill=(60, 60, 60))


def _dot(xy: tuple[float, float], r: float = 3) -> tuple[float, float, float, float]:
    return xy[0] - r, xy[1] - r, xy[0] + r, xy[1] + r
