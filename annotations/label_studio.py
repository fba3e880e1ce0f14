"""Label Studio: export the judging store as a Label Studio project, set it up over the HTTP API, import votes.

Checked against a real Label Studio 1.23.2 (``tests/test_label_studio_live.py`` runs one); see
``docs/label-studio.md`` for the setup a person follows.

* :func:`export_label_studio` writes ``tasks.json`` (Label Studio's task import format), ``label_config.xml`` and
  the images under neutral names (``images/<item id>-left.png`` / ``-right.png``: nothing says which one is
  generated). By default the tasks carry NO votes; ``votes="predictions"`` adds the store's votes as Label Studio
  *predictions* (``model_version`` ``gill:<judge>``), never as annotations: annotations belong to Label Studio
  users, and an annotation invented for a user that does not exist would be attributed to whoever imports it.
* Images are served by Label Studio's local-files storage: a task's image url is ``image_prefix`` (default
  ``/data/local-files/?d=``) + the image's path relative to ``LOCAL_FILES_DOCUMENT_ROOT``. The default document
  root is the export folder itself, so urls read ``/data/local-files/?d=images/00003-left.png``; start Label
  Studio with ``LOCAL_FILES_DOCUMENT_ROOT=<export folder>`` and ``LOCAL_FILES_SERVING_ENABLED=true`` and connect a
  local-files storage on ``<export folder>/images`` (Label Studio refuses a storage on the document root itself,
  and serves a file only to users of a project with a storage that contains it). :func:`setup_project` does the
  project, the storage and the task import through :class:`LabelStudioClient`.
* :func:`import_label_studio` reads Label Studio's ``JSON`` export (tasks with ``annotations``) and its
  ``JSON_MIN`` export (one flat row per annotation). Skipped (``was_cancelled``) and empty annotations are counted,
  not errors; real problems (an unknown ``gill_item_id``, an answer that is not Left / Right / About the same, a
  file that is not a list) are all reported at once and nothing is written. Votes are written in one transaction by
  :meth:`annotations.store.JudgingStore.import_named_votes`.

Judges are Label Studio users, named by their email. What Label Studio 1.23.2 writes:

* ``GET /api/projects/<id>/export`` (the quick export) gives ``completed_by`` as a bare user id in ``JSON`` and
  ``annotator`` as a bare id in ``JSON_MIN``;
* a snapshot export (``POST /api/projects/<id>/exports/`` with ``serialization_options.annotations__completed_by
  .only_id = false``, what :meth:`LabelStudioClient.export` asks for) gives ``completed_by`` as ``{"id", "email",
  ...}`` and ``annotator`` as the email;
* ``JSON_MIN`` leaves skipped (cancelled) annotations out entirely, so only the ``JSON`` export can count them.

A bare id is resolved through every email the file holds for that id (a ``completed_by`` object elsewhere,
``created_username`` = ``"<first> <last> <email>, <id>"``, task-level user objects) or through ``users`` (an id ->
email map, e.g. :meth:`LabelStudioClient.user_emails`); only when no email exists anywhere does the judge become
``label-studio-user-<id>``. Such a name is stable for one Label Studio instance only.

Authentication (Label Studio 1.23): personal access tokens (JWT refresh tokens, "Account & Settings" page or
``POST /api/token/``) are exchanged at ``/api/token/refresh/`` for a short-lived access token sent as
``Authorization: Bearer``; :class:`LabelStudioClient` does that (and refreshes on expiry) when the token looks like a
JWT. Legacy tokens (``Authorization: Token <t>``, e.g. the ``LABEL_STUDIO_USER_TOKEN`` of a user created at start)
only work when the organization allows them: new organizations in 1.23 do not, unless Label Studio was first started
with ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` (or ``--enable-legacy-api-token``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from annotations.store import HUMAN_PANEL, QUESTIONS, SIDES, Item, JudgingStore
from gill.errors import GillError, InputError
from gill.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from gill.utils.paths import resolve_stored

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
"""The Label Studio release this module is tested against (``make label-studio`` installs it)."""
DEFAULT_IMAGE_PREFIX = "/data/local-files/?d="
"""Label Studio's local-files url: ``?d=`` takes a path relative to ``LOCAL_FILES_DOCUMENT_ROOT``."""
TASKS_FILE = "tasks.json"
LABEL_CONFIG_FILE = "label_config.xml"
IMAGES_DIR = "images"
VOTE_MODES = ("none", "predictions")
MODEL_VERSION_PREFIX = "gill:"
"""Predictions carry ``model_version`` ``gill:<judge name>``."""
UNKNOWN_USER = "label-studio-user-{id}"
"""The judge name of a Label Studio user whose email appears nowhere (stable within one Label Studio only)."""
VENV_ENV = "GILL_LABEL_STUDIO_VENV"
"""Overrides where ``scripts/label_studio_env.sh`` keeps the Label Studio virtualenv."""

CHOICE_LABELS = {"left": "Left", "right": "Right", "same": "About the same"}
"""A side (how the store keeps an answer) -> the Choice value shown in Label Studio."""
_SIDE_OF_LABEL = {label: side for side, label in CHOICE_LABELS.items()}

