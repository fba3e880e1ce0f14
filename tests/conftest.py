"""Test-wide setup: offline, isolated caches, and a guard that blocks non-loopback network.

Environment variables are set at import time, before gill/transformers/prefect read them.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="gill-tests-"))
for _name, _sub in (
    ("HF_HOME", "hf"),
    ("PREFECT_HOME", "prefect"),
    ("GILL_CACHE_DIR", "gill-cache"),
    ("TORCH_HOME", "torch"),
    ("XDG_CACHE_HOME", "xdg"),
):
    os.environ[_name] = str(_SESSION_TMP / _sub)
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("GILL_ALLOW_DOWNLOADS", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
for _proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ.pop(_proxy, None)

BLOCKED_CONNECTIONS: list[str] = []
"""Every non-loopback connection a test attempted (the guard refuses them and records them here)."""


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a hostname other than localhost


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        BLOCKED_CONNECTIONS.append(repr(address))
        raise ConnectionRefusedError(f"tests may not reach the network (blocked connect to {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_loopback(address):
        BLOCKED_CONNECTIONS.append(repr(address))
        return 111  # ECONNREFUSED
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """A folder shared by the whole test session (caches live here)."""
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_zoo(session_tmp: Path) -> Path:
    """The tiny zoo, built once per session into the session cache."""
    from gill.presets import tiny_zoo_dir
    from gill.zoo import ensure_tiny_zoo

    ensure_tiny_zoo(tiny_zoo_dir())
    return tiny_zoo_dir()


@pytest.fixture(scope="session")
def tiny_config(tiny_zoo: Path):
    """The ``tiny`` preset over the session's zoo."""
    from gill.presets import get_preset

    return get_preset("tiny")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic world shared by tests that only read it."""
    from gill.synth import SynthConfig, synthesize_world

    return synthesize_world(
        tmp_path_factory.mktemp("world"),
        SynthConfig(seed=3, n_train=16, n_val=8, n_stories=4, n_dialogs=4),
        progress=False,
    )


@pytest.fixture(scope="session")
def demo_workdir(session_tmp: Path, tiny_zoo: Path) -> tuple[Path, str]:
    """What ``make demo`` leaves behind, at a small scale: ``python -m flows.cli demo`` with every stage on a small
    world (a subprocess, as ``make demo`` runs it). Returns ``(workdir, its stdout)``; tests only read it."""
    import json
    import subprocess
    import sys

    from shard_helpers import DEMO_PIPELINE

    workdir = session_tmp / "demo"
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(workdir), "--params", json.dumps(DEMO_PIPELINE)]
    # as a user without Prefect settings runs it: no PREFECT_HOME, server or profile, so the state goes in the workdir
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILE")}
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, done.stdout
