"""Benchmark datasets: VIST stories, VisDial dialogs and CC3M validation pairs, read from their released formats.

* **VIST** (GILL paper section 4.1, Table 1; docs/official-gill.md §6.1): the story-in-sequence JSON
  (``sis/val.story-in-sequence.json``, any split). A story's annotations are grouped by ``story_id`` and ordered
  by ``worker_arranged_photo_order`` (the official script keeps file order, a bug it flags: official §8.16).
  The caption is the processed ``text`` field, as officially. Photos are found as
  ``{photo_flickr_id}.{jpg,jpeg,png,gif}`` in the images folder.
* **VisDial** (paper section 4.2, Table 2; official §6.2): ``visdial_1.0_val.json`` with its question and
  answer pools; images ``VisualDialog_val2018_{image_id:012d}.jpg``. Prompt lines ``Q: {question}?`` and
  ``A: {answer}`` for the first R rounds, joined with newlines, as officially.
* **CC3M validation**: caption and image of each sample of the workdir's ``val`` image shards.

A malformed file is one :class:`~gill.errors.InputError` listing every problem. A *sample* whose images are
missing is not an error: it is returned with the missing paths as ``None`` and the benchmark skips and counts it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from gill.data.precompute import decode_image
from gill.data.shards import complete_image_shards, index_shard, iter_shard_samples, read_samples
from gill.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
"""Extensions tried, in order, for a VIST photo id (the official download script writes ``.png``)."""
VIST_SETTINGS = ("1cap", "5cap", "5cap4img")
"""Paper Table 1: last caption only; all captions; all captions and every image but the last."""
VISDIAL_IMAGE = "VisualDialog_val2018_{image_id:012d}.jpg"
MAX_PROBLEMS = 20
"""At most this many problems are listed in one error (then a count of the rest)."""


@dataclass(frozen=True, kw_only=True)
class VistStory:
    """One VIST story in worker-arranged order: its captions, photo ids and photo files (None: not found)."""

    story_id: str
    captions: tuple[str, ...]
    photo_ids: tuple[str, ...]
    image_paths: tuple[Path | None, ...]

    @property
    def target_path(self) -> Path | None:
        """The ground-truth last image (what every setting asks the model to produce)."""
        return self.image_paths[-1]


@dataclass(frozen=True, kw_only=True)
class DialogRound:
    """One VisDial question and its ground-truth answer."""

    question: str
    answer: str


@dataclass(frozen=True, kw_only=True)
class VisDialSample:
    """One VisDial dialog: the image it is about (None: not found) and its rounds."""

    image_id: int
    caption: str
    rounds: tuple[DialogRound, ...]
    image_path: Path | None

    def dialog_text(self, rounds: int) -> str:
        """``Q: {question}?`` / ``A: {answer}`` lines of the first ``rounds`` rounds (official §6.2)."""
        lines = []
        for r in self.rounds[:rounds]:
            lines += [f"Q: {r.question.rstrip('?')}?", f"A: {r.answer}"]
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class Cc3mSample:
    """One CC3M validation pair from the workdir's image shards."""

    key: str
    caption: str
    shard: Path
    url: str | None = None
    """Where img2dataset fetched the image (a ``file://`` url in the synthetic world)."""


# -- VIST ------------------------------------------------------------------------------------------------------------


def _load_json(path: Path, what: str, hint: str) -> Any:
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist", [], hint=hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} {str(path)!r} is not readable JSON", [str(err)], hint=hint) from err


def _images_index(folder: Path, what: str) -> dict[str, Path]:
    """File stem -> path for every image file directly in ``folder`` (first suffix of IMAGE_SUFFIXES wins)."""
    if not folder.is_dir():
        raise InputError(f"{what} {str(folder)!r} is not a folder", [], hint="pass the folder holding the images")
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix in rank and (path.stem not in found or rank[suffix] < rank[found[path.stem].suffix.lower()]):
            found[path.stem] = path
    return found


def _raise_problems(message: str, problems: list[str], hint: str) -> None:
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise InputError(message, shown, hint=hint)


VIST_FIELDS = ("story_id", "photo_flickr_id", "worker_arranged_photo_order", "text")


