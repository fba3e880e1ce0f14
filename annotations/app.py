"""The judging web app: judges answer "generated or retrieved image?" for each prompt, blind to which is which.

Run it with ``gill annotate serve --workdir W`` (binds 127.0.0.1:8765), add judges with
``gill annotate add-judge NAME --workdir W`` (prints their personal login link), or from Python::

    import uvicorn
    from annotations.app import create_app

    uvicorn.run(create_app("work/demo", judges_per_item=5, admin_token="..."), host="127.0.0.1", port=8765)

Routes:

- ``GET /judge?token=T``: the personal login link. Sets an HttpOnly, SameSite=Strict session cookie and redirects
  to ``/``, so the token leaves the address bar.
- ``GET /``: the judging page (one static HTML page with its script at ``/static/judge.js``; no external assets,
  and a Content-Security-Policy that allows only this origin, so nothing injected could run).
- ``GET /api/items/next``: the judge's next item (prompt and image URLs, never which side is generated) and progress.
- ``GET /api/images/{item_id}/{left|right}``: an item's image, for judges only. Only the images the store lists for
  its items are served, and only when they lie in ``<workdir>/annotations/candidates/`` and are PNG, JPEG, GIF or
  WebP files (checked by their first bytes, sent with that image type); anything else is 404.
- ``POST /api/votes``: JSON ``{item_id, alignment, realism}`` with ``left``/``right``/``same``; a resubmit replaces.
  ``item_id`` must be a JSON integer (not ``true``, ``1.0`` or ``"1"``) within SQLite's 64-bit range (else 422).
- ``GET /api/votes/mine``: the judge's own votes.
- ``GET /admin?token=A``: sets an HttpOnly admin cookie (path ``/admin``) and redirects to ``/admin``, which shows
  progress per judge (revoked judges marked) and agreement per question (Fleiss' kappa, Krippendorff's alpha).

Every request body is limited to :data:`MAX_BODY_BYTES` (64 KiB), checked before any JSON is parsed (413). Tokens
never reach a log: :func:`install_token_redaction` (called by :func:`create_app`) redacts ``token=...`` query values
and bearer tokens in uvicorn's access and error logs.

Auth: the session cookie or ``Authorization: Bearer <token>``; a missing, unknown or revoked judge's token gets
401 (revocation takes effect on the next request: every request reads the store). CSRF: every
state-changing request must carry the header ``X-Gill-CSRF: 1`` (the page's ``fetch`` sends it; a cross-site form
cannot set custom headers, and a cross-site ``fetch`` that sets one needs a CORS preflight this app never grants),
and is refused when ``Origin`` names another host or ``Sec-Fetch-Site`` says ``cross-site``; on top of that the
cookie is ``SameSite=Strict``. Refusals get 403.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from annotations.store import (
    ADMIN_TOKEN_HINT,
    CANDIDATES_DIR,
    HUMAN_PANEL,
    SIDES,
    SIMULATED_PANEL,
    ItemFullError,
    JudgingStore,
    RevokedJudgeError,
    UnknownItemError,
    admin_token_problems,
    judges_per_item_problems,
)
from annotations.store import Item as StoreItem
from annotations.store import Judge as StoreJudge
from annotations.store import Vote as StoreVote
from gill.errors import InputError
from gill.utils.paths import resolve_stored

logger = logging.getLogger(__name__)

COOKIE_NAME = "gill_judge"
ADMIN_COOKIE_NAME = "gill_admin"
CSRF_HEADER = "X-Gill-CSRF"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
ADMIN_COOKIE_MAX_AGE_S = 12 * 3600
MAX_BODY_BYTES = 64 * 1024
"""The largest request body accepted (a vote is under 100 bytes); larger ones get 413 before any parsing."""
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1
ItemId = Annotated[int, Field(strict=True, ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)]
"""An item id: a JSON integer (never a bool, float or string) that fits SQLite's 64-bit integers."""
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
"""The image files the app serves, by suffix, with their content type (the file's first bytes must agree)."""
TOKEN_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "uvicorn.asgi", __name__)
"""The loggers :func:`install_token_redaction` guards (a logger's filters see only its own records)."""
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(\b[\w.-]*token=)[^&\s\"'#]+"),  # token=... in a query string (any ...token parameter)
    re.compile(r"(?i)(\bbearer\s+)[^\s\"',]+"),  # Authorization: Bearer ...
    re.compile(r"(?i)(\b(?:gill_judge|gill_admin)=)[^;\s\"']+"),  # a session cookie
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the login link carries the token: never leak it in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
Choice = Literal["left", "right", "same"]


