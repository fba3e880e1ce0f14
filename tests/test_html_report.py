"""The static HTML report (``gill report --html OUT``) in a real headless Chromium from ``file://``: the tables with
their intervals, the figures, and the sample browser (images shown, filters, paging through the data files, and
data text that stays text).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` package for the browser tests;
the page is opened from disk, so nothing leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_helpers import WAIT_S, chromium, needs_browser
from PIL import Image

from flows.command.parser import main
from flows.stages import report as report_stage
from flows.stages.html_report import SAMPLES_PER_FILE, samples_file, script_json, write_html_report
from flows.stages.report import ReportOutcome, report_figures
from flows.store import db_path, ensure_database, replace_rows
from flows.workdir import Workdir

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

RUN = "run-html"
EVIL = '<img src=x onerror="window.pwned=1"> and <b>bold</b> </script> caf\u00e9 \u2028 line'
"""The prompt of the first sample: HTML-like text, a script end tag, non-ASCII and a JavaScript line separator."""
VIST_SETTINGS = ("1cap", "5cap4img")
SYSTEMS = ("sd", "gill-gen", "gill")
N_VIST, N_VISDIAL = 40, 30
N_SAMPLES = N_VIST * len(VIST_SETTINGS) * len(SYSTEMS) + N_VISDIAL * 2  # 300: three data files and a part


def _png(path: Path, colour: tuple[int, int, int], size: int = 24) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path.as_posix()


def _result(benchmark: str, setting: str, system: str, metric: str, mean: float, low: float, high: float) -> dict:
    return {
        "run_id": RUN,
        "benchmark": benchmark,
        "setting": setting,
        "system": system,
        "metric": metric,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": N_VIST,
        "n_skipped": 0,
        "n_seeds": 1,
        "metric_model": "tiny-clip",
    }


def build_store(root: Path) -> Workdir:
    """A work folder with one benchmark run: results, an unsupported system and 300 samples with PNGs (paths
    stored relative to the work folder, as the bench stage stores them)."""
    wd = Workdir.at(root)
    path = db_path(root)
    ensure_database(path)
    replace_rows(
        path,
        "runs",
        [{"run_id": RUN, "started_at": dt.datetime(2026, 1, 2), "preset": "tiny", "checkpoint": "runs/x/best"}],
    )
    results = []
    for i, system in enumerate(SYSTEMS):
        for j, setting in enumerate(VIST_SETTINGS):
            mean = 0.5 + 0.1 * i + 0.01 * j
            low, high = (0.598, 0.627) if (system, setting) == ("gill", "1cap") else (mean - 0.02, mean + 0.02)
            mean = 0.612 if (system, setting) == ("gill", "1cap") else mean
            results.append(_result("vist", setting, system, "clip_sim", mean, low, high))
            results.append(_result("vist", setting, system, "lpips", 0.3, 0.25, 0.35))
    results += [_result("visdial", "1round", s, "clip_sim", 0.4, 0.35, 0.45) for s in ("sd", "gill")]
    replace_rows(path, "results", results)
    replace_rows(
        path,
        "unsupported_systems",
        [{"run_id": RUN, "benchmark": "vist", "system": "glide", "reason": "no <weights> & no pipeline"}],
    )
    refs = [_png(root / "world" / f"ref{k}.png", (40 * k, 200, 90)) for k in range(5)]
    context = [_png(root / "world" / f"ctx{k}.png", (200, 30 * k, 60)) for k in range(4)]
    rows = []
    for benchmark, settings, systems, n in (
        ("vist", VIST_SETTINGS, SYSTEMS, N_VIST),
        ("visdial", ("1round",), ("sd", "gill"), N_VISDIAL),
    ):
        for setting in settings:
            for system in systems:
                for k in range(n):
                    sample_id = f"s{k:03d}"
                    out = root / "bench" / RUN / benchmark / setting / system / f"{sample_id}.png"
                    _png(out, ((k * 37) % 256, (k * 11) % 256, 128 + 40 * systems.index(system)))
                    images = context if setting == "5cap4img" else []
                    rows.append(
                        {
                            "run_id": RUN,
                            "benchmark": benchmark,
                            "setting": setting,
                            "system": system,
                            "seed": 42,
                            "sample_id": sample_id,
                            "status": "ok",
                            "generated_path": out.relative_to(root).as_posix(),
                            "reference_path": Path(refs[k % 5]).relative_to(root).as_posix(),
                            "clip_sim": 0.5 + k / 1000,
                            "lpips": 0.25,
                            "scene_score": 0.4,
                            "scene_color_ok": 1.0,
                            "decision": "ret" if system == "gill" and k % 2 else ("gen" if system == "gill" else None),
                            "p_ret": 0.75 if system == "gill" else None,
                            "context_length": 9 if setting == "5cap4img" else 1,
                            "prompt": f"{benchmark} {setting} story {sample_id}",
                            "context_paths": json.dumps(
                                [Path(p).relative_to(root).as_posix() for p in images] + [None] * bool(images)
                            ),
                        }
                    )
    rows[-1] |= {"status": "skipped", "skip_reason": "no image produced", "generated_path": None, "clip_sim": None}
    first = next(r for r in rows if r["benchmark"] == "visdial" and r["sample_id"] == "s000" and r["system"] == "sd")
    first["prompt"] = EVIL  # the first sample of the page (visdial sorts before vist)
    replace_rows(path, "samples", rows)
    return wd


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workdir, Path]:
    """The report of the store of :func:`build_store`, written by the report stage and then moved elsewhere (the
    folder must work on its own). Returns ``(workdir, page)``."""
    root = tmp_path_factory.mktemp("html")
    wd = build_store(root / "w")
    outcome = report_stage.run(wd, RUN, html=root / "out")
    assert outcome.plot is not None and outcome.grids  # the figures the page embeds
    moved = root / "elsewhere" / "report"
    moved.parent.mkdir()
    shutil.move(root / "out", moved)
    return wd, moved / "index.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium("--window-size=1300,900", console_log=True) as driver:
        yield driver


def _open(driver: WebDriver, page: Path) -> None:
    """Open the page and wait until the first page of samples is listed."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # forget earlier pages' entries
    driver.get(page.as_uri())
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements("css selector", "#sample-list article.sample"))