def read_vist(sis_json: str | Path, images_dir: str | Path, *, limit: int | None = None) -> list[VistStory]:
    """The stories of a VIST SIS file, in file order of their first annotation (the first ``limit`` of them).

    Raises:
        InputError: the file is missing, not JSON, not an SIS file, or has malformed annotations (all listed).
    """
    path = Path(sis_json)
    hint = "pass the story-in-sequence JSON of VIST (e.g. sis/val.story-in-sequence.json) with --sis-json"
    document = _load_json(path, "VIST SIS file", hint)
    annotations = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f"VIST SIS file {str(path)!r} has no 'annotations' list", [], hint=hint)
    stories: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for i, entry in enumerate(annotations):
        item = entry[0] if isinstance(entry, list) and entry else entry
        if not isinstance(item, dict):
            problems.append(f"annotations[{i}]: expected a one-element list holding an object")
            continue
        missing = [f for f in VIST_FIELDS if f not in item]
        if missing:
            problems.append(f"annotations[{i}]: missing {', '.join(missing)}")
            continue
        if not isinstance(item["worker_arranged_photo_order"], int):
            problems.append(f"annotations[{i}]: worker_arranged_photo_order must be an integer")
            continue
        stories.setdefault(str(item["story_id"]), []).append(item)
    for story_id, items in stories.items():
        orders = sorted(item["worker_arranged_photo_order"] for item in items)
        if orders != list(range(len(items))) or len(items) < 2:
            problems.append(f"story {story_id}: photo orders {orders} are not 0..n-1 with n >= 2")
    _raise_problems(f"VIST SIS file {str(path)!r} is malformed", problems, hint)
    index = _images_index(Path(images_dir), "VIST images folder")
    result = []
    for story_id, items in list(stories.items())[: limit if limit is not None else None]:
        items = sorted(items, key=lambda item: item["worker_arranged_photo_order"])
        ids = tuple(str(item["photo_flickr_id"]) for item in items)
        result.append(
            VistStory(
                story_id=story_id,
                captions=tuple(str(item["text"]).strip() for item in items),
                photo_ids=ids,
                image_paths=tuple(index.get(pid) for pid in ids),
            )
        )
    logger.info("VIST: %d stories from %s (%d in the file)", len(result), path, len(stories))
    return result


def vist_prompt(story: VistStory, setting: str, images: list[Image.Image] | None = None) -> list[str | Image.Image]:
    """GILL's prompt for a VIST setting (paper Table 1; official §6.1 step 4).

    ``1cap``: the last caption. ``5cap``: all captions as one text. ``5cap4img``: ``[cap1, img1, ..., cap4, img4,
    cap5]`` (``images`` = the first n-1 photos, loaded).
    """
    if setting == "1cap":
        return [story.captions[-1]]
    if setting == "5cap":
        return [" ".join(story.captions)]
    if setting == "5cap4img":
        if images is None or len(images) != len(story.captions) - 1:
            raise ValueError(f"setting 5cap4img needs the story's first {len(story.captions) - 1} images")
        prompt: list[str | Image.Image] = []
        for caption, image in zip(story.captions[:-1], images, strict=True):
            prompt += [caption, image]
        return [*prompt, story.captions[-1]]
    raise ValueError(f"unknown VIST setting {setting!r}; known: {', '.join(VIST_SETTINGS)}")


def vist_text(story: VistStory, setting: str) -> str:
    """What a text-only baseline (Stable Diffusion, CLIP retrieval) reads: the last caption, or every caption
    joined (SD's and CLIP's tokenizers truncate at 77 tokens)."""
    return story.captions[-1] if setting == "1cap" else " ".join(story.captions)


def context_images(story: VistStory, setting: str) -> tuple[Path | None, ...]:
    """The prompt images a setting needs (``5cap4img``: all but the last photo)."""
    return story.image_paths[:-1] if setting == "5cap4img" else ()


# -- VisDial ---------------------------------------------------------------------------------------------------------