LABEL_CONFIG = """<View>
  <Header value="$prompt" size="2"/>
  <View style="display: flex; gap: 24px; align-items: flex-start;">
    <View style="flex: 1 1 0; min-width: 0;">
      <Header value="Left" size="4"/>
      <Image name="left" value="$image_left" maxWidth="100%" smoothing="false"/>
    </View>
    <View style="flex: 1 1 0; min-width: 0;">
      <Header value="Right" size="4"/>
      <Image name="right" value="$image_right" maxWidth="100%" smoothing="false"/>
    </View>
  </View>
  <Header value="Which image matches the prompt better?" size="4"/>
  <Choices name="alignment" toName="left" choice="single" required="true" showInline="true">
    <Choice value="Left" hotkey="1"/>
    <Choice value="Right" hotkey="2"/>
    <Choice value="About the same" hotkey="3"/>
  </Choices>
  <Header value="Which image is more realistic?" size="4"/>
  <Choices name="realism" toName="left" choice="single" required="true" showInline="true">
    <Choice value="Left" hotkey="q"/>
    <Choice value="Right" hotkey="w"/>
    <Choice value="About the same" hotkey="e"/>
  </Choices>
</View>
"""
"""The labeling interface: the prompt on top, the two images side by side (each under its "Left"/"Right" header),
then the two required single-choice questions. Both Choices point at the left image (``toName`` must name one
object tag); the answer is about the pair."""


