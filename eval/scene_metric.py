"""An answer-key scene metric for the synthetic shapes world: read an image back into a scene and score it.

GenEval-style (Ghosh et al. 2023) object/attribute checks, but with exact ground truth: every image the toy
models are asked for is a :class:`~gill.synth.scenes.Scene` (a greyscale background plus 1-3 saturated shapes),
so an image can be read back analytically and compared attribute by attribute with the scene that was asked for.

Reading (:func:`read_scene`), on the image resized to ``WORK_SIZE`` x ``WORK_SIZE`` (box filter down, bilinear up):

1. **Foreground.** Backgrounds are grey tones (R = G = B) and shape colours are saturated, so a pixel is
   foreground when its chroma ``max(RGB) - min(RGB)`` is at least ``CHROMA_THRESHOLD``. Blending a colour with
   any grey scales its chroma but keeps its hue (``(p - min p) / chroma``) exactly, so anti-aliased and blurred
   edges keep the hue of their shape.
2. **Objects.** Each foreground pixel gets the nearest palette hue (orange and brown share a hue and form one
   group); 8-connected components of equal hue group are objects, and those under ``MIN_AREA_FRACTION`` of the
   image are dropped as noise. At most ``MAX_OBJECTS`` (9) objects, the largest, are read.
3. **Colour** of an object: the mean of its more saturated half of pixels is explained as
   ``a * colour + (1 - a) * grey`` for each palette colour (coverage ``a`` in (0, 1], any grey); the colour with
   the smallest residual wins, with a small penalty for low coverage (this is what tells brown from orange mixed
   with a dark background).
4. **Coverage map** ``alpha = chroma / chroma(colour)`` of the object's pixels gives its area (the object's
   ``area`` is the summed coverage as a fraction of the image), its centroid (hence the 3x3 grid ``position``)
   and its soft width and height. **Size** is "large" when the larger of the two reaches ``SIZE_EXTENT_THRESHOLD``
   of the image side (at 64 px a small shape spans 9-11 px and a large one 16-20 px, whatever its kind).
5. **Kind**: a multinomial logistic regression (:class:`KindProbe`) on the coverage map sampled on a
   ``PROBE_GRID`` x ``PROBE_GRID`` grid centred on the object and scaled to its extent, plus its fill ratio and
   aspect ratio. :func:`fit_kind_probe` fits it deterministically (~5-10 s on one core) on single-shape renders
   of every kind, size and cell, clean and degraded (128 px renders, Gaussian blur radius 1.3 and 1.8,
   64 -> 24/20 -> 64 px resizes, JPEG quality 80), so it survives the blur of small diffusion models. The fit
   ships as ``eval/assets/scene_kind_probe.json`` (:data:`PROBE_PATH`, ~25 KB; rebuild with
   ``python bench/scene_metric.py --write-probe``); :func:`kind_probe` loads it, or refits in-process when it is
   missing or was fitted with other settings.
6. **Background**: the grey level of the pixels away from any foreground is compared with a render of each of the
   five empty backgrounds (plain white/grey/black, vertical stripes, 8x8 checkerboard); the smallest mean
   absolute difference wins.

Matching rule (:func:`score_scene`): only the N largest detected objects are kept, N = the number of shapes in
the target (so clutter and noise cannot buy matches), and target shapes are assigned to them one-to-one over
all permutations (N <= 3) minimising ``COLOR_MISMATCH_COST * [colour differs] + grid distance of the cells``:
same colour first, then the same or a nearer cell. A target shape left without a detection gets every attribute
wrong. Each *described* shape (all of them by default) is then checked for colour, cell, colour and cell
together, size and kind; :class:`SceneScore` holds the fractions right, the background check, ``all_ok`` and
``score`` (the mean of background, colour, cell, size and kind).

Chance levels (:data:`CHANCE`) of a uniformly random guess: background 1/5, colour 1/8, cell 1/9, size 1/2,
kind 1/7 and colour-and-cell 1/72. The matching lifts chance a little for multi-shape scenes (the best of the
N! assignments is taken), so noise images score somewhat above these levels: on 500 random scenes, uniform RGB
noise reads colour 0.13 / cell 0.21 / kind 0.17 and smooth colour noise 0.20 / 0.18 / 0.15, the render of another
scene 0.16 / 0.15 / 0.12, and none of them is ever ``all_ok``, while renders (64 and 128 px, blurred, resized
down and up) are read right on every attribute. ``bench/scene_metric.py`` prints the full table.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from gill.synth.render import jpeg_bytes, render_scene
from gill.synth.scenes import BACKGROUNDS, COLORS, POSITIONS, SHAPE_KINDS, SIZES, Scene, Shape, sample_scene

logger = logging.getLogger(__name__)

WORK_SIZE = 64
"""Side in pixels every image is resized to before reading."""
CHROMA_THRESHOLD = 36.0
"""Minimum ``max(RGB) - min(RGB)`` of a foreground pixel (palette chromas are 90-215, backgrounds 0)."""
MIN_AREA_FRACTION = 10 / 4096
"""Objects with fewer pixels than this fraction of the image are noise (the smallest shape covers ~40/4096)."""
MAX_OBJECTS = 9
"""At most this many objects are read (a scene has at most ``MAX_SHAPES`` = 3; noise has dozens)."""
SIZE_EXTENT_THRESHOLD = 0.197
"""An object whose larger soft extent reaches this fraction of the image side is "large"."""
COVERAGE_PENALTY = 20.0
"""Colour fit: residual (RGB units) charged per unit of missing coverage ``1 - a``."""
COLOR_MISMATCH_COST = 10.0
"""Matching cost of a colour mismatch; larger than any grid distance (at most 2 * sqrt(2))."""
PROBE_GRID = 16
"""The kind probe samples the coverage map on this many points per side."""
PROBE_SPAN = 0.6
"""The probe grid spans +- this many times the object's larger extent around its centroid."""
PROBE_PATH = Path(__file__).resolve().parent / "assets" / "scene_kind_probe.json"
"""The shipped kind probe (rebuild: ``python bench/scene_metric.py --write-probe``)."""
PROBE_FORMAT = 1
"""Version of the probe's JSON layout."""

