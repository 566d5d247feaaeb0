"""``kingtavo``: the project's command line (demo run, migrations)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from kingtavo_pipeline.settings import Settings, SettingsError, settings_error_message
from kingtavo_pipeline.storage.errors import StoreUnavailableError, redact_url

SAMPLE_FIRST_DAY = "2024-11-01"
SAMPLE_LAST_DAY = "2024-11-03"
# The repo's dagster.yaml in a checkout; a wheel carries a copy inside the package.
_PACKAGED_DAGSTER_YAML = Path(__file__).resolve().parent / "dagster.yaml"
REPO_DAGSTER_YAML = (
    _PACKAGED_DAGSTER_YAML if _PACKAGED_DAGSTER_YAML.exists() else Path(__file__).resolve().parents[1] / "dagster.yaml"
)


def _known_errors() -> tuple[type[Exception], ...]:
    """Problems the user fixes in configuration or the environment: one line, no traceback."""
    from kingtavo_pipeline.serving import AddressInUseError
    from kingtavo_pipeline.sources.config import SourceConfigError  # pandas: not at CLI start
    from kingtavo_pipeline.webhooks.config import WebhookConfigError

    return (StoreUnavailableError, SourceConfigError, SettingsError, ValidationError, WebhookConfigError,
            AddressInUseError)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        if exc.title == Settings.__name__:
            text = settings_error_message(exc)
        else:
            text = f"invalid {exc.title}: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
    else:
        text = str(exc)
    return redact_url(" ".join(text.split()))


class _KnownErrorsGroup(click.Group):
    """Every command, including subgroups': known errors become ``Error: <one line>``, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, _known_errors()):
                raise click.ClickException(_one_line(exc)) from None
            raise


@click.group(cls=_KnownErrorsGroup)
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


