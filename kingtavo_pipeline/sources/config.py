"""The sources YAML file: which CSV files and RSS/Atom feeds to ingest, validated by pydantic.

Relative paths in the file are resolved against the YAML file's folder at load time, so the
models always hold absolute paths (or http(s) URLs for feeds).
"""

from __future__ import annotations

import codecs
import glob
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..config_errors import format_validation_errors
from ..connectors.rest import RestSourceConfig
from ..transform.unified import UNIFIED_FIELDS

SOURCES_FILE_ENV = "KINGTAVO_SOURCES_FILE"
NAME_PATTERN = r"^[a-z0-9_]+$"
DELIMITERS = {",", ";", "\t", "|"}
_DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

# Used when an rss source has no ``fields``: unified field -> key of the normalised entry payload.
DEFAULT_FEED_FIELDS: dict[str, str] = {
    "external_id": "id",
    "title": "title",
    "description": "summary",
    "url": "link",
    "category": "tags",
    "published_at": "published",
    "updated_at": "updated",
}


class SourceConfigError(ValueError):
    """The sources file, or a source's data, does not match what the file says: a configuration
    problem to fix, not bad records to dead-letter. The message is one line naming the file or source."""


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _resolve(value: str, info: ValidationInfo) -> str:
    """Relative -> absolute against ``context["base_dir"]`` (the YAML folder), else the cwd."""
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (base / path).absolute())


def _check_fields(fields: dict[str, str] | None) -> dict[str, str] | None:
    if fields is None:
        return None
    unknown = [k for k in fields if k not in UNIFIED_FIELDS]
    if unknown:
        raise ValueError(f"unknown unified field(s) {unknown}; allowed: {', '.join(UNIFIED_FIELDS)}")
    empty = [k for k, v in fields.items() if not str(v).strip()]
    if empty:
        raise ValueError(f"field(s) {empty} map to an empty column name")
    return {k: str(v).strip() for k, v in fields.items()}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvSource(_Model):
    """One CSV source: a file, a folder (every ``*.csv`` inside) or a glob."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str
    entity: str = "items"
    id_column: str | None = None
    date_column: str | None = None
    date_format: str | None = None
    dayfirst: bool = False
    encoding: str = "auto"
    delimiter: str = "auto"
    fields: dict[str, str] = Field(default_factory=dict)

    @property
    def source_type(self) -> str:
        return "csv"

    @property
    def field_map(self) -> dict[str, str]:
        """Unified field -> payload key, as :func:`map_to_unified` wants it."""
        return dict(self.fields)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("path is empty")
        return _resolve(value.strip(), info)

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, value: str) -> str:
        if value.lower() == "auto":
            return "auto"
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None

    @field_validator("delimiter")
    @classmethod
    def _check_delimiter(cls, value: str) -> str:
        if value != "\t":  # aliases also cover a single-quoted YAML '\t' (backslash + t)
            value = _DELIMITER_ALIASES.get(value.strip().lower(), value)
        if value.lower() == "auto":
            return "auto"
        if value not in DELIMITERS:
            raise ValueError(f"delimiter must be 'auto' or one of {sorted(DELIMITERS)!r}, got {value!r}")
        return value

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_fields(value) or {}

    def files(self) -> list[Path]:
        """The matched files, sorted. A glob matching nothing gives []; a missing plain path raises."""
        path = Path(self.path)
        if glob.has_magic(self.path):
            return sorted(Path(p) for p in glob.glob(self.path, recursive=True) if Path(p).is_file())
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
        if path.is_file():
            return [path]
        raise FileNotFoundError(f"csv source {self.name!r}: no such file or folder: {self.path}")


class RssSource(_Model):
    """One RSS 2.0 / Atom feed: a local file or an http(s) URL."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str
    entity: str = "items"
    fields: dict[str, str] | None = None

    @property
    def source_type(self) -> str:
        return "rss"

    @property
    def is_remote(self) -> bool:
        return _is_url(self.url)

    @property
    def field_map(self) -> dict[str, str]:
        """The configured mapping, or :data:`DEFAULT_FEED_FIELDS`."""
        return dict(self.fields) if self.fields is not None else dict(DEFAULT_FEED_FIELDS)

    @field_validator("url")
    @classmethod
    def _resolve_url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("url is empty")
        if _is_url(value):
            return value
        if "://" in value:
            raise ValueError(f"only http(s) URLs or file paths are supported, got {value!r}")
        return _resolve(value, info)

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_fields(value)