def default_venv_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``make label-studio`` (``scripts/label_studio_env.sh``) keeps Label Studio's own virtualenv:
    ``$GILL_LABEL_STUDIO_VENV``, else ``${XDG_CACHE_HOME:-~/.cache}/gill/label-studio-<version>``."""
    env = os.environ if environ is None else environ
    if env.get(VENV_ENV):
        return Path(env[VENV_ENV]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(cache).expanduser() / "gill" / f"label-studio-{LABEL_STUDIO_VERSION}"


def server_environment(
    document_root: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    legacy_tokens: bool = True,
) -> dict[str, str]:
    """The environment variables of a local Label Studio serving a gill export (merge them into ``os.environ``).

    Args:
        document_root: ``LOCAL_FILES_DOCUMENT_ROOT``: the export folder (or the ``document_root`` it was exported
            with). Local-files serving is switched on.
        data_dir: ``LABEL_STUDIO_BASE_DATA_DIR`` (database, secret key, uploads); Label Studio's default otherwise.
        username, password, token: ``LABEL_STUDIO_USERNAME`` / ``_PASSWORD`` / ``_USER_TOKEN``: the user
            ``label-studio start`` creates (an email; the token is a legacy token, at least 6 characters).
        legacy_tokens: ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN``: let the organization created at first start accept
            ``Authorization: Token <t>`` (1.23 refuses legacy tokens of new organizations otherwise).

    The version check against the package index and the usage analytics are switched off (the server works
    offline).
    """
    env = {
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(Path(document_root).resolve()),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    }
    if data_dir is not None:
        env["LABEL_STUDIO_BASE_DATA_DIR"] = str(Path(data_dir).resolve())
    for key, value in (("USERNAME", username), ("PASSWORD", password), ("USER_TOKEN", token)):
        if value:
            env[f"LABEL_STUDIO_{key}"] = value
    if legacy_tokens:
        env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] = "true"
    return env


# -- export ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelStudioExport:
    """What :func:`export_label_studio` wrote."""

    out_dir: Path
    tasks: Path
    label_config: Path
    images_dir: Path
    images: tuple[Path, ...]
    document_root: Path
    """The ``LOCAL_FILES_DOCUMENT_ROOT`` the image urls are relative to."""
    n_tasks: int
    n_predictions: int
    items_without_images: int = 0
    """Items left out because they have no image paths at all (e.g. prompts of imported official votes)."""

    def describe(self) -> str:
        """A few lines for the CLI."""
        lines = [
            f"{self.n_tasks} task(s), {len(self.images)} image(s), {self.n_predictions} prediction(s) in {self.out_dir}"
        ]
        if self.items_without_images:
            lines.append(f"{self.items_without_images} item(s) without images left out")
        lines.append(
            f"serve the images with LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT="
            f"{self.document_root} and a local-files storage on {self.images_dir}"
        )
        return "\n".join(lines)


def _result(alignment: str, realism: str) -> list[dict[str, Any]]:
    """A Label Studio ``result`` answering both questions (sides -> Choice values)."""
    return [
        {"from_name": q, "to_name": "left", "type": "choices", "value": {"choices": [CHOICE_LABELS[side]]}}
        for q, side in (("alignment", alignment), ("realism", realism))
    ]


def _image_name(item: Item, side: str, source: Path) -> str:
    return f"{item.id:05d}-{side}{source.suffix.lower() or '.png'}"


def export_label_studio(
    store: JudgingStore,
    out_dir: str | os.PathLike[str],
    *,
    votes: str = "none",
    image_prefix: str = DEFAULT_IMAGE_PREFIX,
    document_root: str | os.PathLike[str] | None = None,
    panel: str = HUMAN_PANEL,
) -> LabelStudioExport:
    """Write a Label Studio project for the store's items in ``out_dir``: ``tasks.json``, ``label_config.xml`` and
    ``images/<item id:05d>-left|right.<ext>``.

    Args:
        votes: ``"none"`` (default): tasks without votes. ``"predictions"``: every vote of ``panel`` becomes a
            prediction of its task with ``model_version`` ``gill:<judge name>`` (shown to annotators as a
            suggestion; never an annotation).
        panel: whose votes become predictions (``human`` by default; ``simulated`` names the answer-key judges,
            whose names say they are simulated).
        image_prefix: prepended to each image's path relative to ``document_root`` (Label Studio's local-files
            url by default; a full ``http://host:port/data/local-files/?d=`` works too).
        document_root: the ``LOCAL_FILES_DOCUMENT_ROOT`` Label Studio will run with; default ``out_dir`` itself.
            ``out_dir/images`` must lie strictly inside it (Label Studio refuses a storage on the root itself).

    Task ``data`` holds ``prompt``, ``image_left``, ``image_right`` and ``gill_item_id`` only: nothing tells which
    side shows the generated image. Items with no image paths at all are left out (counted); items whose image files
    are missing make the whole export fail with one :class:`InputError` naming every such item, before anything is
    written.
    """
    if votes not in VOTE_MODES:
        raise InputError(f"votes must be one of {', '.join(VOTE_MODES)}, got {votes!r}")
    out = Path(out_dir).resolve()
    root = Path(document_root).resolve() if document_root is not None else out
    images_dir = out / IMAGES_DIR
    if root not in images_dir.parents:
        raise InputError(
            f"the images folder {images_dir} is not inside the document root {root}",
            [],
            hint="Label Studio serves only files under LOCAL_FILES_DOCUMENT_ROOT: export into a folder "
            "inside it, or leave document_root unset (the export folder)",
        )

    items = [item for item in store.items() if item.has_images()]
    left_out = store.count_items() - len(items)
    if not items:
        raise InputError(
            f"{store.path} has no item with images to export",
            [],
            hint="build the candidates first (gill annotate build)",
        )
    problems, copies = [], []
    for item in items:
        missing = []
        for side in SIDES:
            rel = item.image_for(side)
            source = resolve_stored(rel, store.workdir)
            if source.is_file():
                copies.append((item, side, source))
            else:
                missing.append(f"{side} image {rel!r}")
        if missing:
            problems.append(f"item {item.id} ({item.prompt[:60]!r}): missing {' and '.join(missing)}")
    if problems:
        raise InputError(
            f"cannot export {len(problems)} item(s) to Label Studio: image files are missing under {store.workdir}",
            problems[:50] + _more(problems, 50),
            hint="rebuild the candidates (gill annotate build) or fix the paths",
        )

    predictions: dict[int, list[dict[str, Any]]] = {}
    if votes == "predictions":
        for judge in sorted(store.judges(panel), key=lambda j: j.name):
            for vote in store.votes_of(judge):
                predictions.setdefault(vote.item_id, []).append(
                    {
                        "model_version": f"{MODEL_VERSION_PREFIX}{judge.name}",
                        "result": _result(vote.alignment, vote.realism),
                    }
                )

    written, urls = [], {}
    for item, side, source in copies:
        target = images_dir / _image_name(item, side, source)
        written.append(atomic_write_bytes(target, source.read_bytes()))
        urls[(item.id, side)] = image_prefix + quote(target.relative_to(root).as_posix(), safe="/")
    tasks = []
    for item in items:
        task: dict[str, Any] = {
            "data": {
                "prompt": item.prompt,
                "image_left": urls[(item.id, "left")],
                "image_right": urls[(item.id, "right")],
                "gill_item_id": item.id,
            }
        }
        if item.id in predictions:
            task["predictions"] = predictions[item.id]
        tasks.append(task)
    config = atomic_write_text(out / LABEL_CONFIG_FILE, LABEL_CONFIG)
    tasks_path = atomic_write_json(out / TASKS_FILE, tasks)  # last: a complete tasks.json means the images are there
    n_predictions = sum(len(p) for p in predictions.values())
    logger.info("Label Studio export: %d task(s), %d prediction(s) in %s", len(tasks), n_predictions, out)
    return LabelStudioExport(
        out_dir=out,
        tasks=tasks_path,
        label_config=config,
        images_dir=images_dir,
        images=tuple(written),
        document_root=root,
        n_tasks=len(tasks),
        n_predictions=n_predictions,
        items_without_images=left_out,
    )


def _more(problems: Sequence[str], limit: int) -> list[str]:
    return [f"... and {len(problems) - limit} more"] if len(problems) > limit else []


# -- import ---------------------------------------------------------------------------------------------------------

SKIP_CANCELLED = "skipped (cancelled) in Label Studio"
SKIP_EMPTY = "submitted with no answer"
SKIP_SUPERSEDED = "superseded by a later annotation of the same user on the same task"


@dataclass(frozen=True)
class LabelStudioVotes:
    """The votes read from a Label Studio export (before they are written)."""

    format: str
    """``JSON`` (tasks with annotations), ``JSON_MIN`` (flat rows) or ``empty``."""
    records: tuple[tuple[str, int, str, str], ...]
    """``(judge name, item id, alignment side, realism side)``, sorted by judge name then item id."""
    skipped: Mapping[str, int]
    """Annotations not turned into votes, by reason."""
    tasks_without_annotations: int = 0


@dataclass(frozen=True)
class LabelStudioImport:
    """What :func:`import_label_studio` did."""

    path: Path
    format: str
    votes: int
    """Votes written (each replaces that judge's earlier vote on the item)."""
    skipped: int
    """Annotations not imported (cancelled, empty, superseded); see ``skipped_by_reason``."""
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)
    judges: tuple[str, ...] = ()
    """The judges that got votes, by name."""
    tasks_without_annotations: int = 0

    @property
    def reasons(self) -> tuple[str, ...]:
        """``"<count> <reason>"`` per skip reason."""
        return tuple(f"{n} {reason}" for reason, n in sorted(self.skipped_by_reason.items()))

    def describe(self) -> str:
        """One line for the CLI."""
        text = f"{self.votes} vote(s) by {len(self.judges)} judge(s) from {self.path} ({self.format})"
        if self.skipped:
            text += f"; {self.skipped} annotation(s) skipped: {'; '.join(self.reasons)}"
        if self.tasks_without_annotations:
            text += f"; {self.tasks_without_annotations} task(s) without annotations"
        return text


