"""The resources every step gets: the two stores and the IO managers built on them.

Store URLs reach resources as ``dg.EnvVar`` references, never as plain strings, so a credential
shows neither in run config nor in the Dagster UI (which displays the variable's name). The IO
managers depend on the store resources, so each URL is configured once.
"""

import dagster as dg

from kingtavo_pipeline.io_managers.clickhouse import ClickHouseIOManager
from kingtavo_pipeline.io_managers.postgres import PostgresIOManager
from kingtavo_pipeline.resources import (
    CLICKHOUSE_DATABASE_ENV,
    CLICKHOUSE_URL_ENV,
    POSTGRES_URL_ENV,
    ClickHouseResource,
    PostgresResource,
    env_or_default,
)

__all__ = ["ClickHouseResource", "PostgresResource", "defs"]


def _set(**values: dg.EnvVar | None) -> dict[str, dg.EnvVar]:
    return {k: v for k, v in values.items() if v is not None}


def defs() -> dg.Definitions:
    postgres = PostgresResource(**_set(postgres_url=env_or_default(POSTGRES_URL_ENV)))
    clickhouse = ClickHouseResource(
        **_set(clickhouse_url=env_or_default(CLICKHOUSE_URL_ENV), database=env_or_default(CLICKHOUSE_DATABASE_ENV))
    )
    return dg.Definitions(
        resources={
            "postgres": postgres,
            "clickhouse": clickhouse,
            "postgres_io_manager": PostgresIOManager(postgres=postgres),
            "clickhouse_io_manager": ClickHouseIOManager(clickhouse=clickhouse),
        }
    )
