"""Small, composable paginators for JSON APIs (in the style of dlt's REST client).

A paginator is a little state machine over one pull: :meth:`~Paginator.init_request` sets the
first page's parameters, :meth:`~Paginator.update_state` reads a response (headers, decoded body,
the page's records) and decides whether there is a next page, and :meth:`~Paginator.update_request`
turns the request into that next page's. Each pull builds a fresh paginator from its pydantic
config (``PaginatorConfig.build()``), so paginators never share state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union
from urllib.parse import urljoin

import httpx
from jsonpath_ng import JSONPath
from jsonpath_ng.ext import parse as _parse_jsonpath
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CursorPaginator",
    "LinkHeaderPaginator",
    "NextUrlPaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "Paginator",
    "PaginatorConfig",
    "RequestSpec",
    "SinglePagePaginator",
    "compile_jsonpath",
    "first_value",
]


# ---------------------------------------------------------------------------------------------
# JSONPath helpers


def compile_jsonpath(expression: str) -> JSONPath:
    """Parse a JSONPath (jsonpath-ng's extended syntax: filters, arithmetic); ValueError if invalid."""
    try:
        return _parse_jsonpath(expression)
    except Exception as exc:  # jsonpath-ng raises its own errors and, from the lexer, bare Exceptions
        raise ValueError(f"invalid JSONPath {expression!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def first_value(expression: JSONPath, body: Any) -> Any:
    """The first match of ``expression`` in ``body``, or None."""
    matches = expression.find(body)
    return matches[0].value if matches else None


def _jsonpath_field(value: str | None) -> str | None:
    if value is not None:
        compile_jsonpath(value)
    return value


# ---------------------------------------------------------------------------------------------
# Paginators


@dataclass
class RequestSpec:
    """The next request of a pull: a URL (relative to the base URL, or absolute) and query params."""

    url: str
    params: dict[str, Any] = field(default_factory=dict)


class Paginator:
    """Base class: one page only."""

    def __init__(self) -> None:
        self.has_next_page = True

    def init_request(self, request: RequestSpec) -> None:
        """Set the first page's parameters."""

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        self.has_next_page = False

    def update_request(self, request: RequestSpec) -> None:
        raise NotImplementedError


class SinglePagePaginator(Paginator):
    """The endpoint returns everything at once."""


class PageNumberPaginator(Paginator):
    """``?page=N&per_page=M``: stops on an empty page, or when ``total_pages_path`` says so."""

    def __init__(
        self, page_param: str = "page", size_param: str | None = None, page_size: int | None = None,
        base_page: int = 1, total_pages_path: str | None = None,
    ) -> None:
        super().__init__()
        self.page_param, self.size_param, self.page_size = page_param, size_param, page_size
        self.page = base_page
        self.total_pages_path = compile_jsonpath(total_pages_path) if total_pages_path else None
        self._base_page = base_page

    def init_request(self, request: RequestSpec) -> None:
        request.params[self.page_param] = self.page
        if self.size_param and self.page_size:
            request.params[self.size_param] = self.page_size

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        if not records:
            self.has_next_page = False
            return
        if self.total_pages_path is not None:
            total = first_value(self.total_pages_path, body)
            if total is not None:
                # page numbers counted from base_page: the last page is base_page + total - 1
                self.has_next_page = self.page - self._base_page + 1 < int(total)
                return
        self.has_next_page = True

    def update_request(self, request: RequestSpec) -> None:
        self.page += 1
        request.params[self.page_param] = self.page


class OffsetPaginator(Paginator):
    """``?offset=N&limit=M``: stops on an empty page or once the offset reaches ``total_path``'s value."""

    def __init__(self, offset_param: str = "offset", limit_param: str = "limit", limit: int = 100,
                 total_path: str | None = None) -> None:
        super().__init__()
        self.offset_param, self.limit_param, self.limit = offset_param, limit_param, limit
        self.offset = 0
        self.total_path = compile_jsonpath(total_path) if total_path else None

    def init_request(self, request: RequestSpec) -> None:
        request.params[self.offset_param] = self.offset
        request.params[self.limit_param] = self.limit

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        # advance by what the server returned: it may cap the limit below what we asked for
        self.offset += len(records)
        if not records:
            self.has_next_page = False
            return
        if self.total_path is not None:
            total = first_value(self.total_path, body)
            if total is not None:
                self.has_next_page = self.offset < int(total)
                return
        self.has_next_page = True

    def update_request(self, request: RequestSpec) -> None:
        request.params[self.offset_param] = self.offset


class CursorPaginator(Paginator):
    """``?cursor=<token>`` where the next token is at ``cursor_path`` in the body; stops when it is empty."""

    def __init__(self, cursor_param: str = "cursor", cursor_path: str = "$.next_cursor") -> None:
        super().__init__()
        self.cursor_param = cursor_param
        self.cursor_path = compile_jsonpath(cursor_path)
        self.cursor: Any = None

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        cursor = first_value(self.cursor_path, body)
        if cursor in (None, "", False) or cursor == self.cursor:
            # a repeated cursor would loop forever: treat it as the end
            self.has_next_page = False
            return
        self.cursor = cursor
        self.has_next_page = True

    def update_request(self, request: RequestSpec) -> None:
        request.params[self.cursor_param] = self.cursor


class _NextUrlBase(Paginator):
    """Follows an absolute or relative next URL; the URL carries its own query."""

    def __init__(self) -> None:
        super().__init__()
        self.next_url: str | None = None
        self._seen: set[str] = set()

    def _advance(self, response: httpx.Response, next_url: Any) -> None:
        if not next_url or not isinstance(next_url, str):
            self.has_next_page = False
            return
        absolute = urljoin(str(response.url), next_url)
        if absolute in self._seen or absolute == str(response.url):
            self.has_next_page = False  # the server points back at a page we have: stop, not loop
            return
        self._seen.add(absolute)
        self.next_url = absolute
        self.has_next_page = True

    def update_request(self, request: RequestSpec) -> None:
        request.url = self.next_url or request.url
        # the next URL is complete: re-sending the first request's params would duplicate them
        request.params = {}


class LinkHeaderPaginator(_NextUrlBase):
    """RFC 8288 (5988) ``Link: <url>; rel="next"``."""

    def __init__(self, rel: str = "next") -> None:
        super().__init__()
        self.rel = rel

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        self._advance(response, response.links.get(self.rel, {}).get("url"))


class NextUrlPaginator(_NextUrlBase):
    """The next page's URL is at ``next_url_path`` in the body (``$.next``, ``$.links.next``...)."""

    def __init__(self, next_url_path: str = "$.next") -> None:
        super().__init__()
        self.next_url_path = compile_jsonpath(next_url_path)

    def update_state(self, response: httpx.Response, body: Any, records: list[Any]) -> None:
        self._advance(response, first_value(self.next_url_path, body))


# ---------------------------------------------------------------------------------------------
# Configuration (YAML): one model per kind, discriminated by ``kind``


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SinglePageConfig(_Config):
    kind: Literal["single_page"] = "single_page"

    def build(self) -> Paginator:
        return SinglePagePaginator()


class PageNumberConfig(_Config):
    kind: Literal["page_number"]
    page_param: str = "page"
    size_param: str | None = "per_page"
    page_size: int | None = Field(100, ge=1)
    base_page: int = Field(1, ge=0)
    total_pages_path: str | None = None

    _check_path = field_validator("total_pages_path")(lambda cls, v: _jsonpath_field(v))

    def build(self) -> Paginator:
        return PageNumberPaginator(self.page_param, self.size_param, self.page_size, self.base_page, self.total_pages_path)


class OffsetConfig(_Config):
    kind: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, ge=1)
    total_path: str | None = None

    _check_path = field_validator("total_path")(lambda cls, v: _jsonpath_field(v))

    def build(self) -> Paginator:
        return OffsetPaginator(self.offset_param, self.limit_param, self.limit, self.total_path)


class CursorConfig(_Config):
    kind: Literal["cursor"]
    cursor_param: str = "cursor"
    cursor_path: str = "$.next_cursor"

    _check_path = field_validator("cursor_path")(lambda cls, v: _jsonpath_field(v))

    def build(self) -> Paginator:
        return CursorPaginator(self.cursor_param, self.cursor_path)


class LinkHeaderConfig(_Config):
    kind: Literal["link_header"]
    rel: str = "next"

    def build(self) -> Paginator:
        return LinkHeaderPaginator(self.rel)


class NextUrlConfig(_Config):
    kind: Literal["next_url"]
    next_url_path: str = "$.next"

    _check_path = field_validator("next_url_path")(lambda cls, v: _jsonpath_field(v))

    def build(self) -> Paginator:
        return NextUrlPaginator(self.next_url_path)


PaginatorConfig = Annotated[
    Union[SinglePageConfig, PageNumberConfig, OffsetConfig, CursorConfig, LinkHeaderConfig, NextUrlConfig],
    Field(discriminator="kind"),
]
