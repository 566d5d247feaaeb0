"""``raw/webhooks/events``: pending webhook events applied to ``raw_data``.

A run takes the pending events of its id range (run tags ``kingtavo/events_from`` and
``kingtavo/events_to``, set by ``webhook_events_sensor``) that belong to its partitions
(:func:`~kingtavo_pipeline.transform.webhook_events.run_claims`), and in one transaction per chunk
lands their entities with ``land_raw`` (the same landing as pulled records: an older version lands
as an observation and core's version rule keeps the newer), marks each event ``applied``,
``failed`` (with a dead letter, stage ``webhook``) or ``ignored`` (with the reason), with
``processed_at`` and the run id. Run without the tags (a manual materialization), it applies every
pending event whose entity belongs to the selected days.

A Printavo event that names its record without carrying it is a targeted re-pull: the run fetches
that one record through the Printavo connector (``fetch_one``) and lands it like a pulled record
(under its own day, where core takes it through the late-records sensor).

Retry: ``kingtavo dead-letters retry`` puts the failed events of the letters it retries back to
``pending`` (:func:`requeue_failed_events`) and runs them again; an event that now lands (or is
ignored) resolves its dead letter, one that fails again reopens it.
"""


import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import dagster as dg
import orjson
import pandas as pd
import psycopg

from kingtavo_pipeline.defs.ingest import assets as ingest_assets
from kingtavo_pipeline.defs.ingest.assets import OWNER
from kingtavo_pipeline.defs.partitions import FIRST_DAY, daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.extract.http import HttpError, NotFoundError
from kingtavo_pipeline.sources.config import SourceConfigError
from kingtavo_pipeline.storage.bookkeeping import etl_run, land_raw, record_dead_letters
from kingtavo_pipeline.transform.webhook_events import (
    SALLA_PROVIDERS,
    Landing,
    Outcome,
    StoredEvent,
    event_day,
    fetched_landing,
    is_printavo,
    newest_last,
    parse_event,
    run_claims,
)

WEBHOOK_EVENTS_KEY = dg.AssetKey(["raw", "webhooks", "events"])
EVENTS_FROM_TAG = "kingtavo/events_from"
EVENTS_TO_TAG = "kingtavo/events_to"
ORPHANS_TAG = "kingtavo/events_orphans"  # "true": the run also takes events without a partition day
LAST_PARTITION_TAG = "kingtavo/events_last_partition"  # the last partition when the sensor planned
DEAD_LETTER_STAGE = "webhook"
CHUNK_EVENTS = 500
MAX_EVENT_ID = 2**63 - 1

PENDING_CHUNK = """
SELECT id, source_name, provider, event_type, account, payload FROM webhook_events
WHERE status = 'pending' AND id > %s AND id <= %s ORDER BY id LIMIT %s
"""

# Lock the run's own events only (in id order, so two runs never deadlock): a lock on another
# run's event would make that run wait, never skip it.
LOCK_PENDING = "SELECT id FROM webhook_events WHERE id = ANY(%s) AND status = 'pending' ORDER BY id FOR UPDATE"

MARK = """
UPDATE webhook_events w SET status = v.status, error = v.error, processed_at = now(), run_id = %s
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, status, error) WHERE w.id = v.id
"""

# An event that lands or is ignored now closes the dead letter an earlier attempt left.
RESOLVE_LETTERS = """
UPDATE dead_letters SET status = 'resolved', resolved_at = now(), resolution = %s || ' by run ' || %s
WHERE stage = 'webhook' AND status IN ('open', 'retrying') AND source_id = ANY(%s)
"""

REQUEUE_FAILED = """
UPDATE webhook_events SET status = 'pending', error = NULL, processed_at = NULL, run_id = NULL
WHERE id = ANY(%s) AND status = 'failed' RETURNING id
"""


def requeue_failed_events(conn: psycopg.Connection, event_ids: Iterable[int]) -> list[int]:
    """Failed events -> ``pending`` again (a retry); returns the ids requeued, in order."""
    ids = sorted({int(i) for i in event_ids})
    return sorted(r[0] for r in conn.execute(REQUEUE_FAILED, (ids,)).fetchall()) if ids else []


