"""The judging store: judges, items to judge and their votes, in ``<workdir>/annotations/judging.sqlite``.

GILL's decision classifier learns from human "retrieve vs generate" judgements: for each prompt a judge sees the
generated (SD) image and the retrieved image side by side and answers which matches the prompt better
(*alignment*) and which is more realistic (*realism*): ``left``, ``right`` or ``same``. Which side shows the
generated image is drawn per item with a seeded RNG and recorded (``items.gen_side``), so judges are blind to it
and every vote maps back to the official vocabulary: the generated side = ``gen``, the retrieved side = ``ret``,
``same`` = ``same`` (see :mod:`annotations.votes`).

Why SQLite and not the project's DuckDB file: DuckDB lets one process hold a file for writing and a second process
fails at once instead of waiting, a poor fit for a web server taking concurrent submits while
the CLI reads progress. SQLite in WAL mode lets readers run beside one writer and queues writers with a busy
timeout. Every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a check such as
"does this item still need a judge?" and the write it guards cannot interleave with another submit), and each
call opens its own short-lived connection, so the store is safe to share between threads and processes.

Items come from the DuckDB table ``decision_candidates`` of ``<workdir>/gill.duckdb`` (:func:`import_candidates`,
idempotent). Each item gets exactly ``judges_per_item`` judges (``k``, default 5): :meth:`JudgingStore.next_item`
hands a judge their first unvoted item, by item id, among the items that still have fewer than ``k`` voters, so a
judge resumes where they left off. A submit on an item that already has ``k`` other voters is refused
(:class:`ItemFullError`); a resubmit by the same judge replaces their vote (``UNIQUE(judge_id, item_id)`` + upsert).

Panels: every judge belongs to one panel (``human`` by default; ``simulated`` for the answer-key judges of
:mod:`flows.stages.votes`). The ``k`` slots of an item are counted per panel, so a simulated panel never
takes a person's slot, and every summary and export reads one panel at a time (``panel=...``).

Imports are one transaction each (:meth:`JudgingStore.import_named_votes`): missing judges are created and the
votes written together, so a refused import leaves no judge, item or vote behind.

Tokens are random (``secrets.token_urlsafe``), stored only as sha256 hashes and compared in constant time. A
revoked judge (:meth:`JudgingStore.revoke_judge`, ``judges.revoked_at``) keeps their votes, which still count, but
their token no longer logs in and the store refuses their votes from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import random
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal
from annotations.votes import VOTE_VALUES, VoteRow
from gill.errors import InputError

logger = logging.getLogger(__name__)

STORE_NAME = "annotations/judging.sqlite"
CANDIDATES_DIR = Path("annotations") / "candidates"
"""Where the candidate images of a work folder live (the judging app serves images only from there)."""
CANDIDATES_TABLE = "decision_candidates"
SIDES = ("left", "right")
CHOICES = ("left", "right", "same")
"""What a judge answers to each question."""
QUESTIONS = ("alignment", "realism")
DEFAULT_JUDGES_PER_ITEM = 5
MAX_NAME_LENGTH = 100
HUMAN_PANEL = "human"
"""The panel of people judging through the app, a bundle or Label Studio."""
SIMULATED_PANEL = "simulated"
"""The panel of answer-key judges (:mod:`flows.stages.votes`): never people, never mixed with them."""
PANEL_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS judges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    panel TEXT NOT NULL DEFAULT 'human',
    revoked_at TEXT  -- when `gill annotate revoke-judge` revoked the judge (their votes stay), else NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,  -- decision_candidates.prompt_id
    prompt TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '',
    challenge TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    gen_image TEXT NOT NULL,  -- relative to the workdir
    ret_image TEXT NOT NULL,
    ret_key TEXT,
    ret_score REAL,
    gen_side TEXT NOT NULL CHECK (gen_side IN ('left', 'right')),
    scene TEXT  -- JSON of the prompt's true scene (shapes-world items), else NULL
);
CREATE TABLE IF NOT EXISTS votes (
    judge_id INTEGER NOT NULL REFERENCES judges(id),
    item_id INTEGER NOT NULL REFERENCES items(id),
    alignment TEXT NOT NULL CHECK (alignment IN ('left', 'right', 'same')),
    realism TEXT NOT NULL CHECK (realism IN ('left', 'right', 'same')),
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    UNIQUE (judge_id, item_id)
);
CREATE INDEX IF NOT EXISTS votes_by_item ON votes (item_id);
CREATE INDEX IF NOT EXISTS votes_by_judge ON votes (judge_id);
CREATE TABLE IF NOT EXISTS retired_votes (  -- votes whose item changed or was retired: kept, never counted
    judge_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    prompt TEXT NOT NULL,  -- the prompt the judge saw
    alignment TEXT NOT NULL,
    realism TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    retired TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class UnknownItemError(InputError):
    """No item has this id."""


class VoteConflictError(InputError):
    """An import would change votes that the same judges already cast (pass ``overwrite`` to replace them)."""


class ItemFullError(InputError):
    """The item already has its ``judges_per_item`` voters."""


class RevokedJudgeError(InputError):
    """The judge was revoked: they may no longer vote."""


def store_path(workdir: str | os.PathLike[str]) -> Path:
    """The SQLite file of a work folder."""
    return Path(workdir) / STORE_NAME


def hash_token(token: str) -> str:
    """The stored form of a token: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def official_vote(choice: str, gen_side: str) -> str:
    """Map a judge's ``left``/``right``/``same`` to the official ``gen``/``ret``/``same``."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
    if choice == "same":
        return "same"
    return "gen" if choice == gen_side else "ret"


def draw_gen_side(seed: int, item_id: int) -> str:
    """The side showing the generated image: seeded per item, so it does not depend on the import order."""
    return random.Random(f"gill-judging:{seed}:{item_id}").choice(SIDES)


@dataclass(frozen=True)
class Judge:
    """A judge: ``id`` orders judges in exports; ``panel`` keeps people and simulated judges apart."""

    id: int
    name: str
    created: str
    panel: str = HUMAN_PANEL
    revoked_at: str | None = None
    """When the judge was revoked (their votes stay and count; they can no longer log in or vote), else ``None``."""


@dataclass(frozen=True)
class Item:
    """One prompt to judge, with its two images (paths relative to the workdir)."""

    id: int
    prompt: str
    category: str
    challenge: str
    note: str
    gen_image: str
    ret_image: str
    gen_side: str
    scene: str | None = None
    """JSON of the prompt's true scene (shapes-world items; what simulated judges score against), else ``None``."""

    def has_images(self) -> bool:
        """Whether both image paths are set (imported votes on prompts without candidates have none)."""
        return bool(self.gen_image and self.ret_image)

    def image_for(self, side: str) -> str:
        """The image shown on ``side`` (``left``/``right``)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.gen_image if side == self.gen_side else self.ret_image


@dataclass(frozen=True)
class Vote:
    """One judge's answers on one item, as the judge gave them (sides, not gen/ret)."""

    judge_id: int
    item_id: int
    alignment: str
    realism: str
    created: str
    updated: str


