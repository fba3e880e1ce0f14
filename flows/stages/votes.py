"""SIMULATED judges: an answer-key panel for the shapes world, clearly apart from people (paper section 3.3).

GILL's decision classifier learns "retrieve or generate?" from human judgements of the two candidate images. On
the embedded default there are no people at hand, but the world has an answer key: every world prompt comes with
its true scene (``items.scene``), and :mod:`eval.scene_metric` reads any image back into a scene. This module is a
panel of ``judges`` (5) simulated judges that vote through the same store API as people
(:meth:`annotations.store.JudgingStore.submit_vote`), in their own panel ``simulated``: their votes never take a
person's ``k`` slot and never mix with human votes unless a command asks for the simulated panel by name.

How a simulated judge answers one item (all seeded by ``(seed, judge, item)``, so the votes reproduce exactly):

* **Alignment** ("which image matches the prompt better?"): each image is scored against the prompt's scene with
  :func:`eval.scene_metric.score_image` (the mean of background, colour, cell, size and kind right). The judge
  picks the higher-scoring side, or ``same`` when the two scores differ by less than the judge's tie margin.
* **Realism** ("which image is more realistic?"): the world's "real photos" are its clean renders, so an image is
  as realistic as it is close to the render of what it shows: ``1 - mean |image - render(read_scene(image))|``
  (64 x 64, RGB in 0..1). Higher wins, ``same`` under ``realism_margin``.
* **Noise**: with probability ``noise`` a judge ignores the key and answers uniformly at random (left, right,
  same), independently per question; and the tie margins differ between judges (spread evenly over
  ``tie_margin * [0.5, 1.5]``). Agreement is therefore high but not perfect, and the leave-one-judge-out
  baseline of :func:`annotations.aggregate.human_baseline` measures it like the human one.

These are the settings, stated once and not tuned to any result: ``noise = 0.15``, ``tie_margin = 0.1`` (half a
scene attribute of five), ``realism_margin = 0.01``, seed 0.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from annotations.store import CHOICES, SIMULATED_PANEL, Item, JudgingStore
from eval.scene_answers import scene_from_dict
from eval.scene_metric import WORK_SIZE, ObjectReading, read_scene, score_scene, to_work_array
from flows.workdir import Workdir
from gill.errors import InputError
from gill.synth.render import render_scene
from gill.synth.scenes import Scene, Shape
from gill.utils.paths import resolve_stored

logger = logging.getLogger(__name__)

JUDGE_NAME = "simulated-judge-{n}"
"""Names of the simulated judges (1-based); every output that lists judges shows them with this prefix."""


@dataclass(frozen=True, kw_only=True)
class PanelConfig:
    """The simulated panel's settings (see the module docstring for what each one does)."""

    judges: int = 5
    """Simulated judges (at least 2)."""
    seed: int = 0
    """Seed of the judges' noise."""
    noise: float = 0.15
    """Probability that a judge answers at random instead of by the answer key."""
    tie_margin: float = 0.1
    """Alignment scores closer than this (per judge, spread over 0.5-1.5 times it) are judged the same."""
    realism_margin: float = 0.01
    """Realism scores closer than this are judged the same."""

    def __post_init__(self) -> None:
        problems = []
        if self.judges < 2:
            problems.append(f"judges={self.judges} (at least 2, so leave-one-out agreement exists)")
        if not 0.0 <= self.noise <= 1.0:
            problems.append(f"noise={self.noise} (a probability in [0, 1])")
        if self.tie_margin < 0 or self.realism_margin < 0:
            problems.append(f"tie_margin={self.tie_margin}, realism_margin={self.realism_margin} (not negative)")
        if problems:
            raise InputError("invalid simulated panel settings", problems)

    def judge_margin(self, judge: int) -> float:
        """The alignment tie margin of judge ``judge`` (0-based): spread over ``tie_margin * [0.5, 1.5]``."""
        return self.tie_margin * (0.5 + judge / max(self.judges - 1, 1))


@dataclass(frozen=True, kw_only=True)
class ImageEvidence:
    """What the answer key says about one side's image."""

    alignment: float
    """Scene-metric score against the prompt's scene (0..1)."""
    realism: float
    """1 - mean absolute difference to the render of its own reading (0..1)."""


@dataclass(frozen=True, kw_only=True)
class PanelSummary:
    """What :func:`run_simulated_panel` did."""

    items: int
    """Items with a scene (judged)."""
    votes: int
    """Votes written in this call (items already judged by a judge are kept)."""
    judges: tuple[str, ...]
    skipped: int
    """Items without a scene (not world prompts): simulated judges cannot judge them."""
    config: PanelConfig


def _to_shape(reading: ObjectReading) -> Shape:
    return Shape(kind=reading.kind, color=reading.color, size=reading.size, position=reading.position)


