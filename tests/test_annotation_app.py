"""The judging store and web app: login link, voting, auth, CSRF, escaping, k judges per item, concurrency, resume.

The API tests talk to a real uvicorn server on 127.0.0.1 (a free port, served from a thread) with httpx.
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from annotations.app import ADMIN_COOKIE_NAME, COOKIE_NAME, CSRF_HEADER, JUDGE_JS, MAX_BODY_BYTES, create_app
from annotations.store import (
    CANDIDATES_DIR,
    CHOICES,
    ItemFullError,
    JudgingStore,
    UnknownItemError,
    draw_gen_side,
    hash_token,
    official_vote,
    store_path,
)
from flows.stages.candidates import import_candidates
from gill.errors import InputError

ADMIN = "admin-token-for-tests-0123456789"
CSRF = {CSRF_HEADER: "1"}
SCRIPT_PROMPT = "<script>alert('x')</script> & a cat"


# -- fixtures and helpers ---------------------------------------------------------------------------------------------


def write_candidates(workdir: Path, n: int = 6, prompts: dict[int, str] | None = None) -> Path:
    """``<workdir>/gill.duckdb`` with a ``decision_candidates`` table of ``n`` rows and their small PNGs in
    ``<workdir>/annotations/candidates`` (where ``gill annotate build`` puts them, and the only folder served)."""
    import duckdb
    from PIL import Image

    prompts = prompts or {}
    (workdir / CANDIDATES_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(1, n + 1):
        for kind, color in (("gen", (200, 30, 30)), ("ret", (30, 30, 200))):
            Image.new("RGB", (8, 8), (color[0], color[1] + i, color[2])).save(
                workdir / CANDIDATES_DIR / f"{i}_{kind}.png"
            )
        rows.append(
            (
                i,
                prompts.get(i, f"prompt number {i}"),
                "Animals",
                "Basic",
                "",
                f"{CANDIDATES_DIR.as_posix()}/{i}_gen.png",
                f"{CANDIDATES_DIR.as_posix()}/{i}_ret.png",
                f"key{i}",
                0.5 + i / 100,
            )
        )
    con = duckdb.connect(str(workdir / "gill.duckdb"))
    try:
        con.execute(
            "CREATE OR REPLACE TABLE decision_candidates (prompt_id INTEGER, prompt VARCHAR, category VARCHAR, "
            "challenge VARCHAR, note VARCHAR, gen_image VARCHAR, ret_image VARCHAR, ret_key VARCHAR, "
            "ret_score DOUBLE)"
        )
        con.executemany("INSERT INTO decision_candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()
    return workdir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    wd = write_candidates(tmp_path / "wd", prompts={2: SCRIPT_PROMPT})
    import_candidates(wd)
    return wd


@contextmanager
def running(app: FastAPI, access_log: bool = False) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) from a thread; yield its base URL. ``access_log``:
    log every request at INFO, as ``gill annotate serve`` does."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    level = "info" if access_log else "warning"
    server = uvicorn.Server(uvicorn.Config(app, log_level=level, lifespan="off", access_log=access_log))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def server(workdir: Path) -> Iterator[str]:
    with running(create_app(workdir, judges_per_item=2, admin_token=ADMIN)) as url:
        yield url


def add_judge(workdir: Path, name: str) -> str:
    return JudgingStore(workdir).add_judge(name)[1]


def bearer(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@contextmanager
def logged_in(url: str, token: str) -> Iterator[httpx.Client]:
    """A client that opened the login link and now holds the session cookie."""
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/judge", params={"token": token})
        assert response.status_code == 303, response.text
        yield client


def vote(client: httpx.Client, item_id: int, alignment: str = "left", realism: str = "same") -> httpx.Response:
    return client.post(
        "/api/votes", json={"item_id": item_id, "alignment": alignment, "realism": realism}, headers=CSRF
    )


def admin_page(url: str, token: str = ADMIN) -> httpx.Response:
    """Open the admin link as a browser does: the token is traded for a cookie, then the page without it."""
    with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as client:
        return client.get("/admin", params={"token": token})


def dump(workdir: Path) -> list[str]:
    con = sqlite3.connect(store_path(workdir))
    try:
        return list(con.iterdump())
    finally:
        con.close()


# -- store ------------------------------------------------------------------------------------------------------------


def test_import_is_idempotent_and_keeps_each_items_seeded_generated_side(tmp_path: Path):
    wd = write_candidates(tmp_path / "wd", n=20)
    store = JudgingStore(wd)
    assert import_candidates(wd, store) == 20
    sides = {i.id: i.gen_side for i in store.items()}
    assert set(sides.values()) == {"left", "right"}  # randomised per item
    assert sides == {i: draw_gen_side(0, i) for i in range(1, 21)}  # seeded, recorded
    write_candidates(wd, n=21, prompts={1: "a new wording"})
    assert import_candidates(wd, store) == 1
    assert store.count_items() == 21
    assert store.item(1).prompt == "a new wording"
    assert {i.id: i.gen_side for i in store.items() if i.id <= 20} == sides


def test_import_without_the_candidates_table_is_an_error_that_says_what_to_do(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        import_candidates(tmp_path)
    import duckdb

    duckdb.connect(str(tmp_path / "gill.duckdb")).close()
    with pytest.raises(InputError, match="no table decision_candidates"):
        import_candidates(tmp_path)


def test_tokens_are_stored_only_as_hashes_and_judge_names_are_unique(workdir: Path):
    store = JudgingStore(workdir)
    judge, token = store.add_judge("alice")
    assert store.judge_for_token(token) == judge
    assert store.judge_for_token(token + "x") is None and store.judge_for_token("") is None
    files = [store.path, store.path.with_name(store.path.name + "-wal")]
    assert all(token.encode() not in f.read_bytes() for f in files if f.exists())
    assert any(hash_token(token) in line for line in dump(workdir))
    with pytest.raises(InputError, match="already exists"):
        store.add_judge(" alice ")
    with pytest.raises(InputError, match="empty"):
        store.add_judge("  ")


def test_votes_map_to_the_official_vocabulary_in_judge_order(workdir: Path):
    store = JudgingStore(workdir, judges_per_item=3)
    judges = [store.add_judge(name)[0] for name in ("j1", "j2", "j3")]
    item = store.item(1)
    gen, ret = item.gen_side, "right" if item.gen_side == "left" else "left"
    store.submit_vote(judges[2], 1, "same", ret)
    store.submit_vote(judges[0], 1, gen, gen)
    store.submit_vote(judges[1], 1, ret, "same")
    (row,) = store.votes_table()
    assert row.judges == ["j1", "j2", "j3"]
    assert row.alignment == ["gen", "ret", "same"] and row.realism == ["gen", "same", "ret"]
    assert row.row("alignment").votes == ["gen", "ret", "same"] and row.row("realism").prompt == item.prompt
    assert [official_vote(c, "left") for c in CHOICES] == ["gen", "ret", "same"]
    assert [official_vote(c, "right") for c in CHOICES] == ["ret", "gen", "same"]


def test_agreement_is_computed_per_question_on_the_official_votes(workdir: Path):
    from annotations.agreement import fleiss_kappa, krippendorff_alpha_nominal

    store = JudgingStore(workdir, judges_per_item=3)
    judges = [store.add_judge(name)[0] for name in ("j1", "j2", "j3")]
    picks = {1: ("left", "left", "right"), 2: ("same", "same", "same"), 3: ("right", "right", "right"), 4: ("left",)}
    for item_id, choices in picks.items():
        for judge, choice in zip(judges, choices, strict=False):
            store.submit_vote(judge, item_id, choice, "same" if item_id == 2 else choice)
    alignment, realism = store.agreement()
    table = [row.alignment for row in store.votes_table()]
    assert (alignment.question, realism.question) == ("alignment", "realism")
    assert alignment.fleiss_items == 3 and alignment.alpha_items == 3  # item 4 has one vote
    assert alignment.fleiss_kappa == pytest.approx(fleiss_kappa(table[:3], categories=("ret", "gen", "same")).kappa)
    assert alignment.alpha == pytest.approx(krippendorff_alpha_nominal(table, categories=("ret", "gen", "same")).alpha)
    assert 0 < alignment.alpha < 1 and store.complete_items() == 3
    assert "Fleiss' kappa" in alignment.describe()


def test_the_store_refuses_unknown_items_bad_choices_and_a_k_plus_first_judge(workdir: Path):
    store = JudgingStore(workdir, judges_per_item=1)
    a, b = store.add_judge("a")[0], store.add_judge("b")[0]
    with pytest.raises(UnknownItemError):
        store.submit_vote(a, 999, "left", "left")
    with pytest.raises(ValueError, match="choices"):
        store.submit_vote(a, 1, "up", "left")
    store.submit_vote(a, 1, "left", "left")
    with pytest.raises(ItemFullError):
        store.submit_vote(b, 1, "left", "left")
    assert store.submit_vote(a, 1, "right", "right").alignment == "right"  # a's own resubmit is fine
    assert store.count_votes() == 1


# -- login and auth ---------------------------------------------------------------------------------------------------


def test_the_login_link_sets_an_httponly_samesite_strict_cookie_and_redirects(workdir: Path, server: str):
    token = add_judge(workdir, "alice")
    with httpx.Client(base_url=server, timeout=30) as client:
        response = client.get("/judge", params={"token": token})
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"].lower()
        assert f"{COOKIE_NAME}={token}".lower() in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert response.headers["referrer-policy"] == "no-referrer"
        assert client.get("/api/items/next").json()["judge"] == "alice"
        page = client.get("/")
        assert page.status_code == 200 and 'id="prompt"' in page.text and "/static/judge.js" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
    with httpx.Client(base_url=server, timeout=30) as client:
        response = client.get("/judge", params={"token": "not-a-token"})
        assert response.status_code == 401 and "set-cookie" not in response.headers


def test_requests_without_a_valid_token_get_401_and_change_nothing(workdir: Path, server: str):
    add_judge(workdir, "alice")
    before = dump(workdir)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE_NAME}=wrong"}):
        with httpx.Client(base_url=server, headers=headers, timeout=30) as client:
            assert client.get("/api/items/next").status_code == 401
            assert client.get("/api/votes/mine").status_code == 401
            assert client.get("/api/images/1/left").status_code == 401
            assert vote(client, 1).status_code == 401
    assert dump(workdir) == before


def test_a_judge_votes_and_a_resubmit_replaces_the_vote(workdir: Path, server: str):
    with logged_in(server, add_judge(workdir, "alice")) as client:
        first = client.get("/api/items/next").json()
        assert first["item"]["id"] == 1 and first["progress"] == {"done": 0, "total": 6}
        assert set(first["item"]) == {"id", "prompt", "category", "challenge", "images"}  # no gen side, no paths
        saved = vote(client, 1, "left", "right")
        assert saved.status_code == 200 and saved.json()["progress"] == {"done": 1, "total": 6}
        assert client.get("/api/items/next").json()["item"]["id"] == 2
        assert vote(client, 1, "same", "same").status_code == 200
        mine = client.get("/api/votes/mine").json()["votes"]
        assert [(v["item_id"], v["alignment"], v["realism"]) for v in mine] == [(1, "same", "same")]
    assert JudgingStore(workdir).count_votes() == 1


def test_votes_are_validated(workdir: Path, server: str):
    with bearer(server, add_judge(workdir, "alice")) as client:
        assert vote(client, 999).status_code == 404
        assert vote(client, 1, alignment="up").status_code == 422
        assert vote(client, 1, realism="").status_code == 422
        body = {"item_id": 1, "alignment": "left", "realism": "left", "gen_side": "left"}
        assert client.post("/api/votes", json=body, headers=CSRF).status_code == 422
        assert client.post("/api/votes", content=b"not json", headers=CSRF).status_code == 422
    assert JudgingStore(workdir).count_votes() == 0


def test_a_judge_sees_only_their_own_votes(workdir: Path, server: str):
    with bearer(server, add_judge(workdir, "alice")) as a, bearer(server, add_judge(workdir, "bob")) as b:
        assert vote(a, 1, "left", "left").status_code == 200
        assert vote(a, 2, "right", "right").status_code == 200
        assert vote(b, 1, "same", "right").status_code == 200
        assert [v["item_id"] for v in a.get("/api/votes/mine").json()["votes"]] == [1, 2]
        assert [(v["item_id"], v["alignment"]) for v in b.get("/api/votes/mine").json()["votes"]] == [(1, "same")]
        assert b.get("/api/votes/mine", params={"judge": "alice"}).json()["judge"] == "bob"


def test_state_changing_requests_without_the_csrf_header_or_from_another_site_get_403(workdir: Path, server: str):
    token = add_judge(workdir, "alice")
    with logged_in(server, token) as client:
        body = {"item_id": 1, "alignment": "left", "realism": "left"}
        assert client.post("/api/votes", json=body).status_code == 403
        assert client.post("/api/votes", json=body, headers={CSRF_HEADER: "0"}).status_code == 403
        form = client.post("/api/votes", data={"item_id": "1", "alignment": "left", "realism": "left"})
        assert form.status_code == 403  # what a cross-site HTML form could send
        evil = {**CSRF, "Origin": "http://evil.example"}
        assert client.post("/api/votes", json=body, headers=evil).status_code == 403
        cross = {**CSRF, "Sec-Fetch-Site": "cross-site"}
        assert client.post("/api/votes", json=body, headers=cross).status_code == 403
        assert JudgingStore(workdir).count_votes() == 0
        same_origin = {**CSRF, "Origin": server, "Sec-Fetch-Site": "same-origin"}
        assert client.post("/api/votes", json=body, headers=same_origin).status_code == 200


def test_images_are_served_to_judges_only_and_show_each_side(workdir: Path, server: str):
    from PIL import Image

    item = JudgingStore(workdir).item(1)
    with bearer(server, add_judge(workdir, "alice")) as client:
        for side in ("left", "right"):
            response = client.get(f"/api/images/1/{side}")
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert "gen" not in response.headers.get("content-disposition", "")
            pixel = Image.open(io.BytesIO(response.content)).getpixel((0, 0))
            assert (pixel[0] > pixel[2]) == (side == item.gen_side)  # the generated images are red
        assert client.get("/api/images/1/middle").status_code == 404
        assert client.get("/api/images/999/left").status_code == 404


def test_an_image_path_outside_the_workdir_is_not_served(tmp_path: Path):
    wd = write_candidates(tmp_path / "wd", n=1)
    store = JudgingStore(wd)
    (tmp_path / "secret.png").write_bytes(b"secret")
    store.upsert_items([{"prompt_id": 1, "prompt": "p", "gen_image": "../secret.png", "ret_image": "../secret.png"}])
    token = store.add_judge("alice")[1]
    with running(create_app(wd)) as url, bearer(url, token) as client:
        assert client.get("/api/images/1/left").status_code == 404


# -- escaping ---------------------------------------------------------------------------------------------------------


def test_a_script_prompt_is_shown_as_text_on_the_page_and_escaped_on_the_admin_page(workdir: Path, server: str):
    with logged_in(server, add_judge(workdir, "<b>mallory</b>")) as client:
        assert vote(client, 1).status_code == 200
        item = client.get("/api/items/next").json()["item"]
        assert item["prompt"] == SCRIPT_PROMPT  # JSON carries the raw text ...
        script = client.get("/static/judge.js").text
        assert script == JUDGE_JS
        assert "$('prompt').textContent = body.item.prompt;" in script  # ... and the page sets it as text
        assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
        assert vote(client, 2).status_code == 200
    admin = admin_page(server)
    assert admin.status_code == 200
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; a cat" in admin.text
    assert "<script>" not in admin.text and "&lt;b&gt;mallory&lt;/b&gt;" in admin.text


def test_the_admin_page_needs_the_admin_token_and_shows_progress_and_agreement(workdir: Path, server: str):
    judge_token = add_judge(workdir, "alice")
    assert httpx.get(f"{server}/admin", timeout=30).status_code == 401
    assert httpx.get(f"{server}/admin", params={"token": judge_token}, timeout=30).status_code == 401
    with bearer(server, judge_token) as client:
        vote(client, 1)
    page = admin_page(server)
    assert page.status_code == 200
    assert "<td>alice</td><td>1</td><td>6</td>" in page.text
    assert "Fleiss' kappa" in page.text and "Krippendorff" in page.text and "<td>alignment</td>" in page.text


# -- assignment, concurrency, resume ----------------------------------------------------------------------------------


def test_each_item_gets_exactly_k_judges(workdir: Path, server: str):  # k = 2
    tokens = [add_judge(workdir, name) for name in ("a", "b", "c")]
    with bearer(server, tokens[0]) as a, bearer(server, tokens[1]) as b, bearer(server, tokens[2]) as c:
        for item_id in range(1, 7):
            assert vote(a, item_id).status_code == 200
        for item_id in (1, 2, 3):
            assert vote(b, item_id).status_code == 200
        nxt = c.get("/api/items/next").json()
        assert nxt["item"]["id"] == 4 and nxt["progress"] == {"done": 0, "total": 3}
        assert vote(c, 1).status_code == 409  # a third judge on a full item
        for item_id in (4, 5, 6):
            assert vote(c, item_id).status_code == 200
        assert c.get("/api/items/next").json()["item"] is None
        assert b.get("/api/items/next").json() == {"judge": "b", "item": None, "progress": {"done": 3, "total": 3}}
        assert vote(a, 1, "same", "same").status_code == 200  # a voter may still change their vote
    table = JudgingStore(workdir).votes_table()
    assert [len(row.judges) for row in table] == [2] * 6


def test_concurrent_submits_lose_nothing_and_never_exceed_k(workdir: Path):
    store = JudgingStore(workdir)
    tokens = [store.add_judge(f"judge{i}")[1] for i in range(8)]
    with running(create_app(workdir, judges_per_item=8)) as url:

        def vote_all(token: str) -> list[int]:
            with bearer(url, token) as client:
                return [vote(client, item_id, "left", "right").status_code for item_id in range(1, 7)]

        with ThreadPoolExecutor(8) as pool:
            codes = [c for codes in pool.map(vote_all, tokens) for c in codes]
        assert codes == [200] * 48
        assert store.count_votes() == 48

    race = JudgingStore(workdir, judges_per_item=2)
    late = [race.add_judge(f"late{i}")[1] for i in range(6)]
    race.upsert_items([{"prompt_id": 100, "prompt": "raced", "gen_image": "a.png", "ret_image": "b.png"}])
    with running(create_app(workdir, judges_per_item=2)) as url:

        def vote_100(token: str) -> int:
            with bearer(url, token) as client:
                return vote(client, 100).status_code

        with ThreadPoolExecutor(6) as pool:
            codes = sorted(pool.map(vote_100, late))
    assert codes == [200, 200, 409, 409, 409, 409]
    assert [len(r.judges) for r in race.votes_table() if r.item.id == 100] == [2]


def test_a_judge_resumes_where_they_left_off_after_a_reload(workdir: Path, server: str):
    token = add_judge(workdir, "alice")
    with logged_in(server, token) as client:
        for item_id in (1, 2, 3):
            assert vote(client, item_id).status_code == 200
    with logged_in(server, token) as reloaded:  # a new browser session, same link
        nxt = reloaded.get("/api/items/next").json()
        assert nxt["item"]["id"] == 4 and nxt["progress"] == {"done": 3, "total": 6}
    with running(create_app(workdir, judges_per_item=2, admin_token=ADMIN)) as restarted, bearer(restarted, token) as c:
        assert c.get("/api/items/next").json()["item"]["id"] == 4  # survives a server restart too


# -- CLI --------------------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from flows.command.annotate_app import add_app_parsers

    parser = argparse.ArgumentParser(prog="gill annotate")
    add_app_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_add_judge_prints_a_working_login_link_and_status_reports_progress(workdir: Path, capsys, server: str):
    assert _cli(["add-judge", "carol", "--workdir", str(workdir), "--port", server.rsplit(":", 1)[1]]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert link.startswith(f"{server}/judge?token=")
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get(link).status_code == 303
        assert vote(client, 1).status_code == 200
    with pytest.raises(InputError, match="already exists"):
        _cli(["add-judge", "carol", "--workdir", str(workdir)])
    assert _cli(["status", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "6 item(s), 6 with images; 2 judges per item and panel" in out
    assert "panel human: 0 item(s) complete, 1 vote(s)" in out
    assert "carol  1 / 6 done" in out
    assert "alignment: Fleiss' kappa n/a on 0 complete item(s)" in out


def test_cli_status_without_a_store_says_how_to_start(tmp_path: Path):
    with pytest.raises(InputError, match="add-judge"):
        _cli(["status", "--workdir", str(tmp_path)])
    assert not store_path(tmp_path).exists()


def test_cli_serve_binds_to_localhost_by_default():
    from flows.command.annotate_app import add_app_parsers

    parser = argparse.ArgumentParser()
    add_app_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--workdir", "w"])
    assert (args.host, args.port, args.judges_per_item) == ("127.0.0.1", 8765, None)  # None: keep the saved k
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--workdir", "w", "--judges-per-item", "0"])


# -- tokens never in logs or addresses --------------------------------------------------------------------------------


@contextmanager
def captured_logs(*names: str) -> Iterator[list[str]]:
    """Every line the named loggers write while the block runs, formatted as uvicorn's handlers format them."""
    from uvicorn.logging import AccessFormatter, DefaultFormatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatter = AccessFormatter(use_colors=False) if record.name == "uvicorn.access" else DefaultFormatter()
            lines.append(formatter.format(record))

    handler = Collect()
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield lines
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


