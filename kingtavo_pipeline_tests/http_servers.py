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


# --- small API servers ------------------------------------------------------------------------

class StrapiServer:
    """Enough of Strapi's REST API (v4 or v5) for pipeline tests: ``GET /api/<plural>`` with a Bearer
    API token, ``pagination[page]``/``pagination[pageSize]`` (capped at ``max_limit``), ``sort[i]=field:dir``
    and ``filters[field][$gt|$gte|$lt|$lte|$eq]`` on top-level fields.

    ``collections`` maps the plural API id to flat v5-shaped entries (``id``, ``documentId``,
    ``createdAt``, ``updatedAt`` and fields); v4 answers ``{id, attributes: {...}}``, a relation
    ``{"name": ..}`` as ``{"data": {"id": .., "attributes": {..}}}``.
    """

    def __init__(self, version: int, collections: dict[str, list[dict[str, Any]]], token: str,
                 max_limit: int = 100) -> None:
        self.version = version
        self.collections = collections
        self.token = token
        self.max_limit = max_limit
        self.requests: list[dict[str, str]] = []

    def shape(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self.version == 5:
            return dict(entry)
        attributes = {}
        for key, value in entry.items():
            if key in ("id", "documentId"):
                continue
            if isinstance(value, dict):  # a relation
                value = {"data": {"id": value.get("id", 1), "attributes": {k: v for k, v in value.items() if k != "id"}}}
            attributes[key] = value
        return {"id": entry["id"], "attributes": attributes}

    async def collection(self, request) -> Any:
        import re

        from starlette.responses import JSONResponse

        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"data": None, "error": {"status": 401, "name": "UnauthorizedError",
                                                         "message": "Missing or invalid credentials"}}, status_code=401)
        plural = request.path_params["plural"]
        if plural not in self.collections:
            return JSONResponse({"data": None, "error": {"status": 404, "name": "NotFoundError"}}, status_code=404)
        query = dict(request.query_params)
        self.requests.append(query)
        rows = list(self.collections[plural])
        operators = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
                     "lte": lambda a, b: a <= b, "eq": lambda a, b: a == b}
        for key, value in query.items():
            match = re.match(r"^filters\[(\w+)\]\[\$(gt|gte|lt|lte|eq)\]$", key)
            if match:
                field, op = match.groups()
                # Strapi's timestamps share one ISO format, so string order is time order
                rows = [r for r in rows if r.get(field) is not None and operators[op](str(r[field]), value)]
        sorts = [query[k] for k in sorted(k for k in query if k.startswith("sort"))]
        for spec in reversed(sorts):
            field, _, direction = spec.partition(":")
            rows.sort(key=lambda r: (r.get(field) is None, r.get(field)), reverse=direction == "desc")
        page = int(query.get("pagination[page]", 1))
        size = min(int(query.get("pagination[pageSize]", 25)), self.max_limit)
        chunk = rows[(page - 1) * size: page * size]
        return JSONResponse({
            "data": [self.shape(r) for r in chunk],
            "meta": {"pagination": {"page": page, "pageSize": size, "pageCount": -(-len(rows) // size),
                                    "total": len(rows)}},
        })

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[Route("/api/{plural}", self.collection)])


class PagedJsonApi:
    """A plain paginated REST/JSON API: ``GET /<resource>?page=&per_page=`` answers
    ``{"items": [...], "meta": {"page", "total_pages"}}``, behind an ``X-Api-Key`` header."""

    def __init__(self, resources: dict[str, list[dict[str, Any]]], api_key: str) -> None:
        self.resources = resources
        self.api_key = api_key
        self.requests: list[dict[str, str]] = []

    async def listing(self, request) -> Any:
        from starlette.responses import JSONResponse

        if request.headers.get("x-api-key") != self.api_key:
            return JSONResponse({"error": "invalid api key"}, status_code=401)
        rows = self.resources.get(request.path_params["resource"])
        if rows is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        self.requests.append(dict(request.query_params))
        page = int(request.query_params.get("page", 1))
        per_page = int(request.query_params.get("per_page", 10))
        pages = max(1, -(-len(rows) // per_page))
        return JSONResponse({"items": rows[(page - 1) * per_page: page * per_page],
                             "meta": {"page": page, "total_pages": pages}})

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[Route("/v1/{resource}", self.listing)])
