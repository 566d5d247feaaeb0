"""Resources: thin handles on the storage layer, configured from the one settings object."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from clickhouse_connect.driver.client import Client

from kingtavo_pipeline.io_managers.clickhouse import ClickHouseIOManager
from kingtavo_pipeline.io_managers.postgres import PostgresIOManager
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import open_clickhouse
from kingtavo_pipeline.storage.postgres import PostgresStore, get_store


class PostgresResource(dg.ConfigurableResource):
    """The operational store. ``postgres_url`` overrides ``KINGTAVO_POSTGRES_URL``; unset and no
    env var means the embedded server under ``$KINGTAVO_HOME/postgres``."""

    postgres_url: str | None = None

    def settings(self) -> Settings:
        settings = Settings()
        return settings.model_copy(update={"postgres_url": self.postgres_url}) if self.postgres_url else settings

    def store(self) -> PostgresStore:
        return get_store(self.settings())


class ClickHouseResource(dg.ConfigurableResource):
    """The warehouse. Open it late and briefly: ``with clickhouse.open() as client: ...``."""

    clickhouse_url: str | None = None
    database: str | None = None

    def settings(self) -> Settings:
        update = {k: v for k, v in {"clickhouse_url": self.clickhouse_url, "clickhouse_database": self.database}.items() if v}
        return Settings().model_copy(update=update)

    @contextmanager
    def open(self) -> Iterator[Client]:
        with open_clickhouse(self.settings()) as client:
            yield client


def defs() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "postgres": PostgresResource(),
            "clickhouse": ClickHouseResource(),
            "postgres_io_manager": PostgresIOManager(),
            "clickhouse_io_manager": ClickHouseIOManager(),
        }
    )