SCENE_COLUMNS: tuple[str, ...] = (
    "scene_background_ok",
    "scene_color_ok",
    "scene_cell_ok",
    "scene_color_cell_ok",
    "scene_size_ok",
    "scene_kind_ok",
    "scene_all_ok",
    "scene_score",
)
"""Per-sample columns a results database stores (:meth:`SceneScore.columns`), in order."""

CHANCE: dict[str, float] = {
    "background": 1 / len(BACKGROUNDS),
    "color": 1 / len(COLORS),
    "cell": 1 / len(POSITIONS),
    "color_cell": 1 / (len(COLORS) * len(POSITIONS)),
    "size": 1 / len(SIZES),
    "kind": 1 / len(SHAPE_KINDS),
}
"""Accuracy of a uniformly random guess per attribute (before the matching's best-of-N! lift)."""

_PALETTE = np.array(list(COLORS.values()), dtype=np.float64)  # (8, 3)
_PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_NEIGHBOURS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True, kw_only=True)
class ObjectReading:
    """One object read from an image."""

    color: str
    """Palette colour name (a key of ``COLORS``)."""
    position: str
    """Grid cell of the object's centroid (a key of ``POSITIONS``)."""
    size: str
    """"small" or "large", from the object's extent."""
    kind: str
    """Shape kind (one of ``SHAPE_KINDS``), from the kind probe."""
    area: float
    """Summed coverage of the object's pixels as a fraction of the image (0..1)."""


@dataclass(frozen=True, kw_only=True)
class SceneReading:
    """What :func:`read_scene` sees in an image."""

    background: str
    """Background name (a key of ``BACKGROUNDS``)."""
    objects: tuple[ObjectReading, ...]
    """Detected objects, largest area first: none up to ``MAX_OBJECTS`` (more than any scene has on noise)."""


@dataclass(frozen=True, kw_only=True)
class ShapeScore:
    """How one target shape fared (for debugging; :class:`SceneScore` aggregates the described ones)."""

    index: int
    """Index of the shape in the target scene."""
    target: Shape
    """The target shape."""
    detected: ObjectReading | None
    """The detection it was matched to, or None when there were fewer detections than target shapes."""
    color_ok: bool
    cell_ok: bool
    color_cell_ok: bool
    size_ok: bool
    kind_ok: bool