class PrintavoFetcher:
    """Targeted re-pulls: one Printavo record per ``fetch`` outcome, through the configured Printavo
    source's connector (built on first use, closed with :meth:`close`)."""

    def __init__(self, store):
        self.store = store
        self._connector = None
        self.fetched = 0

    def __call__(self, entity: str, source_id: str, first_day: date) -> Outcome:
        sources = ingest_assets.SOURCES.printavo
        if not sources:
            return Outcome("fail", error_type="no_source", entity=entity,
                           reason="a Printavo event asks for a re-pull, but no Printavo source is configured")
        try:
            if self._connector is None:
                from kingtavo_pipeline.defs.ingest.connectors import connector_for

                self._connector = connector_for(sources[0], entity, "", self.store)
            fetch_one = getattr(self._connector, "fetch_one", None)
            if fetch_one is None:
                return Outcome("fail", error_type="no_fetch_one", entity=entity, reason=(
                    "the Printavo connector has no fetch_one(entity, id) for a targeted re-pull; the next "
                    "incremental pull (api_changes_job) brings the change"))
            record = fetch_one(entity, source_id)
        except NotFoundError:
            record = None
        except (HttpError, SourceConfigError, ValueError) as exc:
            return Outcome("fail", error_type="refetch_failed", entity=entity,
                           reason=f"re-pull of Printavo {entity} {source_id} failed: {' '.join(str(exc).split())}")
        self.fetched += 1
        return fetched_landing(entity, record, first_day=first_day)

    def close(self) -> None:
        if self._connector is not None:
            self._connector.close()
            self._connector = None


def salla_source_name(merchant_id: str) -> str:
    """The configured Salla source that lists the merchant, else the first one, else ``salla``:
    the name the API pulls of the merchant land under, so both meet in the same core rows."""
    sources = ingest_assets.SOURCES.salla
    for source in sources:
        if merchant_id in source.merchants:
            return source.name
    return sources[0].name if sources else "salla"


def printavo_source_name() -> str:
    sources = ingest_assets.SOURCES.printavo
    return sources[0].name if sources else "printavo"


def raw_source_name(landing: Landing) -> str:
    if landing.source_type == "salla":
        return f"{salla_source_name(landing.account)}/{landing.account}"
    return printavo_source_name()


def dead_letter_source_type(event: StoredEvent) -> str:
    if event.provider in SALLA_PROVIDERS:
        return "salla"
    return "printavo" if is_printavo(event.source_name, event.provider) else event.provider


@dataclass
class Tally:
    claimed: int = 0
    applied: int = 0
    failed: int = 0
    ignored: int = 0
    superseded: int = 0  # an older version of a record applied in the same batch as a newer one
    observed: int = 0  # new raw observations
    dead_letters: int = 0
    resolved: int = 0  # dead letters of earlier attempts closed because the event now applied
    refetched: int = 0  # Printavo records re-pulled for events that named them
    days: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    ignores: Counter = field(default_factory=Counter)


def _json(payload: object) -> str:
    # sorted keys, as the API landing writes them: the same content always hashes the same
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits, which orjson refuses
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _land(conn: psycopg.Connection, outcomes: list[tuple[StoredEvent, Outcome]], run_id: str, tally: Tally) -> None:
    groups: dict[tuple[str, str, str], list[tuple[int, Landing]]] = {}
    for event, outcome in outcomes:
        if outcome.landing is not None:
            landing = outcome.landing
            groups.setdefault((landing.source_type, raw_source_name(landing), landing.entity), []).append((event.id, landing))
    for (source_type, source_name, entity), items in groups.items():
        ordered = newest_last(items)
        frame = pd.DataFrame({
            "source_id": [landing.source_id for _, landing in ordered],
            "partition_date": [landing.day for _, landing in ordered],
            "payload": [_json(landing.payload) for _, landing in ordered],
        })
        result = land_raw(conn, frame, source_type=source_type, source_name=source_name, entity=entity, run_id=run_id)
        tally.observed += result.observed
        tally.superseded += len(ordered) - frame["source_id"].nunique()
        for day, n in result.partitions.items():
            tally.days[str(day)] += n


