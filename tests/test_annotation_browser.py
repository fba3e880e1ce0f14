"""The judging page in a real headless Chromium (Selenium): login link, mouse and keyboard votes, reload and resume,
two judges kept apart, and the admin view.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and
the ``selenium`` package; the server is uvicorn on 127.0.0.1, so nothing leaves the machine.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_helpers import WAIT_S, chromium, needs_browser
from shard_helpers import DEMO_PIPELINE
from test_annotation_app import ADMIN, SCRIPT_PROMPT, running, write_candidates

from annotations.app import _num, create_app
from annotations.store import JudgingStore
from flows.stages.candidates import import_candidates

pytestmark = needs_browser

Site = tuple[str, Path, dict[str, str]]  # (base URL, workdir, login token by judge name)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A server over 4 items (item 2's prompt is a ``<script>``), k = 2, judges alice and bob.

    Yields ``(url, workdir, tokens by name)``.
    """
    wd = write_candidates(tmp_path / "wd", n=4, prompts={2: SCRIPT_PROMPT})
    import_candidates(wd)
    store = JudgingStore(wd, judges_per_item=2)
    tokens = {name: store.add_judge(name)[1] for name in ("alice", "bob")}
    with running(create_app(wd, judges_per_item=2, admin_token=ADMIN)) as url:
        yield url, wd, tokens


def _login(driver: WebDriver, url: str, token: str) -> None:
    driver.get(f"{url}/static/judge.css")  # a page of this host without the script
    driver.delete_all_cookies()
    driver.get(f"{url}/judge?token={token}")


def _wait_item(driver: WebDriver, item_id: int | str, progress: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: WebDriver) -> bool:
        body = d.find_element(By.TAG_NAME, "body")
        return body.get_attribute("data-item-id") == str(item_id) and d.find_element(By.ID, "progress").text == progress

    WebDriverWait(driver, WAIT_S).until(ready)


def _votes(wd: Path, name: str) -> list[tuple[int, str, str]]:
    store = JudgingStore(wd)
    judge = next(j for j in store.judges() if j.name == name)
    return [(v.item_id, v.alignment, v.realism) for v in store.votes_of(judge)]


def test_a_judge_votes_by_mouse_and_keyboard_and_resumes_after_a_reload(browser: WebDriver, site: Site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, wd, tokens = site
    browser.get_log("browser")  # start with an empty console log
    _login(browser, url, tokens["alice"])
    _wait_item(browser, 1, "0 / 4 done")
    assert browser.current_url == f"{url}/"  # the login link redirected to the page
    assert browser.find_element(By.ID, "prompt").text == "prompt number 1"
    assert browser.find_element(By.ID, "who").text == "alice"
    widths = "return ['img-left', 'img-right'].map((id) => document.getElementById(id).naturalWidth)"
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(widths) == [8, 8])  # served to the cookie

    browser.find_element(By.ID, "alignment-left").click()  # mouse
    browser.find_element(By.ID, "realism-right").click()  # both answered: sent at once
    _wait_item(browser, 2, "1 / 4 done")
    assert browser.find_element(By.ID, "prompt").text == SCRIPT_PROMPT  # shown literally, never run
    assert browser.find_elements(By.CSS_SELECTOR, "#prompt *") == []

    ActionChains(browser).send_keys("2").send_keys("e").perform()  # keyboard
    _wait_item(browser, 3, "2 / 4 done")
    assert _votes(wd, "alice") == [(1, "left", "right"), (2, "right", "same")]

    browser.refresh()
    _wait_item(browser, 3, "2 / 4 done")  # resumes at the next unvoted item
    browser.get(f"{url}/")
    _wait_item(browser, 3, "2 / 4 done")

    _login(browser, url, tokens["bob"])  # a second judge in the same browser
    _wait_item(browser, 1, "0 / 4 done")
    assert browser.find_element(By.ID, "who").text == "bob"
    ActionChains(browser).send_keys("3").send_keys("q").perform()
    _wait_item(browser, 2, "1 / 4 done")
    mine = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/votes/mine').then((r) => r.json()).then((b) => done(b.votes.map((v) => v.item_id)));"
    )
    assert mine == [1]  # the page sees bob's votes only
    assert _votes(wd, "bob") == [(1, "same", "left")]
    assert _votes(wd, "alice") == [(1, "left", "right"), (2, "right", "same")]
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []  # no script error, no Content-Security-Policy violation, no failed request


