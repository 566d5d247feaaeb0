"""Serve an ASGI app (Starlette) under uvicorn in a background thread, for tests over real HTTP.

Usage::

    with serve_app(app) as base_url:      # e.g. "http://127.0.0.1:54321"
        httpx.get(f"{base_url}/ping")

The server binds 127.0.0.1 on a free port chosen by the OS and stops when the block exits.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    """A port that was free a moment ago (for servers, and for 'nothing listens here' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ThreadServer(uvicorn.Server):
    # signal handlers can only be installed in the main thread
    def install_signal_handlers(self) -> None:  # pragma: no cover - trivial
        return None


@contextmanager
def serve_app(app: Any, *, startup_timeout: float = 10.0, **uvicorn_options: Any) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1:<free port> and yield its base URL (no trailing slash)."""
    # bind the socket ourselves so the port cannot be taken between choosing and listening
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {"log_level": "warning", "lifespan": "off", "access_log": False, "timeout_graceful_shutdown": 1}
    options.update(uvicorn_options)
    server = _ThreadServer(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"test server on 127.0.0.1:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