def _dead_letters(conn: psycopg.Connection, failed: list[tuple[StoredEvent, Outcome]], run_id: str) -> int:
    """One dead letter per failed event (``source_id`` is the event's id: a failed event may have
    no entity id), labelled with the webhook source and the entity or event type."""
    groups: dict[tuple[str, str, str], list[tuple[StoredEvent, Outcome]]] = {}
    for event, outcome in failed:
        entity = outcome.entity or event.event_type or "unknown"
        groups.setdefault((dead_letter_source_type(event), event.source_name, entity), []).append((event, outcome))
    new = 0
    for (source_type, source_name, entity), items in groups.items():
        rejects = pd.DataFrame({
            "source_id": [str(event.id) for event, _ in items],
            "payload": [event.payload for event, _ in items],
            "error_type": [outcome.error_type or "webhook" for _, outcome in items],
            "error_message": [outcome.reason or "" for _, outcome in items],
        })
        new += record_dead_letters(conn, rejects, stage=DEAD_LETTER_STAGE, source_type=source_type,
                                   source_name=source_name, entity=entity, run_id=run_id)
    return new


def apply_events(conn: psycopg.Connection, events: Iterable[StoredEvent], *, run_id: str, tally: Tally,
                 first_day: date, fetcher: PrintavoFetcher | None = None) -> None:
    """Land, fail or ignore events (already locked) and mark them, in the caller's transaction.
    ``fetch`` outcomes (Printavo events naming a record) are re-pulled through ``fetcher``."""
    outcomes = [(event, parse_event(event, first_day=first_day)) for event in events]
    if not outcomes:
        return
    for i, (event, outcome) in enumerate(outcomes):
        if outcome.action == "fetch":
            if fetcher is None:
                outcome = Outcome("fail", error_type="no_fetch_one", entity=outcome.entity,
                                  reason="a Printavo re-pull was asked for, but this run has no connector")
            else:
                outcome = fetcher(outcome.entity or "invoices", outcome.source_id or "", first_day)
                tally.refetched += 1
            outcomes[i] = (event, outcome)
    _land(conn, outcomes, run_id, tally)
    failed = [(e, o) for e, o in outcomes if o.action == "fail"]
    tally.dead_letters += _dead_letters(conn, failed, run_id)
    status = {"land": "applied", "fail": "failed", "ignore": "ignored"}
    conn.execute(MARK, (run_id, [e.id for e, _ in outcomes], [status[o.action] for _, o in outcomes],
                        [o.reason if o.action != "land" else None for _, o in outcomes]))
    done = [str(e.id) for e, o in outcomes if o.action in ("land", "ignore")]
    if done:
        tally.resolved += conn.execute(RESOLVE_LETTERS, ("applied", run_id, done)).rowcount
    for _, outcome in outcomes:
        if outcome.action == "land":
            tally.applied += 1
        elif outcome.action == "fail":
            tally.failed += 1
            tally.failures[outcome.reason or ""] += 1
        else:
            tally.ignored += 1
            tally.ignores[outcome.reason or ""] += 1


@dataclass(frozen=True)
class Claim:
    """Which pending events a run takes: its id range, its days and whether it takes orphans."""

    first_id: int
    last_id: int
    start: date
    end: date  # inclusive
    orphans: bool
    last_partition: date

    def claims(self, event: StoredEvent) -> bool:
        return run_claims(event_day(event), start=self.start, end=self.end, orphans=self.orphans,
                          first_day=date.fromisoformat(FIRST_DAY), last_day=self.last_partition)


def run_claim(context: dg.AssetExecutionContext) -> Claim:
    tags = context.run.tags
    start, end = utc_window(context)
    last = (end - pd.Timedelta(days=1)).date()
    return Claim(
        first_id=int(tags.get(EVENTS_FROM_TAG, 1)),
        last_id=int(tags.get(EVENTS_TO_TAG, MAX_EVENT_ID)),
        start=start.date(),
        end=last,
        orphans=tags.get(ORPHANS_TAG) == "true",
        last_partition=date.fromisoformat(tags[LAST_PARTITION_TAG]) if LAST_PARTITION_TAG in tags else last,
    )


