"""Render a :class:`~gill.synth.scenes.Scene` to an RGB image and encode it as deterministic JPEG.

Shapes are drawn with Pillow at ``SUPERSAMPLE`` times the target size and downsampled with a box
filter (cheap anti-aliasing). No randomness is involved: the same scene and size always give the
same pixels, and Pillow's JPEG encoder (quality 90, no metadata) gives the same bytes.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from gill.synth.scenes import BACKGROUNDS, COLORS, POSITIONS, Scene, Shape

SUPERSAMPLE = 4
JPEG_QUALITY = 90
#: Shape radius as a fraction of the image side (a grid cell is 1/3 of the side).
RADIUS = {"small": 0.085, "large": 0.15}

Point = tuple[float, float]


def _paint_background(draw: ImageDraw.ImageDraw, name: str, side: int) -> None:
    """Fill the canvas: plain colour, vertical stripes or an 8x8 checkerboard."""
    tone_a, tone_b = BACKGROUNDS[name]
    draw.rectangle((0, 0, side, side), fill=tone_a)
    step = side / 8
    for i in range(8):
        for j in range(8):
            dark = (i % 2 == 1) if name == "striped" else ((i + j) % 2 == 1)
            if name in ("striped", "checkered") and dark:
                box = (round(i * step), round(j * step), round((i + 1) * step) - 1, round((j + 1) * step) - 1)
                draw.rectangle(box, fill=tone_b)


def _regular_polygon(cx: float, cy: float, radii: list[float], start: float = -90.0) -> list[Point]:
    """Vertices on circles of alternating ``radii`` around (cx, cy), evenly spaced in angle."""
    n = len(radii)
    points = []
    for i, r in enumerate(radii):
        angle = math.radians(start + 360.0 * i / n)
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, side: int) -> None:
    """Draw one shape centred in its grid cell."""
    row, col = POSITIONS[shape.position]
    cx, cy = (col + 0.5) * side / 3, (row + 0.5) * side / 3
    r = RADIUS[shape.size] * side
    fill = COLORS[shape.color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(0.38 * r)))
    elif shape.kind == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon(_regular_polygon(cx, cy + 0.15 * r, [r * 1.1] * 3), fill=fill)
    elif shape.kind == "star":
        draw.polygon(_regular_polygon(cx, cy + 0.05 * r, [r * 1.05, r * 0.45] * 5), fill=fill)
    elif shape.kind == "diamond":
        draw.polygon(_regular_polygon(cx, cy, [r, r * 0.7, r, r * 0.7]), fill=fill)
    elif shape.kind == "cross":
        a = r * 0.33
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")


def render_scene(scene: Scene, size: int = 128) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image (supersampled, box-filtered down)."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(image)
    _paint_background(draw, scene.background, side)
    for shape in scene.shapes:
        _draw_shape(draw, shape, side)
    return image.resize((size, size), Image.Resampling.BOX)


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG bytes of ``image`` with no metadata (stable for a given Pillow/libjpeg)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def render_jpeg(scene: Scene, size: int = 128) -> bytes:
    """Render ``scene`` and encode it as JPEG bytes."""
    return jpeg_bytes(render_scene(scene, size))
