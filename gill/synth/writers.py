"""Serialise planned shapes-world data into the real file formats of CC3M, VIST and VisDial.

* :func:`cc3m_tsv_text` mirrors Google's Conceptual Captions 3M distribution
  (``Train_GCC-training.tsv``): two tab-separated columns ``caption<TAB>url``, no header, ``\\n`` line ends.
* :func:`vist_sis_document` mirrors the VIST ``sis/val.story-in-sequence.json`` file: top-level
  ``info``/``type``/``albums``/``images``/``annotations``, each annotation a one-element list.
* :func:`visdial_document` mirrors ``visdial_1.0_val.json``: ``version``/``split``/``data`` with
  question and answer pools and dialogs of 10 rounds holding 100 answer options each.

Every file goes through :mod:`gill.utils.io` atomic writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gill.synth.scenes import Scene, Story
from gill.synth.text import QA, answer_universe, vist_process
from gill.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

N_ANSWER_OPTIONS = 100
VIST_SETTING = "last-story"


@dataclass(frozen=True, kw_only=True)
class ImageJob:
    """One image to render: its path relative to the world root and the scene it shows."""

    relpath: str
    scene: Scene


@dataclass(frozen=True, kw_only=True)
class CC3MRow:
    """One CC3M pair: caption text and image URL."""

    caption: str
    url: str


@dataclass(frozen=True, kw_only=True)
class VistStoryRecord:
    """A planned VIST story: ids, the five photos (in story order), their sentences and true state."""

    story_id: str
    album_id: str
    worker_id: str
    photo_ids: tuple[str, ...]
    dates: tuple[str, ...]
    sentences: tuple[str, ...]
    story: Story


@dataclass(frozen=True, kw_only=True)
class VisDialRecord:
    """A planned VisDial dialog: COCO-like image id, caption, 10 rounds and the true scene."""

    image_id: int
    caption: str
    rounds: tuple[QA, ...]
    scene: Scene


def file_uri(root: Path, relpath: str) -> str:
    """``file://`` URI of ``root/relpath`` (``root`` must be absolute)."""
    return (root / relpath).as_uri()


def cc3m_tsv_text(rows: list[CC3MRow]) -> str:
    """CC3M TSV text: ``caption<TAB>url`` per line, no header, trailing newline."""
    for row in rows:
        if any(ch in row.caption for ch in "\t\r\n"):
            raise ValueError(f"caption contains a tab or newline: {row.caption!r}")
    return "".join(f"{row.caption}\t{row.url}\n" for row in rows)


def write_cc3m_tsv(path: Path, rows: list[CC3MRow]) -> Path:
    """Atomically write a CC3M-format TSV."""
    return atomic_write_text(path, cc3m_tsv_text(rows))


def _vist_album(record: VistStoryRecord) -> dict[str, Any]:
    """One VIST ``albums`` entry (field names as in the real SIS files)."""
    return {
        "id": record.album_id,
        "title": f"Shapes story {record.story_id}",
        "description": "A shape changes over five pictures.",
        "owner": "synthetic",
        "date_create": record.dates[0],
        "date_update": record.dates[-1],
        "photos": str(len(record.photo_ids)),
        "primary": record.photo_ids[0],
        "secret": record.album_id[-10:],
        "vist_label": "shapes",
        "farm": "1",
        "server": "1",
    }


def _vist_image(record: VistStoryRecord, k: int, root: Path, relpath: str) -> dict[str, Any]:
    """One VIST ``images`` entry for photo ``k`` of the story."""
    return {
        "id": record.photo_ids[k],
        "album_id": record.album_id,
        "title": f"shapes {k + 1}",
        "datetaken": record.dates[k],
        "url_o": file_uri(root, relpath),
        "tags": "shapes synthetic",
        "text": "",
        "license": "5",
        "secret": record.photo_ids[k][-8:],
        "media": "photo",
        "latitude": "0",
        "longitude": "0",
    }


def _vist_annotation(record: VistStoryRecord, k: int) -> list[dict[str, Any]]:
    """One VIST annotation (a one-element list, as in the real file) for story position ``k``."""
    return [
        {
            "story_id": record.story_id,
            "storylet_id": str(int(record.story_id) * 5 + k),
            "photo_flickr_id": record.photo_ids[k],
            "album_id": record.album_id,
            "worker_arranged_photo_order": k,
            "text": vist_process(record.sentences[k]),
            "original_text": record.sentences[k],
            "worker_id": record.worker_id,
            "setting": VIST_SETTING,
            "tier": "story-in-sequence",
        }
    ]


def shuffled_order(n: int, rng: random.Random) -> list[int]:
    """A random permutation of ``range(n)`` that is never the identity (for n > 1)."""
    order = list(range(n))
    rng.shuffle(order)
    if n > 1 and order == sorted(order):
        order[0], order[1] = order[1], order[0]
    return order


def vist_sis_document(
    records: list[VistStoryRecord], root: Path, image_relpath: dict[str, str], rng: random.Random
) -> dict[str, Any]:
    """The SIS JSON document. Each story's annotations are stored in a shuffled (never sorted) order,
    so consumers must sort by ``worker_arranged_photo_order`` as with the real data."""
    albums, images, annotations = [], [], []
    for record in records:
        albums.append(_vist_album(record))
        for k, pid in enumerate(record.photo_ids):
            images.append(_vist_image(record, k, root, image_relpath[pid]))
        annotations.extend(_vist_annotation(record, k) for k in shuffled_order(len(record.photo_ids), rng))
    return {
        "info": {
            "version": "1.0",
            "description": "Synthetic shapes-world VIST (story-in-sequence)",
            "date_created": "2016-04-01",
        },
        "type": "story-in-sequence",
        "albums": albums,
        "images": images,
        "annotations": annotations,
    }


class _Pool:
    """An insertion-ordered, deduplicated string pool (VisDial's ``questions`` / ``answers``)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    def items(self) -> list[str]:
        return list(self.index)


def _answer_options(gt: str, universe: list[str], rng: random.Random) -> tuple[list[str], int]:
    """100 distinct candidate answers with ``gt`` at a random index; returns (options, gt_index)."""
    distractors = rng.sample([a for a in universe if a != gt], N_ANSWER_OPTIONS - 1)
    gt_index = rng.randrange(N_ANSWER_OPTIONS)
    return distractors[:gt_index] + [gt] + distractors[gt_index:], gt_index


def visdial_document(records: list[VisDialRecord], rng: random.Random) -> dict[str, Any]:
    """The VisDial 1.0 val JSON document (questions without '?', pooled and deduplicated)."""
    questions, answers, universe = _Pool(), _Pool(), answer_universe()
    dialogs = []
    for record in records:
        rounds = []
        for qa in record.rounds:
            options, gt_index = _answer_options(qa.answer, universe, rng)
            rounds.append(
                {
                    "question": questions.add(qa.question),
                    "answer": answers.add(qa.answer),
                    "answer_options": [answers.add(a) for a in options],
                    "gt_index": gt_index,
                }
            )
        dialogs.append({"image_id": record.image_id, "caption": record.caption, "dialog": rounds})
    return {
        "version": "1.0",
        "split": "val2018",
        "data": {"questions": questions.items(), "answers": answers.items(), "dialogs": dialogs},
    }


def write_json(path: Path, document: Any) -> Path:
    """Atomically write ``document`` as stable, key-sorted JSON."""
    return atomic_write_json(path, document)


def write_image(path: Path, data: bytes) -> Path:
    """Atomically write encoded image bytes."""
    return atomic_write_bytes(path, data)
