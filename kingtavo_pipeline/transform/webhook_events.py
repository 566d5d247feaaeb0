"""Stored webhook events -> raw observations, and which runs apply them (pure).

A row of ``webhook_events`` becomes one of three outcomes (:func:`parse_event`):

* **land**: the entity the event carries (Salla ``data``; a Printavo invoice) is landed in
  ``raw_data`` exactly like a pulled record of the same entity: same ``source_type``, the same raw
  source name (``<salla source>/<merchant>``), the entity object as the API returns it, in the day
  of its creation time (an order's ``date``, else ``created_at``). Core then meets pulled and
  pushed versions in the same rows under the same version rule (the entity's ``updated_at``).
* **fail**: an event that should have carried an entity but cannot be used (unknown Salla event,
  no ``data`` object, no id, no usable date); stored with the reason and sent to ``dead_letters``.
* **ignore**: an event that is understood and carries nothing core models (GitHub, Stripe, ...;
  Salla app/category/shipment events; deletions of orders and customers, which core has no marker
  for); kept in ``webhook_events`` with the reason, counted, never dropped.

Deletions. ``product.deleted`` lands the product with ``status: "deleted"`` (the products
mapping knows that status), so the warehouse shows it deleted; ``order.deleted`` and
``customer.deleted`` are ignored with a reason: core has no tombstone for them.

Printavo. A Printavo event (a webhook source whose name contains ``printavo``) is landed as is
when its payload carries the invoice node itself (``id`` and ``timestamps {createdAt updatedAt}``,
at the top level or under ``data``/``invoice``/``quote``/``order``/``object``). An event that only
names its record (an ``id`` there, without timestamps) gets the outcome **fetch**: the run re-pulls
that one record through the Printavo connector (``fetch_one``) and lands what the API returns, or
fails the event with the reason (then the next incremental pull brings the change, and
``kingtavo dead-letters retry`` can try the event again). :func:`fetched_landing` turns the
connector's record into the landing.

Runs. :func:`plan_event_runs` groups a batch of pending events (in id order) by the day their
entity belongs to into contiguous day ranges, one run each, with stable run keys. Events without a
usable day (unparseable, before the first partition, ignored providers) and events of days that
have no partition yet ride with the run of the latest range (or a run of their own): that run
fails, ignores or lands them. :func:`run_claims` is the rule by which a run picks its events out
of its id range, so no two runs of one batch claim the same event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from kingtavo_pipeline.connectors.printavo import parse_printavo_datetime
from kingtavo_pipeline.connectors.salla import parse_salla_datetime

ENTITIES = ("orders", "products", "customers")
SALLA_PROVIDERS = ("salla", "salla_token")
PRINTAVO_CONTAINERS = ("data", "invoice", "quote", "order", "object")

# Salla event families that are understood but carry nothing core models: ignored with a reason.
SALLA_NOT_MODELLED = (
    "app.", "category.", "brand.", "shipment.", "shipping.", "review.", "abandoned.cart", "invoice.",
    "specialoffer.", "coupon.", "store.", "cart.", "customer.otp.request",
)
# Salla entity families (``order.status.updated`` etc. are orders).
SALLA_FAMILIES = {"order.": "orders", "product.": "products", "customer.": "customers"}

Action = Literal["land", "fail", "ignore", "fetch"]


@dataclass(frozen=True)
class StoredEvent:
    """The columns of a ``webhook_events`` row the parsing reads."""

    id: int
    source_name: str
    provider: str
    event_type: str | None
    account: str | None
    payload: Any


@dataclass(frozen=True)
class Landing:
    """One entity to land in ``raw_data``."""

    source_type: str  # salla | printavo
    entity: str  # orders | products | customers | invoices | quotes
    account: str  # the Salla merchant id; '' for Printavo
    source_id: str
    occurred_at: datetime  # creation time, UTC: decides the partition day
    updated_at: datetime | None  # the entity's own modification time (the version core compares)
    payload: dict[str, Any]

    @property
    def day(self) -> date:
        return self.occurred_at.date()


@dataclass(frozen=True)
class Outcome:
    action: Action
    landing: Landing | None = None
    error_type: str | None = None
    reason: str | None = None
    entity: str | None = None  # for failures and ignores of a known entity (dead-letter labels)
    source_id: str | None = None  # action "fetch": the record to re-pull


def _fail(error_type: str, reason: str, entity: str | None = None) -> Outcome:
    return Outcome("fail", error_type=error_type, reason=reason, entity=entity)


def _ignore(reason: str, entity: str | None = None) -> Outcome:
    return Outcome("ignore", reason=reason, entity=entity)


def is_printavo(source_name: str, provider: str) -> bool:
    """Printavo has no provider scheme of its own (it is configured as ``hmac`` or ``standard``):
    a webhook source is Printavo's when its name says so."""
    return provider not in SALLA_PROVIDERS and "printavo" in source_name.lower()