class VoteIn(BaseModel):
    """A submitted vote, as the judge sees the sides."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    alignment: Choice
    realism: Choice


def redact_tokens(text: str) -> str:
    """``text`` with each ``token=...`` query value, bearer token and session cookie value as ``[redacted]``."""
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


class TokenRedactingFilter(logging.Filter):
    """A logging filter that redacts tokens (:func:`redact_tokens`): first in a record's string arguments, keeping
    their shape (uvicorn's access formatter unpacks them); when the formatted message still shows one (say
    ``"token=%s"``), the record becomes that message, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: logging reports it; redact what can be
            record.msg = _redact_arg(record.msg)
            return True
        clean = redact_tokens(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _redact_arg(value: Any) -> Any:
    return redact_tokens(value) if isinstance(value, str) else value


def install_token_redaction(names: tuple[str, ...] = TOKEN_LOGGERS) -> None:
    """Add a :class:`TokenRedactingFilter` to each named logger that has none yet (idempotent). Logger filters
    survive uvicorn's ``dictConfig`` (it replaces handlers, not filters)."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactingFilter) for f in target.filters):
            target.addFilter(TokenRedactingFilter())


class BodySizeLimit:
    """ASGI middleware: refuse (413) a request whose body is over ``max_bytes``, by its ``Content-Length`` before
    the app runs, and for a body without one while it streams in, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the streamed bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            bad = not declared.isdigit()
            await _plain_error(send, 400 if bad else 413, "bad Content-Length header" if bad else self._too_large())
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes are accepted"


async def _plain_error(send: Send, status: int, detail: str) -> None:
    """Send a JSON ``{"detail": ...}`` error response straight from ASGI."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    workdir: str | os.PathLike[str], judges_per_item: int | None = None, admin_token: str | None = None
) -> FastAPI:
    """The judging app over ``<workdir>/annotations/judging.sqlite``. The arguments are checked before anything
    is written: a refused call changes nothing in the store.

    Args:
        workdir: the work folder (images are served from ``<workdir>/annotations/candidates``).
        judges_per_item: ``k``, judges per item (saved in the store); ``None`` (the default) keeps the saved value.
        admin_token: the admin token to accept at ``/admin``; ``None`` keeps the stored one (see
            :meth:`~annotations.store.JudgingStore.new_admin_token`).

    Raises:
        InputError: ``judges_per_item`` or ``admin_token`` is refused.
    """
    token_problems = [] if admin_token is None else [f"admin token: {p}" for p in admin_token_problems(admin_token)]
    problems = judges_per_item_problems(judges_per_item) + token_problems
    if problems:
        raise InputError(
            "cannot start the judging app; nothing was changed",
            problems,
            hint=ADMIN_TOKEN_HINT if token_problems else None,
        )
    store = JudgingStore(workdir, judges_per_item=judges_per_item)
    if admin_token is not None:
        store.set_admin_token(admin_token)
    root = Path(workdir).resolve()
    install_token_redaction()
    app = FastAPI(title="GILL judging", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/judge")
    def login(token: Annotated[str, Query()] = "") -> Response:
        if store.judge_for_token(token) is None:
            return HTMLResponse(_LOGIN_FAILED, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE_NAME, token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(JUDGE_HTML)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/judge.js")
    def script() -> Response:
        return Response(JUDGE_JS, media_type="text/javascript")

    @app.get("/static/judge.css")
    def style() -> Response:
        return Response(JUDGE_CSS, media_type="text/css")

    @app.get("/api/items/next")
    def next_item(judge: JudgeDep) -> dict:
        item = store.next_item(judge)
        return {
            "judge": judge.name,
            "item": None if item is None else _public_item(item),
            "progress": _progress(store, judge),
        }

    @app.get("/api/images/{item_id}/{side}")
    def image(
        item_id: Annotated[int, PathParam(ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)], side: str, judge: JudgeDep
    ) -> FileResponse:
        item = store.item(item_id)
        if item is None or side not in SIDES:
            raise HTTPException(404, "no such item or side")
        found = candidate_image(root, item.image_for(side))
        if found is None:
            logger.warning(
                "item %d: the %s image is missing, not an image file or outside %s",
                item_id,
                side,
                root / CANDIDATES_DIR,
            )
            raise HTTPException(404, "image not found")
        # The file name would tell generated from retrieved: send none, and no caching of a judge-only file.
        return FileResponse(found[0], media_type=found[1], headers={"Cache-Control": "private, no-store"})

    @app.post("/api/votes", dependencies=[Depends(_require_csrf)])
    def vote(body: VoteIn, judge: JudgeDep) -> dict:
        try:
            saved = store.submit_vote(judge, body.item_id, body.alignment, body.realism)
        except UnknownItemError as err:
            raise HTTPException(404, err.message) from err
        except ItemFullError as err:
            raise HTTPException(409, err.message) from err
        except RevokedJudgeError as err:  # revoked between the auth check and the write
            raise HTTPException(403, err.message) from err
        return {"vote": _public_vote(saved), "progress": _progress(store, judge)}

    @app.get("/api/votes/mine")
    def my_votes(judge: JudgeDep) -> dict:
        return {"judge": judge.name, "votes": [_public_vote(v) for v in store.votes_of(judge)]}

    @app.get("/admin")
    def admin(
        request: Request, token: Annotated[str, Query()] = "", authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        if token:  # the admin link: trade the token for a cookie and take it out of the address bar
            if not store.is_admin(token):
                return HTMLResponse(_ADMIN_FAILED, 401)
            response = RedirectResponse("/admin", status_code=303)
            response.set_cookie(
                ADMIN_COOKIE_NAME,
                token,
                max_age=ADMIN_COOKIE_MAX_AGE_S,
                httponly=True,
                samesite="strict",
                path="/admin",
            )
            return response
        if not store.is_admin(_bearer(authorization) or request.cookies.get(ADMIN_COOKIE_NAME)):
            return HTMLResponse(_ADMIN_FAILED, 401)
        return HTMLResponse(render_admin(store))

    return app


def current_judge(request: Request, authorization: Annotated[str | None, Header()] = None) -> StoreJudge:
    """The judge of the request's bearer token or session cookie; 401 when there is none."""
    store: JudgingStore = request.app.state.store
    judge = store.judge_for_token(_bearer(authorization) or request.cookies.get(COOKIE_NAME))
    if judge is None:
        raise HTTPException(
            401,
            "open your personal login link (or send Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return judge


JudgeDep = Annotated[StoreJudge, Depends(current_judge)]


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def _require_csrf(
    request: Request,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    origin: Annotated[str | None, Header()] = None,
    sec_fetch_site: Annotated[str | None, Header()] = None,
) -> None:
    """Refuse (403) a state-changing request that a page of another site could have sent."""
    if csrf != "1":
        raise HTTPException(403, f"missing {CSRF_HEADER}: 1 header")
    if sec_fetch_site == "cross-site":
        raise HTTPException(403, "cross-site request refused")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"request from origin {origin!r} refused")


def candidate_image(root: Path, relative: str) -> tuple[Path, str] | None:
    """The file and content type of a candidate image path (relative to the workdir ``root``), or ``None`` when
    it resolves (symlinks followed) outside ``<root>/annotations/candidates``, is no file, or is not a PNG, JPEG,
    GIF or WebP image by both its suffix and its first bytes."""
    if not relative:
        return None
    folder = (root / CANDIDATES_DIR).resolve()
    path = resolve_stored(relative, root).resolve()
    media = IMAGE_TYPES.get(path.suffix.lower())
    if media is None or not path.is_relative_to(folder) or not path.is_file():
        return None
    return (path, media) if _sniff_image(path) == media else None


def _sniff_image(path: Path) -> str | None:
    """The image content type that ``path``'s first bytes show, or ``None``."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _public_item(item: StoreItem) -> dict:
    """What the judge may see: never the image paths or which side is generated."""
    return {
        "id": item.id,
        "prompt": item.prompt,
        "category": item.category,
        "challenge": item.challenge,
        "images": {side: f"/api/images/{item.id}/{side}" for side in SIDES},
    }


def _public_vote(vote: StoreVote) -> dict:
    return {"item_id": vote.item_id, "alignment": vote.alignment, "realism": vote.realism, "updated": vote.updated}


def _progress(store: JudgingStore, judge: StoreJudge) -> dict:
    p = store.progress(judge)
    return {"done": p.done, "total": p.total}


def render_admin(store: JudgingStore) -> str:
    """The admin page: per panel (people first; a simulated panel is labelled as such), progress per judge, items
    complete, agreement per question and the votes per item. Every value is escaped."""
    e = html.escape
    sections = [_admin_panel(store, panel) for panel in store.panels()]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GILL judging: admin</title>
<link rel="stylesheet" href="/static/judge.css"></head>
<body><main>
<h1>GILL judging: admin</h1>
<p id="summary">{store.count_items()} item(s) ({store.judgeable_items()} with images), {store.judges_per_item} judges
per item and panel; {store.count_votes(HUMAN_PANEL)} vote(s) by people. Store: {e(str(store.path))}</p>
{"".join(sections)}
</main></body></html>
"""


def _admin_panel(store: JudgingStore, panel: str) -> str:
    e = html.escape
    title = "People" if panel == HUMAN_PANEL else f"Panel {panel!r}"
    suffix = "" if panel == HUMAN_PANEL else "-" + e(panel)
    if panel == SIMULATED_PANEL:
        title = "SIMULATED judges (answer-key panel, not people)"
    rows = "".join(
        f"<tr><td>{e(j.name)}</td><td>{p.done}</td><td>{p.total}</td>"
        f"<td>{'revoked ' + e(j.revoked_at) if j.revoked_at else ''}</td></tr>"
        for j, p in store.judge_progress(panel)
    )
    agreement = "".join(
        f"<tr><td>{e(a.question)}</td><td>{_num(a.fleiss_kappa)}</td><td>{a.fleiss_items}</td>"
        f"<td>{_num(a.alpha)}</td><td>{a.alpha_items}</td></tr>"
        for a in store.agreement(panel)
    )
    recent = "".join(
        f"<tr><td>{iv.item.id}</td><td>{e(iv.item.prompt)}</td><td>{e(','.join(iv.alignment))}</td>"
        f"<td>{e(','.join(iv.realism))}</td></tr>"
        for iv in store.votes_table(panel=panel)
    )
    return f"""<section class="panel" id="panel-{e(panel)}" data-panel="{e(panel)}">
<h2>{e(title)}</h2>
<p>{store.complete_items(panel)} item(s) complete; {store.count_votes(panel)} vote(s).</p>
<h3>Judges</h3>
<table id="judges{suffix}"><tr><th>judge</th><th>done</th><th>of</th><th>access</th></tr>{rows}</table>
<h3>Agreement (official votes gen / ret / same)</h3>
<table id="agreement{suffix}"><tr><th>question</th><th>Fleiss' kappa</th><th>complete items</th>
<th>Krippendorff's alpha</th><th>items with 2+ votes</th></tr>{agreement}</table>
<h3>Votes per item (judge order)</h3>
<table id="votes{suffix}"><tr><th>item</th><th>prompt</th><th>alignment</th><th>realism</th></tr>{recent}</table>
</section>
"""


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


_ADMIN_FAILED = "<!doctype html><title>GILL judging</title><p>Unknown admin token: open the admin link again.</p>"

_LOGIN_FAILED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GILL judging</title></head>
<body><p>This login link is not valid. Ask the organiser for your personal link.</p></body></html>
"""

JUDGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GILL judging</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/judge.css"></head>
<body><main>
<header><span id="who"></span> <span id="progress"></span></header>
<p id="message" role="status"></p>
<section id="task" hidden>
  <p class="label">Prompt</p>
  <p id="prompt"></p>
  <div class="images">
    <figure><img id="img-left" alt="left image"><figcaption>Left</figcaption></figure>
    <figure><img id="img-right" alt="right image"><figcaption>Right</figcaption></figure>
  </div>
  <div class="question">
    <p>Which image matches the prompt better?</p>
    <button type="button" id="alignment-left" data-q="alignment" data-v="left">Left <kbd>1</kbd></button>
    <button type="button" id="alignment-right" data-q="alignment" data-v="right">Right <kbd>2</kbd></button>
    <button type="button" id="alignment-same" data-q="alignment" data-v="same">About the same <kbd>3</kbd></button>
  </div>
  <div class="question">
    <p>Which image is more realistic?</p>
    <button type="button" id="realism-left" data-q="realism" data-v="left">Left <kbd>q</kbd></button>
    <button type="button" id="realism-right" data-q="realism" data-v="right">Right <kbd>w</kbd></button>
    <button type="button" id="realism-same" data-q="realism" data-v="same">About the same <kbd>e</kbd></button>
  </div>
  <p class="hint">Your vote is sent as soon as both questions are answered (Enter sends it again if it failed).</p>
</section>
</main>
<script src="/static/judge.js"></script>
</body></html>
"""

JUDGE_JS = """'use strict';
// Text from the server is only ever set through textContent, so a prompt like <script> shows literally.
const KEYS = {'1': ['alignment', 'left'], '2': ['alignment', 'right'], '3': ['alignment', 'same'],
              'q': ['realism', 'left'], 'w': ['realism', 'right'], 'e': ['realism', 'same']};
const state = {item: null, alignment: null, realism: null, busy: false};
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({'X-Gill-CSRF': '1', 'Accept': 'application/json'}, options.headers || {});
  const response = await fetch(path, Object.assign({credentials: 'same-origin'}, options, {headers}));
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  return {status: response.status, body};
}

function say(text) { $('message').textContent = text; }

function showProgress(progress) {
  $('progress').textContent = progress ? `${progress.done} / ${progress.total} done` : '';
}

function render() {
  for (const button of document.querySelectorAll('button[data-q]')) {
    const chosen = state[button.dataset.q] === button.dataset.v;
    button.classList.toggle('chosen', chosen);
    button.setAttribute('aria-pressed', chosen ? 'true' : 'false');
  }
}

async function loadNext() {
  const {status, body} = await api('/api/items/next');
  if (status === 401) {
    $('task').hidden = true;
    say('You are not logged in: open your personal login link.');
    return;
  }
  if (status !== 200) { say(`Could not load the next item (HTTP ${status}).`); return; }
  $('who').textContent = body.judge;
  showProgress(body.progress);
  Object.assign(state, {item: body.item, alignment: null, realism: null, busy: false});
  if (!body.item) {
    $('task').hidden = true;
    say('All done: there is nothing left for you to judge. Thank you!');
    document.body.dataset.itemId = '';
    return;
  }
  $('prompt').textContent = body.item.prompt;
  $('img-left').src = body.item.images.left;
  $('img-right').src = body.item.images.right;
  $('task').hidden = false;
  document.body.dataset.itemId = String(body.item.id);
  render();
}

async function submit() {
  if (!state.item || !state.alignment || !state.realism || state.busy) return;
  state.busy = true;
  const payload = {item_id: state.item.id, alignment: state.alignment, realism: state.realism};
  const {status, body} = await api('/api/votes', {method: 'POST', body: JSON.stringify(payload),
                                                  headers: {'Content-Type': 'application/json'}});
  if (status === 200) {
    say(`Saved your vote on item ${payload.item_id}.`);
  } else if (status === 409) {
    say('That item already has enough judges; here is another one.');
  } else {
    state.busy = false;
    say(`Your vote was not saved (HTTP ${status}${body && body.detail ? ': ' + JSON.stringify(body.detail) : ''}).`);
    return;
  }
  await loadNext();
}

function choose(question, value) {
  if (!state.item || state.busy) return;
  state[question] = value;
  render();
  if (state.alignment && state.realism) submit();
}

document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-q]');
  if (button) choose(button.dataset.q, button.dataset.v);
});

document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === 'Enter') { submit(); return; }
  const hit = KEYS[event.key.toLowerCase()];
  if (hit) { event.preventDefault(); choose(hit[0], hit[1]); }
});

loadNext();
"""

JUDGE_CSS = """body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
main { max-width: 1100px; margin: 0 auto; padding: 1rem; }
header { display: flex; justify-content: space-between; color: #555; }
#prompt { font-size: 1.7rem; font-weight: 600; white-space: pre-wrap; margin: .3rem 0 1rem; padding: .6rem .9rem;
          background: #eef3fb; border-left: 6px solid #2b6cb0; }
.label { color: #777; margin-bottom: 0; }
.images { display: flex; gap: 1.5rem; justify-content: center; flex-wrap: wrap; }
figure { margin: 0; text-align: center; }
figcaption { font-weight: 600; margin-top: .3rem; }
/* small images are scaled up to at least 256 px with crisp pixels (no smoothing invents or hides detail) */
figure img { width: clamp(256px, 34vw, 480px); height: auto; aspect-ratio: 1 / 1; object-fit: contain;
             image-rendering: pixelated; background: #eee; border: 1px solid #ccc; }
.question { margin: 1rem 0; }
button { font-size: 1rem; padding: .5rem 1rem; margin-right: .5rem; cursor: pointer; }
button.chosen { background: #2b6cb0; color: white; }
kbd { font-size: .8rem; border: 1px solid #aaa; border-radius: 3px; padding: 0 .3rem; }
table { border-collapse: collapse; margin-bottom: 1rem; }
td, th { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; }
"""