_CREATED_USERNAME = re.compile(r"^(?P<before>.*?)\s*(?P<email>[^\s,]+@[^\s,]+),\s*(?P<id>\d+)\s*$")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _collect_emails(rows: list[Any], users: Mapping[int, str] | None) -> dict[int, str]:
    """Every ``user id -> email`` the export states anywhere (then ``users``, which wins)."""
    found: dict[int, str] = {}

    def visit_user(obj: Any) -> None:
        if isinstance(obj, dict):
            uid, email = _as_int(obj.get("id")), obj.get("email")
            if uid is not None and isinstance(email, str) and email.strip():
                found.setdefault(uid, email.strip())
        elif isinstance(obj, list):
            for entry in obj:
                visit_user(entry)

    for row in rows:
        if not isinstance(row, dict):
            continue
        for key in ("updated_by", "created_by", "comment_authors", "completed_by"):
            visit_user(row.get(key))
        for ann in row.get("annotations") or row.get("completions") or []:
            if not isinstance(ann, dict):
                continue
            for key in ("completed_by", "created_by", "updated_by", "last_created_by"):
                visit_user(ann.get(key))
            match = _CREATED_USERNAME.match(str(ann.get("created_username") or ""))
            if match:
                found.setdefault(int(match["id"]), match["email"])
    for uid, email in (users or {}).items():
        found[int(uid)] = email
    return found


def _judge_name(who: Any, emails: Mapping[int, str]) -> str | None:
    """The judge name of a ``completed_by`` / ``annotator`` value: its email, else ``label-studio-user-<id>``."""
    if isinstance(who, dict):
        email = who.get("email")
        if isinstance(email, str) and email.strip():
            return email.strip()
        who = who.get("id")
    if isinstance(who, str) and "@" in who:
        return who.strip()
    uid = _as_int(who)
    if uid is None:
        return None
    return emails.get(uid) or UNKNOWN_USER.format(id=uid)