class HttpSettings(_Model):
    """Timeouts, retries and the client-side rate limit of an API source (the HTTP layer's policy)."""

    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    backoff_initial: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    max_retry_after: float = Field(default=120.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown: float = Field(default=30.0, ge=0)
    max_response_mib: int = Field(default=50, ge=1)


class _ApiSource(_Model):
    """What every API source has: a name, a base URL, the entities to pull and the HTTP policy."""

    name: str = Field(pattern=NAME_PATTERN)
    base_url: str
    entities: list[str]
    http: HttpSettings = Field(default_factory=HttpSettings)
    # entity -> mapping file (relative to the sources file); unset: the shipped mappings/<type>_<entity>.yaml
    mappings: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not _is_url(value):
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value

    @field_validator("mappings")
    @classmethod
    def _resolve_mappings(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return {entity: _resolve(path, info) for entity, path in value.items()}

    @model_validator(mode="after")
    def _check_entities(self):
        allowed = self.allowed_entities()
        unknown = [e for e in self.entities if allowed and e not in allowed]
        if unknown:
            raise ValueError(f"unknown entit{'ies' if len(unknown) > 1 else 'y'} {unknown}; allowed: {', '.join(allowed)}")
        return self

    @classmethod
    def allowed_entities(cls) -> tuple[str, ...]:
        return ()

    @property
    def source_type(self) -> str:
        raise NotImplementedError


class PrintavoSource(_ApiSource):
    """Printavo API v2 (GraphQL): ``email`` and ``token`` headers from the named env vars."""

    base_url: str = "http://127.0.0.1:8765/printavo/api/v2"
    entities: list[str] = Field(default_factory=lambda: ["invoices", "quotes", "customers"])
    email_env: str = "PRINTAVO_EMAIL"
    token_env: str = "PRINTAVO_TOKEN"
    page_size: int = Field(default=25, ge=1, le=100)
    # the API has no updated-since filter: incremental pulls re-scan this many days of orders
    rescan_days: int = Field(default=30, ge=1)
    # documented limit: 10 requests per 5 seconds per credential
    requests_per_window: int = Field(default=10, ge=1)
    window_seconds: float = Field(default=5.0, gt=0)

    @classmethod
    def allowed_entities(cls) -> tuple[str, ...]:
        return ("invoices", "quotes", "customers")

    @property
    def source_type(self) -> str:
        return "printavo"


class SallaSource(_ApiSource):
    """Salla Admin API v2 for many merchants: OAuth2 tokens per merchant live encrypted in
    ``source_credentials`` (``kingtavo credentials set``); merchants are dynamic partitions."""

    base_url: str = "http://127.0.0.1:8765/salla/admin/v2"
    token_url: str = "http://127.0.0.1:8765/salla/oauth2/token"
    entities: list[str] = Field(default_factory=lambda: ["orders", "products", "customers"])
    client_id_env: str = "SALLA_CLIENT_ID"
    client_secret_env: str = "SALLA_CLIENT_SECRET"
    page_size: int = Field(default=60, ge=1, le=60)
    # the store's plan: Plus 120, Pro 360, Special 720 requests per minute
    requests_per_minute: int = Field(default=120, ge=1)
    # merchants registered when the definitions load; more with `kingtavo merchants add`
    merchants: list[str] = Field(default_factory=list)

    @classmethod
    def allowed_entities(cls) -> tuple[str, ...]:
        return ("orders", "products", "customers")

    @property
    def source_type(self) -> str:
        return "salla"


class StrapiSource(_ApiSource):
    """A Strapi v4 or v5 REST API: collection entity -> plural API path, Bearer API token."""

    token_env: str = "STRAPI_TOKEN"
    version: int = Field(default=5, ge=4, le=5)
    collections: dict[str, str]
    entities: list[str] = Field(default_factory=list)
    page_size: int = Field(default=100, ge=1, le=1000)

    @model_validator(mode="after")
    def _default_entities(self):
        if not self.entities:
            object.__setattr__(self, "entities", list(self.collections))
        unknown = [e for e in self.entities if e not in self.collections]
        if unknown:
            raise ValueError(f"entities {unknown} have no entry in collections")
        return self

    @property
    def source_type(self) -> str:
        return "strapi"


class RestSource(RestSourceConfig):
    """A generic paginated REST/JSON API (paginator, records path, incremental cursor: see
    ``connectors/rest.py``), with the HTTP policy and a mapping file per entity (required: there is
    no shipped mapping for an arbitrary API)."""

    http: HttpSettings = Field(default_factory=HttpSettings)
    mappings: dict[str, str] = Field(default_factory=dict)

    @field_validator("mappings")
    @classmethod
    def _resolve_mappings(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return {entity: _resolve(path, info) for entity, path in value.items()}

    @model_validator(mode="after")
    def _every_entity_mapped(self):
        missing = [e for e in self.entities if e not in self.mappings]
        if missing:
            raise ValueError(f"entities {missing} need a mapping file under 'mappings'")
        return self

    @property
    def source_type(self) -> str:
        return "rest"


class SourcesConfig(_Model):
    csv: list[CsvSource] = Field(default_factory=list)
    rss: list[RssSource] = Field(default_factory=list)
    printavo: list[PrintavoSource] = Field(default_factory=list)
    salla: list[SallaSource] = Field(default_factory=list)
    strapi: list[StrapiSource] = Field(default_factory=list)
    rest: list[RestSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> SourcesConfig:
        seen: set[str] = set()
        dupes: list[str] = []
        for source in [*self.all(), *self.api()]:
            if source.name in seen:
                dupes.append(source.name)
            seen.add(source.name)
        if dupes:
            raise ValueError(f"duplicate source name(s) {sorted(set(dupes))}; names must be unique across all sources")
        return self

    def all(self) -> list[CsvSource | RssSource]:
        """The file and feed sources (mapped to unified_items)."""
        return [*self.csv, *self.rss]

    def api(self) -> list[PrintavoSource | SallaSource | StrapiSource | RestSource]:
        """The API sources (mapped to the core entity tables)."""
        return [*self.printavo, *self.salla, *self.strapi, *self.rest]

    def get(self, name: str) -> CsvSource | RssSource:
        for source in self.all():
            if source.name == name:
                return source
        raise KeyError(f"no source named {name!r}")


_MODELS = {"csv": CsvSource, "rss": RssSource, "printavo": PrintavoSource, "salla": SallaSource, "strapi": StrapiSource, "rest": RestSource}


def _allowed_keys(loc: tuple) -> list[str]:
    model = _MODELS.get(str(loc[0])) if len(loc) == 3 else SourcesConfig if len(loc) == 1 else None
    return list(model.model_fields) if model else []


def parse_sources(data: Any, base_dir: str | Path, origin: str = "<sources>") -> SourcesConfig:
    """Validate already-loaded YAML data; relative paths resolve against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SourceConfigError(
            f"sources file {origin}: expected a mapping with 'csv' and/or 'rss' lists, got {type(data).__name__}"
        )
    try:
        return SourcesConfig.model_validate(data, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        raise SourceConfigError(
            f"sources file {origin} is invalid: {format_validation_errors(exc, allowed_keys=_allowed_keys)}"
        ) from None


def load_sources(path: str | Path) -> SourcesConfig:
    """Read and validate a sources YAML file; any problem is a one-line :class:`SourceConfigError`
    (a ``ValueError``) naming the file."""
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceConfigError(f"sources file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceConfigError(f"sources file {path} cannot be read: {' '.join(str(exc).split())}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SourceConfigError(f"sources file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_sources(data, path.parent, origin=str(path))


def default_sources_path() -> Path:
    """``$KINGTAVO_SOURCES_FILE`` if set, else the packaged ``kingtavo_pipeline/sources.yaml``."""
    override = os.environ.get(SOURCES_FILE_ENV, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    return Path(__file__).resolve().parent.parent / "sources.yaml"