def _no_severe(driver: WebDriver) -> None:
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def _cards(driver: WebDriver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#sample-list .sample-title')].map((e) => e.textContent)"
    )


def _status(driver: WebDriver) -> str:
    return driver.find_element("id", "pager-status").text


def _image_shown(driver: WebDriver, css: str) -> None:
    """Scroll the first image matching ``css`` into view (the page loads images lazily) and wait until it is
    decoded with a size."""
    from selenium.webdriver.support.ui import WebDriverWait

    image = driver.find_element("css selector", css)
    driver.execute_script("arguments[0].scrollIntoView()", image)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
    )


def _select(driver: WebDriver, facet: str, label_start: str) -> None:
    from selenium.webdriver.support.ui import Select

    select = Select(driver.find_element("id", f"f-{facet}"))
    select.select_by_visible_text(next(o.text for o in select.options if o.text.startswith(label_start + " (")))


def _wait_status(driver: WebDriver, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(
        lambda d: text in _status(d) and d.find_element("id", "sample-list").get_attribute("aria-busy") == "false"
    )


def _data_file(page: Path, number: int) -> list[dict]:
    text = (page.parent / "data" / samples_file(number)).read_text(encoding="utf-8")
    prefix = f"GILL_REPORT.page({number},"
    assert text.startswith(prefix) and text.endswith(");\n")
    return json.loads(text[len(prefix) : -3])


# -- the folder ---------------------------------------------------------------------------------------------------


def test_the_folder_holds_the_tables_with_intervals_the_figures_and_paged_sample_files(report):
    _wd, page = report
    text = page.read_text(encoding="utf-8")
    # gill's VIST 1-caption CLIP cell: the mean and its interval, in the gill row of Table 1
    gill_row = next(r for r in text.split("<tr>") if r.startswith('<th scope="row">gill</th>') and "0.612" in r)
    assert '<span class="mean">0.612</span> <span class="ci">[0.598, 0.627]</span>' in gill_row
    assert 'colspan="3" scope="colgroup">CLIP sim (higher better)</th>' in text  # a real two-level header
    assert "not run: glide: no &lt;weights&gt; &amp; no pipeline" in text  # server-side text escaped
    figures = sorted(p.name for p in (page.parent / "figures").iterdir())
    assert "context_effect.png" in figures and any(n.startswith("grid_vist") for n in figures)
    assert all(f'src="figures/{n}"' in text for n in figures)
    files = sorted(p.name for p in (page.parent / "data").glob("samples-*.js"))
    assert files == [samples_file(n) for n in range(1, -(-N_SAMPLES // SAMPLES_PER_FILE) + 1)]
    assert sum(len(_data_file(page, n)) for n in range(1, len(files) + 1)) == N_SAMPLES
    raw = (page.parent / "data" / samples_file(1)).read_text(encoding="utf-8")
    assert "<" not in raw and "\u2028" not in raw and "\\u003cimg src=x" in raw  # escaped, and decoded intact:
    assert _data_file(page, 1)[0]["prompt"] == EVIL
    # every image the page shows is inside the folder (linked or copied there), none in the work folder
    assert all(src.startswith("figures/") for src in re.findall(r'<img src="([^"]*)"', text))
    records = [r for n in range(1, len(files) + 1) for r in _data_file(page, n)]
    urls = [r[k] for r in records for k in ("output", "reference") if r[k]]
    urls += [c["url"] for r in records for c in r["context"] if c["url"]]
    assert len(urls) == 2 * N_SAMPLES - 1 + 4 * N_VIST * len(SYSTEMS)  # the skipped sample has no output
    assert all(u.startswith("images/") and (page.parent / u).is_file() for u in urls)
    assert sum(1 for _ in (page.parent / "images").rglob("*.png")) == len(set(urls))  # each image once


def test_script_json_escapes_what_could_end_a_script_or_a_string():
    text = script_json({"a": "</script><!-- & \u2028\u2029"})
    assert not any(c in text for c in "<>&\u2028\u2029")
    assert json.loads(text) == {"a": "</script><!-- & \u2028\u2029"}
    with pytest.raises(ValueError):
        script_json(float("nan"))


def test_figures_are_embedded_with_escaped_captions_and_missing_ones_left_out(tmp_path):
    wd = build_store(tmp_path / "w")
    figure = Path(_png(tmp_path / "figs" / "recall_curve.png", (10, 20, 30)))
    page = write_html_report(wd, RUN, [("Recall <at> k", figure), ("gone", tmp_path / "missing.png")], tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    assert '<img src="figures/recall_curve.png"' in text and "<figcaption>Recall &lt;at&gt; k</figcaption>" in text
    assert "gone" not in text and sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == [figure.name]


def test_the_report_stage_captions_each_figure_once(tmp_path):
    """The context figure is both ``plot`` and a named figure: the page shows it once, under a caption, not a key."""
    figures = {name: tmp_path / f"{name}.png" for name in ("context_effect", "training", "decision")}
    outcome = ReportOutcome(
        run_id=RUN,
        report="",
        markdown="",
        claims="",
        plot=figures["context_effect"],
        grids=[tmp_path / "grid_vist_5cap.png"],
        figures=figures,
    )
    captions = [caption for caption, _ in report_figures(outcome)]
    assert len(captions) == 4 and captions[0].startswith("Effect of context") and "(vist, 5cap)" in captions[-1]
    assert not set(captions) & set(figures)  # no bare figure keys


# -- in the browser -----------------------------------------------------------------------------------------------


@needs_browser
def test_a_samples_images_and_the_figures_are_displayed_from_the_moved_folder(browser, report):
    _wd, page = report
    _open(browser, page)
    assert _status(browser) == f"page 1 of {-(-N_SAMPLES // 50)} \u00b7 samples 1\u201350 of {N_SAMPLES}"
    _image_shown(browser, "#sample-list article.sample .tile.output img")
    _image_shown(browser, "#sample-list article.sample .tile.reference img")
    _image_shown(browser, "#figures img")
    _no_severe(browser)


@needs_browser
def test_filters_by_benchmark_setting_and_system_change_the_listed_samples(browser, report):
    _wd, page = report
    _open(browser, page)
    assert {t.split(" \u00b7 ")[0] for t in _cards(browser)} == {"visdial"}  # the first 50 of all: visdial's 60
    _select(browser, "benchmark", "vist")
    _wait_status(browser, f"of {N_VIST * len(VIST_SETTINGS) * len(SYSTEMS)}")
    assert {t.split(" \u00b7 ")[0] for t in _cards(browser)} == {"vist"}
    _select(browser, "system", "gill")
    _wait_status(browser, f"of {N_VIST * len(VIST_SETTINGS)}")
    _select(browser, "setting", "5cap4img")
    _wait_status(browser, f"samples 1\u2013{N_VIST} of {N_VIST}")
    cards = _cards(browser)
    assert len(cards) == N_VIST and all(t.startswith("vist \u00b7 5cap4img \u00b7 gill \u00b7") for t in cards)
    _image_shown(browser, "#sample-list .context-images img")  # the prompt's images, and the missing one named
    missing = browser.find_elements("css selector", "#sample-list article.sample:first-child .tile.missing")
    assert [m.text for m in missing] == ["no image\nimage 5: (not found)"]
    decision = browser.find_element("css selector", "#sample-list article.sample:nth-child(2) .decision").text
    assert decision == "decision: retrieve (p(retrieve) 0.75)"  # sample s001 of gill: retrieved
    _select(browser, "benchmark", "visdial")  # VIST's setting has no VisDial sample: back to all settings
    _wait_status(browser, f"of {N_VISDIAL}")
    assert {tuple(t.split(" \u00b7 ")[:3]) for t in _cards(browser)} == {("visdial", "1round", "gill")}
    _no_severe(browser)


@needs_browser
def test_paging_loads_the_next_data_file_on_demand(browser, report):
    from selenium.webdriver.support.ui import WebDriverWait

    _wd, page = report
    _open(browser, page)
    loaded = "return [...document.querySelectorAll('script[data-samples-file]')].map((s) => s.src.split('/').pop())"
    assert browser.execute_script(loaded) == [samples_file(1)]  # only what the first page needs
    browser.find_element("id", "next").click()
    _wait_status(browser, "samples 51\u2013100 of")
    assert browser.execute_script(loaded) == [samples_file(1)]
    browser.find_element("id", "next").click()
    _wait_status(browser, "samples 101\u2013150 of")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(loaded) == [samples_file(1), samples_file(2)])
    expected = _data_file(page, 2)[0]
    first = browser.find_element("css selector", "#sample-list article.sample")
    assert first.get_attribute("data-index") == "100"
    assert first.find_element("css selector", ".sample-title").text == (
        f"{expected['benchmark']} \u00b7 {expected['setting']} \u00b7 {expected['system']} \u00b7 seed 42 \u00b7 "
        f"sample {expected['sample_id']}"
    )
    browser.find_element("id", "prev").click()
    _wait_status(browser, "samples 51\u2013100 of")
    _no_severe(browser)


@needs_browser
def test_an_html_like_prompt_is_shown_as_text_and_runs_nothing(browser, report):
    _wd, page = report
    _open(browser, page)
    prompt = browser.find_element("css selector", "#sample-list article.sample:first-child .prompt")
    assert browser.execute_script("return arguments[0].textContent", prompt) == EVIL
    assert browser.execute_script("return arguments[0].children.length", prompt) == 0
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], #sample-list b').length") == 0
    assert browser.execute_script("return window.pwned") is None
    _no_severe(browser)


# -- the command and the demo -------------------------------------------------------------------------------------


def test_gill_report_html_writes_the_folder_and_replaces_an_old_one(tmp_path, capsys):
    wd = build_store(tmp_path / "w")
    out = tmp_path / "site"
    (out / "data").mkdir(parents=True)
    (out / "data" / "stale.js").write_text("old")
    assert main(["report", "--workdir", str(wd.root), "--html", str(out), "--no-plot"]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    assert (out / "index.html").is_file() and not (out / "data" / "stale.js").exists()
    assert len(list((out / "data").glob("samples-*.js"))) == -(-N_SAMPLES // SAMPLES_PER_FILE)
    assert not (out / "figures").exists() or not any((out / "figures").iterdir())  # --no-plot: no figures
    assert main(["report", "--workdir", str(wd.root), "--html", str(out), "--claims"]) == 2
    assert "--html writes the whole report" in capsys.readouterr().err


@needs_browser
def test_the_demo_report_page_renders_every_part(browser, demo_workdir):
    workdir, stdout = demo_workdir
    page = Workdir.at(workdir).html_report / "index.html"
    assert f"report (open in a browser: tables, figures, every sample): {page}" in stdout
    _open(browser, page)
    tables = browser.find_elements("css selector", "#tables table.results")
    assert len(tables) >= 2 and browser.find_elements("css selector", "#claims table.claims")
    assert browser.find_elements("css selector", "#tables td.num .ci")  # intervals in the cells
    _image_shown(browser, "#figures img")
    _image_shown(browser, "#sample-list article.sample .tile.output img")
    _no_severe(browser)
