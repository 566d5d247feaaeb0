"""A generic paginated REST/JSON source, configured (from YAML) by :class:`RestSourceConfig`.

Example (YAML)::

    name: shop_api
    base_url: http://127.0.0.1:8080/v1
    auth: {type: bearer, env: SHOP_API_TOKEN}
    paginator: {kind: cursor, cursor_param: cursor, cursor_path: $.meta.next_cursor}
    records_path: $.data[*]
    updated_at_path: updated_at
    entities:
      orders:
        path: /orders
        occurred_at_path: created_at
        incremental: {param: updated_since, initial_value: "2024-01-01T00:00:00Z", sorted_ascending: true}
        window: {start_param: created_from, end_param: created_to, format: iso}
      customers: /customers        # a path alone inherits everything else

Source-level ``paginator``, ``records_path``, ``id_path``, ``occurred_at_path``,
``updated_at_path``, ``params`` and ``total_path`` are defaults each entity may override.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timezone
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..extract.http import BadPayloadError, HttpPolicy, ResilientClient
from .base import Page, SourceRecord
from .paginators import PaginatorConfig, RequestSpec, SinglePageConfig, compile_jsonpath, first_value

__all__ = [
    "AuthConfig",
    "IncrementalConfig",
    "RestConfigError",
    "RestConnector",
    "RestEntityConfig",
    "RestSourceConfig",
    "WindowConfig",
    "dotted_get",
    "parse_timestamp",
]


class RestConfigError(ValueError):
    """A REST source's configuration is invalid; the message names the source and each bad field."""


# ---------------------------------------------------------------------------------------------
# Values out of records


def dotted_get(record: Any, path: str) -> Any:
    """``a.b.0.c`` into nested dicts/lists; None when any step is missing."""
    value = record
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 (``Z`` allowed; naive = UTC), a date, or epoch seconds/milliseconds -> aware UTC."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit()):
        number = float(value)
        # epoch milliseconds are > 10**11 for any date after 1973
        parsed = datetime.fromtimestamp(number / 1000 if abs(number) > 1e11 else number, tz=timezone.utc)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Configuration


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Config):
    """``none``; ``bearer`` (``Authorization: Bearer <env>``); ``header`` (``<header>: <prefix><env>``)."""

    type: Literal["none", "bearer", "header"] = "none"
    env: str | None = Field(None, description="name of the env var / credential holding the secret")
    header: str | None = None
    prefix: str = ""

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.type in ("bearer", "header") and not self.env:
            raise ValueError(f"auth type {self.type!r} needs 'env', the name of the variable holding the secret")
        if self.type == "header" and not self.header:
            raise ValueError("auth type 'header' needs 'header', the header name (e.g. X-API-Key)")
        if self.type == "none" and (self.env or self.header):
            raise ValueError("auth type 'none' takes no 'env' or 'header'; did you mean type: bearer or header?")
        return self


class IncrementalConfig(_Config):
    """Send ``param=<max updated_at seen>`` (or ``initial_value`` on the first run)."""

    param: str
    initial_value: str | None = None
    # true when the API returns records oldest-change first: then every page may move the
    # checkpoint; otherwise only the completed pull does (a crash mid-pull must not skip records)
    sorted_ascending: bool = False


class WindowConfig(_Config):
    """Partition window as query params: ``start_param=<start>&end_param=<end>``."""

    start_param: str
    end_param: str | None = None
    # iso (2024-01-02T00:00:00Z), date (2024-01-02), epoch (seconds), epoch_ms, or a strftime pattern
    format: str = "iso"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("iso", "date", "epoch", "epoch_ms") and "%" not in value:
            raise ValueError(f"format must be iso, date, epoch, epoch_ms or a strftime pattern, got {value!r}")
        return value

    def render(self, moment: datetime) -> str:
        moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
        if self.format == "iso":
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.format == "date":
            return moment.strftime("%Y-%m-%d")
        if self.format == "epoch":
            return str(int(moment.timestamp()))
        if self.format == "epoch_ms":
            return str(int(moment.timestamp() * 1000))
        return moment.strftime(self.format)


def _check_jsonpath(value: str | None) -> str | None:
    if value is not None:
        compile_jsonpath(value)
    return value


class RestEntityConfig(_Config):
    """One endpoint. Unset fields inherit the source-level defaults."""

    path: str
    paginator: PaginatorConfig | None = None
    records_path: str | None = None
    total_path: str | None = None
    id_path: str | None = None
    occurred_at_path: str | None = None
    updated_at_path: str | None = None
    params: dict[str, str | int | float | bool] | None = None
    incremental: IncrementalConfig | None = None
    window: WindowConfig | None = None

    @field_validator("records_path", "total_path")
    @classmethod
    def _jsonpath(cls, value: str | None) -> str | None:
        return _check_jsonpath(value)