def _answer(value: Any) -> str | None | bool:
    """A Choice value (``"Left"``, ``{"choices": ["Left"]}``, ``["Left"]``) -> its side; ``None`` when absent,
    ``False`` when present but not one of the three answers."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        if not value:
            return None
        value = value[0] if len(value) == 1 else None  # several choices: not a valid answer
    return _SIDE_OF_LABEL.get(value, False) if isinstance(value, str) else False


def _answers_of_result(result: list[Any]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for region in result:
        if isinstance(region, dict) and region.get("from_name") in QUESTIONS:
            answers[region["from_name"]] = (region.get("value") or {}).get("choices")
    return answers


def _row_kind(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "annotations" in row or "completions" in row or isinstance(row.get("data"), dict):
        return "JSON"
    if "gill_item_id" in row or "annotator" in row or "annotation_id" in row:
        return "JSON_MIN"
    return None


def read_label_studio_votes(
    path: str | os.PathLike[str], *, item_ids: Iterable[int] | None = None, users: Mapping[int, str] | None = None
) -> LabelStudioVotes:
    """Read the votes of a Label Studio ``JSON`` or ``JSON_MIN`` export (see the module docstring).

    Args:
        item_ids: the store's item ids; a ``gill_item_id`` outside them is a problem (``None``: not checked).
        users: Label Studio user id -> email, for exports that name users by id only.

    Raises:
        InputError: every problem of the file at once (unreadable, not a list, a row that is no task, a missing or
            unknown ``gill_item_id``, an answer that is not Left / Right / About the same, one question unanswered,
            an annotation without a user).
    """
    where = str(path)
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the Label Studio export {where!r}", [str(err)]) from err
    if not isinstance(rows, list):
        raise InputError(
            f"invalid Label Studio export {where!r}",
            [f"the file holds a JSON {type(rows).__name__}, not a list of tasks"],
            hint="export the project from Label Studio as JSON or JSON_MIN",
        )
    known = None if item_ids is None else {int(i) for i in item_ids}
    emails = _collect_emails(rows, users)
    kinds = {_row_kind(row) for row in rows}
    problems: list[str] = []
    if None in kinds:
        bad = [i for i, row in enumerate(rows) if _row_kind(row) is None]
        problems += [
            f"row {i}: neither a task (data/annotations) nor a JSON_MIN row (gill_item_id/annotator)" for i in bad[:20]
        ]
    if {"JSON", "JSON_MIN"} <= kinds:
        problems.append("the file mixes JSON tasks and JSON_MIN rows")
    fmt = "empty" if not rows else ("JSON_MIN" if kinds == {"JSON_MIN"} else "JSON")

    skipped: Counter[str] = Counter()
    unannotated = 0
    # (judge, item) -> (order key, alignment, realism): the latest annotation of a user on a task wins
    latest: dict[tuple[str, int], tuple[tuple[str, int], str, str]] = {}

    def item_of(where_: str, data: Any) -> int | None:
        raw = data.get("gill_item_id") if isinstance(data, dict) else None
        item_id = _as_int(raw)
        if item_id is None:
            problems.append(f"{where_}: no gill_item_id (got {raw!r}): not a task exported by gill")
        elif known is not None and item_id not in known:
            problems.append(f"{where_}: gill_item_id {item_id} is not an item of this store")
            return None
        return item_id

    def add(where_: str, item_id: int | None, who: Any, answers: Mapping[str, Any], order: tuple[str, int]) -> None:
        sides = {q: _answer(answers.get(q)) for q in QUESTIONS}
        if all(s is None for s in sides.values()):
            skipped[SKIP_EMPTY] += 1
            return
        bad = [f"{q} = {answers.get(q)!r}" for q, s in sides.items() if s is False]
        if bad:
            problems.append(f"{where_}: answers must be one of {', '.join(CHOICE_LABELS.values())}: {', '.join(bad)}")
        missing = [q for q, s in sides.items() if s is None]
        if missing:
            problems.append(f"{where_}: {' and '.join(missing)} not answered (both questions are required)")
        name = _judge_name(who, emails)
        if name is None:
            problems.append(f"{where_}: no user (completed_by/annotator is {who!r})")
        if bad or missing or name is None or item_id is None:
            return
        key = (name, item_id)
        if key in latest:
            skipped[SKIP_SUPERSEDED] += 1
            if latest[key][0] >= order:
                return
        latest[key] = (order, str(sides["alignment"]), str(sides["realism"]))

    for t, row in enumerate(rows):
        kind = _row_kind(row)
        if kind == "JSON":
            label = f"task {t} (Label Studio id {row.get('id')})"
            item_id = item_of(label, row.get("data"))
            annotations = row.get("annotations") if "annotations" in row else row.get("completions")
            if not isinstance(annotations, list):
                problems.append(f"{label}: annotations is {type(annotations).__name__}, not a list")
                continue
            if not annotations:
                unannotated += 1
            for a, ann in enumerate(annotations):
                where_a = f"{label} annotation {a} (id {ann.get('id') if isinstance(ann, dict) else None})"
                if not isinstance(ann, dict):
                    problems.append(f"{where_a}: not an object")
                elif ann.get("was_cancelled") or ann.get("skipped"):
                    skipped[SKIP_CANCELLED] += 1
                else:
                    result = ann.get("result") or []
                    if not isinstance(result, list):
                        problems.append(f"{where_a}: result is not a list")
                        continue
                    order = (str(ann.get("updated_at") or ann.get("created_at") or ""), _as_int(ann.get("id")) or 0)
                    add(where_a, item_id, ann.get("completed_by"), _answers_of_result(result), order)
        elif kind == "JSON_MIN":
            label = f"row {t} (Label Studio task {row.get('id')}, annotation {row.get('annotation_id')})"
            item_id = item_of(label, row)
            if row.get("annotation_id") is None and all(q not in row for q in QUESTIONS):
                unannotated += 1  # an exported task nobody annotated
                continue
            order = (str(row.get("updated_at") or row.get("created_at") or ""), _as_int(row.get("annotation_id")) or 0)
            add(label, item_id, row.get("annotator"), {q: row.get(q) for q in QUESTIONS}, order)
    if problems:
        raise InputError(
            f"invalid Label Studio export {where!r}; nothing was imported", problems[:50] + _more(problems, 50)
        )
    records = tuple(sorted((name, item_id, a, r) for (name, item_id), (_, a, r) in latest.items()))
    return LabelStudioVotes(format=fmt, records=records, skipped=dict(skipped), tasks_without_annotations=unannotated)


def import_label_studio(
    store: JudgingStore,
    path: str | os.PathLike[str],
    *,
    panel: str = HUMAN_PANEL,
    users: Mapping[int, str] | None = None,
    overwrite: bool = False,
) -> LabelStudioImport:
    """Import the votes of a Label Studio ``JSON`` or ``JSON_MIN`` export into ``store`` (judges of ``panel``,
    named by email; see the module docstring). All or nothing: any problem raises one :class:`InputError` and
    writes nothing; skipped annotations are counted in the result.

    Args:
        users: Label Studio user id -> email, for exports that name users by id only
            (:meth:`LabelStudioClient.user_emails`).
        overwrite: replace stored votes that the export changes (default: such a conflict refuses the import).
    """
    read = read_label_studio_votes(path, item_ids=[item.id for item in store.items()], users=users)
    written = store.import_named_votes(list(read.records), panel=panel, overwrite=overwrite) if read.records else 0
    result = LabelStudioImport(
        path=Path(path),
        format=read.format,
        votes=written,
        skipped=sum(read.skipped.values()),
        skipped_by_reason=dict(read.skipped),
        judges=tuple(sorted({r[0] for r in read.records})),
        tasks_without_annotations=read.tasks_without_annotations,
    )
    logger.info("Label Studio import: %s", result.describe())
    return result


# -- HTTP API -------------------------------------------------------------------------------------------------------


class LabelStudioAPIError(GillError):
    """A Label Studio API call failed (unreachable, refused, or an unexpected answer)."""

    def __init__(
        self, message: str, problems: Iterable[str] = (), hint: str | None = None, status: int | None = None
    ) -> None:
        self.status = status
        super().__init__(message, problems, hint)


_LEGACY_HINT = (
    "Label Studio 1.23 refuses legacy tokens (Authorization: Token) unless the organization allows them: use a "
    "personal access token (Account & Settings > Personal Access Token), or start Label Studio the first time with "
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true"
)


def _looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class LabelStudioClient:
    """A small client of Label Studio's HTTP API (what gill needs).

    Args:
        url: the server, e.g. ``http://localhost:8080``.
        token: a personal access token (a JWT: exchanged for short-lived access tokens, sent as ``Bearer``,
            refreshed when they expire) or a legacy token (sent as ``Token <t>``; see the module docstring).
        timeout: seconds per request.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        import requests

        if not token or not token.strip():
            raise InputError(
                "a Label Studio API token is needed",
                [],
                hint="pass --token or set LABEL_STUDIO_API_KEY (Account & Settings in Label Studio)",
            )
        self.url = url.rstrip("/")
        self.token = token.strip()
        self.timeout = timeout
        self._requests = requests
        self._session = requests.Session()
        self._access: str | None = None

    @property
    def uses_personal_access_token(self) -> bool:
        """Whether the token is a personal access token (JWT) rather than a legacy token."""
        return _looks_like_jwt(self.token)

    def _refresh_access(self) -> str:
        try:
            resp = self._session.post(
                f"{self.url}/api/token/refresh/", json={"refresh": self.token}, timeout=self.timeout
            )
        except self._requests.RequestException as err:
            raise self._unreachable(err) from err
        if resp.status_code != 200 or "access" not in (_json_or_none(resp) or {}):
            raise LabelStudioAPIError(
                f"Label Studio at {self.url} refused the personal access token (HTTP {resp.status_code})",
                [_excerpt(resp)],
                hint="create a new one under Account & Settings",
                status=resp.status_code,
            )
        return str(resp.json()["access"])

    def _auth(self, refresh: bool) -> dict[str, str]:
        if not self.uses_personal_access_token:
            return {"Authorization": f"Token {self.token}"}
        if self._access is None or refresh:
            self._access = self._refresh_access()
        return {"Authorization": f"Bearer {self._access}"}

    def _unreachable(self, err: Exception) -> LabelStudioAPIError:
        return LabelStudioAPIError(
            f"cannot reach Label Studio at {self.url}",
            [str(err)],
            hint="is it running? (label-studio start; see docs/label-studio.md)",
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One authenticated call (``path`` relative to the server, or a full url); returns the response object.

        Raises:
            LabelStudioAPIError: the server is unreachable or answered with an HTTP error.
        """
        url = path if path.startswith(("http://", "https://")) else f"{self.url}/{path.lstrip('/')}"
        headers = dict(kwargs.pop("headers", None) or {})
        for attempt in (0, 1):
            try:
                resp = self._session.request(
                    method, url, headers={**headers, **self._auth(refresh=attempt == 1)}, timeout=self.timeout, **kwargs
                )
            except self._requests.RequestException as err:
                raise self._unreachable(err) from err
            if not (resp.status_code == 401 and self.uses_personal_access_token and attempt == 0):
                break  # a 401 with a JWT: the access token expired, refresh it once
        if resp.status_code >= 400:
            hint = None
            if resp.status_code == 401:
                hint = "check the token" if self.uses_personal_access_token else _LEGACY_HINT
            raise LabelStudioAPIError(
                f"{method} {url} failed: HTTP {resp.status_code}", [_excerpt(resp)], hint=hint, status=resp.status_code
            )
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        data = _json_or_none(resp)
        if data is None:
            raise LabelStudioAPIError(f"{method} {path}: Label Studio did not answer JSON", [_excerpt(resp)])
        return data

    # users and auth ------------------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's release, e.g. ``1.23.2``."""
        return str(self._json("GET", "/api/version/").get("release", ""))

    def whoami(self) -> dict[str, Any]:
        """The token's user (``id``, ``email``, ...)."""
        return self._json("GET", "/api/current-user/whoami")

    def user_emails(self) -> dict[int, str]:
        """Every user of the organization: id -> email (for exports that name users by id)."""
        data = self._json("GET", "/api/users/")
        users = data.get("results", []) if isinstance(data, dict) else data
        return {int(u["id"]): str(u["email"]) for u in users if u.get("email")}

    def create_personal_access_token(self) -> str:
        """A new personal access token (JWT refresh token) of the token's user (``POST /api/token/``)."""
        return str(self._json("POST", "/api/token/")["token"])

    # projects, storage, tasks --------------------------------------------------------------------------------

    def create_project(self, title: str, label_config: str, *, description: str = "") -> dict[str, Any]:
        """Create a project with this labeling interface (Label Studio validates it); returns the project."""
        return self._json(
            "POST", "/api/projects", json={"title": title, "label_config": label_config, "description": description}
        )

    def connect_local_storage(
        self,
        project_id: int,
        path: str | os.PathLike[str],
        *,
        title: str = "gill images",
        regex_filter: str | None = None,
        use_blob_urls: bool = True,
        sync: bool = False,
    ) -> dict[str, Any]:
        """Connect a local-files source storage on ``path`` (an absolute folder on the Label Studio host, strictly
        inside its ``LOCAL_FILES_DOCUMENT_ROOT``). Its files are then served to the project's users at
        ``/data/local-files/?d=<path relative to the root>``.

        ``sync=True`` also scans it (:meth:`sync_local_storage`): with ``use_blob_urls`` every matching file becomes
        a task of its own, which gill does not want for its images folder (gill's tasks come through
        :meth:`import_tasks`), so :func:`setup_project` connects without syncing.
        """
        storage = self._json(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project_id,
                "path": str(Path(path).resolve()),
                "title": title,
                "regex_filter": regex_filter or "",
                "use_blob_urls": use_blob_urls,
            },
        )
        if sync:
            storage = self.sync_local_storage(int(storage["id"]))
        return storage

    def sync_local_storage(self, storage_id: int) -> dict[str, Any]:
        """Scan a local-files storage now (imports what it finds as tasks); returns the storage."""
        return self._json("POST", f"/api/storages/localfiles/{storage_id}/sync")

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]], *, batch: int = 500) -> dict[str, int]:
        """Import tasks (Label Studio's JSON task format, with predictions if any), ``batch`` per request.
        Returns the summed ``task_count``, ``prediction_count`` and ``annotation_count``."""
        totals = {"task_count": 0, "prediction_count": 0, "annotation_count": 0}
        for start in range(0, len(tasks), batch):
            answer = self._json("POST", f"/api/projects/{project_id}/import", json=list(tasks[start : start + batch]))
            for key in totals:
                totals[key] += int(answer.get(key) or 0)
        return totals

    def tasks(self, project_id: int, *, page_size: int = 100) -> list[dict[str, Any]]:
        """Every task of a project (ids, data, counts), in Label Studio's order."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self._json("GET", "/api/tasks", params={"project": project_id, "page": page, "page_size": page_size})
            batch = data.get("tasks", []) if isinstance(data, dict) else data
            out += batch
            total = data.get("total") if isinstance(data, dict) else None
            if not batch or len(batch) < page_size or (total is not None and len(out) >= int(total)):
                return out
            page += 1

    def create_annotation(
        self, task_id: int, result: Sequence[dict[str, Any]] = (), *, was_cancelled: bool = False
    ) -> dict[str, Any]:
        """Annotate a task as the token's user (``was_cancelled=True``: the user skipped it)."""
        return self._json(
            "POST", f"/api/tasks/{task_id}/annotations/", json={"result": list(result), "was_cancelled": was_cancelled}
        )

    # export --------------------------------------------------------------------------------------------------

    def export(self, project_id: int, fmt: str = "JSON", *, with_emails: bool = True, wait_s: float = 120.0) -> Any:
        """The project's tasks with their annotations, in Label Studio's ``JSON`` or ``JSON_MIN`` export format.

        ``with_emails`` (default) goes through an export snapshot that names annotators by email (``completed_by``
        objects / ``annotator`` emails) and deletes the snapshot afterwards; ``False`` uses the quick
        ``/api/projects/<id>/export`` (users as bare ids, every task included).
        """
        if fmt not in ("JSON", "JSON_MIN"):
            raise InputError(f"export format must be JSON or JSON_MIN, got {fmt!r}")
        if not with_emails:
            return self._json(
                "GET", f"/api/projects/{project_id}/export", params={"exportType": fmt, "download_all_tasks": "true"}
            )
        snapshot = self._json(
            "POST",
            f"/api/projects/{project_id}/exports/",
            json={"serialization_options": {"annotations__completed_by": {"only_id": False}}},
        )
        export_id = snapshot["id"]
        deadline = time.monotonic() + wait_s
        try:
            while snapshot.get("status") != "completed":
                if snapshot.get("status") == "failed" or time.monotonic() > deadline:
                    raise LabelStudioAPIError(
                        f"Label Studio export {export_id} of project {project_id} did not "
                        f"complete (status {snapshot.get('status')!r})"
                    )
                time.sleep(0.3)
                snapshot = self._json("GET", f"/api/projects/{project_id}/exports/{export_id}")
            return self._json(
                "GET", f"/api/projects/{project_id}/exports/{export_id}/download", params={"exportType": fmt}
            )
        finally:
            try:
                self.request("DELETE", f"/api/projects/{project_id}/exports/{export_id}")
            except LabelStudioAPIError as err:  # the snapshot stays listed in the UI; harmless
                logger.warning("could not delete Label Studio export %s: %s", export_id, err.message)

    def export_to_file(self, project_id: int, path: str | os.PathLike[str], fmt: str = "JSON") -> Path:
        """:meth:`export` written to ``path`` (atomically)."""
        return atomic_write_text(path, json.dumps(self.export(project_id, fmt), indent=2, ensure_ascii=False) + "\n")


