"""The test-suite guard: loopback works, anything else is refused before a packet leaves."""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import BLOCKED_CONNECTIONS


def test_loopback_connections_work():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].close())
    accepted.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    accepted.join(5)
    server.close()


def test_non_loopback_connections_are_refused_and_recorded():
    before = len(BLOCKED_CONNECTIONS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError, match="may not reach the network"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1: refused by the guard, never sent
    assert sock.connect_ex(("192.0.2.1", 443)) != 0
    sock.close()
    assert len(BLOCKED_CONNECTIONS) == before + 2


def test_caches_point_into_a_temporary_folder(session_tmp):
    import os

    for name in ("HF_HOME", "PREFECT_HOME", "GILL_CACHE_DIR"):
        assert os.environ[name].startswith(str(session_tmp))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
