"""The one settings object, read from ``KINGTAVO_*`` environment variables.

Nothing here connects to anything: resolving the embedded PostgreSQL URL or the chDB path happens
in :mod:`kingtavo_pipeline.storage` when a step first needs a store.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KINGTAVO_", extra="ignore")

    home: Path = Field(
        default=Path(".kingtavo"),
        description="Where embedded stores and local archives live (relative to the working directory).",
    )
    postgres_url: str | None = Field(
        default=None,
        description="postgresql:// URL of the operational store; unset starts an embedded server under $KINGTAVO_HOME/postgres.",
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="http(s):// URL of a ClickHouse server, or chdb:///path; unset uses chDB under $KINGTAVO_HOME/clickhouse.",
    )
    clickhouse_database: str = Field(default="kingtavo", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    sources_file: Path | None = Field(
        default=None, description="YAML file naming the CSV and RSS/Atom sources; unset uses the packaged samples."
    )

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


def get_settings() -> Settings:
    """A fresh read of the environment (cheap; tests change the environment between calls)."""
    return Settings()