def apply_pending(store, claim: Claim, run_id: str, chunk: int = CHUNK_EVENTS) -> Tally:
    """Apply the claim's pending events chunk by chunk, one transaction per chunk."""
    fetcher = PrintavoFetcher(store)
    try:
        return _apply_pending(store, claim, run_id, chunk, fetcher)
    finally:
        fetcher.close()


def _apply_pending(store, claim: Claim, run_id: str, chunk: int, fetcher: PrintavoFetcher) -> Tally:
    tally = Tally()
    first_day = date.fromisoformat(FIRST_DAY)
    after = claim.first_id - 1
    while True:
        with store.transaction() as conn:
            rows = conn.execute(PENDING_CHUNK, (after, claim.last_id, chunk)).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            mine = [e for e in (StoredEvent(*row) for row in rows) if claim.claims(e)]
            if mine:
                locked = {r[0] for r in conn.execute(LOCK_PENDING, ([e.id for e in mine],)).fetchall()}
                events = [e for e in mine if e.id in locked]  # another run may have applied some meanwhile
                tally.claimed += len(events)
                apply_events(conn, events, run_id=run_id, tally=tally, first_day=first_day, fetcher=fetcher)
        if len(rows) < chunk:
            break
    return tally


def _top(counter: Counter, n: int = 10) -> dict[str, int]:
    return dict(counter.most_common(n))


@dg.asset(
    key=WEBHOOK_EVENTS_KEY,
    description="Pending webhook events (PostgreSQL webhook_events) applied to raw_data: Salla orders, products "
    "and customers (and Printavo invoices carried in the event) land as observations of their API source; "
    "events that cannot be applied fail to dead_letters, events of unmodelled providers are ignored with a reason.",
    group_name="webhooks",
    kinds={"postgres"},
    owners=[OWNER],
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    metadata={"partition_expr": "partition_date", "dagster/table_name": "raw_data"},
    tags={"layer": "raw"},
)
def raw_webhook_events(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    claim = run_claim(context)
    store = postgres.store()
    run_id = context.run.run_id
    with etl_run(store, run_id=run_id, asset_key=WEBHOOK_EVENTS_KEY.to_user_string(),
                 partition_key=partition_label(context)) as counts:
        tally = apply_pending(store, claim, run_id)
        counts.extracted, counts.loaded, counts.failed = tally.claimed, tally.applied, tally.failed
    if tally.failed:
        context.log.warning(f"{tally.failed} webhook event(s) could not be applied; see dead_letters (stage "
                            f"'{DEAD_LETTER_STAGE}') and webhook_events.error: " + "; ".join(_top(tally.failures, 3)))
    if tally.ignored:
        context.log.info(f"{tally.ignored} webhook event(s) ignored: " + "; ".join(_top(tally.ignores, 3)))
    outside = {d: n for d, n in tally.days.items()
               if not claim.start <= date.fromisoformat(d) <= claim.end}
    if outside:
        context.log.info(f"records landed in days outside this run's partitions, for core to take later: {outside}")
    return dg.MaterializeResult(
        metadata={
            "events_from": dg.MetadataValue.int(claim.first_id),
            "events_to": dg.MetadataValue.int(min(claim.last_id, MAX_EVENT_ID)),
            "events_claimed": dg.MetadataValue.int(tally.claimed),
            "events_applied": dg.MetadataValue.int(tally.applied),
            "events_failed": dg.MetadataValue.int(tally.failed),
            "events_ignored": dg.MetadataValue.int(tally.ignored),
            "events_superseded_in_batch": dg.MetadataValue.int(tally.superseded),
            "records_new": dg.MetadataValue.int(tally.observed),
            "dead_letters": dg.MetadataValue.int(tally.dead_letters),
            "dead_letters_resolved": dg.MetadataValue.int(tally.resolved),
            "records_refetched": dg.MetadataValue.int(tally.refetched),
            "days_landed": dg.MetadataValue.json(dict(sorted(tally.days.items()))),
            "failure_reasons": dg.MetadataValue.json(_top(tally.failures)),
            "ignore_reasons": dg.MetadataValue.json(_top(tally.ignores)),
        }
    )