@dataclass(frozen=True)
class Progress:
    """``done``: items the judge voted on; ``total``: done plus the items still open to them."""

    done: int
    total: int


@dataclass
class ItemVotes:
    """One item's official votes, one per judge in judge-id order (for the official TSV exports)."""

    item: Item
    judges: list[str] = field(default_factory=list)
    alignment: list[str] = field(default_factory=list)
    realism: list[str] = field(default_factory=list)

    def row(self, question: str) -> VoteRow:
        """The :class:`~annotations.votes.VoteRow` of ``question`` (``alignment`` or ``realism``)."""
        if question not in QUESTIONS:
            raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
        i = self.item
        return VoteRow(i.prompt, i.category, i.challenge, i.note, votes=list(getattr(self, question)))


@dataclass(frozen=True)
class Agreement:
    """Agreement on one question over the official votes: Fleiss' kappa (items with all ``k`` votes) and
    Krippendorff's alpha (every item with at least two votes). ``nan`` when not computable yet."""

    question: str
    fleiss_kappa: float
    fleiss_items: int
    alpha: float
    alpha_items: int

    def describe(self) -> str:
        """One human-readable line."""
        return (
            f"{self.question}: Fleiss' kappa {_fmt(self.fleiss_kappa)} on {self.fleiss_items} complete item(s); "
            f"Krippendorff's alpha {_fmt(self.alpha)} on {self.alpha_items} item(s)"
        )


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _refuse_conflicts(con: sqlite3.Connection, ordered: Sequence[tuple[int, int, str, str]]) -> None:
    """Raise (inside the import's transaction, so it rolls back) when an imported vote differs from the vote the
    same judge already has on the item."""
    conflicts = []
    for judge_id, item_id, alignment, realism in ordered:
        row = con.execute(
            "SELECT v.alignment, v.realism, j.name FROM votes v JOIN judges j ON j.id = v.judge_id "
            "WHERE v.judge_id = ? AND v.item_id = ?",
            (judge_id, item_id),
        ).fetchone()
        if row is not None and (row["alignment"], row["realism"]) != (alignment, realism):
            conflicts.append(
                f"judge {row['name']!r}, item {item_id}: the store has {row['alignment']}/"
                f"{row['realism']}, the import {alignment}/{realism}"
            )
    if conflicts:
        raise VoteConflictError(
            f"{len(conflicts)} imported vote(s) differ from votes the same judges already cast; nothing was imported",
            conflicts[:50],
            hint="check which answer is right; pass --overwrite to replace the stored votes",
        )


