"""Which version wins, late records and the dead-letter life cycle, through real Dagster runs on
PostgreSQL and chDB. Each test reproduces a way data was silently lost or wrong before."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import dagster as dg
import pytest

import kingtavo_pipeline.defs.core.assets as core_assets
from kingtavo_pipeline.defs.core.checks import core_reflects_raw
from kingtavo_pipeline.defs.core.sensors import late_records_sensor, range_tags
from kingtavo_pipeline.defs.warehouse.assets import warehouse_unified_items
from kingtavo_pipeline.defs.warehouse.checks import row_count_matches_core
from kingtavo_pipeline.storage.bookkeeping import close_dead_letters, list_dead_letters, mark_for_retry
from kingtavo_pipeline_tests.pipeline_helpers import one_csv_source

pytestmark = pytest.mark.slow

HEADER = "id,day,name,amount,modified\n"


class Orders:
    """One CSV source ``orders`` in a temporary folder, synced layer by layer like the job does."""

    def __init__(self, tmp_path, monkeypatch, *, modified: bool = False):
        self.csv = tmp_path / "orders.csv"
        fields = "external_id: id, title: name, amount: amount" + (", updated_at: modified" if modified else "")
        self.raw, self.resources = one_csv_source(tmp_path, monkeypatch, fields)

    def write(self, *rows: str) -> None:
        self.csv.write_text(HEADER + "".join(r + "\n" for r in rows))

    def land(self, day: str) -> dg.ExecuteInProcessResult:
        result = dg.materialize([self.raw], partition_key=day, resources=self.resources)
        assert result.success
        return result

    def downstream(self, start: str, end: str | None = None) -> dg.ExecuteInProcessResult:
        assets = [core_assets.core_unified_items, warehouse_unified_items, row_count_matches_core]
        if end is None:
            result = dg.materialize(assets, partition_key=start, resources=self.resources)
        else:
            result = dg.materialize(assets, tags=range_tags(start, end), resources=self.resources)
        assert result.success
        return result

    def sync(self, day: str) -> dg.ExecuteInProcessResult:
        self.land(day)
        return self.downstream(day)


def core_row(store, external_id: str = "1"):
    return store.fetch_all(
        "SELECT title, amount, partition_date, observed_seq, row_version FROM unified_items WHERE external_id = %s",
        (external_id,),
    )


def test_a_value_that_reverts_reaches_core_again(store, clickhouse, tmp_path, monkeypatch):
    """A -> B -> A: the second A is a new observation and wins (it used to keep B: one raw row per
    content hash kept the first A's old landing time)."""
    orders = Orders(tmp_path, monkeypatch)
    for name in ("alpha", "beta", "alpha"):
        orders.write(f"1,2024-11-01,{name},10")
        orders.sync("2024-11-01")
        assert core_row(store)[0][0] == name
    assert clickhouse.query("SELECT title FROM unified_items FINAL WHERE external_id = '1'").result_rows == [("alpha",)]
    # two distinct contents are stored, the reverted one re-stamped as the newest observation
    assert store.fetch_value("SELECT count(*) FROM raw_data") == 2
    seqs = store.fetch_all("SELECT payload->>'name', observed_seq FROM raw_data ORDER BY observed_seq")
    assert [name for name, _ in seqs] == ["beta", "alpha"]


def test_identical_content_observed_again_changes_nothing(store, clickhouse, tmp_path, monkeypatch):
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10")
    orders.sync("2024-11-01")
    before = core_row(store)
    raw_before = store.fetch_all("SELECT id, observed_seq, extracted_at FROM raw_data")
    again = orders.sync("2024-11-01")
    assert core_row(store) == before  # row_version unchanged: nothing was rewritten
    assert store.fetch_all("SELECT id, observed_seq, extracted_at FROM raw_data") == raw_before
    core_meta = [e.materialization.metadata for e in again.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey(["core", "unified_items"])][0]
    assert core_meta["records_updated"].value == 0 and core_meta["records_inserted"].value == 0


def test_a_business_date_corrected_backwards_wins(store, clickhouse, tmp_path, monkeypatch):
    """An order date moved from 11-02 to 11-01 with a new amount is a newer observation (it used to
    be refused: the version was derived from the record's own date, so it looked older)."""
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-02,alpha,10")
    orders.sync("2024-11-02")
    orders.write("1,2024-11-01,alpha,12.50")
    orders.sync("2024-11-01")

    [(title, amount, day, _, _)] = core_row(store)
    assert (amount, day) == (Decimal("12.5"), dt.date(2024, 11, 1))
    # the warehouse agrees under FINAL: the copy left in 11-02 has an older row version
    final = clickhouse.query(
        "SELECT partition_date, amount FROM unified_items FINAL WHERE external_id = '1'"
    ).result_rows
    assert final == [(dt.date(2024, 11, 1), Decimal("12.5"))]
    for start in (dt.date(2024, 11, 1), dt.date(2024, 11, 2)):
        result = core_reflects_raw(store, start, start + dt.timedelta(days=1))
        assert result.passed, result.metadata


def test_the_sources_modification_time_leads_when_mapped(store, clickhouse, tmp_path, monkeypatch):
    """With ``updated_at`` mapped, an observation carrying an older modification time does not win,
    however late we see it; a newer one wins whatever its business date."""
    orders = Orders(tmp_path, monkeypatch, modified=True)
    orders.write("1,2024-11-02,current,10,2024-11-05T10:00:00Z")
    orders.sync("2024-11-02")
    orders.write("1,2024-11-02,stale replay,9,2024-11-04T10:00:00Z")
    orders.sync("2024-11-02")
    assert core_row(store)[0][0] == "current"
    assert core_reflects_raw(store, dt.date(2024, 11, 2), dt.date(2024, 11, 3)).passed
    orders.write("1,2024-11-01,corrected,11,2024-11-06T08:00:00Z")
    orders.sync("2024-11-01")
    assert core_row(store)[0][:3] == ("corrected", Decimal("11"), dt.date(2024, 11, 1))
    assert store.fetch_value("SELECT source_updated_at FROM unified_items") == dt.datetime(
        2024, 11, 6, 8, tzinfo=dt.timezone.utc
    )


def test_core_reflects_raw_fails_on_a_lost_or_stale_record(store, clickhouse, tmp_path, monkeypatch):
    """The per-partition check can fail: a landed record missing from core, or a core row older
    than the newest observation (what the refused correction looked like)."""
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10", "2,2024-11-01,beta,20")
    orders.sync("2024-11-01")
    day = (dt.date(2024, 11, 1), dt.date(2024, 11, 2))
    assert core_reflects_raw(store, *day).passed

    orders.write("1,2024-11-01,alpha v2,10", "2,2024-11-01,beta,20")
    orders.land("2024-11-01")
    stale = core_reflects_raw(store, *day)
    assert not stale.passed and stale.metadata["stale"].value == 1 and stale.metadata["missing"].value == 0

    orders.downstream("2024-11-01")
    store.fetch_all("DELETE FROM unified_items WHERE external_id = '2' RETURNING id")
    lost = core_reflects_raw(store, *day)
    assert not lost.passed and lost.metadata["missing"].value == 1


def test_late_records_are_picked_up_by_the_sensor(store, clickhouse, tmp_path, monkeypatch):
    """A record for 11-01 that arrives in the file read by the 11-03 run lands in 11-01; the sensor
    asks for 11-01 (it used to be ignored by that run and never loaded unless someone backfilled)."""
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10", "3,2024-11-03,gamma,30")
    orders.land("2024-11-01")
    orders.downstream("2024-11-01", "2024-11-03")
    assert store.fetch_value("SELECT count(*) FROM raw_partitions WHERE landed_seq > taken_seq") == 0

    orders.write("1,2024-11-01,alpha,10", "2,2024-11-01,late beta,20", "3,2024-11-03,gamma,30")
    landed = orders.land("2024-11-03")
    meta = landed.get_asset_materialization_events()[0].materialization.metadata
    assert meta["late_records"].value == 1
    assert meta["partitions_with_new_records_outside_window"].value == {"2024-11-01": 1}

    instance = dg.DagsterInstance.ephemeral()
    # the sensor needs the store only (the IO managers' nested resources make the whole set a context manager)
    sensor_resources = {"postgres": orders.resources["postgres"]}
    context = dg.build_sensor_context(instance=instance, resources=sensor_resources)
    requests = list(late_records_sensor(context))
    assert [(r.partition_key_range.start, r.partition_key_range.end) for r in requests] == [
        ("2024-11-01", "2024-11-01")
    ]
    # the same state asks for the same run (stable run key); the cursor has moved past it
    assert context.cursor and int(context.cursor) > 0

    r = requests[0].partition_key_range
    orders.downstream(r.start, r.end)
    assert store.fetch_value("SELECT title FROM unified_items WHERE external_id = '2'") == "late beta"
    assert clickhouse.query("SELECT count() FROM unified_items FINAL WHERE partition_date = '2024-11-01'").result_rows == [(2,)]
    again = late_records_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
    assert isinstance(again, dg.SkipReason)


def test_sensor_holds_back_records_of_a_run_in_progress_and_future_days(store, tmp_path, monkeypatch):
    from kingtavo_pipeline.defs.core.sensors import plan

    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10", "9,2999-01-01,far future,1")
    result = orders.land("2024-11-01")
    ranges, cursor, held = plan(store, 0, None)
    assert [(r.start, r.end) for r in ranges] == [(dt.date(2024, 11, 1), dt.date(2024, 11, 1))]
    assert held and "2999-01-01" in held[0]
    future_seq = store.fetch_value("SELECT observed_seq FROM raw_data WHERE source_id = '9'")
    assert cursor < future_seq  # the future record will be asked for once its day exists

    class Running:
        def get_run_by_id(self, run_id):
            assert run_id == result.run_id
            return dg.DagsterRun(job_name="j", run_id=run_id, status=dg.DagsterRunStatus.STARTED)

    ranges, cursor, held = plan(store, 0, Running())
    assert ranges == [] and cursor == 0


def test_dead_letters_are_recorded_once_and_resolved_when_the_record_lands(store, clickhouse, tmp_path, monkeypatch):
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10", "2,2024-11-01,beta,n/a", "3,,undated,1")
    orders.sync("2024-11-01")
    orders.sync("2024-11-01")
    orders.land("2024-11-02")  # another partition run reads the same file
    letters = store.fetch_all("SELECT source_id, stage, attempts, status FROM dead_letters ORDER BY source_id")
    assert letters == [("2", "map", 1, "open"), ("3", "extract", 1, "open")]
    failed = store.fetch_all("SELECT records_failed FROM etl_runs ORDER BY id")
    # raw, core, warehouse; the same again; raw of 11-02: each failure counted by the run that found it
    assert [n for (n,) in failed] == [1, 1, 0, 0, 0, 0, 0]

    # the file is fixed: both records land and their dead letters resolve
    orders.write("1,2024-11-01,alpha,10", "2,2024-11-01,beta,20", "3,2024-11-01,dated now,1")
    orders.sync("2024-11-01")
    letters = store.fetch_all("SELECT source_id, status, resolution FROM dead_letters ORDER BY source_id")
    assert [(s, st) for s, st, _ in letters] == [("2", "resolved"), ("3", "resolved")]
    assert all(r and "run" in r for *_, r in letters)
    assert store.fetch_value("SELECT count(*) FROM unified_items") == 3


def test_dead_letter_retry_reopens_or_resolves(store, clickhouse, tmp_path, monkeypatch):
    orders = Orders(tmp_path, monkeypatch)
    orders.write("1,2024-11-01,alpha,10", "2,2024-11-01,beta,n/a")
    orders.sync("2024-11-01")
    with store.transaction() as conn:
        [letter] = list_dead_letters(conn)
        assert mark_for_retry(conn, ids=[letter["id"]]) == [(letter["id"], "map", "csv", "orders")]
    assert store.fetch_value("SELECT status FROM dead_letters") == "retrying"
    # a retry that fails again reopens it with one more attempt
    orders.downstream("2024-11-01")
    assert store.fetch_all("SELECT status, attempts FROM dead_letters") == [("open", 2)]
    with store.transaction() as conn:
        assert close_dead_letters(conn, ids=[letter["id"]], status="ignored", note="test order") == 1
    # an ignored one stays ignored when it is read again
    orders.sync("2024-11-01")
    assert store.fetch_all("SELECT status, resolution FROM dead_letters") == [("ignored", "test order")]


def test_a_single_run_backfill_over_400_days(store, clickhouse, tmp_path, monkeypatch):
    """A 24-month import is one backfill run per layer: 400 daily partitions in one warehouse write
    (ClickHouse refused more than 100 partitions in one INSERT block)."""
    orders = Orders(tmp_path, monkeypatch)
    first = dt.date(2024, 1, 1)
    days = [first + dt.timedelta(days=i) for i in range(400)]
    orders.write(*(f"{i},{d.isoformat()},item {i},{i}" for i, d in enumerate(days)))
    orders.land(first.isoformat())  # one raw run lands every day of the file
    result = orders.downstream(days[0].isoformat(), days[-1].isoformat())
    checks = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    assert {("core_reflects_raw", True), ("row_count_matches_core", True)} <= checks
    assert not [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    assert store.fetch_value("SELECT count(DISTINCT partition_date) FROM unified_items") == 400
    assert clickhouse.query(
        "SELECT count(), uniqExact(partition_date) FROM unified_items FINAL"
    ).result_rows == [(400, 400)]
    assert clickhouse.query(
        "SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'unified_items' AND active"
    ).result_rows[0][0] >= 400
