"""The vocabulary and structured state of the synthetic "shapes world".

A :class:`Scene` is a background plus one to three :class:`Shape` objects, each in its own cell of a
3x3 grid and each of a different kind (so "the circle" always names one shape). Stories
(:class:`Story`) follow a main shape through five scenes, each step produced by one
:class:`StoryEvent` applied to the previous scene. Everything is sampled from a caller-supplied
``random.Random`` so the same seed always gives the same world.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")

#: Shape colours (name -> RGB). Disjoint from the background names so answers stay unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
}

SIZES: tuple[str, ...] = ("small", "large")

#: Grid cells, name -> (row, column) in a 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}

#: Backgrounds: plain colours and two-tone patterns (name -> the two RGB tones used to paint it).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "white": ((245, 245, 245), (245, 245, 245)),
    "grey": ((128, 128, 128), (128, 128, 128)),
    "black": ((20, 20, 20), (20, 20, 20)),
    "striped": ((205, 205, 205), (100, 100, 100)),
    "checkered": ((225, 225, 225), (160, 160, 160)),
}
PLAIN_BACKGROUNDS: frozenset[str] = frozenset({"white", "grey", "black"})

MAX_SHAPES = 3
STORY_LENGTH = 5

NOVEL_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (color, kind) for k, kind in enumerate(SHAPE_KINDS) for c, color in enumerate(COLORS) if (c - k) % 4 == 0
)
"""(colour, kind) pairs the CC3M *training* split never shows (14 of the 56: two colours per kind, fixed by their
index in :data:`SHAPE_KINDS` and :data:`COLORS`). Every colour and every kind still appears in training; only these
combinations are new. A caption naming one describes a composition the retrieval bank (built from the training
split) cannot hold, while the toy Stable Diffusion (trained on the whole world) and the stories and dialogues can
show it: the world's version of the paper's argument that generation covers what retrieval cannot (section 3.3).
"""


@dataclass(frozen=True, kw_only=True)
class Shape:
    """One drawn shape: its kind, colour name, size name and grid position name."""

    kind: str
    color: str
    size: str
    position: str


@dataclass(frozen=True, kw_only=True)
class Scene:
    """A whole image: a background name and the shapes drawn on it (main shape first in stories)."""

    background: str
    shapes: tuple[Shape, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (shapes as a list of dicts)."""
        return {"background": self.background, "shapes": [asdict(s) for s in self.shapes]}

    def shape_of_kind(self, kind: str) -> Shape | None:
        """The shape of the given kind, or None when the scene has none."""
        return next((s for s in self.shapes if s.kind == kind), None)

    def shape_at(self, position: str) -> Shape | None:
        """The shape in the given grid cell, or None when the cell is empty."""
        return next((s for s in self.shapes if s.position == position), None)


@dataclass(frozen=True, kw_only=True)
class StoryEvent:
    """One story step. ``action`` is intro/move/recolor/resize/background/join.

    ``target`` is "main" (shape 0), "other" (shape 1) or "scene"; ``value`` is the new position,
    colour, size or background name; ``shape`` is the newly introduced shape for intro/join.
    """

    action: str
    target: str
    value: str
    shape: Shape | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "action": self.action,
            "target": self.target,
            "value": self.value,
            "shape": asdict(self.shape) if self.shape else None,
        }


@dataclass(frozen=True, kw_only=True)
class StoryStep:
    """The event of one story step and the scene after it."""

    event: StoryEvent
    scene: Scene


@dataclass(frozen=True, kw_only=True)
class Story:
    """Five consecutive steps following one main shape (and maybe a second one that joins)."""

    steps: tuple[StoryStep, ...]


def sample_shape(rng: random.Random, *, exclude_kinds: set[str], free: list[str]) -> Shape:
    """A random shape of a kind not in ``exclude_kinds``, placed in one of the ``free`` cells."""
    kinds = [k for k in SHAPE_KINDS if k not in exclude_kinds]
    return Shape(
        kind=rng.choice(kinds), color=rng.choice(list(COLORS)), size=rng.choice(SIZES), position=rng.choice(free)
    )


def sample_scene(rng: random.Random, n_shapes: int | None = None) -> Scene:
    """A random scene of ``n_shapes`` (1..3, random when None) distinct-kind shapes in distinct cells."""
    n = n_shapes if n_shapes is not None else rng.choice((1, 1, 2, 2, 3))
    shapes: list[Shape] = []
    for _ in range(n):
        used = {s.position for s in shapes}
        free = [p for p in POSITIONS if p not in used]
        shapes.append(sample_shape(rng, exclude_kinds={s.kind for s in shapes}, free=free))
    return Scene(background=rng.choice(list(BACKGROUNDS)), shapes=tuple(shapes))