class JudgingStore:
    """The votes store of one work folder; see the module docstring.

    Args:
        workdir: the work folder; the store lives in ``<workdir>/annotations/judging.sqlite``.
        judges_per_item: ``k``, the number of judges each item gets. Saved in the store when given, so other
            processes (``gill annotate status``) use the same value; when ``None`` the saved value (or 5) is used.
        seed: seed of the per-item generated-image side (saved on first use; later changes are refused).
    """

    def __init__(self, workdir: str | os.PathLike[str], judges_per_item: int | None = None, seed: int = 0) -> None:
        problems = judges_per_item_problems(judges_per_item)
        if problems:
            raise InputError("cannot open the judging store", problems)
        self.workdir = Path(workdir)
        self.path = store_path(workdir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            con.executescript(SCHEMA)
            _migrate(con)
        if judges_per_item is not None:
            self._set_setting("judges_per_item", str(judges_per_item))
        self.judges_per_item = int(self._setting("judges_per_item") or DEFAULT_JUDGES_PER_ITEM)
        saved_seed = self._setting("seed")
        if saved_seed is None:
            self._set_setting("seed", str(seed))
            saved_seed = str(seed)
        self.seed = int(saved_seed)

    # -- connections -----------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; transactions explicit
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start (``BEGIN IMMEDIATE``)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _setting(self, key: str) -> str | None:
        with self._connect() as con:
            row = con.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def _set_setting(self, key: str, value: str) -> None:
        with self._write() as con:
            con.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- judges and tokens -----------------------------------------------------------------------------------

    def add_judge(self, name: str, panel: str = HUMAN_PANEL) -> tuple[Judge, str]:
        """Create a judge of ``panel``; return it and their token (shown once: only its hash is stored)."""
        clean = name.strip()
        problems = _name_problems(clean)
        problems += _panel_problems(panel)
        if problems:
            raise InputError(f"cannot add judge {name!r}", problems)
        token = secrets.token_urlsafe(32)
        created = _now()
        try:
            with self._write() as con:
                cur = con.execute(
                    "INSERT INTO judges (name, token_hash, created, panel) VALUES (?, ?, ?, ?)",
                    (clean, hash_token(token), created, panel),
                )
        except sqlite3.IntegrityError as err:
            raise InputError(
                f"a judge named {clean!r} already exists in {self.path}",
                [],
                hint="pick another name; `gill annotate status` lists the judges",
            ) from err
        return Judge(id=int(cur.lastrowid), name=clean, created=created, panel=panel), token

    def judges(self, panel: str | None = None) -> list[Judge]:
        """Every judge (of ``panel``, when given), by id."""
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {_JUDGE_COLUMNS} FROM judges WHERE ? IS NULL OR panel = ? ORDER BY id", (panel, panel)
            ).fetchall()
        return [Judge(**dict(r)) for r in rows]

    def revoke_judge(self, name: str) -> Judge:
        """Revoke the judge named ``name`` at once: their token stops working (the app answers 401 on their next
        request) and the store refuses their votes; the votes they gave stay, marked by ``revoked_at``. Returns
        the revoked judge.

        Raises:
            InputError: no judge has this name, or the judge was revoked already (nothing changes then).
        """
        clean = name.strip()
        with self._write() as con:
            row = con.execute(f"SELECT {_JUDGE_COLUMNS} FROM judges WHERE name = ?", (clean,)).fetchone()
            if row is None:
                known = [r[0] for r in con.execute("SELECT name FROM judges ORDER BY id LIMIT 20")]
                raise InputError(
                    f"no judge named {clean!r} in {self.path}; nothing was revoked",
                    [f"judges: {', '.join(map(repr, known)) or 'none'}"],
                    hint="check the name with `gill annotate status --workdir W`",
                )
            if row["revoked_at"] is not None:
                raise InputError(f"judge {clean!r} was already revoked at {row['revoked_at']}; nothing changed")
            revoked_at = _now()
            con.execute("UPDATE judges SET revoked_at = ? WHERE id = ?", (revoked_at, row["id"]))
        return Judge(**{**dict(row), "revoked_at": revoked_at})

    def panels(self) -> list[str]:
        """``human`` (always, first: people can judge every store) and every other panel that has judges."""
        with self._connect() as con:
            names = {r[0] for r in con.execute("SELECT DISTINCT panel FROM judges")}
        return [HUMAN_PANEL, *sorted(names - {HUMAN_PANEL})]

    def judge_for_token(self, token: str | None) -> Judge | None:
        """The judge whose token this is, or ``None`` (also for a revoked judge's token)."""
        if not token:
            return None
        digest = hash_token(token)
        with self._connect() as con:
            row = con.execute(
                f"SELECT {_JUDGE_COLUMNS}, token_hash FROM judges WHERE token_hash = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None
        return Judge(**{k: row[k] for k in row.keys() if k != "token_hash"})

    def new_admin_token(self) -> str:
        """Generate a new admin token (the previous one stops working); return it. Only its hash is stored."""
        token = secrets.token_urlsafe(32)
        self.set_admin_token(token)
        return token

    def set_admin_token(self, token: str) -> None:
        """Make ``token`` the admin token (see :func:`admin_token_problems`)."""
        problems = admin_token_problems(token)
        if problems:
            raise InputError(
                "the admin token is refused; the admin token was not changed", problems, hint=ADMIN_TOKEN_HINT
            )
        self._set_setting("admin_token_hash", hash_token(token))

    def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` is the admin token (constant-time comparison)."""
        stored = self._setting("admin_token_hash")
        if not token or stored is None:
            return False
        return hmac.compare_digest(stored, hash_token(token))

    # -- items -----------------------------------------------------------------------------------------------

    def upsert_items(self, rows: list[dict]) -> int:
        """Add or update items (keys: the ``decision_candidates`` columns). An existing item keeps its
        ``gen_side``, so its votes keep their meaning; an item whose prompt or images change is another item now,
        so its votes move to ``retired_votes`` (kept with the prompt the judges saw, never counted). Returns the
        number of new items."""
        before = self.count_items()
        with self._write() as con:
            for r in rows:
                item_id = int(r["prompt_id"])
                old = con.execute("SELECT prompt, gen_image, ret_image FROM items WHERE id = ?", (item_id,)).fetchone()
                if old is not None and (old["prompt"], old["gen_image"], old["ret_image"]) != (
                    r["prompt"],
                    r["gen_image"],
                    r["ret_image"],
                ):
                    _retire_votes(con, f"item_id = {item_id}", "the item's prompt or images changed")
                con.execute(
                    "INSERT INTO items (id, prompt, category, challenge, note, gen_image, ret_image, ret_key, "
                    "ret_score, gen_side, scene) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                    "SET prompt = excluded.prompt, category = excluded.category, challenge = excluded.challenge, "
                    "note = excluded.note, gen_image = excluded.gen_image, ret_image = excluded.ret_image, "
                    "ret_key = excluded.ret_key, ret_score = excluded.ret_score, scene = excluded.scene",
                    (
                        item_id,
                        r["prompt"],
                        r.get("category") or "",
                        r.get("challenge") or "",
                        r.get("note") or "",
                        r["gen_image"],
                        r["ret_image"],
                        r.get("ret_key"),
                        r.get("ret_score"),
                        draw_gen_side(self.seed, item_id),
                        r.get("scene"),
                    ),
                )
        return self.count_items() - before

    def count_items(self) -> int:
        """How many items there are."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def item(self, item_id: int) -> Item | None:
        """The item with this id, or ``None``."""
        with self._connect() as con:
            row = con.execute(f"SELECT {_ITEM_COLUMNS} FROM items i WHERE i.id = ?", (item_id,)).fetchone()
        return None if row is None else Item(**dict(row))

    def items(self) -> list[Item]:
        """Every item, by id."""
        with self._connect() as con:
            return [Item(**dict(r)) for r in con.execute(f"SELECT {_ITEM_COLUMNS} FROM items i ORDER BY i.id")]

    def next_item(self, judge: Judge | int) -> Item | None:
        """The judge's first unvoted item (by id) among the items with both images and fewer than ``k`` voters of
        the judge's panel, or ``None``."""
        with self._connect() as con:
            row = con.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items i WHERE {_OPEN_TO_JUDGE} ORDER BY i.id LIMIT 1",
                self._open_params(con, judge),
            ).fetchone()
        return None if row is None else Item(**dict(row))

    def progress(self, judge: Judge | int) -> Progress:
        """How many items the judge has voted on, out of those plus the items still open to them."""
        jid = _judge_id(judge)
        with self._connect() as con:
            done = con.execute("SELECT COUNT(*) FROM votes WHERE judge_id = ?", (jid,)).fetchone()[0]
            open_ = con.execute(
                f"SELECT COUNT(*) FROM items i WHERE {_OPEN_TO_JUDGE}", self._open_params(con, judge)
            ).fetchone()[0]
        return Progress(done=int(done), total=int(done) + int(open_))

    def _open_params(self, con: sqlite3.Connection, judge: Judge | int) -> tuple[int, str, int]:
        jid = _judge_id(judge)
        row = con.execute("SELECT panel FROM judges WHERE id = ?", (jid,)).fetchone()
        return jid, row["panel"] if row is not None else HUMAN_PANEL, self.judges_per_item

    # -- votes -----------------------------------------------------------------------------------------------

    def submit_vote(self, judge: Judge | int, item_id: int, alignment: str, realism: str) -> Vote:
        """Record (or replace) a judge's vote on an item, atomically with the ``k``-judges check.

        Raises:
            ValueError: a choice is not ``left``/``right``/``same``.
            UnknownItemError: no item has this id.
            ItemFullError: the item already has ``k`` voters other than this judge.
            RevokedJudgeError: the judge was revoked.
        """
        bad = [f"{q} = {v!r}" for q, v in (("alignment", alignment), ("realism", realism)) if v not in CHOICES]
        if bad:
            raise ValueError(f"choices must be one of {CHOICES}: {', '.join(bad)}")
        jid, now = _judge_id(judge), _now()
        with self._write() as con:
            if con.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise UnknownItemError(f"no item with id {item_id}")
            _refuse_revoked(con, jid)
            _, panel, _ = self._open_params(con, jid)
            others = con.execute(
                "SELECT COUNT(*) FROM votes v JOIN judges j ON j.id = v.judge_id "
                "WHERE v.item_id = ? AND v.judge_id != ? AND j.panel = ?",
                (item_id, jid, panel),
            ).fetchone()[0]
            mine = con.execute("SELECT 1 FROM votes WHERE item_id = ? AND judge_id = ?", (item_id, jid)).fetchone()
            if mine is None and others >= self.judges_per_item:
                raise ItemFullError(f"item {item_id} already has its {self.judges_per_item} judges of panel {panel!r}")
            con.execute(
                "INSERT INTO votes (judge_id, item_id, alignment, realism, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (judge_id, item_id) DO UPDATE SET alignment = excluded.alignment, "
                "realism = excluded.realism, updated = excluded.updated",
                (jid, item_id, alignment, realism, now, now),
            )
            row = con.execute("SELECT * FROM votes WHERE judge_id = ? AND item_id = ?", (jid, item_id)).fetchone()
        return Vote(**dict(row))

    def import_named_votes(
        self, records: Sequence[tuple[str, int, str, str]], panel: str = HUMAN_PANEL, *, overwrite: bool = False
    ) -> int:
        """Write ``(judge name, item id, alignment, realism)`` side-votes (``left``/``right``/``same``) in ONE
        transaction: the judges not in the store yet are created in ``panel`` (in name order, so their ids do
        not depend on the input order, with an unusable random token). A vote equal to the judge's stored vote on
        the item is a no-op; a *different* one (e.g. cast in the web app, then again in a bundle) is a conflict that
        refuses the import unless ``overwrite``. Everything is checked (choices, item ids, judge panels, conflicts,
        the ``k``-judges rule per item and panel) and any problem rolls the whole import back: no judge, no vote.
        Returns the number of votes written.
        """
        problems = _panel_problems(panel)
        problems += [
            f"record {i}: choices {a!r}/{r!r} (allowed: {', '.join(CHOICES)})"
            for i, (_, _, a, r) in enumerate(records)
            if a not in CHOICES or r not in CHOICES
        ]
        names = sorted({str(n).strip() for n, _, _, _ in records})
        problems += [f"judge {n!r}: {p}" for n in names for p in _name_problems(n)]
        if problems:
            raise InputError("votes to import are invalid; nothing was imported", problems[:50])
        now = _now()
        with self._write() as con:
            items = {int(r[0]) for r in con.execute("SELECT id FROM items")}
            unknown = sorted({int(i) for _, i, _, _ in records} - items)
            if unknown:
                raise UnknownItemError(
                    f"{len(unknown)} vote item(s) are not items of {self.path}; nothing was imported",
                    [f"item {i}" for i in unknown[:50]],
                )
            rows = con.execute("SELECT id, name, panel, revoked_at FROM judges").fetchall()
            known = {r["name"]: (r["id"], r["panel"]) for r in rows}
            revoked = [
                f"judge {r['name']!r} was revoked at {r['revoked_at']}"
                for r in rows
                if r["revoked_at"] is not None and r["name"] in names
            ]
            if revoked:
                raise RevokedJudgeError(
                    "votes to import name revoked judges; nothing was imported",
                    revoked[:50],
                    hint="leave their votes out of the import",
                )
            clash = [
                f"judge {n!r} is in panel {known[n][1]!r}, not {panel!r}"
                for n in names
                if n in known and known[n][1] != panel
            ]
            if clash:
                raise InputError("votes to import name judges of another panel; nothing was imported", clash[:50])
            for name in names:
                if name not in known:
                    cur = con.execute(
                        "INSERT INTO judges (name, token_hash, created, panel) VALUES (?, ?, ?, ?)",
                        (name, hash_token(secrets.token_urlsafe(32)), now, panel),
                    )
                    known[name] = (int(cur.lastrowid), panel)
            ordered = sorted(((known[str(n).strip()][0], int(i), a, r) for n, i, a, r in records))
            if not overwrite:
                _refuse_conflicts(con, ordered)
            con.executemany(
                "INSERT INTO votes (judge_id, item_id, alignment, realism, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (judge_id, item_id) DO UPDATE SET alignment = excluded.alignment, "
                "realism = excluded.realism, updated = excluded.updated",
                [(j, i, a, r, now, now) for j, i, a, r in ordered],
            )
            full = con.execute(
                "SELECT v.item_id, j.panel, COUNT(*) n FROM votes v JOIN judges j "
                "ON j.id = v.judge_id GROUP BY v.item_id, j.panel HAVING n > ?",
                (self.judges_per_item,),
            ).fetchall()
            if full:
                raise ItemFullError(
                    f"the import would give {len(full)} item(s) more than {self.judges_per_item} "
                    "judges of one panel; nothing was imported",
                    [f"item {r['item_id']}: {r['n']} judges of panel {r['panel']!r}" for r in full[:20]],
                )
        return len(records)

    def votes_of(self, judge: Judge | int) -> list[Vote]:
        """The judge's own votes, by item id."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM votes WHERE judge_id = ? ORDER BY item_id", (_judge_id(judge),))
            return [Vote(**dict(r)) for r in rows]

    def count_votes(self, panel: str | None = None) -> int:
        """How many votes there are (of ``panel``'s judges, when given)."""
        with self._connect() as con:
            return int(
                con.execute(
                    "SELECT COUNT(*) FROM votes v JOIN judges j ON j.id = v.judge_id WHERE ? IS NULL OR j.panel = ?",
                    (panel, panel),
                ).fetchone()[0]
            )

    def votes_table(self, complete_only: bool = False, panel: str = HUMAN_PANEL) -> list[ItemVotes]:
        """Per item with votes of ``panel`` (by id), the official votes of each of its judges in judge-id order.

        Args:
            complete_only: keep only the items that have all ``k`` votes.
            panel: whose votes (``human`` by default; panels never mix).
        """
        with self._connect() as con:
            rows = con.execute(
                "SELECT v.item_id, j.name, v.alignment, v.realism FROM votes v JOIN judges j ON j.id = v.judge_id "
                "WHERE j.panel = ? ORDER BY v.item_id, v.judge_id",
                (panel,),
            ).fetchall()
        items = {i.id: i for i in self.items()}
        table: dict[int, ItemVotes] = {}
        for r in rows:
            item = items[r["item_id"]]
            entry = table.setdefault(item.id, ItemVotes(item=item))
            entry.judges.append(r["name"])
            entry.alignment.append(official_vote(r["alignment"], item.gen_side))
            entry.realism.append(official_vote(r["realism"], item.gen_side))
        out = list(table.values())
        if complete_only:
            out = [e for e in out if len(e.judges) >= self.judges_per_item]
        return out

    # -- summaries -------------------------------------------------------------------------------------------

    def judge_progress(self, panel: str | None = None) -> list[tuple[Judge, Progress]]:
        """Every judge (of ``panel``, when given) with their progress."""
        return [(j, self.progress(j)) for j in self.judges(panel)]

    def complete_items(self, panel: str = HUMAN_PANEL) -> int:
        """How many items have all ``k`` votes of ``panel``."""
        with self._connect() as con:
            return int(
                con.execute(
                    "SELECT COUNT(*) FROM (SELECT v.item_id FROM votes v JOIN judges j ON "
                    "j.id = v.judge_id WHERE j.panel = ? GROUP BY v.item_id HAVING COUNT(*) >= ?)",
                    (panel, self.judges_per_item),
                ).fetchone()[0]
            )

    def judgeable_items(self) -> int:
        """How many items have both images (what judges are shown)."""
        with self._connect() as con:
            sql = "SELECT COUNT(*) FROM items WHERE gen_image != '' AND ret_image != ''"
            return int(con.execute(sql).fetchone()[0])

    def agreement(self, panel: str = HUMAN_PANEL) -> list[Agreement]:
        """Fleiss' kappa and Krippendorff's alpha of each question over ``panel``'s official votes so far."""
        table = self.votes_table(panel=panel)
        out = []
        for question in QUESTIONS:
            ratings = [getattr(e, question) for e in table]
            complete = [r for r in ratings if len(r) >= self.judges_per_item]
            kappa = fleiss_kappa(complete, categories=VOTE_VALUES) if complete else None
            alpha = krippendorff_alpha_nominal(ratings, categories=VOTE_VALUES)
            out.append(
                Agreement(
                    question=question,
                    fleiss_kappa=math.nan if kappa is None else kappa.kappa,
                    fleiss_items=0 if kappa is None else kappa.n_items,
                    alpha=alpha.alpha,
                    alpha_items=alpha.n_items,
                )
            )
        return out


_JUDGE_COLUMNS = "id, name, created, panel, revoked_at"
_ITEM_COLUMNS = "i.id, i.prompt, i.category, i.challenge, i.note, i.gen_image, i.ret_image, i.gen_side, i.scene"
# An item is open to a judge when it has both images, the judge has not voted on it and it has fewer than k voters
# of the judge's panel. Params: (judge id, panel, k).
_OPEN_TO_JUDGE = (
    "i.gen_image != '' AND i.ret_image != '' "
    "AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.item_id = i.id AND v.judge_id = ?) "
    "AND (SELECT COUNT(*) FROM votes v JOIN judges j ON j.id = v.judge_id WHERE v.item_id = i.id AND j.panel = ?) < ?"
)


def _name_problems(clean: str) -> list[str]:
    problems = []
    if not clean:
        problems.append("the name is empty")
    if len(clean) > MAX_NAME_LENGTH:
        problems.append(f"the name has {len(clean)} characters, at most {MAX_NAME_LENGTH} are allowed")
    if any(ch in clean for ch in "\t\r\n"):
        problems.append("the name contains a tab or newline")
    return problems


MIN_ADMIN_TOKEN_LENGTH = 16
ADMIN_TOKEN_HINT = "leave --admin-token out for a new random token, or give one of at least 16 printable characters"


def admin_token_problems(token: str) -> list[str]:
    """What is wrong with ``token`` as the admin token (empty when it is fine): at least 16 characters, printable
    ASCII without spaces (it goes into a link and a header)."""
    problems = []
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        problems.append(f"it has {len(token)} character(s), at least {MIN_ADMIN_TOKEN_LENGTH} are needed")
    if any(not ("!" <= ch <= "~") for ch in token):
        problems.append("it contains a space, a control or a non-ASCII character")
    return problems


def judges_per_item_problems(judges_per_item: object) -> list[str]:
    """What is wrong with ``judges_per_item`` (``None``: keep the saved value; else an int of at least 1)."""
    if judges_per_item is None:
        return []
    if isinstance(judges_per_item, bool) or not isinstance(judges_per_item, int) or judges_per_item < 1:
        return [f"judges_per_item must be a whole number of at least 1, got {judges_per_item!r}"]
    return []


def _refuse_revoked(con: sqlite3.Connection, judge_id: int) -> None:
    """Raise :class:`RevokedJudgeError` when the judge was revoked (inside the caller's write transaction)."""
    row = con.execute("SELECT name, revoked_at FROM judges WHERE id = ?", (judge_id,)).fetchone()
    if row is not None and row["revoked_at"] is not None:
        raise RevokedJudgeError(f"judge {row['name']!r} was revoked at {row['revoked_at']}; the vote was refused")


def _panel_problems(panel: str) -> list[str]:
    if not isinstance(panel, str) or not PANEL_PATTERN.match(panel):
        return [f"panel {panel!r} must be lowercase letters, digits and '-' (at most 32), starting with a letter"]
    return []


def _retire_votes(con: sqlite3.Connection, where: str, reason: str) -> int:
    """Move the votes on the items matching ``where`` (SQL on ``items``, trusted) to ``retired_votes``."""
    now = _now()
    selected = f"SELECT id FROM items WHERE {where}"
    moved = con.execute(
        "INSERT INTO retired_votes (judge_id, item_id, prompt, alignment, realism, created, updated, retired, reason) "
        "SELECT v.judge_id, v.item_id, i.prompt, v.alignment, v.realism, v.created, v.updated, ?, ? FROM votes v "
        f"JOIN items i ON i.id = v.item_id WHERE v.item_id IN ({selected})",
        (now, reason),
    ).rowcount
    con.execute(f"DELETE FROM votes WHERE item_id IN ({selected})")
    return moved


LEGACY_IMPORTED_JUDGE = "partiprompts-judge-%"
"""Judges an earlier gill created when its pipeline imported the released votes onto items without images."""


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a store made by an earlier version up to date; nothing is deleted that people did.

    * Adds the later columns (``judges.panel``, ``judges.revoked_at``, ``items.scene``).
    * Retires items without images: earlier pipelines imported the released PartiPrompts votes onto 1,632 imageless
      items that no judge could see. Their votes move to ``retired_votes``, the items are deleted. The judges that
      import created (``partiprompts-judge-N``) are deleted once they have no vote left.
    """
    later = (
        ("judges", "panel", "TEXT NOT NULL DEFAULT 'human'"),
        ("judges", "revoked_at", "TEXT"),
        ("items", "scene", "TEXT"),
    )
    for table, column, ddl in later:
        names = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        if names and column not in names:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
    imageless = "gen_image = '' OR ret_image = ''"
    if con.execute(f"SELECT COUNT(*) FROM items WHERE {imageless}").fetchone()[0]:
        con.execute("BEGIN IMMEDIATE")
        moved = _retire_votes(con, imageless, "an item without images (an earlier version's import)")
        gone = con.execute(f"DELETE FROM items WHERE {imageless}").rowcount
        con.execute(
            "DELETE FROM judges WHERE name LIKE ? AND id NOT IN (SELECT judge_id FROM votes)", (LEGACY_IMPORTED_JUDGE,)
        )
        con.execute("COMMIT")
        logger.warning(
            "judging store: retired %d item(s) without images and moved their %d vote(s) to retired_votes", gone, moved
        )


def _judge_id(judge: Judge | int) -> int:
    return judge.id if isinstance(judge, Judge) else int(judge)


def add_candidate_items(store: JudgingStore, rows: list[dict], source: str) -> int:
    """Add or update judging items from candidate rows (the ``decision_candidates`` table's columns; idempotent:
    rows update items by ``prompt_id`` and keep their generated-image side). Returns the number of new items.

    Raises:
        InputError: a row lacks a prompt or an image path (every such row is listed; nothing is added).
    """
    problems = []
    for r in rows:
        missing = [c for c in ("prompt_id", "prompt", "gen_image", "ret_image") if r.get(c) in (None, "")]
        if missing:
            problems.append(f"prompt_id {r.get('prompt_id')}: empty {', '.join(missing)}")
    if problems:
        raise InputError(f"{source}: {CANDIDATES_TABLE} has {len(problems)} unusable row(s)", problems[:50])
    added = store.upsert_items(rows)
    logger.info("imported %d candidate(s) from %s (%d new)", len(rows), source, added)
    return added