def image_evidence(image: Image.Image, scene: Scene) -> ImageEvidence:
    """The alignment and realism evidence of ``image`` for a prompt showing ``scene``."""
    reading = read_scene(image)
    alignment = score_scene(reading, scene).score
    # a reading can hold more objects than a scene may; keep distinct cells so the render is a valid world scene
    shapes, cells = [], set()
    for obj in reading.objects:
        if obj.position not in cells:
            cells.add(obj.position)
            shapes.append(_to_shape(obj))
    rerender = render_scene(Scene(background=reading.background, shapes=tuple(shapes)), size=WORK_SIZE)
    a, b = to_work_array(image.convert("RGB")), to_work_array(rerender)
    realism = 1.0 - float(np.abs(a - b).mean()) / 255.0  # to_work_array gives floats in 0..255
    return ImageEvidence(alignment=float(alignment), realism=realism)


@lru_cache(maxsize=4096)
def _evidence_cached(path: str, mtime_ns: int, scene_json: str) -> ImageEvidence:
    with Image.open(path) as image:
        return image_evidence(image.convert("RGB"), scene_from_dict(json.loads(scene_json)))


def item_evidence(workdir: Path, item: Item) -> dict[str, ImageEvidence]:
    """The evidence of both sides of a world item (``left``/``right``)."""
    if not item.scene:
        raise ValueError(f"item {item.id} has no scene: simulated judges judge world prompts only")
    out = {}
    for side in ("left", "right"):
        path = resolve_stored(item.image_for(side), workdir)
        out[side] = _evidence_cached(str(path), path.stat().st_mtime_ns, item.scene)
    return out


def _prefer(left: float, right: float, margin: float) -> str:
    if abs(left - right) < margin:
        return "same"
    return "left" if left > right else "right"


def simulated_vote(
    evidence: dict[str, ImageEvidence], config: PanelConfig, judge: int, item_id: int
) -> tuple[str, str]:
    """``(alignment, realism)`` of simulated judge ``judge`` (0-based) on an item: the answer key, a per-judge tie
    margin, and seeded noise (see the module docstring)."""
    rng = random.Random(f"gill-simulated-judge:{config.seed}:{judge}:{item_id}")
    alignment = _prefer(evidence["left"].alignment, evidence["right"].alignment, config.judge_margin(judge))
    realism = _prefer(evidence["left"].realism, evidence["right"].realism, config.realism_margin)
    if rng.random() < config.noise:
        alignment = rng.choice(CHOICES)
    if rng.random() < config.noise:
        realism = rng.choice(CHOICES)
    return alignment, realism


def run_simulated_panel(
    workdir: str | os.PathLike[str], config: PanelConfig | None = None, store: JudgingStore | None = None
) -> PanelSummary:
    """Let the simulated panel judge every world item of the store (resumes: votes already there are kept)."""
    config = config or PanelConfig()
    workdir = Path(workdir)
    store = store or JudgingStore(workdir)
    judges = []
    existing = {j.name: j for j in store.judges()}
    for n in range(config.judges):
        name = JUDGE_NAME.format(n=n + 1)
        judge = existing.get(name) or store.add_judge(name, panel=SIMULATED_PANEL)[0]
        if judge.panel != SIMULATED_PANEL:
            raise InputError(
                f"a judge named {name!r} exists in panel {judge.panel!r}",
                [],
                hint="simulated judges need their own names; rename that judge",
            )
        judges.append(judge)
    judgeable = [i for i in store.items() if i.has_images()]
    items = [i for i in judgeable if i.scene]
    skipped = len(judgeable) - len(items)
    voted = {judge.id: {v.item_id for v in store.votes_of(judge)} for judge in judges}
    written = 0
    for item in items:
        evidence = None
        for n, judge in enumerate(judges):
            if item.id in voted[judge.id]:
                continue
            evidence = evidence or item_evidence(workdir, item)
            store.submit_vote(judge, item.id, *simulated_vote(evidence, config, n, item.id))
            written += 1
    logger.info(
        "simulated panel: %d vote(s) on %d world item(s) by %d simulated judges (%d items without a scene)",
        written,
        len(items),
        len(judges),
        skipped,
    )
    return PanelSummary(
        items=len(items), votes=written, judges=tuple(j.name for j in judges), skipped=skipped, config=config
    )


def run(workdir: Workdir, config: PanelConfig | None = None) -> PanelSummary:
    """Stage ``votes`` on the embedded default: the SIMULATED panel judges every world item of the judging store
    (resumes: votes already there are kept). Other votes (people's, a TSV) need no stage: the decision stage reads
    them."""
    return run_simulated_panel(workdir.root, config)