@dataclass(frozen=True, kw_only=True)
class SceneScore:
    """An image scored against its target scene; the shape fractions are over the described shapes."""

    background_ok: bool
    """The background name is right."""
    color_ok: float
    """Fraction of described shapes whose matched detection has the right colour."""
    cell_ok: float
    """Fraction of described shapes whose matched detection is in the right grid cell."""
    color_cell_ok: float
    """Fraction of described shapes with both colour and cell right."""
    size_ok: float
    """Fraction of described shapes with the right size."""
    kind_ok: float
    """Fraction of described shapes with the right kind."""
    all_ok: bool
    """Background and every attribute of every described shape right."""
    score: float
    """Mean of background_ok, color_ok, cell_ok, size_ok and kind_ok."""
    per_shape: tuple[ShapeScore, ...]
    """One entry per described shape, in the order given."""

    def columns(self) -> dict[str, float]:
        """The values of :data:`SCENE_COLUMNS` (booleans as 0.0/1.0), in that order."""
        values = (
            self.background_ok,
            self.color_ok,
            self.cell_ok,
            self.color_cell_ok,
            self.size_ok,
            self.kind_ok,
            self.all_ok,
            self.score,
        )
        return {name: float(value) for name, value in zip(SCENE_COLUMNS, values, strict=True)}


@dataclass(frozen=True, kw_only=True)
class MetricAccuracy:
    """Mean of each :class:`SceneScore` field over the images of one condition (see :func:`evaluate_metric`)."""

    condition: str
    """One of :data:`CONDITIONS`."""
    n: int
    """Number of scenes scored."""
    background: float
    color: float
    cell: float
    color_cell: float
    size: float
    kind: float
    all_ok: float
    """Fraction of images with ``all_ok``."""
    score: float
    seconds_per_image: float
    """Mean wall time of :func:`score_image` per image (reading and scoring, not rendering)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class KindProbe:
    """Multinomial logistic regression from :func:`kind_features` to ``SHAPE_KINDS``."""

    mean: np.ndarray
    """(F,) feature means used for standardising."""
    scale: np.ndarray
    """(F,) feature standard deviations used for standardising."""
    weights: np.ndarray
    """(F, K) weights over standardised features, K = len(SHAPE_KINDS)."""
    bias: np.ndarray
    """(K,) biases."""
    train_accuracy: float
    """Accuracy on its own training examples."""

    def predict(self, features: np.ndarray) -> str:
        """The most likely kind for one (F,) feature vector."""
        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return SHAPE_KINDS[int(np.argmax(logits))]

    def to_json(self) -> str:
        """JSON text of the probe and the settings it depends on (what :data:`PROBE_PATH` holds)."""
        payload = {
            "format": PROBE_FORMAT,
            "kinds": list(SHAPE_KINDS),
            "probe_grid": PROBE_GRID,
            "probe_span": PROBE_SPAN,
            "work_size": WORK_SIZE,
            "chroma_threshold": CHROMA_THRESHOLD,
            "train_accuracy": self.train_accuracy,
            "mean": _rounded(self.mean),
            "scale": _rounded(self.scale),
            "weights": _rounded(self.weights),
            "bias": _rounded(self.bias),
        }
        return json.dumps(payload, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KindProbe:
        """The probe in ``text`` (from :meth:`to_json`).

        Raises:
            ValueError: when it was fitted with other settings than this module's (then refit it).
        """
        payload = json.loads(text)
        expected = {
            "format": PROBE_FORMAT,
            "kinds": list(SHAPE_KINDS),
            "probe_grid": PROBE_GRID,
            "probe_span": PROBE_SPAN,
            "work_size": WORK_SIZE,
            "chroma_threshold": CHROMA_THRESHOLD,
        }
        stale = [f"{k}: {payload.get(k)!r} != {v!r}" for k, v in expected.items() if payload.get(k) != v]
        if stale:
            raise ValueError(f"kind probe fitted with other settings: {'; '.join(stale)}")
        return cls(
            mean=np.array(payload["mean"], dtype=np.float64),
            scale=np.array(payload["scale"], dtype=np.float64),
            weights=np.array(payload["weights"], dtype=np.float64),
            bias=np.array(payload["bias"], dtype=np.float64),
            train_accuracy=float(payload["train_accuracy"]),
        )


def _rounded(array: np.ndarray) -> list[Any]:
    """Nested lists of floats rounded to 6 significant digits (compact, stable JSON)."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(array).tolist()


@dataclass(frozen=True, kw_only=True)
class _Blob:
    """An object's pixels before classification (internal)."""

    color: str
    alpha: np.ndarray = field(repr=False)
    """(S, S) coverage in [0, 1], zero outside the object."""
    area: float
    """Summed coverage in pixels."""


# --- reading an image ---------------------------------------------------------------------------------------


