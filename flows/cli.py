"""``python -m flows.cli demo|run|serve``: the ``gill`` flow in-process, or served as ``gill/full-pipeline``.

* ``demo`` (``make demo``): the whole pipeline on the embedded default (tiny preset, synthetic world, shipped
  votes) with small, fast settings, ending with the report tables and where every output lives.
* ``run --params JSON``: the pipeline in-process with any :class:`~flows.params.PipelineParams`.
* ``serve`` (``make serve``): start a local Prefect server (SQLite, 127.0.0.1, ``--port`` / ``PREFECT_PORT``)
  unless ``PREFECT_API_URL`` already points at one, and serve the deployment ``gill/full-pipeline``; then
  ``prefect deployment run gill/full-pipeline --watch`` runs it.

Prefect settings are read at import time, so this module sets ``PREFECT_HOME`` (under the workdir) and turns
analytics off *before* importing Prefect; it never overrides what the caller set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from gill.offline import configure_environment

logger = logging.getLogger("gill.flows")

DEMO_SETTINGS = {
    "world_train": 1024,
    "candidate_limit": 400,
    "candidate_sd_steps": 10,
    "bench_sd_steps": 10,
    "fid_bootstrap": 20,
    "decision_steps": 500,
    "bench_limit": 8,
}
"""What ``make demo`` changes from the defaults to finish in minutes on 2 CPU cores (SD steps, limits)."""


def user_prefect_profile() -> str | None:
    """The user's active Prefect profile when it names a server or Prefect Cloud (``PREFECT_API_URL`` or
    ``PREFECT_API_KEY`` in ``~/.prefect/profiles.toml``), else None."""
    path = Path("~/.prefect/profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profiles = data.get("profiles")
    profile = profiles.get(active) if isinstance(profiles, dict) else None
    if isinstance(profile, dict) and (profile.get("PREFECT_API_URL") or profile.get("PREFECT_API_KEY")):
        return str(active)
    return None


def _prefect_env(home: Path) -> None:
    """Prefect settings for this process. The user's own configuration wins: a ``PREFECT_HOME`` or
    ``PREFECT_API_URL`` they set, or a profile that names a server or Prefect Cloud. Only without any of them
    does Prefect get a home inside the workdir (a temporary local server); the choice is logged."""
    if "PREFECT_HOME" in os.environ or os.environ.get("PREFECT_API_URL"):
        logger.info("Prefect: using your settings (PREFECT_HOME / PREFECT_API_URL from the environment)")
    elif (profile := user_prefect_profile()) is not None:
        logger.warning(
            "Prefect: using your profile %r from ~/.prefect/profiles.toml (its server); the stage cache "
            "stays in the workdir",
            profile,
        )
    else:
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home.resolve())
        logger.info(
            "Prefect: no profile with a server is configured; using a home in the workdir (%s) and a "
            "temporary local server",
            home,
        )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_pipeline(params_json: dict, workdir: Path, dask: str | None = None) -> dict:
    """Run the flow in-process (an ephemeral Prefect API server starts inside this process, unless
    ``PREFECT_API_URL`` names one). ``dask``: ``local`` for a local Dask cluster, or a scheduler address."""
    _prefect_env(workdir / ".prefect" / "home")
    from flows.full_pipeline import gill_pipeline
    from flows.params import PipelineParams

    params = PipelineParams(**{**params_json, "workdir": workdir})
    if dask:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner() if dask == "local" else DaskTaskRunner(address=dask)
        return gill_pipeline.with_options(task_runner=runner)(params)
    return gill_pipeline(params)


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = run_pipeline({**DEMO_SETTINGS, **json.loads(args.params or "{}")}, args.workdir, args.dask)
    minutes = (time.perf_counter() - start) / 60
    sys.stdout.write(f"\nmake demo: the full pipeline took {minutes:.1f} min; outputs:\n")
    sys.stdout.write("".join(f"  {k}: {v}\n" for k, v in out["locations"].items()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    run_pipeline(json.loads(args.params or "{}"), args.workdir, args.dask)
    return 0


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except OSError:
        return False


def start_server(port: int, home: Path, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """A local Prefect server (SQLite under ``home``) on 127.0.0.1:``port``; returns it and its API URL."""
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    env = {**os.environ, "PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [
        str(prefect),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--analytics-off",
    ]
    server = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + timeout_s
    while not _healthy(api_url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.terminate()
            raise SystemExit(f"the Prefect server did not start on 127.0.0.1:{port} (is the port in use?)")
        time.sleep(0.5)
    return server, api_url


def cmd_serve(args: argparse.Namespace) -> int:
    home = args.workdir / ".prefect" / "home"
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        home.mkdir(parents=True, exist_ok=True)
        server, api_url = start_server(args.port, home)
        os.environ["PREFECT_API_URL"] = api_url
        logging.getLogger("gill").warning(
            "Prefect server on %s (UI off); in another shell: export PREFECT_API_URL=%s", api_url, api_url
        )
    _prefect_env(home)
    try:
        from flows.full_pipeline import gill_pipeline

        gill_pipeline.serve(
            name="full-pipeline", description="GILL end to end: data, adapters, decision, benchmarks", tags=["gill"]
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_environment()  # a front end: gill's offline Hub defaults for this process (the library sets none)
    parser = argparse.ArgumentParser(prog="python -m flows.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler, default in (("demo", cmd_demo, "work/demo"), ("run", cmd_run, "work/pipeline")):
        p = sub.add_parser(name)
        p.add_argument("--workdir", type=Path, default=Path(default))
        p.add_argument("--params", help="JSON of PipelineParams fields, e.g. '{\"bench_limit\": 4}'")
        p.add_argument(
            "--dask",
            metavar="ADDRESS",
            help="run the per-shard tasks on Dask: 'local' (a local "
            "cluster) or a scheduler address such as tcp://scheduler:8786",
        )
        p.set_defaults(func=handler)
    p = sub.add_parser("serve")
    p.add_argument("--workdir", type=Path, default=Path("work/pipeline"), help="where the server's SQLite lives")
    p.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    p.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
