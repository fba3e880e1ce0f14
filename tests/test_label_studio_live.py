"""gill <-> a REAL Label Studio 1.23.2, started here on 127.0.0.1 (one server for the module).

Label Studio lives in its own virtualenv (its pinned Django etc. must not touch gill's): ``make label-studio``
creates it (``make test`` does that first), with a migrated template database that lets the server start in
seconds. A missing install FAILS this test, it is not skipped.

What runs: gill's export (images under neutral names, tasks, label config, a store vote as a prediction), the
project + local-files storage + task import over the HTTP API (:func:`annotations.label_studio.setup_project`), the
images fetched back through Label Studio, annotations by two users (one created by the environment at start with a
legacy token, one by Label Studio's CLI using a personal access token), one of them skipped, then Label Studio's
JSON and JSON_MIN exports imported into fresh stores and compared with what was submitted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from annotations import label_studio as ls
from annotations.store import JudgingStore
from flows.command.parser import main

ADMIN, ADMIN_TOKEN = "admin@gill.test", "gill-live-admin-token-1"  # created from the environment at start
SECOND = "bo@gill.test"  # created with `label-studio init` while the server runs
SECOND_LEGACY_TOKEN = "gill-live-second-token-2"
PASSWORD = "gill-live-password-1"
STARTUP_TIMEOUT_S = 300  # without the template database the first start migrates (~35 s here, more on slow CI)
N_ITEMS = 5


def _original_environ() -> dict[str, str]:
    """The environment this process started with: conftest points XDG_CACHE_HOME at a temporary folder, but the
    Label Studio virtualenv is where ``make label-studio`` put it with the caller's own environment."""
    try:
        raw = Path("/proc/self/environ").read_bytes().decode("utf-8", "replace")
    except OSError:
        return dict(os.environ)
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


def _venv() -> Path:
    env = _original_environ()
    if os.environ.get(ls.VENV_ENV):
        env[ls.VENV_ENV] = os.environ[ls.VENV_ENV]
    return ls.default_venv_dir(env)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(no log: {err})"


