"""The one settings object, read from ``KINGTAVO_*`` environment variables.

Nothing here connects to anything: resolving the embedded PostgreSQL URL or the chDB path happens
in :mod:`kingtavo_pipeline.storage` when a step first needs a store.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CLICKHOUSE_DATABASE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def check_clickhouse_database(name: str) -> str:
    """The one check of a ClickHouse database name (it is spliced into DDL as an identifier)."""
    if not isinstance(name, str) or not re.fullmatch(CLICKHOUSE_DATABASE_PATTERN, name):
        raise ValueError(
            f"invalid ClickHouse database name {name!r}: use letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    return name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KINGTAVO_", extra="ignore")

    home: Path = Field(
        default=Path(".kingtavo"),
        description="Where embedded stores and local archives live (relative to the working directory).",
    )
    # repr=False: a printed Settings must not show a password
    postgres_url: str | None = Field(
        default=None,
        repr=False,
        description="postgresql:// URL of the operational store; unset starts an embedded server under $KINGTAVO_HOME/postgres.",
    )
    clickhouse_url: str | None = Field(
        default=None,
        repr=False,
        description="http(s):// URL of a ClickHouse server, or chdb:///path; unset uses chDB under $KINGTAVO_HOME/clickhouse.",
    )
    clickhouse_database: str = Field(default="kingtavo", description="ClickHouse database for warehouse tables.")
    sources_file: Path | None = Field(
        default=None, description="YAML file naming the CSV and RSS/Atom sources; unset uses the packaged samples."
    )

    @field_validator("clickhouse_database")
    @classmethod
    def _check_clickhouse_database(cls, value: str) -> str:
        return check_clickhouse_database(value)

    @cached_property
    def home_path(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def embedded_postgres(self) -> bool:
        return not self.postgres_url

    @property
    def postgres_data_dir(self) -> Path:
        return self.home_path / "postgres"

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse_url or f"chdb://{self.home_path / 'clickhouse'}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")


class SettingsError(ValueError):
    """A ``KINGTAVO_*`` variable holds an unusable value; the message is one line naming it."""


def settings_error_message(exc: ValidationError) -> str:
    """One line naming each bad ``KINGTAVO_*`` variable and what is wrong with it."""
    prefix = Settings.model_config.get("env_prefix", "")
    parts = []
    for err in exc.errors():
        name = (prefix + ".".join(str(p) for p in err["loc"])).upper() if err["loc"] else "settings"
        parts.append(f"{name}: {' '.join(str(err['msg']).removeprefix('Value error, ').split())}")
    return "invalid setting " + "; ".join(parts)


def get_settings() -> Settings:
    """A fresh read of the environment (cheap; tests change the environment between calls).

    A bad value raises :class:`SettingsError` (one line) rather than pydantic's report.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(settings_error_message(exc)) from None
