"""End to end as a user runs it: ``make serve`` (a real Prefect server on loopback plus the served deployment),
then ``prefect deployment run gill/full-pipeline --watch`` twice; the second run is all cache hits."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from shard_helpers import SMALL_PIPELINE

from flows.store import db_path, query

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read() or b"null")
    except OSError as err:
        return getattr(err, "code", 0) or 0, None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``python -m flows.cli serve`` (what ``make serve`` runs) with no PREFECT_API_URL: it starts the server."""
    root = tmp_path_factory.mktemp("deployment")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(root / "prefect-home"), PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_PORT=str(port))
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--workdir", str(root / "serve")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 240
    while _api(f"{api}/deployments/name/gill/full-pipeline")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the deployment was not served:\n" + (root / "serve.log").read_text()[-3000:])
        time.sleep(1)
    yield {"api": api, "env": {**env, "PREFECT_API_URL": api}, "root": root}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)  # the served runner drains for a minute on SIGTERM; nothing of it is needed here
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def _run_deployment(served, params: dict) -> str:
    command = [
        str(PREFECT),
        "deployment",
        "run",
        "gill/full-pipeline",
        "--params",
        json.dumps({"params": params}),
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        "900",
    ]
    done = subprocess.run(command, env=served["env"], capture_output=True, text=True, timeout=1000, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", done.stdout).group(0)


def test_deployment_runs_the_full_pipeline_and_a_second_run_hits_the_cache(served):
    workdir = served["root"] / "work"
    from annotations.votes import default_votes_path

    # a votes file given by the user (here the released PartiPrompts votes) fits the classifier instead of the
    # simulated panel, whose 12 items of a 4-step run give too few confident labels of both kinds to fit
    params = {**SMALL_PIPELINE, "workdir": str(workdir), "votes": str(default_votes_path("alignment"))}
    first = _run_deployment(served, params)
    results = query(db_path(workdir), "SELECT benchmark, system, metric, mean, ci_low, ci_high FROM results")
    assert set(results.benchmark) == {"vist", "vist-retrieval", "visdial", "visdial-retrieval", "cc3m-fid"}
    assert {"gill", "sd", "gill-oracle"} <= set(results.system) and results["mean"].notna().all()
    protocols = set(query(db_path(workdir), "SELECT protocol FROM decision_eval").protocol)
    assert protocols == {"official-600", "cv5", "human"}
    assert (workdir / "bench" / "reports" / "context_effect.png").is_file()

    second = _run_deployment(served, params)
    assert second != first
    status, runs = _api(f"{served['api']}/task_runs/filter", {"flow_runs": {"id": {"any_": [second]}}})
    assert status == 200 and len(runs) >= 14
    assert {r["state"]["name"] for r in runs} == {"Cached"}, sorted((r["name"], r["state"]["name"]) for r in runs)


def test_the_users_prefect_profile_is_respected_and_a_workdir_home_is_only_the_fallback(tmp_path, monkeypatch):
    """A user whose active profile names a server (or Prefect Cloud) keeps it: the demo must not hide it behind a
    workdir-local home and a throwaway server. Without such a profile, Prefect gets a home in the workdir."""
    from flows import cli

    home = tmp_path / "user"
    (home / ".prefect").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    (home / ".prefect" / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n[profiles.local]\n'
    )
    assert cli.user_prefect_profile() == "team"
    cli._prefect_env(tmp_path / "work" / ".prefect" / "home")
    assert "PREFECT_HOME" not in os.environ and not (tmp_path / "work").exists()

    monkeypatch.setenv("PREFECT_PROFILE", "local")  # a profile without a server: the workdir home is used
    assert cli.user_prefect_profile() is None
    cli._prefect_env(tmp_path / "work" / ".prefect" / "home")
    assert os.environ["PREFECT_HOME"] == str((tmp_path / "work" / ".prefect" / "home").resolve())

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "chosen"))  # a home the user set is never replaced
    cli._prefect_env(tmp_path / "other")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "chosen") and not (tmp_path / "other").exists()