def test_no_token_reaches_the_access_log_and_login_links_redirect_to_addresses_without_it(workdir: Path):
    token = add_judge(workdir, "alice")
    with running(create_app(workdir, admin_token=ADMIN), access_log=True) as url:
        with captured_logs("uvicorn.access", "uvicorn.error", "annotations.app") as lines:
            with httpx.Client(base_url=url, timeout=30) as client:
                login = client.get("/judge", params={"token": token})
                assert login.status_code == 303 and "token=" not in login.headers["location"]
                assert client.get(login.headers["location"]).status_code == 200
                assert client.get("/judge", params={"token": token + "x"}).status_code == 401
                assert client.get("/api/items/next", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            with httpx.Client(base_url=url, timeout=30) as admin:
                link = admin.get("/admin", params={"token": ADMIN})
                assert link.status_code == 303 and link.headers["location"] == "/admin"
                assert (
                    ADMIN_COOKIE_NAME in link.headers["set-cookie"] and "httponly" in link.headers["set-cookie"].lower()
                )
                page = admin.get("/admin")  # the cookie alone opens the page: the token has left the address
                assert page.status_code == 200 and "GILL judging: admin" in page.text
            assert httpx.get(f"{url}/admin", params={"token": "wrong-admin-token-0123"}, timeout=30).status_code == 401
    log = "\n".join(lines)
    assert "GET /judge?token=[redacted]" in log and "GET /admin?token=[redacted]" in log  # the lines were logged ...
    assert token not in log and ADMIN not in log  # ... without the tokens


def test_token_redaction_covers_query_values_bearer_headers_and_session_cookies():
    from annotations.app import redact_tokens

    line = 'GET /judge?token=abc123&x=1 "Authorization: Bearer s3cr3t" Cookie: gill_judge=c00k1e; gill_admin=adm1n'
    redacted = redact_tokens(line)
    assert not any(secret in redacted for secret in ("abc123", "s3cr3t", "c00k1e", "adm1n"))
    assert "token=[redacted]&x=1" in redacted and "Bearer [redacted]" in redacted
    from annotations.app import TokenRedactingFilter

    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "login with token=%s", ("abc123",), None)
    assert TokenRedactingFilter().filter(record) and record.getMessage() == "login with token=[redacted]"


