"""A loopback HTTP server that serves good images and every common way an image URL goes wrong.

Used by ``tests/test_download.py`` to check that the download report counts exactly what was served.
Paths (all under ``http://127.0.0.1:<port>``):

* ``/good/<i>.jpg``   a small, distinct JPEG per ``i``
* ``/missing.jpg``    404
* ``/error.jpg``      500
* ``/slow.jpg``       sleeps ``slow_s`` seconds before answering (longer than the client timeout)
* ``/html.jpg``       an HTML page served with 200 and ``Content-Type: image/jpeg``
* ``/truncated.jpg``  the first half of a JPEG's bytes
* ``/large.jpg``      a 6000x6000 JPEG
* ``/loop.jpg``       302 to itself, forever
* ``/noai.jpg``       a good JPEG with ``X-Robots-Tag: noai``
* ``/gate/<i>.jpg``   a good JPEG served only once :attr:`FaultServer.gate` is set (for kill-and-resume tests)
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

GOOD_SIZE = (64, 48)
LARGE_SIDE = 6000
TRUNCATED_SIZE = (256, 256)
HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>\n"


@lru_cache(maxsize=256)
def jpeg_bytes(index: int, size: tuple[int, int] = GOOD_SIZE) -> bytes:
    """A JPEG of ``size`` with a colour derived from ``index`` (distinct for the first few hundred)."""
    colour = ((index * 53) % 256, (index * 97 + 40) % 256, (index * 31 + 80) % 256)
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], max(1, size[0] // 8)):  # a few stripes so it is not a flat colour
        image.paste((255 - colour[0], colour[1], colour[2]), (x, 0, x + max(1, size[0] // 32), size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _truncated() -> bytes:
    """The first half of a JPEG's bytes: a valid header, then the scan data stops."""
    whole = jpeg_bytes(998, TRUNCATED_SIZE)
    return whole[: len(whole) // 2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the access log
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        self.server.record(path)
        if path.startswith("/good/") and path.endswith(".jpg"):
            self._send(200, jpeg_bytes(int(path[6:-4])))
        elif path.startswith("/gate/") and path.endswith(".jpg"):
            if self.server.wait_gate():
                self._send(200, jpeg_bytes(1000 + int(path[6:-4])))
        elif path == "/missing.jpg":
            self._send(404, b"not found", "text/plain")
        elif path == "/error.jpg":
            self._send(500, b"boom", "text/plain")
        elif path == "/slow.jpg":
            if not self.server.stopping.wait(self.server.slow_s):
                self._send(200, jpeg_bytes(999))
        elif path == "/html.jpg":
            self._send(200, HTML)
        elif path == "/truncated.jpg":
            self._send(200, _truncated())
        elif path == "/large.jpg":
            self._send(200, jpeg_bytes(997, (LARGE_SIDE, LARGE_SIDE)))
        elif path == "/loop.jpg":
            self._send(302, b"", "text/plain", {"Location": "/loop.jpg"})
        elif path == "/noai.jpg":
            self._send(200, jpeg_bytes(996), headers={"X-Robots-Tag": "noai"})
        else:
            self._send(404, b"unknown path", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, slow_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.slow_s = slow_s
        self.stopping = threading.Event()
        self.gate = threading.Event()
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def wait_gate(self) -> bool:
        """Block until the gate opens (True) or the server stops (False)."""
        while not self.stopping.is_set():
            if self.gate.wait(0.05):
                return True
        return False

    def handle_error(self, request: object, client_address: object) -> None:
        return  # clients that time out or get killed close their sockets; that is expected here


class FaultServer:
    """A running :class:`_Server` on 127.0.0.1 with helpers to build URLs and inspect requests."""

    def __init__(self, slow_s: float = 4.0) -> None:
        self._server = _Server(slow_s)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-server", daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def gate(self) -> threading.Event:
        """Set it to let ``/gate/<i>.jpg`` requests answer."""
        return self._server.gate

    @property
    def requests(self) -> list[str]:
        """Paths requested so far, in arrival order."""
        with self._server._lock:
            return list(self._server.requests)

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")

    def start(self) -> FaultServer:
        jpeg_bytes(997, (LARGE_SIDE, LARGE_SIDE))  # encode the big one now, not while a client's timeout runs
        _truncated()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve(slow_s: float = 4.0) -> Iterator[FaultServer]:
    """Run a :class:`FaultServer` for the duration of the block."""
    server = FaultServer(slow_s).start()
    try:
        yield server
    finally:
        server.stop()