def read_visdial(dialogs_json: str | Path, images_dir: str | Path, *, limit: int | None = None) -> list[VisDialSample]:
    """The dialogs of a VisDial 1.0 file (the first ``limit``), with their image files (None where missing).

    Raises:
        InputError: the file is missing, not JSON, or a dialog is malformed (all problems listed).
    """
    path = Path(dialogs_json)
    hint = "pass VisDial's visdial_1.0_val.json (or another split's file) with --dialogs-json"
    document = _load_json(path, "VisDial file", hint)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("questions", "answers", "dialogs")
    ):
        raise InputError(f"VisDial file {str(path)!r} has no data.questions/answers/dialogs lists", [], hint=hint)
    questions, answers = data["questions"], data["answers"]
    problems: list[str] = []
    samples = []
    images = Path(images_dir)
    if not images.is_dir():
        raise InputError(f"VisDial images folder {str(images)!r} is not a folder", [], hint="pass it with --images")
    for i, dialog in enumerate(data["dialogs"][: limit if limit is not None else None]):
        rounds, dialog_problems = _dialog_rounds(dialog, questions, answers, f"data.dialogs[{i}]")
        problems += dialog_problems
        if dialog_problems:
            continue
        image_id = int(dialog["image_id"])
        image = images / VISDIAL_IMAGE.format(image_id=image_id)
        samples.append(
            VisDialSample(
                image_id=image_id,
                caption=str(dialog.get("caption", "")),
                rounds=rounds,
                image_path=image if image.is_file() else None,
            )
        )
    _raise_problems(f"VisDial file {str(path)!r} is malformed", problems, hint)
    logger.info("VisDial: %d dialogs from %s", len(samples), path)
    return samples


def _dialog_rounds(dialog: Any, questions: list, answers: list, where: str) -> tuple[tuple[DialogRound, ...], list]:
    if not isinstance(dialog, dict) or not isinstance(dialog.get("dialog"), list) or "image_id" not in dialog:
        return (), [f"{where}: expected an object with image_id and a dialog list"]
    if not isinstance(dialog["image_id"], int):
        return (), [f"{where}.image_id: must be an integer, got {dialog['image_id']!r}"]
    rounds, problems = [], []
    for r, turn in enumerate(dialog["dialog"]):
        q, a = (turn.get("question"), turn.get("answer")) if isinstance(turn, dict) else (None, None)
        if not (isinstance(q, int) and 0 <= q < len(questions)) or not (isinstance(a, int) and 0 <= a < len(answers)):
            problems.append(f"{where}.dialog[{r}]: question/answer must index the pools, got {q!r}/{a!r}")
            continue
        rounds.append(DialogRound(question=str(questions[q]), answer=str(answers[a])))
    return tuple(rounds), problems


def visdial_setting(rounds: int) -> str:
    """Setting name of an R-round context: ``1round``, ``5rounds``, ``10rounds``."""
    return f"{rounds}round" if rounds == 1 else f"{rounds}rounds"


# -- CC3M validation -------------------------------------------------------------------------------------------------


def read_cc3m_val(images: str | Path, *, limit: int | None = None) -> list[Cc3mSample]:
    """Captions of the complete image shards in folder ``images`` (a CC3M split), in shard and key order (the
    first ``limit``)."""

    shards = complete_image_shards(Path(images))
    if not shards:
        raise InputError(
            f"no complete CC3M image shards under {images}",
            [],
            hint="download the split first: gill data download --split val",
        )
    samples: list[Cc3mSample] = []
    for shard in shards:
        for sample in iter_shard_samples(index_shard(shard)):
            url = sample.meta.get("url")
            samples.append(
                Cc3mSample(key=sample.key, caption=sample.caption, shard=shard, url=str(url) if url else None)
            )
            if limit is not None and len(samples) >= limit:
                return samples
    return samples


def cc3m_image(sample: Cc3mSample) -> Image.Image:
    """The RGB image of a CC3M sample (InputError if its shard no longer holds it or it cannot be decoded)."""

    index = index_shard(sample.shard)
    if sample.key not in index.members:
        raise InputError(f"image shard {sample.shard} no longer holds sample {sample.key!r}", [])
    return decode_image(read_samples(index, [sample.key])[0], sample.shard.name)


# -- images ----------------------------------------------------------------------------------------------------------


class UnreadableImage(Exception):
    """An image file is missing or cannot be decoded (the benchmark skips the sample and counts it)."""


def load_image(path: Path | None) -> Image.Image:
    """Open an image file as RGB, or raise :class:`UnreadableImage` saying why."""
    if path is None:
        raise UnreadableImage("image file not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path.name}: {err}") from err


def load_images(paths: tuple[Path | None, ...]) -> Iterator[Image.Image]:
    """Each of ``paths`` opened as RGB (UnreadableImage at the first that fails)."""
    for path in paths:
        yield load_image(path)