def _iso_day(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A --start/--end value: an ISO date (YYYY-MM-DD) that is a daily partition."""
    import datetime as dt

    from kingtavo_pipeline.defs.partitions import FIRST_DAY, daily_partitions

    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from None
    if day < dt.date.fromisoformat(FIRST_DAY):
        raise click.BadParameter(f"{day} is before the first daily partition, {FIRST_DAY}")
    last = daily_partitions.get_last_partition_key()
    if last is not None and day > dt.date.fromisoformat(last):
        raise click.BadParameter(f"{day} is after today, {last} (UTC)")
    return day.isoformat()


@main.command()
@click.option("--start", default=SAMPLE_FIRST_DAY, show_default=True, callback=_iso_day,
              help="First daily partition (UTC), YYYY-MM-DD.")
@click.option("--end", default=SAMPLE_LAST_DAY, show_default=True, callback=_iso_day,
              help="Last daily partition (UTC), inclusive, YYYY-MM-DD.")
def demo(start: str, end: str) -> None:
    """Materialize the whole asset graph for the sample days, post a few signed Salla webhooks to the
    ingress and apply them, then print a summary."""
    if start > end:
        raise click.BadParameter(f"--start {start} is after --end {end}", param_hint="'--start'/'--end'")
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
    from kingtavo_pipeline.run_health import RunSupervisor

    # The supervisor repairs runs left by dead processes, names who holds a slot a step waits for,
    # and stops the run cleanly on SIGTERM/SIGINT.
    with (
        dg.DagsterInstance.get() as instance,
        RunSupervisor(instance, store, by="kingtavo demo", echo=click.echo) as supervisor,
        contextlib.ExitStack() as sandbox_stack,
    ):
        result = job.execute_in_process(
            instance=instance,
            # Step-by-step debug events stay in the Dagster UI; the terminal gets warnings and the summary.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end,
                  **supervisor.tags},
            raise_on_error=False,
        )
        results = [result]
        box = None
        if result.success:
            api_results, box = _run_api_sources(instance, definitions, store, start, end, supervisor.tags,
                                                sandbox_stack)
            results += api_results
        # the raw steps land records of days outside the range too; run those days as the sensor would
        if all(r.success for r in results):
            results += _run_late_ranges(instance, definitions, store)
        webhooks_report: list[str] = []
        if box is not None and all(r.success for r in results):
            webhook_results, webhooks_report = _run_webhooks(box, instance, definitions, store, start, end,
                                                             supervisor.tags)
            results += webhook_results
        checks = [
            (e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name,
             # a failed WARN check is reported, not a failed demo (e.g. Printavo orders whose customer
             # is outside the demo's days)
             "PASS" if e.passed else "WARN" if e.severity == dg.AssetCheckSeverity.WARN else "FAIL",
             e.partition)
            for r in results
            for e in r.get_asset_check_evaluations()
        ]
    _print_summary(settings, store, start, end, checks)
    for line in webhooks_report:
        click.echo(line)
    for r in results:
        click.echo(f"\nRun {r.run_id} ({r.job_def.name}): {'SUCCESS' if r.success else 'FAILURE'}")
    click.echo(
        "Open the Dagster UI on this data:\n"
        f"  DAGSTER_HOME={dagster_home} KINGTAVO_HOME={settings.home_path} {_dagster_command()} dev\n"
        "  then browse http://127.0.0.1:3000 (Assets, Runs, Checks)."
    )
    if not all(r.success for r in results) or any(verdict == "FAIL" for _, _, verdict, _ in checks):
        sys.exit(1)


def _print_entities(store, settings: Settings) -> None:
    """Orders, lines, customers and products per API source, in core and in the warehouse."""
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse

    rows = store.fetch_all(
        "SELECT source_type, source_name, "
        "(SELECT count(*) FROM orders o WHERE o.source_type = s.source_type AND o.source_name = s.source_name), "
        "(SELECT count(*) FROM order_lines l WHERE l.source_type = s.source_type AND l.source_name = s.source_name), "
        "(SELECT count(*) FROM customers c WHERE c.source_type = s.source_type AND c.source_name = s.source_name), "
        "(SELECT count(*) FROM products p WHERE p.source_type = s.source_type AND p.source_name = s.source_name) "
        "FROM (SELECT source_type, source_name FROM orders UNION SELECT source_type, source_name FROM customers "
        "      UNION SELECT source_type, source_name FROM products) s ORDER BY 1, 2")
    if not rows:
        return
    click.echo("API sources in core (orders, order lines, customers, products):")
    for source_type, name, orders, lines, customers, products in rows:
        click.echo(f"  {source_type + '/' + name:<20} {orders:>7} {lines:>7} {customers:>7} {products:>7}")
    with open_clickhouse(settings) as client:
        fact = client.query("SELECT count(), uniqExact(source_type, source_name, merchant_id, order_source_id) "
                            "FROM orders_fact FINAL").result_rows[0]
    click.echo(f"ClickHouse orders_fact: {fact[0]} line rows of {fact[1]} orders")


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
    """Last run of every asset, source high-water marks and open dead letters; first marks failed the
    runs and etl_runs rows whose process on this host is gone."""
    from kingtavo_pipeline.storage.postgres import get_store

    try:
        store = get_store(Settings())
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    from kingtavo_pipeline.run_health import repair_local

    # runs and etl_runs rows left 'running' by a process that is gone: closed before reporting
    repaired = repair_local(store, Settings(), by="kingtavo status")
    click.echo("Repaired (process gone, marked failed):" + ("" if repaired else " none"))
    for line in repaired:
        click.echo(f"  {line}")
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
        "FROM etl_checkpoints WHERE source_type <> 'core' ORDER BY 1, 2"
    )
    click.echo("Source high-water marks (last record time, last success, records):" + ("" if marks else " none"))
    for source_type, name, value, success, total in marks:
        when = success.strftime("%Y-%m-%d %H:%M:%SZ") if success else "-"
        click.echo(f"  {source_type}/{name:<22} {value or '-':<27} {when:<21} {total}")
    from kingtavo_pipeline.storage.bookkeeping import unprocessed_partitions

    with store.transaction() as conn:
        waiting = [(day, n) for day, n, *_ in unprocessed_partitions(conn)]
    click.echo("Landed records waiting for core (late-records sensor, or a run of their day):" + ("" if waiting else " none"))
    for day, n in waiting:
        click.echo(f"  {day}  {n}")
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
    _print_entities(store, settings)
    _print_dead_letters(store)
    click.echo("Asset checks:" + ("" if checks else " none ran"))
    for line in check_lines(checks):
        click.echo(line)


def check_lines(checks) -> list[str]:
    """One line per check, its partitions' verdicts folded together: the worst verdict first, then
    how many partitions it covers and which ones did not pass."""
    by_check: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for asset, name, verdict, partition in checks:
        by_check.setdefault((asset, name), []).append((verdict, partition))
    lines = []
    for (asset, name), found in by_check.items():
        verdicts = {v for v, _ in found}
        worst = "FAIL" if "FAIL" in verdicts else "WARN" if "WARN" in verdicts else "PASS"
        partitions = sorted({str(p) for _, p in found if p is not None})
        detail = f" ({len(partitions)} partition{'s' if len(partitions) != 1 else ''})" if partitions else ""
        failing = sorted({str(p) for v, p in found if v != "PASS" and p is not None})
        if failing:
            shown = ", ".join(failing[:5]) + (f" and {len(failing) - 5} more" if len(failing) > 5 else "")
            detail += f": not passed on {shown}"
        lines.append(f"  {worst}  {asset} {name}{detail}")
    return lines


# --- API sources in the demo: the sandbox stands in for Printavo and Salla -------------------------

SANDBOX_ADDRESS = ("127.0.0.1", 8765)


def _sandbox_sources(sources) -> list:
    """API sources pointed at the sandbox's default address (the packaged sources file's)."""
    host, port = SANDBOX_ADDRESS
    return [s for s in sources.api() if s.base_url.startswith(f"http://{host}:{port}/")]


def _run_api_sources(instance, definitions, store, start: str, end: str, tags: dict,
                     stack: contextlib.ExitStack) -> tuple[list, object]:
    """Start the sandbox when API sources point at it (it runs until ``stack`` closes), then pull
    them for the days: Printavo (and other daily API sources) in one range run with core and the
    warehouse, Salla per merchant and day. Returns the run results and the sandbox (None when no
    source points at it)."""
    import datetime as dt

    import dagster as dg

    from kingtavo_pipeline.defs.ingest.assets import SOURCES

    if not SOURCES.api():
        return [], None
    from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig

    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    sandboxed = _sandbox_sources(SOURCES)
    results = []
    box = None
    if sandboxed:
        box = Sandbox(SandboxConfig(today=last, days=(last - first).days + 8, salla_merchants=2,
                                    salla_requests_per_minute=6000, printavo_requests=1000))
        host, port = SANDBOX_ADDRESS
        base = stack.enter_context(box.running(host, port))
        click.echo(f"Sandbox Printavo and Salla APIs at {base} (seeded; `kingtavo sandbox` runs it alone)")
        _sandbox_credentials(box, store, instance, [s for s in sandboxed if s.source_type == "salla"])
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    names = {j.name for j in definitions.resolve_all_job_defs()}
    if "api_sources_job" in names:
        click.echo(f"Running api_sources_job over partitions {start}..{end} ...")
        results.append(definitions.resolve_job_def("api_sources_job").execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end,
                  **tags}))
    if "salla_job" in names:
        from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS

        merchants = instance.get_dynamic_partitions(SALLA_MERCHANTS.name)
        click.echo(f"Running salla_job for merchants {', '.join(merchants)} over {start}..{end} ...")
        job = definitions.resolve_job_def("salla_job")
        day = first
        while day <= last:
            for merchant in merchants:
                key = dg.MultiPartitionKey({"date": day.isoformat(), "merchant": merchant})
                results.append(job.execute_in_process(instance=instance, run_config=run_config,
                                                      partition_key=key, raise_on_error=False, tags=tags))
            day += dt.timedelta(days=1)
    return results, box


def _sandbox_credentials(box, store, instance, salla_sources) -> None:
    """The sandbox's credentials where the sources file expects them: env vars, and Salla's token
    pairs in source_credentials (encrypted) for its merchants, registered as partitions."""
    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS
    from kingtavo_pipeline.defs.ingest.assets import SOURCES
    from kingtavo_pipeline.storage.credentials import save_credentials

    creds = box.credentials
    for source in SOURCES.printavo:
        os.environ.setdefault(source.email_env, creds.printavo_email)
        os.environ.setdefault(source.token_env, creds.printavo_token)
    merchants = []
    for source in salla_sources:
        os.environ.setdefault(source.client_id_env, creds.salla_client_id)
        os.environ.setdefault(source.client_secret_env, creds.salla_client_secret)
        for merchant in creds.salla_merchants:
            if source.merchants and merchant.merchant_id not in source.merchants:
                continue
            save_credentials(store, "salla", source.name, merchant.merchant_id, merchant.access_token,
                             merchant.refresh_token, 14 * 24 * 3600)
            merchants.append(merchant.merchant_id)
    if merchants:
        instance.add_dynamic_partitions(SALLA_MERCHANTS.name, sorted(set(merchants)))


# --- webhooks in the demo: signed sandbox Salla events through the ingress ----------------------

DEMO_WEBHOOK_SECRET_ENV = "KINGTAVO_DEMO_SALLA_WEBHOOK_SECRET"
DEMO_WEBHOOK_STATUSES = ("shipped", "canceled", "delivered", "completed")

# Salla orders of the demo days whose customer is in core (core's blocking check wants one)
_DEMO_ORDERS = """
SELECT o.merchant_id, o.source_id, o.raw_status FROM orders o
WHERE o.source_type = 'salla' AND o.partition_date BETWEEN %s AND %s
  AND EXISTS (SELECT 1 FROM customers c WHERE c.source_type = o.source_type AND c.source_name = o.source_name
              AND c.merchant_id = o.merchant_id AND c.source_id = o.customer_source_id)
