"""The webhooks YAML file (``KINGTAVO_WEBHOOKS_FILE``): which sources the ingress accepts, validated
by pydantic. Secrets are never in the file: each source names environment variables that hold
them (several = rotation: every one that is set is accepted)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config_errors import format_validation_errors
from .schemes import DEFAULT_TOLERANCE_SECONDS, PROVIDERS, HmacOptions, standard_secret_bytes

WEBHOOKS_FILE_ENV = "KINGTAVO_WEBHOOKS_FILE"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_HMAC_KEYS = ("header", "algorithm", "encoding", "prefix", "id_header", "event_header")

Provider = Literal["salla", "salla_token", "github", "slack", "stripe", "shopify", "standard", "hmac"]
assert set(Provider.__args__) == set(PROVIDERS)  # type: ignore[attr-defined]


class WebhookConfigError(ValueError):
    """The webhooks file or a source's secrets are unusable; one line naming the file and key."""


class WebhookSource(BaseModel):
    """One route ``POST /webhooks/{name}`` and how its requests are verified and limited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    provider: Provider
    secrets_env: tuple[str, ...] = Field(min_length=1)
    tolerance_seconds: int = Field(default=DEFAULT_TOLERANCE_SECONDS, gt=0)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    allow_ips: tuple[IPv4Network | IPv6Network, ...] | None = None
    # provider hmac only
    header: str | None = None
    algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    id_header: str | None = None  # delivery id header (else the body's SHA-256 is the dedupe key)
    event_header: str | None = None  # event type header (else payload "type"/"event")

    @field_validator("secrets_env", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("secrets_env")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if not re.fullmatch(ENV_NAME_PATTERN, v)]
        if bad:
            raise ValueError(f"not environment variable names: {bad} (the file names variables, never secrets)")
        return value

    @model_validator(mode="after")
    def _hmac_keys(self) -> WebhookSource:
        if self.provider == "hmac":
            if not (self.header or "").strip():
                raise ValueError("provider hmac needs 'header' (the signature header's name)")
        else:
            given = [k for k in _HMAC_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f"key(s) {given} apply to provider hmac only, not {self.provider}")
        return self

    @property
    def hmac_options(self) -> HmacOptions | None:
        if self.provider != "hmac" or not self.header:
            return None
        return HmacOptions(self.header, self.algorithm, self.encoding, self.prefix)


class WebhooksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    webhooks: tuple[WebhookSource, ...] = ()

    @field_validator("webhooks", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @model_validator(mode="after")
    def _unique_names(self) -> WebhooksConfig:
        names = [w.name for w in self.webhooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique; repeated: {dupes}")
        return self

    def source(self, name: str) -> WebhookSource:
        for w in self.webhooks:
            if w.name == name:
                return w
        raise KeyError(f"no webhook source named {name!r}")


def _allowed_keys(loc: tuple) -> list[str]:
    return list(WebhookSource.model_fields) if len(loc) == 3 else list(WebhooksConfig.model_fields)


def _entry_name(data: Any) -> Callable[[tuple], str | None]:
    """The ``name`` of the entry an error is in: "webhooks[1] (stripe)" reads better than an index."""

    def name(loc: tuple) -> str | None:
        try:
            return data["webhooks"][loc[1]].get("name") if loc[0] == "webhooks" else None
        except (KeyError, IndexError, TypeError, AttributeError):
            return None

    return name


def parse_webhooks(data: Any, origin: str = "<webhooks>") -> WebhooksConfig:
    """Validate already-loaded YAML data."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebhookConfigError(f"webhooks file {origin}: expected a mapping with a 'webhooks' list, got {type(data).__name__}")
    try:
        return WebhooksConfig.model_validate(data)
    except ValidationError as exc:
        raise WebhookConfigError(f"webhooks file {origin} is invalid: {format_validation_errors(exc, allowed_keys=_allowed_keys, label=_entry_name(data))}") from None


def load_webhooks(path: str | Path) -> WebhooksConfig:
    """Read and validate a webhooks YAML file; any problem is a one-line :class:`WebhookConfigError`."""
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebhookConfigError(f"webhooks file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WebhookConfigError(f"webhooks file {path} cannot be read: {' '.join(str(exc).split())}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebhookConfigError(f"webhooks file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_webhooks(data, origin=str(path))


def webhooks_path(explicit: str | Path | None = None) -> Path | None:
    """``explicit``, else ``$KINGTAVO_WEBHOOKS_FILE``, else None (the service runs with no sources)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    override = os.environ.get(WEBHOOKS_FILE_ENV, "").strip()
    return Path(override).expanduser().absolute() if override else None


def source_secrets(source: WebhookSource, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secrets of ``source`` from the environment: every named variable that is set, in order.

    Raises :class:`WebhookConfigError` when none is set, or when a Standard Webhooks secret is not
    ``whsec_<base64>`` (the message names variables, never values).
    """
    environ = os.environ if environ is None else environ
    found = [(name, environ[name].strip()) for name in source.secrets_env if environ.get(name, "").strip()]
    if not found:
        raise WebhookConfigError(
            f"webhook {source.name!r}: none of the environment variables {', '.join(source.secrets_env)} is set "
            "(secrets_env names the variables holding its secret)"
        )
    if source.provider == "standard":
        for name, value in found:
            try:
                standard_secret_bytes(value)
            except ValueError as exc:
                raise WebhookConfigError(f"webhook {source.name!r}: {name}: {exc}") from None
    return tuple(value for _, value in found)