@dataclass
class Server:
    url: str
    venv: Path
    env: dict[str, str]
    export_root: Path
    log: Path
    startup_s: float
    used_template: bool

    def cli(self, *args: str) -> str:
        """Run ``label-studio <args>`` against this server's data dir."""
        proc = subprocess.run(
            [str(self.venv / "bin" / "label-studio"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.log.parent,
        )
        assert proc.returncode == 0, f"label-studio {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = _venv()
    exe = venv / "bin" / "label-studio"
    if not exe.is_file():
        pytest.fail(
            f"Label Studio {ls.LABEL_STUDIO_VERSION} is not installed in {venv}: run `make label-studio` "
            f"(`make test` runs it first; set {ls.VENV_ENV} to use another folder)",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("label-studio")
    data, export_root, log_path = base / "data", base / "export", base / "server.log"
    export_root.mkdir()
    template = venv / "gill-template-data"
    used_template = (template / "label_studio.sqlite3").is_file()
    if used_template:  # migrated, no user; its secret key (.env) is not copied: this server makes its own
        shutil.copytree(template, data, ignore=shutil.ignore_patterns(".env"))
    else:
        data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LOCAL_FILES_"))}
    env.update(ls.server_environment(export_root, data_dir=data, username=ADMIN, password=PASSWORD, token=ADMIN_TOKEN))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=base,
            start_new_session=True,
        )
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"Label Studio exited with {proc.returncode} before answering; its log:\n{_tail(log_path)}",
                    pytrace=False,
                )
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - start > STARTUP_TIMEOUT_S:
                pytest.fail(
                    f"Label Studio did not answer {url}/health within {STARTUP_TIMEOUT_S} s; its log:\n"
                    f"{_tail(log_path)}",
                    pytrace=False,
                )
            time.sleep(0.25)
        yield Server(
            url=url,
            venv=venv,
            env=env,
            export_root=export_root,
            log=log_path,
            startup_s=time.monotonic() - start,
            used_template=used_template,
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def build_store(workdir: Path, *, images: bool = True) -> JudgingStore:
    """``N_ITEMS`` items; every image a distinct PNG (so a swapped side would show)."""
    store = JudgingStore(workdir)
    (workdir / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N_ITEMS):
        for k, kind in enumerate(("gen", "ret")):
            if images:
                Image.new("RGB", (16, 12), (40 * i, 200 * k, 90)).save(workdir / "img" / f"{i}-{kind}.png")
        rows.append(
            {
                "prompt_id": i,
                "prompt": f"prompt number {i}",
                "gen_image": f"img/{i}-gen.png",
                "ret_image": f"img/{i}-ret.png",
            }
        )
    store.upsert_items(rows)
    return store


def result(alignment: str, realism: str) -> list[dict]:
    return [
        {"from_name": q, "to_name": "left", "type": "choices", "value": {"choices": [answer]}}
        for q, answer in (("alignment", alignment), ("realism", realism))
    ]


def votes_of(store: JudgingStore) -> dict[tuple[str, int], tuple[str, str]]:
    return {(j.name, v.item_id): (v.alignment, v.realism) for j in store.judges() for v in store.votes_of(j)}


SIDE = {"Left": "left", "Right": "right", "About the same": "same"}
SUBMITTED = {  # user -> item id -> (alignment, realism); item 4 stays unannotated
    ADMIN: {0: ("Left", "About the same"), 1: ("Right", "Right"), 2: ("About the same", "Left")},
    SECOND: {0: ("Right", "Left"), 3: ("Left", "Right")},
}
SKIPPED_BY_SECOND = 1  # item 1


def test_round_trip_through_a_real_label_studio(label_studio, tmp_path):
    server = label_studio
    t0 = time.monotonic()
    store = build_store(tmp_path / "work")
    machine = store.add_judge("sim-judge")[0]
    store.submit_vote(machine, 2, "right", "same")  # goes out as a prediction, never as an annotation
    export = ls.export_label_studio(store, server.export_root, votes="predictions")
    assert export.document_root == server.export_root.resolve()

    admin = ls.LabelStudioClient(server.url, ADMIN_TOKEN)  # a legacy token: allowed by the environment
    assert admin.version() == ls.LABEL_STUDIO_VERSION and admin.whoami()["email"] == ADMIN
    setup = ls.setup_project(admin, export.out_dir, title="gill live test")
    assert (setup.tasks, setup.predictions, setup.image_checked) == (N_ITEMS, 1, True)
    project = admin.request("GET", f"/api/projects/{setup.project_id}").json()
    parsed = project["parsed_label_config"]
    assert {name: parsed[name]["labels"] for name in ("alignment", "realism")} == {
        "alignment": ["Left", "Right", "About the same"],
        "realism": ["Left", "Right", "About the same"],
    }

    tasks = {t["data"]["gill_item_id"]: t for t in admin.tasks(setup.project_id)}
    assert sorted(tasks) == list(range(N_ITEMS))
    for item in store.items():  # Label Studio serves each side's own image, to signed-in users only
        for side in ("left", "right"):
            served = admin.request("GET", tasks[item.id]["data"][f"image_{side}"])
            assert served.headers["Content-Type"] == "image/png"
            assert served.content == (store.workdir / item.image_for(side)).read_bytes(), (item.id, side)
    assert requests.get(server.url + tasks[0]["data"]["image_left"], timeout=10).status_code in (401, 403)
    (prediction,) = admin.request("GET", f"/api/tasks/{tasks[2]['id']}").json()["predictions"]
    assert prediction["model_version"] == "gill:sim-judge" and prediction["result"] == result("Right", "About the same")

    server.cli("init", "-q", "--username", SECOND, "--password", PASSWORD, "--user-token", SECOND_LEGACY_TOKEN)
    pat = ls.LabelStudioClient(server.url, SECOND_LEGACY_TOKEN).create_personal_access_token()
    second = ls.LabelStudioClient(server.url, pat)  # a personal access token: JWT refresh -> Bearer
    assert second.uses_personal_access_token and second.whoami()["email"] == SECOND
    for client, user in ((admin, ADMIN), (second, SECOND)):
        for item_id, answers in SUBMITTED[user].items():
            client.create_annotation(tasks[item_id]["id"], result(*answers))
    second.create_annotation(tasks[1]["id"], was_cancelled=True)

    expected = {(user, i): (SIDE[a], SIDE[r]) for user, answers in SUBMITTED.items() for i, (a, r) in answers.items()}
    for fmt, skipped in (("JSON", SKIPPED_BY_SECOND), ("JSON_MIN", 0)):  # JSON_MIN leaves skipped ones out
        path = admin.export_to_file(setup.project_id, tmp_path / f"export-{fmt}.json", fmt)
        fresh = build_store(tmp_path / f"fresh-{fmt}", images=False)
        done = ls.import_label_studio(fresh, path)
        assert (done.format, done.votes, done.skipped, done.judges) == (fmt, 5, skipped, (ADMIN, SECOND)), done
        assert done.tasks_without_annotations == 1  # item 4
        if fmt == "JSON":
            assert done.skipped_by_reason == {ls.SKIP_CANCELLED: 1}
        assert votes_of(fresh) == expected, fmt
        by_cli = build_store(tmp_path / f"cli-{fmt}", images=False)  # and as a user does it: gill annotate import
        assert (
            main(["annotate", "import", "--workdir", str(by_cli.workdir), "--format", "label-studio", str(path)]) == 0
        )
        assert votes_of(by_cli) == expected, fmt
        assert [j.name for j in by_cli.judges()] == [ADMIN, SECOND]  # emails, in name order

    # the quick export names users by id only: a stable fallback name, or the emails from the users API
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(admin.export(setup.project_id, "JSON", with_emails=False)))
    ids = {email: uid for uid, email in admin.user_emails().items()}
    assert {r[0] for r in ls.read_label_studio_votes(quick).records} == {
        f"label-studio-user-{ids[ADMIN]}",
        f"label-studio-user-{ids[SECOND]}",
    }
    with_users = ls.read_label_studio_votes(quick, users=admin.user_emails())
    assert {(n, i): (a, r) for n, i, a, r in with_users.records} == expected
    assert with_users.tasks_without_annotations == 1 and with_users.skipped == {ls.SKIP_CANCELLED: 1}
    print(
        f"\nLabel Studio {ls.LABEL_STUDIO_VERSION}: up in {server.startup_s:.1f} s "
        f"({'template database' if server.used_template else 'fresh migrations'}); "
        f"round trip {time.monotonic() - t0:.1f} s"
    )


def test_a_storage_outside_the_document_root_is_refused_with_label_studios_reason(label_studio, tmp_path):
    store = build_store(tmp_path / "work")
    export = ls.export_label_studio(store, tmp_path / "elsewhere")  # not under LOCAL_FILES_DOCUMENT_ROOT
    admin = ls.LabelStudioClient(label_studio.url, ADMIN_TOKEN)
    with pytest.raises(ls.LabelStudioAPIError) as err:
        ls.setup_project(admin, export.out_dir, title="gill misconfigured")
    assert err.value.status == 400 and "LOCAL_FILES_DOCUMENT_ROOT" in err.value.render()


def test_the_setup_and_pull_commands(label_studio, tmp_path, capsys):
    """The CLI handlers: export into a sub-folder of the document root, set up, annotate, pull the votes back."""
    store = build_store(tmp_path / "work")
    common = {"workdir": str(tmp_path / "work"), "url": label_studio.url, "token": ADMIN_TOKEN}
    connection = ["--workdir", common["workdir"], "--url", common["url"], "--token", common["token"]]
    assert (
        main(
            [
                "annotate",
                "label-studio-setup",
                *connection,
                "--out",
                str(label_studio.export_root / "by-command"),
                "--title",
                "gill command",
                "--document-root",
                str(label_studio.export_root),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{N_ITEMS} task(s)" in printed and "Label Studio project" in printed
    project_id = int(printed.split("Label Studio project ", 1)[1].split(":", 1)[0])
    admin = ls.LabelStudioClient(label_studio.url, ADMIN_TOKEN)
    tasks = {t["data"]["gill_item_id"]: t for t in admin.tasks(project_id)}
    assert tasks[3]["data"]["image_left"] == "/data/local-files/?d=by-command/images/00003-left.png"
    admin.create_annotation(tasks[3]["id"], result("Right", "About the same"))
    assert main(["annotate", "label-studio-pull", *connection, "--project", str(project_id)]) == 0
    assert "1 vote(s) by 1 judge(s)" in capsys.readouterr().out
    assert votes_of(store) == {(ADMIN, 3): ("right", "same")}
    assert (tmp_path / "work" / "annotations" / f"label-studio-project-{project_id}.json").is_file()