ORDER BY o.ordered_at, o.source_id LIMIT %s
"""


def _run_webhooks(box, instance, definitions, store, start: str, end: str, tags: dict,
                  orders: int = 3) -> tuple[list, list[str]]:
    """Start the ingress in process (ephemeral port) with a ``salla`` source, post signed
    ``order.updated`` webhooks of a few pulled orders (status changes, from the sandbox, plus one
    redelivery), apply them through ``webhook_events_job`` as the sensor would, and report what
    they changed. Returns the run results and the report lines."""
    import httpx

    from kingtavo_pipeline.defs.webhooks.runs import apply_pending_now
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse
    from kingtavo_pipeline.webhooks.app import create_app, serving
    from kingtavo_pipeline.webhooks.config import parse_webhooks

    picked = store.fetch_all(_DEMO_ORDERS, (start, end, orders))
    if not picked:
        return [], []
    config = parse_webhooks({"webhooks": [{"name": "salla", "provider": "salla",
                                           "secrets_env": DEMO_WEBHOOK_SECRET_ENV}]})
    app = create_app(config, store.url, environ={DEMO_WEBHOOK_SECRET_ENV: box.config.salla_webhook_secret})
    first_event = store.fetch_value("SELECT coalesce(max(id), 0) FROM webhook_events")
    answers: dict[str, int] = {}
    changes = []
    with serving(app) as base:
        url = f"{base}/webhooks/salla"
        click.echo(f"Posting {len(picked) + 1} signed Salla webhooks to the ingress at {url} ...")
        deliveries = []
        for n, (merchant, order_id, before) in enumerate(picked):
            status = next(s for s in DEMO_WEBHOOK_STATUSES[n % len(DEMO_WEBHOOK_STATUSES):] + DEMO_WEBHOOK_STATUSES
                          if s != before)
            box.advance(seconds=60)  # each update a minute after the last: newer than what was pulled
            deliveries.append(box.salla_order_webhook(merchant, order_id, status=status))
            changes.append((merchant, order_id, before))
        deliveries.append(deliveries[-1])  # Salla retries a delivery: stored once
        with httpx.Client(timeout=10) as client:
            for body, headers in deliveries:
                response = client.post(url, content=body, headers=headers)
                answer = response.json().get("status", str(response.status_code)) if response.is_success \
                    else f"HTTP {response.status_code}"
                answers[answer] = answers.get(answer, 0) + 1
    results = apply_pending_now(definitions, instance, store, tags=tags,
                                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    states = dict(store.fetch_all("SELECT status, count(*) FROM webhook_events WHERE id > %s GROUP BY 1",
                                  (first_event,)))
    lines = [
        f"\nWebhooks: {len(deliveries)} signed Salla deliveries posted to the ingress: "
        + ", ".join(f"{n} {a}" for a, n in sorted(answers.items())),
        f"  webhook_events: {states.get('applied', 0)} applied, {states.get('failed', 0)} failed, "
        f"{states.get('ignored', 0)} ignored, {states.get('pending', 0)} pending "
        f"(webhook_events_job: {len(results)} run(s))",
        "  Orders the events changed (core status before -> after; ClickHouse orders_fact):",
    ]
    with open_clickhouse(Settings()) as client:
        for merchant, order_id, before in changes:
            [after] = store.fetch_all(
                "SELECT status, raw_status FROM orders WHERE source_type = 'salla' AND merchant_id = %s "
                "AND source_id = %s", (merchant, order_id)) or [(None, None)]
            fact = client.query(
                "SELECT any(status), count() FROM orders_fact FINAL WHERE source_type = 'salla' "
                "AND merchant_id = {m:String} AND order_source_id = {o:String}",
                parameters={"m": merchant, "o": order_id}).result_rows[0]
            lines.append(f"    salla/{merchant} order {order_id}: {before} -> {after[1]} ({after[0]}); "
                         f"orders_fact: {fact[0]} ({fact[1]} line rows)")
    return results, lines


# --- late records and dead letters -------------------------------------------------------------


def _run_late_ranges(instance, definitions, store) -> list:
    """Run ``late_records_job`` in process for every day holding records no core run has taken yet
    (what the late-records sensor does in a deployment). Returns the run results."""
    from kingtavo_pipeline.defs.core.sensors import plan, range_tags
    from kingtavo_pipeline.run_health import process_tags

    ranges, _, held = plan(store, 0, None)
    job = definitions.resolve_job_def("late_records_job")
    results = []
    for late in ranges:
        click.echo(f"Late records: {late.records} record(s) for {late.start}..{late.end}; running core and warehouse for them")
        results.append(
            job.execute_in_process(
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                # the process tags let a later `kingtavo status`/`demo` repair the run if this process dies
                tags={**range_tags(late.start.isoformat(), late.end.isoformat()), **process_tags()},
                raise_on_error=False,
            )
        )
    for reason in held:
        click.echo(f"Late records held back: {reason}")
    return results


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--webhooks-file", type=click.Path(dir_okay=False),
              help="Webhook sources YAML (default: $KINGTAVO_WEBHOOKS_FILE; unset: no sources).")
def serve(host: str, port: int, webhooks_file: str | None) -> None:
    """Run the HTTP service: webhook ingress (POST /webhooks/<name>), /health and /metrics."""
    from kingtavo_pipeline.webhooks import serve as serve_webhooks

    serve_webhooks(host, port, webhooks_file)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the generated data.")
def sandbox(host: str, port: int, seed: int) -> None:
    """Run the simulated Printavo and Salla APIs (seeded data, fault switches, ground truth)."""
    from kingtavo_pipeline.sandbox import SandboxConfig
    from kingtavo_pipeline.sandbox import serve as serve_sandbox

    serve_sandbox(host, port, SandboxConfig(seed=seed))


@main.group()
def credentials() -> None:
    """OAuth tokens of API sources (stored encrypted in source_credentials)."""


@credentials.command("set")
@click.argument("source_name")
@click.argument("account_id")
@click.option("--access-token-env", default="SALLA_ACCESS_TOKEN", show_default=True,
              help="Variable holding the access token (never pass tokens as arguments).")
@click.option("--refresh-token-env", default="SALLA_REFRESH_TOKEN", show_default=True)
@click.option("--expires-in", default=14 * 24 * 3600, show_default=True, type=int, help="Access token lifetime, seconds.")
def credentials_set(source_name: str, account_id: str, access_token_env: str, refresh_token_env: str,
                    expires_in: int) -> None:
    """Store a Salla merchant's token pair (from the app's installation) encrypted at rest."""
    from kingtavo_pipeline.storage.credentials import save_credentials
    from kingtavo_pipeline.storage.postgres import get_store

    tokens = {}
    for name in (access_token_env, refresh_token_env):
        tokens[name] = os.environ.get(name, "").strip()
        if not tokens[name]:
            raise click.ClickException(f"set the environment variable {name}")
    save_credentials(get_store(Settings()), "salla", source_name, account_id, tokens[access_token_env],
                     tokens[refresh_token_env], expires_in)
    click.echo(f"stored the token pair of merchant {account_id} for source {source_name} (encrypted)")


@credentials.command("list")
def credentials_list() -> None:
    """Stored credentials: source, account, status and expiry (never the tokens)."""
    from kingtavo_pipeline.storage.credentials import list_credentials
    from kingtavo_pipeline.storage.postgres import get_store

    for row in list_credentials(get_store(Settings())):
        click.echo("  ".join(f"{k}={v}" for k, v in row.items()))


@main.group()
def merchants() -> None:
    """Salla merchants: each is a dynamic partition of the raw/salla assets."""


@merchants.command("add")
@click.argument("merchant_ids", nargs=-1, required=True)
def merchants_add(merchant_ids: tuple[str, ...]) -> None:
    """Register merchants (their day x merchant partitions appear in the UI; backfill them there)."""
    import dagster as dg

    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS

    _prepare_dagster_home(Settings())
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(SALLA_MERCHANTS.name, list(merchant_ids))
        known = instance.get_dynamic_partitions(SALLA_MERCHANTS.name)
    click.echo(f"Salla merchants: {', '.join(known)}")


DEAD_LETTER_STAGES = ["extract", "map", "webhook"]


@main.group("dead-letters")
def dead_letters() -> None:
    """Records that could not be landed or mapped: list, retry and resolve them."""


def _dead_letter_store():
    from kingtavo_pipeline.storage.postgres import get_store

    try:
        return get_store(Settings())
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc


@dead_letters.command("list")
@click.option("--status", type=click.Choice(["open", "retrying", "resolved", "ignored", "all"]), default="open",
              show_default=True)
@click.option("--source", help="Only this source (its name in the sources file).")
@click.option("--stage", type=click.Choice(DEAD_LETTER_STAGES), help="Only this stage.")
@click.option("--limit", type=int, default=50, show_default=True)
def dead_letters_list(status: str, source: str | None, stage: str | None, limit: int) -> None:
    """List dead letters, newest first."""
    from kingtavo_pipeline.storage.bookkeeping import list_dead_letters

    store = _dead_letter_store()
    with store.transaction() as conn:
        rows = list_dead_letters(conn, status=None if status == "all" else status, source=source, stage=stage,
                                 limit=limit)
    if not rows:
        click.echo("No dead letters match.")
        return
    click.echo(f"{'id':>6}  {'status':<9} {'stage':<8} {'source':<20} {'record':<16} {'error':<24} {'tries':>5}  message")
    for r in rows:
        click.echo(
            f"{r['id']:>6}  {r['status']:<9} {r['stage']:<8} {r['source_name']:<20} {str(r['source_id'])[:16]:<16} "
            f"{r['error_type']:<24} {r['attempts']:>5}  {r['error_message'][:100]}"
        )


@dead_letters.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_open", is_flag=True, help="Every open dead letter (narrow with --source/--stage).")
@click.option("--source", help="Only this source.")
@click.option("--stage", type=click.Choice(DEAD_LETTER_STAGES), help="Only this stage.")
@click.option("--run/--no-run", default=True, show_default=True,
              help="Run the pipeline for them now; --no-run leaves them for the next run or the late-records sensor.")
def dead_letters_retry(ids: tuple[int, ...], all_open: bool, source: str | None, stage: str | None, run: bool) -> None:
    """Try open dead letters again: map-stage records are mapped again from their stored observation,
    extract-stage records are read again from their source, webhook-stage events are applied again
    (back to pending, then webhook_events_job). Fixed records resolve; the rest reopen."""
    import dagster as dg

    from kingtavo_pipeline.run_health import process_tags
    from kingtavo_pipeline.storage.bookkeeping import list_dead_letters, mark_for_retry

    if not ids and not all_open:
        raise click.UsageError("name dead letter ids, or pass --all")
    store = _dead_letter_store()
    from kingtavo_pipeline.defs.webhooks.runs import requeue_dead_letter_events

    with store.transaction() as conn:
        marked = mark_for_retry(conn, ids=list(ids) or None, source=source, stage=stage)
        # a webhook-stage letter's event goes back to pending, in the same transaction
        events = requeue_dead_letter_events(conn, [m[0] for m in marked if m[1] == "webhook"])
    if not marked:
        click.echo("No open dead letters match.")
        return
    click.echo(f"{len(marked)} dead letter(s) marked for retry."
               + (f" {len(events)} webhook event(s) pending again." if events else ""))
    if not run:
        click.echo("They will be taken by the next run of their source (extract) or of core (map); webhook "
                   "events by a run of webhook_events_job (the webhook sensor's sweep of events behind its cursor).")
        return
    from kingtavo_pipeline.definitions import defs as load_definitions

    definitions = load_definitions()
    _prepare_dagster_home(Settings())
    with dg.DagsterInstance.get() as instance:
        extract_sources = sorted({(t, n) for _, stage_, t, n in marked if stage_ == "extract"})
        if extract_sources:
            from kingtavo_pipeline.defs.partitions import daily_partitions

            day = daily_partitions.get_last_partition_key()
            keys = [dg.AssetKey(["raw", t, n]) for t, n in extract_sources]
            click.echo(f"Reading {', '.join(k.to_user_string() for k in keys)} again (partition {day}) ...")
            job = definitions.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(keys))
            job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False, tags=process_tags(),
                                   run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        if events:
            from kingtavo_pipeline.defs.webhooks.runs import apply_pending_now

            click.echo(f"Applying {len(events)} webhook event(s) again (webhook_events_job) ...")
            apply_pending_now(definitions, instance, store, tags=process_tags(),
                              run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        _run_late_ranges(instance, definitions, store)
    with store.transaction() as conn:
        after = list_dead_letters(conn, ids=[m[0] for m in marked], status=None, limit=len(marked))
    by_status: dict[str, int] = {}
    for r in after:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    click.echo("After the retry: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))


@dead_letters.command("resolve")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_open", is_flag=True, help="Every open dead letter (narrow with --source/--stage).")
@click.option("--source", help="Only this source.")
@click.option("--stage", type=click.Choice(DEAD_LETTER_STAGES), help="Only this stage.")
@click.option("--ignore", is_flag=True, help="Mark them ignored (never to be loaded) rather than resolved.")
@click.option("--note", default="", help="Why, kept in the dead letter's resolution.")
def dead_letters_resolve(ids: tuple[int, ...], all_open: bool, source: str | None, stage: str | None,
                         ignore: bool, note: str) -> None:
    """Close dead letters by hand: resolved (dealt with elsewhere) or, with --ignore, ignored."""
    from kingtavo_pipeline.storage.bookkeeping import close_dead_letters

    if not ids and not all_open:
        raise click.UsageError("name dead letter ids, or pass --all")
    store = _dead_letter_store()
    with store.transaction() as conn:
        n = close_dead_letters(conn, ids=list(ids) or None, source=source, stage=stage,
                               status="ignored" if ignore else "resolved", note=note)
    click.echo(f"{n} dead letter(s) {'ignored' if ignore else 'resolved'}.")


if __name__ == "__main__":
    main()