def _json_or_none(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _excerpt(resp: Any, limit: int = 500) -> str:
    text = (resp.text or "").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


# -- project setup --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelStudioSetup:
    """What :func:`setup_project` made."""

    project_id: int
    storage_id: int
    tasks: int
    predictions: int
    project_url: str
    image_checked: bool
    """Whether one image was fetched back through Label Studio (a relative ``image_prefix``)."""

    def describe(self) -> str:
        """One line for the CLI."""
        return (
            f"Label Studio project {self.project_id}: {self.tasks} task(s), {self.predictions} prediction(s), "
            f"local-files storage {self.storage_id}; open {self.project_url}"
        )


def setup_project(
    client: LabelStudioClient,
    export_dir: str | os.PathLike[str],
    title: str = "gill: retrieve or generate?",
    *,
    description: str = "Which image matches the prompt better, and which is more realistic?",
    check_image: bool = True,
) -> LabelStudioSetup:
    """Create a Label Studio project from an :func:`export_label_studio` folder: the project with its
    ``label_config.xml``, a local-files storage on ``<export_dir>/images`` (no sync), the ``tasks.json`` import,
    then (``check_image``) one image fetched through Label Studio to prove it serves them.

    Label Studio must run on this machine (local files) with ``LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LOCAL_FILES_DOCUMENT_ROOT`` = the export folder (or the ``document_root`` it was exported with).

    Raises:
        InputError: the folder is not an export.
        LabelStudioAPIError: Label Studio refused a step (its message says why, e.g. the storage path is not
            inside ``LOCAL_FILES_DOCUMENT_ROOT``) or does not serve the images.
    """
    folder = Path(export_dir).resolve()
    tasks_path, config_path, images = folder / TASKS_FILE, folder / LABEL_CONFIG_FILE, folder / IMAGES_DIR
    missing = [str(p) for p in (tasks_path, config_path, images) if not p.exists()]
    if missing:
        raise InputError(
            f"{folder} is not a gill Label Studio export",
            [f"missing {m}" for m in missing],
            hint="export first (export_label_studio / gill annotate label-studio-setup)",
        )
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    project = client.create_project(title, config_path.read_text(encoding="utf-8"), description=description)
    project_id = int(project["id"])
    storage = client.connect_local_storage(project_id, images, title=f"gill images ({folder.name})")
    counts = client.import_tasks(project_id, tasks)
    checked = False
    if check_image and tasks:
        url = str(tasks[0]["data"]["image_left"])
        if url.startswith("/") or url.startswith(client.url):
            local = images / Path(url.rsplit("/", 1)[-1]).name
            try:
                served = client.request("GET", url).content
            except LabelStudioAPIError as err:
                raise LabelStudioAPIError(
                    f"Label Studio does not serve the exported images ({url})",
                    [err.message],
                    hint=f"start it with LOCAL_FILES_SERVING_ENABLED=true and "
                    f"LOCAL_FILES_DOCUMENT_ROOT set to the folder the image urls are "
                    f"relative to ({folder} unless exported with another "
                    f"document_root)",
                    status=err.status,
                ) from err
            if local.is_file() and served != local.read_bytes():
                raise LabelStudioAPIError(
                    f"Label Studio serves other bytes than {local} at {url}",
                    [],
                    hint="LOCAL_FILES_DOCUMENT_ROOT points at another folder",
                )
            checked = True
    setup = LabelStudioSetup(
        project_id=project_id,
        storage_id=int(storage["id"]),
        tasks=counts["task_count"],
        predictions=counts["prediction_count"],
        project_url=f"{client.url}/projects/{project_id}/data",
        image_checked=checked,
    )
    logger.info("%s", setup.describe())
    return setup


def pull_votes(
    client: LabelStudioClient,
    project_id: int,
    store: JudgingStore,
    save_to: str | os.PathLike[str],
    *,
    fmt: str = "JSON",
    panel: str = HUMAN_PANEL,
    overwrite: bool = False,
) -> LabelStudioImport:
    """Export a project (annotators by email) to ``save_to`` and import its votes into ``store``."""
    path = client.export_to_file(project_id, save_to, fmt)
    return import_label_studio(store, path, panel=panel, users=client.user_emails(), overwrite=overwrite)


# -- CLI handlers (the argparse part lives in the gill CLI) ---------------------------------------------------------


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _client(args: argparse.Namespace) -> LabelStudioClient:
    url = getattr(args, "url", None) or os.environ.get("LABEL_STUDIO_URL") or "http://localhost:8080"
    token = getattr(args, "token", None) or os.environ.get("LABEL_STUDIO_API_KEY") or ""
    return LabelStudioClient(url, token)


def cmd_label_studio_setup(args: argparse.Namespace) -> int:
    """``gill annotate label-studio-setup``: export the store and create the Label Studio project from it.

    Arguments it reads (argparse):

    * ``--workdir DIR`` (required): the work folder of the judging store.
    * ``--out DIR``: the export folder (default ``<workdir>/annotations/label-studio``); Label Studio's
      ``LOCAL_FILES_DOCUMENT_ROOT`` must be this folder (or ``--document-root``).
    * ``--url URL``: Label Studio (default ``$LABEL_STUDIO_URL``, else ``http://localhost:8080``).
    * ``--token TOKEN``: a personal access token or a legacy token (default ``$LABEL_STUDIO_API_KEY``).
    * ``--title TEXT``: the project title (default ``gill: retrieve or generate?``).
    * ``--votes {none,predictions}``: include the store's votes as predictions (default ``none``).
    * ``--document-root DIR``: the ``LOCAL_FILES_DOCUMENT_ROOT`` the image urls are relative to (default: ``--out``).
    * ``--image-prefix TEXT``: default ``/data/local-files/?d=``.
    * ``--export-only``: write the export, do not talk to Label Studio.
    """
    workdir = Path(args.workdir)
    out = Path(getattr(args, "out", None) or workdir / "annotations" / "label-studio")
    export = export_label_studio(
        JudgingStore(workdir),
        out,
        votes=getattr(args, "votes", None) or "none",
        image_prefix=getattr(args, "image_prefix", None) or DEFAULT_IMAGE_PREFIX,
        document_root=getattr(args, "document_root", None),
    )
    _out(export.describe())
    if getattr(args, "export_only", False):
        return 0
    setup = setup_project(
        _client(args), export.out_dir, **({"title": args.title} if getattr(args, "title", None) else {})
    )
    _out(setup.describe())
    return 0


def cmd_label_studio_pull(args: argparse.Namespace) -> int:
    """``gill annotate label-studio-pull``: export a Label Studio project and import its votes.

    Arguments it reads (argparse):

    * ``--workdir DIR`` (required), ``--project ID`` (required, int).
    * ``--url URL``, ``--token TOKEN``: as for ``label-studio-setup``.
    * ``--format {JSON,JSON_MIN}``: default ``JSON`` (the only one that counts skipped annotations).
    * ``--save FILE``: where the export is kept (default ``<workdir>/annotations/label-studio-project-<id>.json``).
    * ``--panel NAME``: the judges' panel (default ``human``).
    * ``--overwrite``: replace stored votes the project changed (default: such a conflict refuses the import).
    """
    workdir = Path(args.workdir)
    save = Path(getattr(args, "save", None) or workdir / "annotations" / f"label-studio-project-{args.project}.json")
    result = pull_votes(
        _client(args),
        int(args.project),
        JudgingStore(workdir),
        save,
        fmt=getattr(args, "format", None) or "JSON",
        panel=getattr(args, "panel", None) or HUMAN_PANEL,
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    _out(result.describe())
    return 0


__all__ = [
    "CHOICE_LABELS",
    "DEFAULT_IMAGE_PREFIX",
    "LABEL_CONFIG",
    "LABEL_STUDIO_VERSION",
    "LabelStudioAPIError",
    "LabelStudioClient",
    "LabelStudioExport",
    "LabelStudioImport",
    "LabelStudioSetup",
    "LabelStudioVotes",
    "cmd_label_studio_pull",
    "cmd_label_studio_setup",
    "default_venv_dir",
    "export_label_studio",
    "import_label_studio",
    "pull_votes",
    "read_label_studio_votes",
    "server_environment",
    "setup_project",
]
