"""``kingtavo``: the project's command line (demo run, migrations)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.errors import StoreUnavailableError, redact_url

SAMPLE_FIRST_DAY = "2024-11-01"
SAMPLE_LAST_DAY = "2024-11-03"
# The repo's dagster.yaml in a checkout; a wheel carries a copy inside the package.
_PACKAGED_DAGSTER_YAML = Path(__file__).resolve().parent / "dagster.yaml"
REPO_DAGSTER_YAML = (
    _PACKAGED_DAGSTER_YAML if _PACKAGED_DAGSTER_YAML.exists() else Path(__file__).resolve().parents[1] / "dagster.yaml"
)


@click.group()
def main() -> None:
    """Kingtavo pipeline: sync commerce data into PostgreSQL and ClickHouse with Dagster."""


@main.group()
def db() -> None:
    """Operational store and warehouse schemas."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations in sql/postgres and sql/clickhouse (idempotent)."""
    from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
    from kingtavo_pipeline.storage.migrations import migrate_clickhouse, migrate_postgres
    from kingtavo_pipeline.storage.postgres import get_store

    settings = Settings()
    try:
        store = get_store(settings, migrate=False)
        applied = migrate_postgres(store)
        click.echo(f"PostgreSQL {redact_url(store.url)}: " + (", ".join(applied) or "up to date"))
        client = connect_clickhouse(settings.clickhouse_dsn, settings.clickhouse_database)
        try:
            applied = migrate_clickhouse(client)
        finally:
            client.close()
        click.echo(f"ClickHouse {redact_url(settings.clickhouse_dsn)}: " + (", ".join(applied) or "up to date"))
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc


def _prepare_dagster_home(settings: Settings) -> Path:
    """A persistent Dagster instance for demo runs, configured like the repo's dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = settings.home_path / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and REPO_DAGSTER_YAML.exists():
        shutil.copy(REPO_DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@main.command()
@click.option("--start", default=SAMPLE_FIRST_DAY, show_default=True, help="First daily partition (UTC).")
@click.option("--end", default=SAMPLE_LAST_DAY, show_default=True, help="Last daily partition (UTC), inclusive.")
def demo(start: str, end: str) -> None:
    """Materialize the whole asset graph for the sample days, then print a summary."""
    import dagster as dg

    from kingtavo_pipeline.definitions import defs as load_definitions
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse
    from kingtavo_pipeline.storage.postgres import get_store

    settings = Settings()
    settings.home_path.mkdir(parents=True, exist_ok=True)
    dagster_home = _prepare_dagster_home(settings)
    click.echo(f"KINGTAVO_HOME={settings.home_path}")
    try:
        # Opening the store here keeps an embedded server up for every step of the run.
        store = get_store(settings)
        click.echo(f"PostgreSQL: {redact_url(store.url)}")
        with open_clickhouse(settings):
            pass
        click.echo(f"ClickHouse: {redact_url(settings.clickhouse_dsn)} (database {settings.clickhouse_database})")
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc

    definitions = load_definitions()
    job = definitions.resolve_job_def("unified_items_job")
    click.echo(f"Running unified_items_job over partitions {start}..{end} (Dagster home {dagster_home}) ...")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            # Step-by-step debug events stay in the Dagster UI; the terminal gets warnings and the summary.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
            raise_on_error=False,
        )
        checks = [
            (e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name, e.passed)
            for e in result.get_asset_check_evaluations()
        ]
    _print_summary(settings, store, start, end, checks)
    click.echo(f"\nRun {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    click.echo(
        "Open the Dagster UI on this data:\n"
        f"  DAGSTER_HOME={dagster_home} KINGTAVO_HOME={settings.home_path} {_dagster_command()} dev\n"
        "  then browse http://127.0.0.1:3000 (Assets, Runs, Checks)."
    )
    if not result.success or not all(passed for *_, passed in checks):
        sys.exit(1)


def _print_dead_letters(store) -> None:
    dead = store.fetch_all(
        "SELECT stage, source_name, error_type, count(*), sum(attempts) FROM dead_letters WHERE status = 'open' "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    click.echo("Open dead letters (stage, source, error, records, attempts):" + ("" if dead else " none"))
    for stage, source, error_type, count, attempts in dead:
        click.echo(f"  {stage:<8} {source:<20} {error_type:<24} {count:>6} {attempts:>8}")


@main.command()
def status() -> None:
    """Last run of every asset, source high-water marks and open dead letters (PostgreSQL only)."""
    from kingtavo_pipeline.storage.postgres import get_store

    try:
        store = get_store(Settings())
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    runs = store.fetch_all(
        """SELECT DISTINCT ON (asset_key) asset_key, partition_key, status, finished_at, records_extracted,
                  records_loaded, records_failed, error_message
           FROM etl_runs ORDER BY asset_key, started_at DESC"""
    )
    click.echo("Last run per asset (partition, status, finished, extracted/loaded/failed):" + ("" if runs else " none"))
    for asset, partition, state, finished, extracted, loaded, failed, error in runs:
        when = finished.strftime("%Y-%m-%d %H:%M:%SZ") if finished else "-"
        click.echo(f"  {asset:<26} {partition or '-':<24} {state:<8} {when:<21} {extracted}/{loaded}/{failed}")
        if error:
            click.echo(f"      error: {error[:200]}")
    marks = store.fetch_all(
        "SELECT source_type, source_name, checkpoint_value, last_success_at, total_records_processed "
        "FROM etl_checkpoints ORDER BY 1, 2"
    )
    click.echo("Source high-water marks (last record time, last success, records):" + ("" if marks else " none"))
    for source_type, name, value, success, total in marks:
        when = success.strftime("%Y-%m-%d %H:%M:%SZ") if success else "-"
        click.echo(f"  {source_type}/{name:<22} {value or '-':<27} {when:<21} {total}")
    _print_dead_letters(store)


def _dagster_command() -> str:
    """``dagster`` beside this interpreter, so the hint works without an activated venv."""
    candidate = Path(sys.executable).parent / "dagster"
    return str(candidate) if candidate.exists() else "dagster"


def _print_summary(settings: Settings, store, start: str, end: str, checks) -> None:
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse

    click.echo("\nRows in PostgreSQL:")
    for table in ("raw_data", "unified_items", "dead_letters", "etl_runs"):
        click.echo(f"  {table:<16} {store.fetch_value(f'SELECT count(*) FROM {table}'):>8}")
    with open_clickhouse(settings) as client:
        rows = client.query("SELECT count() FROM unified_items FINAL").result_rows[0][0]
        per_day = client.query(
            "SELECT partition_date, count() FROM unified_items FINAL GROUP BY partition_date ORDER BY partition_date"
        ).result_rows
    click.echo("Rows in ClickHouse:")
    click.echo(f"  {'unified_items':<16} {rows:>8}   " + ", ".join(f"{d}: {n}" for d, n in per_day))
    _print_dead_letters(store)
    click.echo("Asset checks:" + ("" if checks else " none ran"))
    for asset, name, passed in checks:
        click.echo(f"  {'PASS' if passed else 'FAIL'}  {asset} {name}")


if __name__ == "__main__":
    main()