class RestSourceConfig(_Config):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    base_url: str
    auth: AuthConfig = AuthConfig()
    headers: dict[str, str] = {}
    paginator: PaginatorConfig = SinglePageConfig()
    records_path: str = "$[*]"
    total_path: str | None = None
    id_path: str = "id"
    occurred_at_path: str | None = None
    updated_at_path: str | None = None
    params: dict[str, str | int | float | bool] = {}
    entities: dict[str, RestEntityConfig]

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("records_path", "total_path")
    @classmethod
    def _jsonpath(cls, value: str | None) -> str | None:
        return _check_jsonpath(value)

    @field_validator("entities", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("entities")
    @classmethod
    def _some_entities(cls, value: dict[str, RestEntityConfig]) -> dict[str, RestEntityConfig]:
        if not value:
            raise ValueError("at least one entity is required")
        return value

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RestSourceConfig:
        """Validate ``data`` (parsed YAML); errors become one :class:`RestConfigError` naming each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            name = data.get("name", "?") if isinstance(data, Mapping) else "?"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
            raise RestConfigError(f"rest source {name!r}: invalid configuration: {problems}") from None

    def entity(self, entity: str) -> _Resolved:
        if entity not in self.entities:
            raise RestConfigError(f"rest source {self.name!r} has no entity {entity!r}; it has {sorted(self.entities)}")
        e = self.entities[entity]
        pick = lambda own, default: own if own is not None else default  # noqa: E731
        return _Resolved(
            name=entity,
            path=e.path,
            paginator=pick(e.paginator, self.paginator),
            records_path=pick(e.records_path, self.records_path),
            total_path=pick(e.total_path, self.total_path),
            id_path=pick(e.id_path, self.id_path),
            occurred_at_path=pick(e.occurred_at_path, self.occurred_at_path),
            updated_at_path=pick(e.updated_at_path, self.updated_at_path),
            params={**self.params, **(e.params or {})},
            incremental=e.incremental,
            window=e.window,
        )


class _Resolved(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    path: str
    paginator: Any
    records_path: str
    total_path: str | None
    id_path: str
    occurred_at_path: str | None
    updated_at_path: str | None
    params: dict[str, Any]
    incremental: IncrementalConfig | None
    window: WindowConfig | None


# ---------------------------------------------------------------------------------------------
# The connector


class RestConnector:
    """Implements :class:`~.base.Connector` for a :class:`RestSourceConfig`.

    ``credentials`` maps the auth ``env`` name to its secret (the environment is the fallback).
    """

    def __init__(
        self,
        config: RestSourceConfig | Mapping[str, Any],
        credentials: Mapping[str, str] | None = None,
        policy: HttpPolicy | None = None,
        *,
        client: ResilientClient | None = None,
    ) -> None:
        self.config = config if isinstance(config, RestSourceConfig) else RestSourceConfig.parse(config)
        self.entities = tuple(self.config.entities)
        headers = dict(self.config.headers)
        secret = self._secret(credentials or {})
        auth = self.config.auth
        if auth.type == "bearer":
            headers["Authorization"] = f"Bearer {secret}"
        elif auth.type == "header":
            headers[str(auth.header)] = f"{auth.prefix}{secret}"
        # the limiter key is source + credential (hashed: keys show up in metrics)
        fingerprint = hashlib.sha256((secret or "").encode()).hexdigest()[:12]
        self.client = client or ResilientClient(
            f"rest:{self.config.name}", policy, base_url=self.config.base_url, headers=headers,
            limiter_key=f"rest:{self.config.name}:{fingerprint}",
        )

    def _secret(self, credentials: Mapping[str, str]) -> str | None:
        env = self.config.auth.env
        if not env:
            return None
        value = credentials.get(env) or os.environ.get(env)
        if not value:
            raise RestConfigError(f"rest source {self.config.name!r}: credential {env!r} is not set (auth {self.config.auth.type})")
        return value

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RestConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Connector protocol ----------------------------------------------------------------------

    def pull(self, entity: str, *, start: datetime, end: datetime) -> Iterator[Page]:
        """Records whose ``occurred_at`` is in ``[start, end)``: window params when configured, and
        always a client-side filter (APIs differ on inclusive ends; some have no window at all).
        Records without an ``occurred_at`` are kept."""
        spec = self.config.entity(entity)
        params: dict[str, Any] = {}
        if spec.window:
            params[spec.window.start_param] = spec.window.render(start)
            if spec.window.end_param:
                params[spec.window.end_param] = spec.window.render(end)
        lo, hi = parse_timestamp(start), parse_timestamp(end)
        for records, total in self._pages(spec, params):
            kept = [r for r in records if r.occurred_at is None or lo <= r.occurred_at < hi]
            yield Page(records=kept, checkpoint=None, reported_total=total)

    def pull_changes(self, entity: str, *, since: str | None) -> Iterator[Page]:
        """Records changed since the checkpoint; the checkpoint is the max ``updated_at`` seen, as
        the API wrote it. Without ``incremental`` config every run is a full pull."""
        spec = self.config.entity(entity)
        inc = spec.incremental
        params: dict[str, Any] = {}
        value = since if since is not None else (inc.initial_value if inc else None)
        if inc and value is not None:
            params[inc.param] = value
        best_raw, best_at = since, parse_timestamp(since)
        pending: Page | None = None
        for records, total in self._pages(spec, params):
            for record in records:
                raw = dotted_get(record.payload, spec.updated_at_path) if spec.updated_at_path else None
                if record.updated_at is not None and (best_at is None or record.updated_at > best_at):
                    best_raw, best_at = str(raw), record.updated_at
            if inc is not None and inc.sorted_ascending:
                yield Page(records=records, checkpoint=best_raw, reported_total=total)
                continue
            # unsorted: hold each page back so the last one alone carries the checkpoint
            if pending is not None:
                yield pending
            pending = Page(records=records, checkpoint=None, reported_total=total)
        if pending is not None:
            yield Page(records=pending.records, checkpoint=best_raw, reported_total=pending.reported_total)

    # -- paging ----------------------------------------------------------------------------------

    def _pages(self, spec: _Resolved, params: dict[str, Any]) -> Iterator[tuple[list[SourceRecord], int | None]]:
        paginator = spec.paginator.build()
        records_path = compile_jsonpath(spec.records_path)
        total_path = compile_jsonpath(spec.total_path) if spec.total_path else None
        request = RequestSpec(url=self._url(spec.path), params={**spec.params, **params})
        paginator.init_request(request)
        while True:
            response = self.client.request("GET", request.url, params=request.params or None)
            body = self.client.parse_json(response)
            raw_records = self._extract(records_path, body, response, spec)
            paginator.update_state(response, body, raw_records)
            total = first_value(total_path, body) if total_path is not None else None
            yield [self._record(spec, raw, response) for raw in raw_records], _int_or_none(total)
            if not paginator.has_next_page:
                return
            paginator.update_request(request)

    def _url(self, path: str) -> str:
        if path.lower().startswith(("http://", "https://")):
            return path
        return f"{self.config.base_url}/{path.lstrip('/')}"

    def _where(self, spec: _Resolved, response: httpx.Response) -> str:
        return f"rest:{self.config.name}: {spec.name}: GET {self.client._redact(str(response.request.url), is_url=True)}"

    def _extract(self, path: Any, body: Any, response: httpx.Response, spec: _Resolved) -> list[dict[str, Any]]:
        matches = [m.value for m in path.find(body)]
        # "$.data" (the list itself) and "$.data[*]" (its items) both mean the items
        if len(matches) == 1 and isinstance(matches[0], list):
            matches = matches[0]
        bad = next((m for m in matches if not isinstance(m, dict)), None)
        if bad is not None:
            raise BadPayloadError(
                f"{self._where(spec, response)}: records_path {spec.records_path!r} selects a "
                f"{type(bad).__name__}, not JSON objects", status=response.status_code,
            )
        return matches

    def _record(self, spec: _Resolved, raw: dict[str, Any], response: httpx.Response) -> SourceRecord:
        source_id = dotted_get(raw, spec.id_path)
        if source_id is None or source_id == "":
            raise BadPayloadError(
                f"{self._where(spec, response)}: a record has no id at {spec.id_path!r} (keys: {sorted(raw)[:10]})",
                status=response.status_code,
            )
        return SourceRecord(
            entity=spec.name,
            source_id=str(source_id),
            payload=raw,
            occurred_at=parse_timestamp(dotted_get(raw, spec.occurred_at_path)) if spec.occurred_at_path else None,
            updated_at=parse_timestamp(dotted_get(raw, spec.updated_at_path)) if spec.updated_at_path else None,
        )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