# -- revoking a judge -------------------------------------------------------------------------------------------------


def test_revoke_judge_ends_the_judges_sessions_at_once_and_keeps_their_votes_marked(workdir: Path, server: str, capsys):
    from annotations.app import render_admin
    from annotations.store import RevokedJudgeError
    from flows.command.annotate_app import status_lines
    from flows.command.parser import main

    token, other = add_judge(workdir, "alice"), add_judge(workdir, "bob")
    with logged_in(server, token) as cookie_client, bearer(server, token) as bearer_client:
        assert vote(cookie_client, 1).status_code == 200
        assert main(["annotate", "revoke-judge", "alice", "--workdir", str(workdir)]) == 0
        assert "revoked" in capsys.readouterr().out
        assert cookie_client.get("/api/items/next").status_code == 401  # the very next request
        assert vote(cookie_client, 2).status_code == 401 and bearer_client.get("/api/votes/mine").status_code == 401
        assert cookie_client.get("/judge", params={"token": token}).status_code == 401  # the link is dead too
    with bearer(server, other) as bob:
        assert vote(bob, 1).status_code == 200  # other judges are unaffected
    store = JudgingStore(workdir)
    alice = next(j for j in store.judges() if j.name == "alice")
    assert alice.revoked_at is not None and [v.item_id for v in store.votes_of(alice)] == [1]  # the vote stays
    assert store.votes_table()[0].judges == ["alice", "bob"]
    with pytest.raises(RevokedJudgeError):
        store.submit_vote(alice, 3, "left", "left")  # the store refuses them too, whatever the caller
    with pytest.raises(RevokedJudgeError, match="nothing was imported"):
        store.import_named_votes([("alice", 3, "left", "left")])
    assert any("alice" in line and f"(revoked {alice.revoked_at})" in line for line in status_lines(workdir))
    assert f"<td>alice</td><td>1</td><td>6</td><td>revoked {alice.revoked_at}</td>" in render_admin(store)


