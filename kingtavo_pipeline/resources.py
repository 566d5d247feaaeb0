"""Dagster resources for the two stores: thin handles on the storage layer.

Each store is configured once, here: the IO managers depend on these resources
(``dg.ResourceDependency``) instead of carrying their own URL fields, so a deployment sets each URL
once, as a ``dg.EnvVar``. An unset field falls back to :class:`Settings`, which reads the same
``KINGTAVO_*`` variables or picks the embedded stores.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field, field_validator

from kingtavo_pipeline.settings import Settings, check_clickhouse_database
from kingtavo_pipeline.storage.clickhouse import open_clickhouse
from kingtavo_pipeline.storage.postgres import PostgresStore, get_store

POSTGRES_URL_ENV = "KINGTAVO_POSTGRES_URL"
CLICKHOUSE_URL_ENV = "KINGTAVO_CLICKHOUSE_URL"
CLICKHOUSE_DATABASE_ENV = "KINGTAVO_CLICKHOUSE_DATABASE"


def env_or_default(name: str) -> dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set, else None (the field then uses Settings' default).

    Dagster fails a run whose config names an unset variable, even for an optional field, so the
    choice is made here, when the definitions load, in the environment the steps run in.
    """
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else None


def database_name(value: str | None) -> str | None:
    """Validator for a ``database`` config field: an ``EnvVar`` is checked once Dagster resolves it."""
    if value is None or isinstance(value, dg.EnvVar):
        return value
    return check_clickhouse_database(value)


class PostgresResource(dg.ConfigurableResource):
    """The operational store. ``postgres_url`` overrides ``KINGTAVO_POSTGRES_URL``; unset and no
    env var means the embedded server under ``$KINGTAVO_HOME/postgres``."""

    postgres_url: str | None = Field(
        default=None,
        description="postgresql:// URL; give it as dg.EnvVar(...) so no password shows in run config or the UI. "
        "Unset: KINGTAVO_POSTGRES_URL, else the embedded server.",
    )

    def settings(self) -> Settings:
        settings = Settings()
        return settings.model_copy(update={"postgres_url": self.postgres_url}) if self.postgres_url else settings

    def store(self) -> PostgresStore:
        return get_store(self.settings())


class ClickHouseResource(dg.ConfigurableResource):
    """The warehouse. Open it late and briefly: ``with clickhouse.open() as client: ...``."""

    clickhouse_url: str | None = Field(
        default=None,
        description="http(s):// URL or chdb:///path; give it as dg.EnvVar(...) so no password shows in run config "
        "or the UI. Unset: KINGTAVO_CLICKHOUSE_URL, else chDB under KINGTAVO_HOME.",
    )
    database: str | None = Field(
        default=None, description="Database for warehouse tables; unset: KINGTAVO_CLICKHOUSE_DATABASE."
    )

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str | None) -> str | None:
        return database_name(value)

    def settings(self) -> Settings:
        update = {k: v for k, v in {"clickhouse_url": self.clickhouse_url, "clickhouse_database": self.database}.items() if v}
        return Settings().model_copy(update=update)

    @contextmanager
    def open(self) -> Iterator[Client]:
        with open_clickhouse(self.settings()) as client:
            yield client