def test_the_admin_view_shows_progress_and_agreement(browser: WebDriver, site: Site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, wd, tokens = site
    for name in ("alice", "bob"):  # both judges agree on item 1
        _login(browser, url, tokens[name])
        _wait_item(browser, 1, "0 / 4 done")
        ActionChains(browser).send_keys("1").send_keys("w").perform()
        _wait_item(browser, 2, "1 / 4 done")
        ActionChains(browser).send_keys("2").send_keys("w").perform()
        _wait_item(browser, 3, "2 / 4 done")
    assert JudgingStore(wd).complete_items() == 2

    browser.get(f"{url}/admin?token={ADMIN}")
    judges = browser.find_element(By.ID, "judges").text
    assert "alice 2 4" in judges and "bob 2 4" in judges
    rows = [line.split() for line in browser.find_element(By.ID, "agreement").text.splitlines()[1:]]
    expected = [[a.question, _num(a.fleiss_kappa), "2", _num(a.alpha), "2"] for a in JudgingStore(wd).agreement()]
    assert rows == expected and [r[0] for r in rows] == ["alignment", "realism"]
    assert SCRIPT_PROMPT in browser.find_element(By.ID, "votes").text  # escaped, so shown as text
    assert "2 judges per item and panel; 4 vote(s) by people" in browser.find_element(By.ID, "summary").text
    assert "2 item(s) complete" in browser.find_element(By.ID, "panel-human").text


def test_the_offline_html_bundle_votes_by_mouse_and_keyboard_resumes_and_imports(browser, tmp_path):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from annotations import exchange

    wd = write_candidates(tmp_path / "wd", n=3, prompts={2: SCRIPT_PROMPT})
    import_candidates(wd)
    store = JudgingStore(wd, judges_per_item=2)
    index = exchange.export_html_bundle(store, tmp_path / "bundle")
    browser.get(index.as_uri())
    wait = WebDriverWait(browser, WAIT_S)

    def start(name: str) -> None:
        field = browser.find_element(By.ID, "judge")
        field.clear()
        field.send_keys(name)
        browser.find_element(By.ID, "start").click()

    start("offline judge")
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "0 / 3 done"))
    assert browser.find_element(By.ID, "prompt").text == "prompt number 1"
    browser.find_element(By.CSS_SELECTOR, 'button[data-q="alignment"][data-v="left"]').click()
    browser.find_element(By.CSS_SELECTOR, 'button[data-q="realism"][data-v="same"]').click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "1 / 3 done"))
    assert browser.find_element(By.ID, "prompt").text == SCRIPT_PROMPT  # shown as text, not run
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("2")
    body.send_keys("w")
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "2 / 3 done"))
    browser.refresh()
    start("offline judge")  # resumes from the browser's storage
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "2 / 3 done"))
    bundle = browser.execute_script("return window.GILL_BUNDLE.bundle")
    saved = browser.execute_script(f"return localStorage.getItem('gill-bundle-votes:{bundle}:offline judge')")
    votes = sorted(json.loads(saved).values(), key=lambda v: v["item_id"])
    assert [(v["alignment"], v["realism"]) for v in votes] == [("left", "same"), ("right", "right")]
    file = tmp_path / f"votes-{bundle}-offline_judge.json"
    file.write_text(json.dumps({"bundle": bundle, "judge": "offline judge", "votes": votes}))  # the Save button's
    assert exchange.import_bundle_votes(store, [file]).votes == 2
    (judge,) = [j for j in store.judges() if j.name == "offline judge"]
    assert [(v.item_id, v.alignment) for v in store.votes_of(judge)] == [(1, "left"), (2, "right")]

    second = exchange.export_html_bundle(store, tmp_path / "bundle-2")  # a new bundle, opened under the same name
    browser.get(second.as_uri())
    start("offline judge")
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "0 / 3 done"))  # not the first bundle's votes


def test_a_judge_of_the_demo_workdir_sees_both_images_large_votes_and_resumes(browser, demo_workdir, tmp_path, capsys):
    """After ``make demo``: ``add-judge`` prints a link; the page shows the world prompt and both candidate images
    (loaded, scaled up to >= 256 px with crisp pixels); votes by mouse and keys land in the store; a reload resumes."""

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from flows.command.parser import main

    demo, _ = demo_workdir
    wd = tmp_path / "demo"
    shutil.copytree(demo / "annotations", wd / "annotations")  # the store and its images; the demo stays unjudged
    assert main(["annotate", "add-judge", "alice", "--workdir", str(wd)]) == 0
    link = next(line for line in capsys.readouterr().out.splitlines() if "/judge?token=" in line).strip()
    token = link.split("token=", 1)[1]
    store = JudgingStore(wd)
    first, second, third = store.items()[:3]
    n = DEMO_PIPELINE["candidate_limit"]
    with running(create_app(wd, admin_token=ADMIN)) as url:
        _login(browser, url, token)
        _wait_item(browser, first.id, f"0 / {n} done")
        assert browser.find_element(By.ID, "prompt").text == first.prompt
        sizes = (
            "return ['img-left', 'img-right'].map((id) => { const i = document.getElementById(id); return "
            "[i.complete, i.naturalWidth, i.getBoundingClientRect().width, getComputedStyle(i).imageRendering]; })"
        )
        WebDriverWait(browser, WAIT_S).until(lambda d: all(s[0] and s[1] > 0 for s in d.execute_script(sizes)))
        for _complete, natural, shown, rendering in browser.execute_script(sizes):
            assert natural == 64 and shown >= 256 and rendering == "pixelated"
        browser.find_element(By.ID, "alignment-right").click()
        browser.find_element(By.ID, "realism-left").click()
        _wait_item(browser, second.id, f"1 / {n} done")
        ActionChains(browser).send_keys("3").send_keys("w").perform()
        _wait_item(browser, third.id, f"2 / {n} done")
        browser.refresh()
        _wait_item(browser, third.id, f"2 / {n} done")
    assert _votes(wd, "alice") == [(first.id, "right", "left"), (second.id, "same", "right")]
    assert JudgingStore(wd).count_votes("simulated") == 5 * n  # the simulated panel's votes are untouched, apart
