"""uvicorn in a background thread for the sandbox (tests, ``kingtavo sandbox``, the demo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from starlette.types import ASGIApp

from kingtavo_pipeline.serving import serve_in_thread as _serve_in_thread


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 15.0
) -> Iterator[str]:
    """Serve the sandbox until the block ends; yields the base URL (port 0 picks a free port). A
    request hanging in a timeout fault holds the shutdown for a second at most."""
    with _serve_in_thread(app, host, port, name="sandbox server", startup_timeout=startup_timeout,
                          graceful_shutdown=1) as base_url:
        yield base_url