def novel_shapes(scene: Scene) -> list[int]:
    """Indices of the shapes of ``scene`` whose (colour, kind) is one of :data:`NOVEL_PAIRS`."""
    return [i for i, s in enumerate(scene.shapes) if (s.color, s.kind) in NOVEL_PAIRS]


ATTRIBUTES: tuple[str, ...] = ("position", "color", "kind", "size", "background")
"""What :func:`changed_scene` may change."""


def changed_scene(scene: Scene, rng: random.Random) -> Scene:
    """``scene`` with one attribute of its first shape, or its background, changed (a near miss of ``scene``).

    Contrastive training uses such pairs as hard negatives: telling them apart needs every attribute.
    """
    attribute = rng.choice(ATTRIBUTES)
    if attribute == "background":
        return replace(scene, background=rng.choice([b for b in BACKGROUNDS if b != scene.background]))
    shape = scene.shapes[0]
    choices = {
        "position": [p for p in POSITIONS if all(s.position != p for s in scene.shapes)],
        "color": list(COLORS),
        "kind": [k for k in SHAPE_KINDS if all(s.kind != k for s in scene.shapes)],
        "size": list(SIZES),
    }[attribute]
    value = rng.choice([v for v in choices if v != getattr(shape, attribute)] or [getattr(shape, attribute)])
    return replace(scene, shapes=(replace(shape, **{attribute: value}), *scene.shapes[1:]))


def apply_event(scene: Scene, event: StoryEvent) -> Scene:
    """The scene after ``event`` (pure function; the input scene is not modified)."""
    if event.action == "background":
        return replace(scene, background=event.value)
    if event.action == "join":
        assert event.shape is not None
        return replace(scene, shapes=scene.shapes + (event.shape,))
    field = {"move": "position", "recolor": "color", "resize": "size"}[event.action]
    index = 0 if event.target == "main" else 1
    shapes = list(scene.shapes)
    shapes[index] = replace(shapes[index], **{field: event.value})
    return replace(scene, shapes=tuple(shapes))


def _change_value(rng: random.Random, scene: Scene, action: str, index: int) -> str:
    """A new value for ``action`` on shape ``index`` that differs from its current one."""
    shape = scene.shapes[index]
    if action == "move":
        used = {s.position for s in scene.shapes}
        return rng.choice([p for p in POSITIONS if p not in used])
    if action == "recolor":
        return rng.choice([c for c in COLORS if c != shape.color])
    return "large" if shape.size == "small" else "small"


def _sample_event(rng: random.Random, scene: Scene, *, last: bool) -> StoryEvent:
    """One random change. The last step always changes the main shape (so it needs context)."""
    has_other = len(scene.shapes) > 1
    options = ["move", "move", "recolor", "recolor", "resize"]
    if not last:
        options += ["background", "background"] + ([] if has_other else ["join", "join", "join"])
        options += ["other_move", "other_recolor"] if has_other else []
    choice = rng.choice(options)
    if choice == "background":
        return StoryEvent(
            action="background", target="scene", value=rng.choice([b for b in BACKGROUNDS if b != scene.background])
        )
    if choice == "join":
        used = {s.position for s in scene.shapes}
        shape = sample_shape(rng, exclude_kinds={scene.shapes[0].kind}, free=[p for p in POSITIONS if p not in used])
        return StoryEvent(action="join", target="other", value=shape.kind, shape=shape)
    target, action = ("other", choice[6:]) if choice.startswith("other_") else ("main", choice)
    value = _change_value(rng, scene, action, 0 if target == "main" else 1)
    return StoryEvent(action=action, target=target, value=value)


def sample_story(rng: random.Random) -> Story:
    """A five-step story: an intro scene with one main shape, then four changes."""
    main = sample_shape(rng, exclude_kinds=set(), free=list(POSITIONS))
    scene = Scene(background=rng.choice(list(BACKGROUNDS)), shapes=(main,))
    steps = [StoryStep(event=StoryEvent(action="intro", target="main", value=main.kind, shape=main), scene=scene)]
    for i in range(1, STORY_LENGTH):
        event = _sample_event(rng, scene, last=i == STORY_LENGTH - 1)
        scene = apply_event(scene, event)
        steps.append(StoryStep(event=event, scene=scene))
    return Story(steps=tuple(steps))