def salla_entity(event: str) -> tuple[str | None, str | None]:
    """-> (entity, None) for an entity event; (None, reason) for an event core does not take.
    Unknown events give (None, None)."""
    for prefix in SALLA_NOT_MODELLED:
        if event.startswith(prefix):
            return None, f"Salla event {event!r} carries no order, product or customer; stored, not applied"
    for prefix, entity in SALLA_FAMILIES.items():
        if event.startswith(prefix):
            if event.endswith(".deleted") and entity != "products":
                return None, (f"Salla event {event!r}: core has no deletion marker for {entity}; "
                              "stored, not applied (the record stays as last seen)")
            return entity, None
    return None, None


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)) or str(value).strip() == "":
        return None
    return str(value)


def _salla_times(entity: str, data: Mapping[str, Any], envelope: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """(creation time, modification time) of a Salla entity, UTC."""
    updated = parse_salla_datetime(data.get("updated_at"))
    if entity == "orders":
        return parse_salla_datetime(data.get("date")), updated
    created = parse_salla_datetime(data.get("created_at")) or updated or parse_salla_datetime(envelope.get("created_at"))
    return created, updated


def _printavo_node(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The invoice/quote node of a Printavo event: one with an id and a ``timestamps`` object."""
    for candidate in (payload, *(payload.get(k) for k in PRINTAVO_CONTAINERS)):
        if isinstance(candidate, Mapping) and _id(candidate.get("id")) and isinstance(candidate.get("timestamps"), Mapping):
            return candidate
    return None


def _printavo_entity(event_type: str | None, node: Mapping[str, Any]) -> str:
    kind = str(node.get("__typename") or event_type or "").lower()
    if "quote" in kind:
        return "quotes"
    if "customer" in kind or "contact" in kind:
        return "customers"
    return "invoices"


def _printavo_reference(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object of a Printavo event that names a record by id only (no timestamps to date it)."""
    for candidate in (*(payload.get(k) for k in PRINTAVO_CONTAINERS), payload):
        if isinstance(candidate, Mapping) and _id(candidate.get("id")):
            return candidate
    return None


def event_day(event: StoredEvent) -> date | None:
    """The day (UTC) of the entity an event carries, or None when it has none (fails or is ignored).

    The sensor calls this on a slim copy of the payload (:data:`DAY_FIELDS` only) and the run on
    the whole payload: both must agree, so this reads nothing else.
    """
    payload = event.payload
    if not isinstance(payload, Mapping):
        return None
    if event.provider in SALLA_PROVIDERS:
        name = payload.get("event") or event.event_type
        data = payload.get("data")
        if not isinstance(name, str) or not isinstance(data, Mapping):
            return None
        entity, _ = salla_entity(name)
        if entity is None:
            return None
        created, _ = _salla_times(entity, data, payload)
        return created.date() if created else None
    if is_printavo(event.source_name, event.provider):
        node = _printavo_node(payload)
        created = parse_printavo_datetime(node["timestamps"].get("createdAt")) if node else None
        return created.date() if created else None
    return None


# What :func:`event_day` reads: top-level keys, and the keys of the nested objects it looks into.
DAY_FIELDS = ("event", "created_at", "id", "timestamps", "__typename")
DAY_NESTED_FIELDS = ("id", "date", "created_at", "updated_at", "timestamps", "__typename")


def parse_event(event: StoredEvent, *, first_day: date | None = None) -> Outcome:
    """What to do with one stored event (see the module docstring). An entity created before
    ``first_day`` (the first partition) fails: core would never take its day."""
    if event.provider in SALLA_PROVIDERS:
        outcome = _parse_salla(event)
    elif is_printavo(event.source_name, event.provider):
        outcome = _parse_printavo(event)
    else:
        outcome = None
    if outcome is not None:
        landing = outcome.landing
        if landing is not None and first_day is not None and landing.day < first_day:
            return _fail("before_first_partition", f"the {landing.entity} record {landing.source_id} was created on "
                         f"{landing.day}, before the first partition ({first_day}); move the partitions' start date "
                         "back to load it", landing.entity)
        return outcome
    kind = f" {event.event_type!r}" if event.event_type else ""
    return _ignore(f"{event.provider} event{kind} from {event.source_name!r}: no core entity is modelled "
                   "for this provider; stored for audit, not applied")


def _parse_salla(event: StoredEvent) -> Outcome:
    payload = event.payload
    if not isinstance(payload, Mapping):
        return _fail("bad_payload", "the Salla body is not a JSON object")
    name = payload.get("event") or event.event_type
    if not isinstance(name, str) or not name:
        return _fail("unknown_event", "the Salla body names no event ('event' is missing)")
    entity, ignored = salla_entity(name)
    if ignored:
        return _ignore(ignored, SALLA_FAMILIES.get(name.split(".", 1)[0] + "."))
    if entity is None:
        return _fail("unknown_event", f"unknown Salla event {name!r} (known: order.*, product.*, customer.*)")
    data = payload.get("data")
    if not isinstance(data, Mapping):
        return _fail("bad_payload", f"Salla {name}: 'data' is not an object", entity)
    source_id = _id(data.get("id"))
    if source_id is None:
        return _fail("bad_payload", f"Salla {name}: data has no id", entity)
    merchant = _id(payload.get("merchant")) or _id(event.account)
    if merchant is None:
        return _fail("bad_payload", f"Salla {name}: the body names no merchant", entity)
    created, updated = _salla_times(entity, data, payload)
    if created is None:
        field_name = "date" if entity == "orders" else "created_at/updated_at"
        return _fail("missing_partition_date", f"Salla {name}: {field_name} is missing or not a date, "
                     "so the record belongs to no daily partition", entity)
    if entity == "orders":
        # what core needs of an order: its version and its lines (the mapping requires both)
        if updated is None:
            return _fail("bad_payload", f"Salla {name}: the order has no usable updated_at (its version)", entity)
        if not isinstance(data.get("items"), list):
            return _fail("bad_payload", f"Salla {name}: the order has no 'items' list (its lines)", entity)
    body = dict(data)
    if name.endswith(".deleted"):
        body["status"] = "deleted"  # products only (salla_entity ignores other deletions)
    return Outcome("land", Landing("salla", entity, merchant, source_id, created, updated, body), entity=entity)


def _parse_printavo(event: StoredEvent) -> Outcome:
    payload = event.payload
    if not isinstance(payload, Mapping):
        return _fail("bad_payload", "the Printavo body is not a JSON object")
    node = _printavo_node(payload)
    if node is None:
        reference = _printavo_reference(payload)
        if reference is None:
            return _fail("printavo_no_invoice",
                         "the Printavo event names no record (no 'id' at the top level or under "
                         f"{'/'.join(PRINTAVO_CONTAINERS)}), so there is nothing to land or re-pull; the next "
                         "incremental pull (api_changes_job) brings the change")
        entity = _printavo_entity(_printavo_event_name(event, payload), reference)
        return Outcome("fetch", entity=entity, source_id=str(reference["id"]))
    entity = _printavo_entity(_printavo_event_name(event, payload), node)
    stamps = node["timestamps"]
    created = parse_printavo_datetime(stamps.get("createdAt"))
    updated = parse_printavo_datetime(stamps.get("updatedAt"))
    if created is None or updated is None:
        return _fail("missing_partition_date", "the Printavo invoice's timestamps.createdAt/updatedAt are missing or "
                     "not dates", entity)
    landing = Landing("printavo", entity, "", str(node["id"]), created, updated, dict(node))
    return Outcome("land", landing, entity=entity)


def _printavo_event_name(event: StoredEvent, payload: Mapping[str, Any]) -> str | None:
    name = event.event_type or payload.get("event") or payload.get("type")
    return name if isinstance(name, str) else None


def fetched_landing(entity: str, record: Any, *, first_day: date | None = None) -> Outcome:
    """The outcome of a re-pulled Printavo record (a connector ``SourceRecord``, or None when the
    API no longer has it): land it like a pulled record, or fail with the reason."""
    if record is None:
        return _fail("not_found", f"the Printavo {entity} record named by the event was not found by the re-pull "
                     "(deleted, or a wrong id)", entity)
    if record.occurred_at is None:
        return _fail("missing_partition_date", f"the re-pulled Printavo {entity} record {record.source_id} has no "
                     "creation time, so it belongs to no daily partition", entity)
    landing = Landing("printavo", record.entity or entity, "", str(record.source_id), record.occurred_at,
                      record.updated_at, dict(record.payload))
    if first_day is not None and landing.day < first_day:
        return _fail("before_first_partition", f"the {entity} record {landing.source_id} was created on "
                     f"{landing.day}, before the first partition ({first_day})", entity)
    return Outcome("land", landing, entity=entity)


def newest_last(items: Iterable[tuple[int, Landing]]) -> list[tuple[int, Landing]]:
    """Landings ordered so that each record's newest version (by ``updated_at``, then event id)
    comes last: the landing keeps the last row of a record in a batch, and webhooks arrive out of
    order."""
    def key(item: tuple[int, Landing]) -> tuple:
        event_id, landing = item
        stamp = landing.updated_at
        return (stamp is not None, stamp.timestamp() if stamp else 0.0, event_id)

    return sorted(items, key=key)


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    id: int
    day: date | None


@dataclass
class EventRun:
    """One run request: the events of ``[first_id, last_id]`` whose day is in ``[start, end]``
    (inclusive), plus, with ``orphans``, those without a partition day (see :func:`run_claims`).

    ``raw_only``: the run has no day of its own (orphans only): it lands, fails or ignores its
    events and runs no core or warehouse step; ``start``/``end`` then name the last partition.
    """

    start: date
    end: date
    first_id: int
    last_id: int
    events: int = 0
    orphans: bool = False
    raw_only: bool = False
    ids: list[int] = field(default_factory=list)

    @property
    def run_key(self) -> str:
        return f"webhooks:{self.first_id}-{self.last_id}"


def is_orphan(day: date | None, first_day: date, last_day: date) -> bool:
    """No partition to run core for: no day, a day before the first partition, or one that has no
    partition yet (today's, until it ends)."""
    return day is None or day < first_day or day > last_day


def run_claims(day: date | None, *, start: date, end: date, orphans: bool, first_day: date, last_day: date) -> bool:
    """Whether a run (day range, orphans flag, and the partition bounds the sensor planned with)
    takes an event of its id range."""
    if is_orphan(day, first_day, last_day):
        return orphans
    return start <= day <= end


def _ranges(days: Iterable[date]) -> list[tuple[date, date]]:
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and day == ranges[-1][1] + timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def plan_event_runs(
    events: Iterable[PendingEvent],
    *,
    cursor: int,
    first_day: date,
    last_day: date,
    max_runs: int = 20,
) -> tuple[list[EventRun], int]:
    """-> (runs to request, the new cursor).

    Events are taken in id order until one would need a run beyond ``max_runs``; the cursor moves
    to the last event taken, never past one that no run was planned for.
    """
    taken: list[PendingEvent] = []
    days: set[date] = set()
    for event in sorted(events, key=lambda e: e.id):
        if event.id <= cursor:
            continue
        if not is_orphan(event.day, first_day, last_day) and event.day not in days:
            if len(_ranges([*days, event.day])) > max_runs:
                break
            days.add(event.day)
        taken.append(event)
    if not taken:
        return [], cursor
    runs = [EventRun(start, end, 0, 0) for start, end in _ranges(days)]
    orphan_ids = [e.id for e in taken if is_orphan(e.day, first_day, last_day)]
    if orphan_ids:
        if runs:
            runs[-1].orphans = True
        else:
            runs.append(EventRun(last_day, last_day, 0, 0, orphans=True, raw_only=True))
    for event in taken:
        for run in runs:
            if run_claims(event.day, start=run.start, end=run.end, orphans=run.orphans,
                          first_day=first_day, last_day=last_day):
                run.ids.append(event.id)
                break
    for run in runs:
        run.first_id, run.last_id, run.events = min(run.ids), max(run.ids), len(run.ids)
    return runs, max(cursor, taken[-1].id)