def to_work_array(image: Image.Image) -> np.ndarray:
    """The image as a float (WORK_SIZE, WORK_SIZE, 3) RGB array (box filter when shrinking, bilinear otherwise)."""
    rgb = image.convert("RGB")
    if rgb.size != (WORK_SIZE, WORK_SIZE):
        shrinking = min(rgb.size) > WORK_SIZE
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        rgb = rgb.resize((WORK_SIZE, WORK_SIZE), resample)
    return np.asarray(rgb, dtype=np.float64)


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of each pixel of an (..., 3) array (0 where the chroma is 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = np.maximum(high - low, 1e-9)
    sector = np.where(high == r, (g - b) / chroma, np.where(high == g, (b - r) / chroma + 2.0, (r - g) / chroma + 4.0))
    return (sector * 60.0) % 360.0


def _hue_groups() -> np.ndarray:
    """Mean hue of each group of palette hues (colours closer than 10 degrees, i.e. orange and brown, share one)."""
    hues = _hue_degrees(_PALETTE)
    order = np.argsort(hues)
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(hues[i] - hues[groups[-1][-1]]) < 10.0:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return np.array([float(np.mean(hues[g])) for g in groups])


_GROUP_HUES = _hue_groups()


def _pixel_groups(rgb: np.ndarray) -> np.ndarray:
    """(S, S) hue-group index of each foreground pixel, -1 for background."""
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    hue = _hue_degrees(rgb)
    gap = np.abs(hue[..., None] - _GROUP_HUES[None, None, :])
    gap = np.minimum(gap, 360.0 - gap)
    return np.where(chroma >= CHROMA_THRESHOLD, np.argmin(gap, axis=-1), -1)


def _shift(array: np.ndarray, dy: int, dx: int, fill: int) -> np.ndarray:
    """``array`` moved so that out[y, x] = array[y + dy, x + dx] (``fill`` outside)."""
    h, w = array.shape
    out = np.full_like(array, fill)
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = array[
        max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def label_components(groups: np.ndarray) -> np.ndarray:
    """8-connected components of equal non-negative values: (S, S) labels (-1 where ``groups`` < 0).

    A label is the smallest flat pixel index of its component (min-label propagation with pointer jumping).
    """
    h, w = groups.shape
    outside = h * w
    flat_index = np.arange(h * w).reshape(h, w)
    labels = np.where(groups >= 0, flat_index, outside)
    same = [(_shift(groups, dy, dx, -1) == groups) & (groups >= 0) for dy, dx in _NEIGHBOURS]
    while True:
        new = labels.copy()
        for (dy, dx), joined in zip(_NEIGHBOURS, same, strict=True):
            new = np.where(joined, np.minimum(new, _shift(labels, dy, dx, outside)), new)
        flat = new.reshape(-1)
        inside = flat < outside
        flat[inside] = flat[flat[inside]]  # pointer jumping: a label's own label is in the same component
        if np.array_equal(new, labels):
            return np.where(labels < outside, labels, -1)
        labels = new


def fit_color(pixel: np.ndarray) -> str:
    """The palette colour that best explains ``pixel`` as ``a * colour + (1 - a) * grey`` (a in (0, 1]).

    For each colour and coverage ``a`` on a fine grid the best grey is found in closed form (clipped to 0..255);
    the cost is the RGB residual plus ``COVERAGE_PENALTY * (1 - a)``.
    """
    coverage = np.linspace(0.05, 1.0, 96)[:, None, None]  # (A, 1, 1)
    palette = _PALETTE[None, :, :]  # (1, 8, 3)
    rest = pixel[None, None, :] - coverage * palette  # (A, 8, 3) = (1 - a) * grey if the model holds
    grey = np.clip(rest.mean(axis=-1, keepdims=True) / np.maximum(1.0 - coverage, 1e-9), 0.0, 255.0)
    residual = np.linalg.norm(rest - (1.0 - coverage) * grey, axis=-1)  # (A, 8)
    cost = residual + COVERAGE_PENALTY * (1.0 - coverage[:, :, 0])
    return _PALETTE_NAMES[int(np.argmin(cost.min(axis=0)))]


def _make_blob(rgb: np.ndarray, chroma: np.ndarray, mask: np.ndarray) -> _Blob:
    """Colour and coverage map of one component given as a boolean mask."""
    values = chroma[mask]
    top = values >= np.quantile(values, 0.5)
    color = fit_color(rgb[mask][top].mean(axis=0))
    reference = float(np.ptp(COLORS[color]))
    alpha = np.where(mask, np.clip(chroma / reference, 0.0, 1.0), 0.0)
    return _Blob(color=color, alpha=alpha, area=float(alpha.sum()))


def _find_blobs(rgb: np.ndarray) -> list[_Blob]:
    """Coloured objects of a working-size array, largest coverage first, at most ``MAX_OBJECTS``.

    Components under ``MIN_AREA_FRACTION`` of the image are dropped; of the rest, the ``2 * MAX_OBJECTS`` with
    the most pixels get a colour and coverage map (this bounds the work on noise images).
    """
    labels = label_components(_pixel_groups(rgb))
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    keep = counts >= MIN_AREA_FRACTION * labels.size
    ids, counts = ids[keep], counts[keep]
    candidates = ids[np.argsort(-counts, kind="stable")[: 2 * MAX_OBJECTS]]
    blobs = sorted((_make_blob(rgb, chroma, labels == i) for i in candidates), key=lambda b: -b.area)
    return blobs[:MAX_OBJECTS]


@dataclass(frozen=True, kw_only=True)
class _Geometry:
    """Centroid and soft extents of a coverage map, in pixels (internal)."""

    x: float
    y: float
    width: float
    height: float


def _geometry(alpha: np.ndarray) -> _Geometry:
    """Coverage-weighted centroid (pixel centres at +0.5) and soft width/height (sum of column/row maxima)."""
    total = max(float(alpha.sum()), 1e-9)
    ys, xs = np.indices(alpha.shape)
    return _Geometry(
        x=float((alpha * (xs + 0.5)).sum() / total),
        y=float((alpha * (ys + 0.5)).sum() / total),
        width=float(alpha.max(axis=0).sum()),
        height=float(alpha.max(axis=1).sum()),
    )


def _bilinear(alpha: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``alpha`` sampled at pixel coordinates (ys, xs) (pixel centres at +0.5), zero outside."""
    padded = np.pad(alpha, 1)
    y = np.clip(ys - 0.5 + 1.0, 0.0, padded.shape[0] - 1.001)
    x = np.clip(xs - 0.5 + 1.0, 0.0, padded.shape[1] - 1.001)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    top = padded[y0, x0] * (1 - fx) + padded[y0, x0 + 1] * fx
    bottom = padded[y0 + 1, x0] * (1 - fx) + padded[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def kind_features(alpha: np.ndarray) -> np.ndarray:
    """Features of one coverage map for the kind probe: the centred, extent-scaled grid plus fill and aspect."""
    geo = _geometry(alpha)
    extent = max(geo.width, geo.height, 1.0)
    offsets = (np.arange(PROBE_GRID) + 0.5) / PROBE_GRID * 2.0 - 1.0
    grid_y, grid_x = np.meshgrid(offsets, offsets, indexing="ij")
    grid = _bilinear(alpha, geo.y + grid_y * PROBE_SPAN * extent, geo.x + grid_x * PROBE_SPAN * extent)
    fill = float(alpha.sum()) / max(geo.width * geo.height, 1.0)
    aspect = math.log(max(geo.width, 1.0) / max(geo.height, 1.0))
    return np.concatenate([grid.reshape(-1), [fill, aspect]])


def _cell(x: float, y: float) -> str:
    """Grid cell name of a point in working-size pixel coordinates."""
    row = min(2, max(0, int(3 * y / WORK_SIZE)))
    col = min(2, max(0, int(3 * x / WORK_SIZE)))
    return next(name for name, rc in POSITIONS.items() if rc == (row, col))


def _object(blob: _Blob, probe: KindProbe) -> ObjectReading:
    """Classify one blob."""
    geo = _geometry(blob.alpha)
    large = max(geo.width, geo.height) >= SIZE_EXTENT_THRESHOLD * WORK_SIZE
    return ObjectReading(
        color=blob.color,
        position=_cell(geo.x, geo.y),
        size="large" if large else "small",
        kind=probe.predict(kind_features(blob.alpha)),
        area=blob.area / blob.alpha.size,
    )


@functools.cache
def _background_templates() -> dict[str, np.ndarray]:
    """Grey level of each empty background rendered at the working size."""
    return {
        name: np.asarray(render_scene(Scene(background=name, shapes=()), WORK_SIZE), dtype=np.float64).mean(axis=-1)
        for name in BACKGROUNDS
    }


def read_background(rgb: np.ndarray, foreground: np.ndarray) -> str:
    """Background name whose empty render is closest (mean absolute grey difference) away from the foreground."""
    near = foreground.copy()
    for dy, dx in _NEIGHBOURS:
        near |= _shift(foreground.astype(np.int64), dy, dx, 0).astype(bool)
    keep = ~near
    if keep.sum() < 0.05 * keep.size:
        keep = np.ones_like(keep)
    grey = rgb.mean(axis=-1)
    errors = {name: float(np.abs(grey - t)[keep].mean()) for name, t in _background_templates().items()}
    return min(errors, key=errors.__getitem__)


def read_scene(image: Image.Image) -> SceneReading:
    """Read the background and the coloured objects (largest first) of an image of any size."""
    rgb = to_work_array(image)
    foreground = (rgb.max(axis=-1) - rgb.min(axis=-1)) >= CHROMA_THRESHOLD
    probe = kind_probe()
    objects = tuple(_object(b, probe) for b in _find_blobs(rgb))
    return SceneReading(background=read_background(rgb, foreground), objects=objects)


# --- scoring ------------------------------------------------------------------------------------------------


def _as_scene(target: Scene | Mapping[str, Any]) -> Scene:
    """A Scene from a Scene or its ``to_dict()`` form."""
    if isinstance(target, Scene):
        return target
    shapes = tuple(Shape(**{f.name: s[f.name] for f in fields(Shape)}) for s in target["shapes"])
    return Scene(background=target["background"], shapes=shapes)


def _cell_distance(a: str, b: str) -> float:
    """Euclidean distance between two grid cells, in cells."""
    (ra, ca), (rb, cb) = POSITIONS[a], POSITIONS[b]
    return math.hypot(ra - rb, ca - cb)


def match_shapes(shapes: Sequence[Shape], objects: Sequence[ObjectReading]) -> list[ObjectReading | None]:
    """The detection assigned to each target shape (None when unmatched), per the module's matching rule.

    Only the first ``len(shapes)`` objects (the largest, in reading order) take part; the assignment minimising the
    summed ``COLOR_MISMATCH_COST * [colour differs] + cell distance`` over all permutations wins (first on ties).
    """
    kept: list[ObjectReading | None] = list(objects[: len(shapes)])
    kept += [None] * (len(shapes) - len(kept))

    def cost(pairs: Sequence[ObjectReading | None]) -> float:
        total = 0.0
        for shape, obj in zip(shapes, pairs, strict=True):
            if obj is not None:
                total += COLOR_MISMATCH_COST * (obj.color != shape.color) + _cell_distance(obj.position, shape.position)
            else:
                total += COLOR_MISMATCH_COST + 3.0  # worse than any real detection
        return total

    return list(min(itertools.permutations(kept), key=cost))


def _shape_score(index: int, shape: Shape, obj: ObjectReading | None) -> ShapeScore:
    """Attribute checks of one target shape against its matched detection."""
    color = obj is not None and obj.color == shape.color
    cell = obj is not None and obj.position == shape.position
    return ShapeScore(
        index=index,
        target=shape,
        detected=obj,
        color_ok=color,
        cell_ok=cell,
        color_cell_ok=color and cell,
        size_ok=obj is not None and obj.size == shape.size,
        kind_ok=obj is not None and obj.kind == shape.kind,
    )


def score_scene(
    reading: SceneReading, target: Scene | Mapping[str, Any], described: Sequence[int] | None = None
) -> SceneScore:
    """Score a reading against the target scene (a Scene or its dict form).

    Args:
        reading: from :func:`read_scene`.
        target: the scene the image should show.
        described: indices of the target shapes the prompt describes (None = all); the others still take part
            in the matching (they are in the image) but are not scored.
    Raises:
        ValueError: when ``described`` is empty or holds an index outside the target's shapes.
    """
    scene = _as_scene(target)
    indices = list(range(len(scene.shapes))) if described is None else list(described)
    if not indices or any(not 0 <= i < len(scene.shapes) for i in indices):
        raise ValueError(f"described must be non-empty indices into {len(scene.shapes)} shapes, got {indices}")
    matched = match_shapes(scene.shapes, reading.objects)
    per_shape = tuple(_shape_score(i, scene.shapes[i], matched[i]) for i in indices)

    def fraction(attribute: Callable[[ShapeScore], bool]) -> float:
        return sum(attribute(s) for s in per_shape) / len(per_shape)

    background_ok = reading.background == scene.background
    color, cell, size, kind = (
        fraction(lambda s: s.color_ok),
        fraction(lambda s: s.cell_ok),
        fraction(lambda s: s.size_ok),
        fraction(lambda s: s.kind_ok),
    )
    return SceneScore(
        background_ok=background_ok,
        color_ok=color,
        cell_ok=cell,
        color_cell_ok=fraction(lambda s: s.color_cell_ok),
        size_ok=size,
        kind_ok=kind,
        all_ok=background_ok and min(color, cell, size, kind) == 1.0,
        score=(float(background_ok) + color + cell + size + kind) / 5.0,
        per_shape=per_shape,
    )


def score_image(
    image: Image.Image, target: Scene | Mapping[str, Any], described: Sequence[int] | None = None
) -> SceneScore:
    """:func:`score_scene` of :func:`read_scene` of an image."""
    return score_scene(read_scene(image), target, described)


# --- the kind probe -----------------------------------------------------------------------------------------


def blur(image: Image.Image, radius: float = 1.0) -> Image.Image:
    """Gaussian blur (a stand-in for a small diffusion model's softness)."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def down_up(image: Image.Image, low: int = 32) -> Image.Image:
    """Resize to ``low`` px (box) and back to the original size (bilinear)."""
    small = image.resize((low, low), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BILINEAR)


def jpeg_roundtrip(image: Image.Image, quality: int = 90) -> Image.Image:
    """The image encoded as JPEG (4:2:0 chroma subsampling, like the world's stored renders) and decoded."""
    return Image.open(io.BytesIO(jpeg_bytes(image, quality))).convert("RGB")


def _training_images(scene: Scene) -> list[Image.Image]:
    """Clean and degraded views of one scene the probe is fitted on.

    The degradations differ from those of :data:`CONDITIONS` (blur 1.3/1.8 px, not 1 or 2; 24/20 px down-up, not
    32 or 16; JPEG 80, not 90 or 75), so the benchmark measures the probe on degradations it never saw.
    """
    clean = render_scene(scene, WORK_SIZE)
    return [
        clean,
        render_scene(scene, 2 * WORK_SIZE),
        blur(clean, 1.3),
        blur(clean, 1.8),
        down_up(clean, 24),
        down_up(clean, 20),
        jpeg_roundtrip(clean, 80),
    ]


def _fit_softmax(x: np.ndarray, y: np.ndarray, *, l2: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent (Nesterov momentum) on the L2-regularised softmax cross-entropy."""
    n, d = x.shape
    k = len(SHAPE_KINDS)
    onehot = np.eye(k)[y]
    params = np.zeros((d + 1, k))
    velocity = np.zeros_like(params)
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    for _ in range(steps):
        look = params + 0.9 * velocity
        logits = xb @ look
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        grad = xb.T @ (prob - onehot) / n
        grad[:-1] += l2 * look[:-1]
        velocity = 0.9 * velocity - 0.5 * grad
        params = params + velocity
    return params[:-1], params[-1]


def fit_kind_probe(seed: int = 0) -> KindProbe:
    """Fit the kind probe on single-shape renders (every kind, size and cell; colour and background cycled).

    Deterministic for a given seed (the seed only picks the colour/background cycle).
    """
    start = time.perf_counter()
    rng = random.Random(seed)
    features, labels = [], []
    for kind_index, kind in enumerate(SHAPE_KINDS):
        for size in SIZES:
            for position in POSITIONS:
                shape = Shape(kind=kind, color=rng.choice(list(COLORS)), size=size, position=position)
                scene = Scene(background=rng.choice(list(BACKGROUNDS)), shapes=(shape,))
                for image in _training_images(scene):
                    blobs = _find_blobs(to_work_array(image))
                    if blobs:
                        features.append(kind_features(blobs[0].alpha))
                        labels.append(kind_index)
    x, y = np.array(features), np.array(labels)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-3
    weights, bias = _fit_softmax((x - mean) / scale, y, l2=1e-3, steps=400)
    predicted = np.argmax(((x - mean) / scale) @ weights + bias, axis=1)
    probe = KindProbe(mean=mean, scale=scale, weights=weights, bias=bias, train_accuracy=float((predicted == y).mean()))
    logger.info(
        "fitted the scene-metric kind probe on %d examples in %.1f s (train accuracy %.3f)",
        len(y),
        time.perf_counter() - start,
        probe.train_accuracy,
    )
    return probe


@functools.cache
def kind_probe() -> KindProbe:
    """The shipped kind probe (:data:`PROBE_PATH`), or a fresh fit when it is missing or stale; once per process."""
    try:
        return KindProbe.from_json(PROBE_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as error:
        logger.warning("no usable shipped kind probe (%s); fitting one now (a few seconds)", error)
        return fit_kind_probe()


# --- measuring the metric itself ----------------------------------------------------------------------------


def uniform_noise(rng: random.Random, size: int = WORK_SIZE) -> Image.Image:
    """Independent uniform RGB noise per pixel."""
    data = np.random.default_rng(rng.getrandbits(63)).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(data, "RGB")


def smooth_noise(rng: random.Random, size: int = WORK_SIZE, cells: int = 8) -> Image.Image:
    """Random RGB on a ``cells`` x ``cells`` grid upsampled bicubically: blobs of colour, like untrained models."""
    return uniform_noise(rng, cells).resize((size, size), Image.Resampling.BICUBIC)


_CONDITION_IMAGES: dict[str, Callable[[Scene, random.Random], Image.Image]] = {
    "render64": lambda scene, rng: render_scene(scene, WORK_SIZE),
    "render128": lambda scene, rng: render_scene(scene, 2 * WORK_SIZE),
    "blur": lambda scene, rng: blur(render_scene(scene, WORK_SIZE), 1.0),
    "downup": lambda scene, rng: down_up(render_scene(scene, WORK_SIZE), 32),
    "jpeg90": lambda scene, rng: jpeg_roundtrip(render_scene(scene, WORK_SIZE), 90),
    "jpeg75": lambda scene, rng: jpeg_roundtrip(render_scene(scene, WORK_SIZE), 75),
    "blur2": lambda scene, rng: blur(render_scene(scene, WORK_SIZE), 2.0),
    "downup16": lambda scene, rng: down_up(render_scene(scene, WORK_SIZE), 16),
    "uniform_noise": lambda scene, rng: uniform_noise(rng),
    "smooth_noise": lambda scene, rng: smooth_noise(rng),
    "mismatch": lambda scene, rng: render_scene(sample_scene(rng), WORK_SIZE),
}

CONDITIONS: tuple[str, ...] = tuple(_CONDITION_IMAGES)
"""Image conditions of :func:`evaluate_metric`, each an image standing for a scene: its render at 64 and 128 px;
the 64 px render blurred (Gaussian, radius 1) or resized 64 -> 32 -> 64 px (what the metric must survive);
harder stress cases (JPEG round trip at quality 90, the world's storage format, and 75; blur radius 2; a
64 -> 16 -> 64 px resize); uniform RGB noise; smooth colour noise (8x8 random RGB upsampled bicubically, like an
untrained diffusion model's output); and the render of a *different* random scene (``mismatch``)."""


def condition_image(scene: Scene, condition: str, rng: random.Random) -> Image.Image:
    """The image that stands for ``scene`` under one of :data:`CONDITIONS` (noise and mismatch draw from rng)."""
    if condition not in _CONDITION_IMAGES:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    return _CONDITION_IMAGES[condition](scene, rng)


def evaluate_metric(n: int, seed: int, condition: str = "render64") -> MetricAccuracy:
    """Accuracy of the metric on ``n`` fresh random scenes (``sample_scene``) under one condition.

    Each scene's image is made by :func:`condition_image` and scored against the scene with
    :func:`score_image`; the fields are means of the :class:`SceneScore` fields.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    rng = random.Random(seed)
    kind_probe()  # fit outside the timed region
    scores: list[SceneScore] = []
    seconds = 0.0
    for _ in range(n):
        scene = sample_scene(rng)
        image = condition_image(scene, condition, rng)
        start = time.perf_counter()
        scores.append(score_image(image, scene))
        seconds += time.perf_counter() - start

    def mean(attribute: Callable[[SceneScore], float]) -> float:
        return float(np.mean([attribute(s) for s in scores]))

    return MetricAccuracy(
        condition=condition,
        n=n,
        background=mean(lambda s: s.background_ok),
        color=mean(lambda s: s.color_ok),
        cell=mean(lambda s: s.cell_ok),
        color_cell=mean(lambda s: s.color_cell_ok),
        size=mean(lambda s: s.size_ok),
        kind=mean(lambda s: s.kind_ok),
        all_ok=mean(lambda s: s.all_ok),
        score=mean(lambda s: s.score),
        seconds_per_image=seconds / max(n, 1),
    )
