"""The resources every step gets: the two stores and the IO managers built on them; and the
executor every job runs its steps with.

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

__all__ = ["EXECUTOR", "ClickHouseResource", "PostgresResource", "defs"]

# Every step runs in a process of its own (a step's memory is returned when it ends, and one step's
# crash cannot take the run down), forked from a server that has imported the code location once:
# a spawned step paid 2-3 s of imports (dagster, pandas, pyarrow, psycopg, this package) before it
# did anything, on every step of every run. The forkserver opens no connection and starts no
# thread of ours (importing the definitions opens nothing), so forking from it is safe.
PRELOAD = ["kingtavo_pipeline.definitions"]


def _forkserver_by_default(config: dict) -> dict:
    multiprocess = config.get("multiprocess")
    if multiprocess is not None and not multiprocess.get("start_method"):
        return {"multiprocess": {**multiprocess, "start_method": {"forkserver": {"preload_modules": PRELOAD}}}}
    return config


# Dagster's default executor with the same run config (``execution: config: in_process: {}`` or
# ``multiprocess: {max_concurrent: ..., start_method: ...}``); only the default start method differs.
EXECUTOR = dg.multi_or_in_process_executor.configured(
    _forkserver_by_default,
    name="multi_or_in_process_executor",
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
)


def _set(**values: dg.EnvVar | None) -> dict[str, dg.EnvVar]:
    return {k: v for k, v in values.items() if v is not None}


def defs() -> dg.Definitions:
    postgres = PostgresResource(**_set(postgres_url=env_or_default(POSTGRES_URL_ENV)))
    clickhouse = ClickHouseResource(
        **_set(clickhouse_url=env_or_default(CLICKHOUSE_URL_ENV), database=env_or_default(CLICKHOUSE_DATABASE_ENV))
    )
    return dg.Definitions(
        executor=EXECUTOR,
        resources={
            "postgres": postgres,
            "clickhouse": clickhouse,
            "postgres_io_manager": PostgresIOManager(postgres=postgres),
            "clickhouse_io_manager": ClickHouseIOManager(clickhouse=clickhouse),
        }
    )
