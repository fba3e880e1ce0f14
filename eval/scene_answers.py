"""The answer key of a synthetic shapes world: which scene each benchmark image shows, for the scene metric.

A world built by ``gill data synth`` (:mod:`gill.synth.world`) writes ``scenes.json`` beside its data: the exact
background and shapes of every CC3M image, every VIST story step and every VisDial image. The benchmarks read the
real file formats and know only image paths, so the key is looked up by path: :func:`scene_target` walks up from
an image (or a ``file://`` url of one) to the folder holding the world's ``world.json`` (written by
``gill.synth``), loads that world's ``scenes.json`` once, and returns the image's :class:`SceneTarget`.

What a sample's text describes (``described``): a VIST story is about its main shape (shape 0; the last step of
every story changes it), so VIST images are scored on that shape; CC3M captions and VisDial dialogs are about the
whole scene, so all shapes count. Images outside a shapes world (real data) have no target: their scene columns
stay NULL, never guessed.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from gill.synth.scenes import Scene, Shape
from gill.synth.world import MANIFEST, REL, SCENES, visdial_image_relpath, vist_image_relpath

logger = logging.getLogger(__name__)

GENERATOR = "gill.synth"
"""The ``generator`` field of a shapes world's ``world.json``."""
MAX_LEVELS = 8
"""How many folders up from an image a world root is looked for."""


@dataclass(frozen=True, kw_only=True)
class SceneTarget:
    """The scene an image shows and which of its shapes the sample's text describes."""

    scene: Scene
    described: tuple[int, ...] | None
    """Indices of the described shapes (None: all of them)."""


def scene_from_dict(data: dict) -> Scene:
    """A :class:`Scene` from its ``to_dict`` form (as stored in ``scenes.json``)."""
    return Scene(background=data["background"], shapes=tuple(Shape(**s) for s in data["shapes"]))


def world_targets(root: Path) -> dict[str, SceneTarget]:
    """Every image of the world at ``root``, by path relative to ``root``, with its target."""
    document = json.loads((root / SCENES).read_text(encoding="utf-8"))
    targets: dict[str, SceneTarget] = {}
    for split, entries in document.get("cc3m", {}).items():
        for entry in entries:
            relpath = f"{REL['cc3m_images_dir']}/{split}/{int(entry['index']):07d}.jpg"
            targets[relpath] = SceneTarget(scene=scene_from_dict(entry["scene"]), described=None)
    for story in document.get("vist", []):
        for step in story["steps"]:
            relpath = vist_image_relpath(str(step["photo_flickr_id"]))
            targets[relpath] = SceneTarget(scene=scene_from_dict(step["scene"]), described=(0,))
    for dialog in document.get("visdial", []):
        relpath = visdial_image_relpath(int(dialog["image_id"]))
        targets[relpath] = SceneTarget(scene=scene_from_dict(dialog["scene"]), described=None)
    return targets


def find_world_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` holding a shapes world's ``world.json`` and ``scenes.json``."""
    for folder in list(path.parents)[:MAX_LEVELS]:
        manifest = folder / MANIFEST
        if manifest.is_file() and (folder / SCENES).is_file():
            try:
                if json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR:
                    return folder
            except (OSError, ValueError):
                return None
    return None


@functools.lru_cache(maxsize=8)
def _cached_targets(root: str, mtime_ns: int) -> dict[str, SceneTarget]:
    logger.info("scene metric: answer key %s", Path(root) / SCENES)
    return world_targets(Path(root))


def image_path(path_or_url: str | Path | None) -> Path | None:
    """A local path from a path or a ``file://`` url (None for other urls and for None)."""
    if path_or_url is None:
        return None
    text = str(path_or_url)
    if "://" in text:
        parsed = urlparse(text)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else None
    return Path(text)


def scene_target(path_or_url: str | Path | None) -> SceneTarget | None:
    """The target of an image of a shapes world, or None (real data, or an image the world does not list)."""
    path = image_path(path_or_url)
    if path is None:
        return None
    path = path.resolve()
    root = find_world_root(path)
    if root is None:
        return None
    targets = _cached_targets(str(root), (root / SCENES).stat().st_mtime_ns)
    return targets.get(path.relative_to(root).as_posix())
