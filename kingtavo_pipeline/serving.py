"""uvicorn in a background thread, for apps served inside another process: the sandbox (tests,
``kingtavo sandbox``, the demo) and the webhook ingress (the demo, the freshness benchmark).
``kingtavo serve`` runs uvicorn in the foreground instead."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp


class AddressInUseError(RuntimeError):
    """Something already listens where a server was asked to (a one-line error from the CLI)."""


def check_free(host: str, port: int, name: str) -> None:
    """Fail with the reason when ``host:port`` is taken (uvicorn would only log it, from its thread
    or before exiting the process).
    SO_REUSEADDR, as uvicorn binds: a port in TIME_WAIT is free."""
    if not port:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(
                        f"the {name} cannot listen on {display_host(host)}:{port}: the address is in use "
                        "(another kingtavo sandbox, serve or demo?); stop it or choose another port") from None
                raise
        return  # the first address is the one uvicorn binds


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # only the main thread may; the caller owns signals
        return None


def display_host(host: str) -> str:
    """A host to put in a URL for a listening address (a wildcard address is reached on loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str = "server",
    startup_timeout: float = 15.0,
    lifespan: Literal["on", "off", "auto"] = "off",
    graceful_shutdown: float = 1.0,
) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields the base URL (port 0 picks a free port).

    ``lifespan="on"`` runs the app's startup and shutdown (the ingress flushes its writer on
    exit); ``graceful_shutdown`` bounds how long a hanging request holds the exit."""
    check_free(host, port, name)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan=lifespan,
                            timeout_graceful_shutdown=graceful_shutdown)
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, name=f"{name}-uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:  # polling against a deadline: uvicorn offers no started event
        if not thread.is_alive():
            raise RuntimeError(f"the {name} could not start on {host}:{port} (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the {name} did not start within {startup_timeout:g} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{display_host(host)}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=graceful_shutdown + 10)