def test_revoking_an_unknown_or_revoked_judge_is_a_clear_error_that_changes_nothing(workdir: Path, tmp_path, capsys):
    from flows.command.parser import main

    add_judge(workdir, "alice")
    before = dump(workdir)
    assert main(["annotate", "revoke-judge", "mallory", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "no judge named 'mallory'" in err and "'alice'" in err and "Traceback" not in err
    assert dump(workdir) == before
    assert main(["annotate", "revoke-judge", "alice", "--workdir", str(workdir)]) == 0
    revoked = dump(workdir)
    assert main(["annotate", "revoke-judge", "alice", "--workdir", str(workdir)]) == 2
    assert "already revoked" in capsys.readouterr().err and dump(workdir) == revoked
    assert main(["annotate", "revoke-judge", "alice", "--workdir", str(tmp_path / "none")]) == 2
    assert not store_path(tmp_path / "none").exists()


# -- serve: validated before anything is written ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_keeps_the_saved_judges_per_item_unless_given(workdir: Path, monkeypatch, capsys):
    import uvicorn

    from flows.command.parser import main

    served: list[tuple] = []  # the address of each socket serve hands uvicorn (bound before anything is written)
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: served.extend(s.getsockname() for s in sockets)
    )
    JudgingStore(workdir, judges_per_item=2)
    port = _free_port()
    assert main(["annotate", "serve", "--workdir", str(workdir), "--port", str(port)]) == 0
    assert JudgingStore(workdir).judges_per_item == 2 and "2 judges per item" in capsys.readouterr().out
    assert served == [("127.0.0.1", port)]
    assert main(["annotate", "serve", "--workdir", str(workdir), "--port", str(port), "--judges-per-item", "3"]) == 0
    assert JudgingStore(workdir).judges_per_item == 3
    assert create_app(workdir).state.store.judges_per_item == 3  # the app's default keeps it too


def test_a_failed_serve_changes_nothing_and_says_why_without_a_traceback(workdir: Path, monkeypatch, capsys):
    import uvicorn

    from flows.command.parser import main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("serve must not start"))
    JudgingStore(workdir, judges_per_item=2).set_admin_token(ADMIN)
    before = dump(workdir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["annotate", "serve", "--workdir", str(workdir), "--port", str(port), "--judges-per-item", "4"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1 port {port}" in err and "--port" in err
    code = main(["annotate", "serve", "--workdir", str(workdir), "--admin-token", "short", "--judges-per-item", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--admin-token is refused" in err and "at least 16" in err
    with pytest.raises(SystemExit) as exit_:
        main(["annotate", "serve", "--workdir", str(workdir), "--port", "99999", "--judges-per-item", "4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--port" in err and "1 to 65535, got 99999" in err
    assert all("Traceback" not in e for e in (err,))
    assert dump(workdir) == before  # no k reset, no admin token rotation
    store = JudgingStore(workdir)
    assert store.judges_per_item == 2 and store.is_admin(ADMIN)
    with pytest.raises(InputError, match="nothing was changed"):
        create_app(workdir, judges_per_item=0, admin_token="short")
    assert dump(workdir) == before


# -- images: only registered candidate images -------------------------------------------------------------------------


def test_only_registered_image_files_inside_the_candidates_folder_are_served(workdir: Path):
    from PIL import Image

    store = JudgingStore(workdir)
    token = store.add_judge("alice")[1]
    folder = workdir / CANDIDATES_DIR
    Image.new("RGB", (4, 4), "green").save(folder / "photo.jpg")
    Image.new("RGB", (4, 4), "green").save(workdir / "elsewhere.png")
    (folder / "fake.png").write_text("<html>not an image</html>")
    (folder / "notes.txt").write_text("text")
    (folder / "link.png").symlink_to(workdir / "elsewhere.png")
    candidates = CANDIDATES_DIR.as_posix()
    tampered = {  # item id: (gen_image, ret_image), as a tampered decision_candidates row could set them
        10: ("gill.duckdb", "annotations/judging.sqlite"),
        11: ("elsewhere.png", f"{candidates}/../../elsewhere.png"),
        12: (f"{candidates}/fake.png", f"{candidates}/notes.txt"),
        13: (f"{candidates}/link.png", str(workdir / "elsewhere.png")),
        14: (f"{candidates}/photo.jpg", f"{candidates}/photo.jpg"),
    }
    store.upsert_items(
        [{"prompt_id": i, "prompt": f"p{i}", "gen_image": g, "ret_image": r} for i, (g, r) in tampered.items()]
    )
    with running(create_app(workdir)) as url, bearer(url, token) as client:
        for item_id in (10, 11, 12, 13):
            for side in ("left", "right"):
                assert client.get(f"/api/images/{item_id}/{side}").status_code == 404, (item_id, side)
        jpeg = client.get("/api/images/14/left")
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        assert client.get("/api/images/1/left").headers["content-type"] == "image/png"


# -- strict request types ---------------------------------------------------------------------------------------------


def test_vote_item_ids_must_be_json_integers_in_range(workdir: Path, server: str):
    with bearer(server, add_judge(workdir, "alice")) as client:
        for item_id in (True, 1.0, "1", 2**63, -(2**63) - 1, None):
            body = {"item_id": item_id, "alignment": "left", "realism": "left"}
            response = client.post("/api/votes", json=body, headers=CSRF)
            assert response.status_code == 422 and "item_id" in response.text, item_id
        assert (
            client.post(
                "/api/votes", json={"item_id": 2**63 - 1, "alignment": "left", "realism": "left"}, headers=CSRF
            ).status_code
            == 404
        )
        assert client.get(f"/api/images/{2**63}/left").status_code == 422
        assert client.get(f"/api/images/{2**70}/left").status_code == 422
    assert JudgingStore(workdir).count_votes() == 0


def test_request_bodies_over_the_limit_get_413_before_any_parsing(workdir: Path, server: str):
    padded = b'{"item_id": 1, "alignment": "left", "realism": "left"' + b" " * MAX_BODY_BYTES + b"}"
    headers = {**CSRF, "Content-Type": "application/json"}
    with bearer(server, add_judge(workdir, "alice")) as client:
        declared = client.post("/api/votes", content=padded, headers=headers)
        assert declared.status_code == 413 and str(MAX_BODY_BYTES) in declared.json()["detail"]
        streamed = client.post("/api/votes", content=iter([padded[:1000], padded[1000:]]), headers=headers)
        assert streamed.status_code == 413  # chunked, no Content-Length: counted as it arrives
        assert JudgingStore(workdir).count_votes() == 0
        small = b'{"item_id": 1, "alignment": "left", "realism": "left"}'
        assert client.post("/api/votes", content=iter([small]), headers=headers).status_code == 200
