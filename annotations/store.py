"""The judging store: judges, items to judge and their votes, in ``<workdir>/annotations/judging.sqlite``.

GILL's decision classifier learns from human "retrieve vs generate" judgements: for each prompt a judge sees the
generated (SD) image and the retrieved image side by side and answers which matches the prompt better
(*alignment*) and which is more realistic (*realism*): ``left``, ``right`` or ``same``. Which side shows the
generated image is drawn per item with a seeded RNG and recorded (``items.gen_side``), so judges are blind to it
and every vote maps back to the official vocabulary: the generated side = ``gen``, the retrieved side = ``ret``,
``same`` = ``same`` (see :mod:`annotations.votes`).

Why SQLite and not the project's DuckDB file: DuckDB lets one process hold a file for writing and a second process
fails at once instead of waiting (tech-notes item 6), a poor fit for a web server taking concurrent submits while
the CLI reads progress. SQLite in WAL mode lets readers run beside one writer and queues writers with a busy
timeout. Every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a check such as
"does this item still need a judge?" and the write it guards cannot interleave with another submit), and each
call opens its own short-lived connection, so the store is safe to share between threads and processes.

Items come from the DuckDB table ``decision_candidates`` of ``<workdir>/gill.duckdb`` (:func:`import_candidates`,
idempotent). Each item gets exactly ``judges_per_item`` judges (``k``, default 5): :meth:`JudgingStore.next_item`
hands a judge their first unvoted item, by item id, among the items that still have fewer than ``k`` voters, so a
judge resumes where they left off. A submit on an item that already has ``k`` other voters is refused
(:class:`ItemFullError`); a resubmit by the same judge replaces their vote (``UNIQUE(judge_id, item_id)`` + upsert).

Tokens are random (``secrets.token_urlsafe``), stored only as sha256 hashes and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import random
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal
from annotations.votes import VOTE_VALUES, VoteRow
from gill.errors import InputError

logger = logging.getLogger(__name__)

STORE_NAME = "annotations/judging.sqlite"
CANDIDATES_TABLE = "decision_candidates"
SIDES = ("left", "right")
CHOICES = ("left", "right", "same")
"""What a judge answers to each question."""
QUESTIONS = ("alignment", "realism")
DEFAULT_JUDGES_PER_ITEM = 5
MAX_NAME_LENGTH = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS judges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
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
    gen_side TEXT NOT NULL CHECK (gen_side IN ('left', 'right'))
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
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class UnknownItemError(InputError):
    """No item has this id."""


class ItemFullError(InputError):
    """The item already has its ``judges_per_item`` voters."""


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
    """A judge: ``id`` orders judges in exports."""

    id: int
    name: str
    created: str


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
        return (f"{self.question}: Fleiss' kappa {_fmt(self.fleiss_kappa)} on {self.fleiss_items} complete item(s); "
                f"Krippendorff's alpha {_fmt(self.alpha)} on {self.alpha_items} item(s)")  # fmt: skip


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


class JudgingStore:
    """The votes store of one work folder; see the module docstring.

    Args:
        workdir: the work folder; the store lives in ``<workdir>/annotations/judging.sqlite``.
        judges_per_item: ``k``, the number of judges each item gets. Saved in the store when given, so other
            processes (``gill annotate status``) use the same value; when ``None`` the saved value (or 5) is used.
        seed: seed of the per-item generated-image side (saved on first use; later changes are refused).
    """

    def __init__(self, workdir: str | os.PathLike[str], judges_per_item: int | None = None, seed: int = 0) -> None:
        self.workdir = Path(workdir)
        self.path = store_path(workdir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            con.executescript(SCHEMA)
        if judges_per_item is not None:
            if judges_per_item < 1:
                raise InputError(f"judges_per_item must be at least 1, got {judges_per_item}")
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
            con.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))  # fmt: skip

    # -- judges and tokens -----------------------------------------------------------------------------------

    def add_judge(self, name: str) -> tuple[Judge, str]:
        """Create a judge; return it and their token (shown once: only its hash is stored)."""
        clean = name.strip()
        problems = []
        if not clean:
            problems.append("the name is empty")
        if len(clean) > MAX_NAME_LENGTH:
            problems.append(f"the name has {len(clean)} characters, at most {MAX_NAME_LENGTH} are allowed")
        if any(ch in clean for ch in "\t\r\n"):
            problems.append("the name contains a tab or newline")
        if problems:
            raise InputError(f"cannot add judge {name!r}", problems)
        token = secrets.token_urlsafe(32)
        created = _now()
        try:
            with self._write() as con:
                cur = con.execute("INSERT INTO judges (name, token_hash, created) VALUES (?, ?, ?)",
                                  (clean, hash_token(token), created))  # fmt: skip
        except sqlite3.IntegrityError as err:
            raise InputError(f"a judge named {clean!r} already exists in {self.path}", [],
                             hint="pick another name; `gill annotate status` lists the judges") from err  # fmt: skip
        return Judge(id=int(cur.lastrowid), name=clean, created=created), token

    def judges(self) -> list[Judge]:
        """Every judge, by id."""
        with self._connect() as con:
            rows = con.execute("SELECT id, name, created FROM judges ORDER BY id").fetchall()
        return [Judge(**dict(r)) for r in rows]

    def judge_for_token(self, token: str | None) -> Judge | None:
        """The judge whose token this is, or ``None``."""
        if not token:
            return None
        digest = hash_token(token)
        with self._connect() as con:
            row = con.execute("SELECT id, name, created, token_hash FROM judges WHERE token_hash = ?",
                              (digest,)).fetchone()  # fmt: skip
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None
        return Judge(id=row["id"], name=row["name"], created=row["created"])

    def new_admin_token(self) -> str:
        """Generate a new admin token (the previous one stops working); return it. Only its hash is stored."""
        token = secrets.token_urlsafe(32)
        self.set_admin_token(token)
        return token

    def set_admin_token(self, token: str) -> None:
        """Make ``token`` the admin token."""
        if len(token) < 16:
            raise InputError("the admin token is too short", [f"{len(token)} characters, at least 16 needed"])
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
        ``gen_side``, so its votes keep their meaning. Returns the number of new items."""
        before = self.count_items()
        with self._write() as con:
            for r in rows:
                item_id = int(r["prompt_id"])
                con.execute(
                    "INSERT INTO items (id, prompt, category, challenge, note, gen_image, ret_image, ret_key, "
                    "ret_score, gen_side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "prompt = excluded.prompt, category = excluded.category, challenge = excluded.challenge, "
                    "note = excluded.note, gen_image = excluded.gen_image, ret_image = excluded.ret_image, "
                    "ret_key = excluded.ret_key, ret_score = excluded.ret_score",
                    (item_id, r["prompt"], r.get("category") or "", r.get("challenge") or "", r.get("note") or "",
                     r["gen_image"], r["ret_image"], r.get("ret_key"), r.get("ret_score"),
                     draw_gen_side(self.seed, item_id)),
                )  # fmt: skip
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
        """The judge's first unvoted item (by id) among items with fewer than ``k`` voters, or ``None``."""
        with self._connect() as con:
            row = con.execute(f"SELECT {_ITEM_COLUMNS} FROM items i WHERE {_OPEN_TO_JUDGE} ORDER BY i.id LIMIT 1",
                              (_judge_id(judge), self.judges_per_item)).fetchone()  # fmt: skip
        return None if row is None else Item(**dict(row))

    def progress(self, judge: Judge | int) -> Progress:
        """How many items the judge has voted on, out of those plus the items still open to them."""
        jid = _judge_id(judge)
        with self._connect() as con:
            done = con.execute("SELECT COUNT(*) FROM votes WHERE judge_id = ?", (jid,)).fetchone()[0]
            open_ = con.execute(f"SELECT COUNT(*) FROM items i WHERE {_OPEN_TO_JUDGE}",
                                (jid, self.judges_per_item)).fetchone()[0]  # fmt: skip
        return Progress(done=int(done), total=int(done) + int(open_))

    # -- votes -----------------------------------------------------------------------------------------------

    def submit_vote(self, judge: Judge | int, item_id: int, alignment: str, realism: str) -> Vote:
        """Record (or replace) a judge's vote on an item, atomically with the ``k``-judges check.

        Raises:
            ValueError: a choice is not ``left``/``right``/``same``.
            UnknownItemError: no item has this id.
            ItemFullError: the item already has ``k`` voters other than this judge.
        """
        bad = [f"{q} = {v!r}" for q, v in (("alignment", alignment), ("realism", realism)) if v not in CHOICES]
        if bad:
            raise ValueError(f"choices must be one of {CHOICES}: {', '.join(bad)}")
        jid, now = _judge_id(judge), _now()
        with self._write() as con:
            if con.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise UnknownItemError(f"no item with id {item_id}")
            others = con.execute("SELECT COUNT(*) FROM votes WHERE item_id = ? AND judge_id != ?",
                                 (item_id, jid)).fetchone()[0]  # fmt: skip
            mine = con.execute("SELECT 1 FROM votes WHERE item_id = ? AND judge_id = ?", (item_id, jid)).fetchone()
            if mine is None and others >= self.judges_per_item:
                raise ItemFullError(f"item {item_id} already has its {self.judges_per_item} judges")
            con.execute(
                "INSERT INTO votes (judge_id, item_id, alignment, realism, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (judge_id, item_id) DO UPDATE SET alignment = excluded.alignment, "
                "realism = excluded.realism, updated = excluded.updated",
                (jid, item_id, alignment, realism, now, now),
            )
            row = con.execute("SELECT * FROM votes WHERE judge_id = ? AND item_id = ?", (jid, item_id)).fetchone()
        return Vote(**dict(row))

    def ensure_judge(self, name: str) -> Judge:
        """The judge named ``name``, created (with an unusable random token) when new: for imported votes."""
        existing = {j.name: j for j in self.judges()}
        return existing[name.strip()] if name.strip() in existing else self.add_judge(name)[0]

    def import_votes(self, records: list[tuple[int, int, str, str]]) -> int:
        """Write many ``(judge_id, item_id, alignment, realism)`` side-votes in ONE transaction (imports).

        Each replaces that judge's earlier vote on the item. The k-judges rule is checked per item after the
        batch; a violation rolls the whole batch back. Returns the number of records written.
        """
        bad = [
            f"record {i}: {a!r}/{r!r}" for i, (_, _, a, r) in enumerate(records) if a not in CHOICES or r not in CHOICES
        ]
        if bad:
            raise InputError("votes to import have invalid choices", bad[:50], hint=f"choices are {CHOICES}")
        now = _now()
        with self._write() as con:
            con.executemany(
                "INSERT INTO votes (judge_id, item_id, alignment, realism, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (judge_id, item_id) DO UPDATE SET alignment = excluded.alignment, "
                "realism = excluded.realism, updated = excluded.updated",
                [(j, i, a, r, now, now) for j, i, a, r in records],
            )
            full = con.execute("SELECT item_id, COUNT(*) n FROM votes GROUP BY item_id HAVING n > ?",
                               (self.judges_per_item,)).fetchall()  # fmt: skip
            if full:
                raise ItemFullError(f"the import would give {len(full)} item(s) more than {self.judges_per_item} "
                                    "judges", [f"item {r['item_id']}: {r['n']} judges" for r in full[:20]])  # fmt: skip
        return len(records)

    def votes_of(self, judge: Judge | int) -> list[Vote]:
        """The judge's own votes, by item id."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM votes WHERE judge_id = ? ORDER BY item_id", (_judge_id(judge),))
            return [Vote(**dict(r)) for r in rows]

    def count_votes(self) -> int:
        """How many votes there are in all."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def votes_table(self, complete_only: bool = False) -> list[ItemVotes]:
        """Per item with votes (by id), the official votes of each of its judges in judge-id order.

        Args:
            complete_only: keep only the items that have all ``k`` votes.
        """
        with self._connect() as con:
            rows = con.execute(
                "SELECT v.item_id, j.name, v.alignment, v.realism FROM votes v JOIN judges j ON j.id = v.judge_id "
                "ORDER BY v.item_id, v.judge_id"
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

    def judge_progress(self) -> list[tuple[Judge, Progress]]:
        """Every judge with their progress."""
        return [(j, self.progress(j)) for j in self.judges()]

    def complete_items(self) -> int:
        """How many items have all ``k`` votes."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM (SELECT item_id FROM votes GROUP BY item_id "
                                   "HAVING COUNT(*) >= ?)", (self.judges_per_item,)).fetchone()[0])  # fmt: skip

    def agreement(self) -> list[Agreement]:
        """Fleiss' kappa and Krippendorff's alpha of each question over the official votes so far."""
        table = self.votes_table()
        out = []
        for question in QUESTIONS:
            ratings = [getattr(e, question) for e in table]
            complete = [r for r in ratings if len(r) >= self.judges_per_item]
            kappa = fleiss_kappa(complete, categories=VOTE_VALUES) if complete else None
            alpha = krippendorff_alpha_nominal(ratings, categories=VOTE_VALUES)
            out.append(Agreement(question=question,
                                 fleiss_kappa=math.nan if kappa is None else kappa.kappa,
                                 fleiss_items=0 if kappa is None else kappa.n_items,
                                 alpha=alpha.alpha, alpha_items=alpha.n_items))  # fmt: skip
        return out


_ITEM_COLUMNS = "i.id, i.prompt, i.category, i.challenge, i.note, i.gen_image, i.ret_image, i.gen_side"
# An item is open to a judge when they have not voted on it and it has fewer than k voters. Params: (judge id, k).
_OPEN_TO_JUDGE = (
    "NOT EXISTS (SELECT 1 FROM votes v WHERE v.item_id = i.id AND v.judge_id = ?) "
    "AND (SELECT COUNT(*) FROM votes v WHERE v.item_id = i.id) < ?"
)


def _judge_id(judge: Judge | int) -> int:
    return judge.id if isinstance(judge, Judge) else int(judge)


def import_candidates(workdir: str | os.PathLike[str], store: JudgingStore | None = None) -> int:
    """Load the items from the DuckDB table ``decision_candidates`` of ``<workdir>/gill.duckdb`` (idempotent:
    re-importing updates items by ``prompt_id`` and keeps their generated-image side). Returns the number of new
    items.

    Raises:
        InputError: the DuckDB file or the table is missing, or rows lack a prompt or image path.
    """
    from eval.db import connect, db_path

    path = db_path(workdir)
    if not path.exists():
        raise InputError(f"{path} does not exist", [],
                         hint=f"the {CANDIDATES_TABLE} table is written there by the candidate stage")  # fmt: skip
    with connect(path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if CANDIDATES_TABLE not in tables:
            raise InputError(f"{path} has no table {CANDIDATES_TABLE}", [f"tables: {sorted(tables) or 'none'}"],
                             hint="generate the retrieve-vs-generate candidates first")  # fmt: skip
        cursor = con.execute(f"SELECT * FROM {CANDIDATES_TABLE} ORDER BY prompt_id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    problems = []
    for r in rows:
        missing = [c for c in ("prompt_id", "prompt", "gen_image", "ret_image") if r.get(c) in (None, "")]
        if missing:
            problems.append(f"prompt_id {r.get('prompt_id')}: empty {', '.join(missing)}")
    if problems:
        raise InputError(f"{path}: {CANDIDATES_TABLE} has {len(problems)} unusable row(s)", problems[:50])
    store = store if store is not None else JudgingStore(workdir)
    added = store.upsert_items(rows)
    logger.info("imported %d candidate(s) from %s (%d new)", len(rows), path, added)
    return added
