"""Checks of the API sources, the core entity tables, the orders star and the webhook events.

Declared from the configured sources, like the CSV and feed checks: an API source's raw assets get
schema drift (against the fields its mapping reads, ``mappings/*.yaml``) and volume; the core
entity tables, the star tables and the webhook events get their checks only when their assets
exist (core and the star exist when an API source is configured).

One check step per core table, so that a blocking failure on one table holds back only the
warehouse tables built from it (``core/orders`` and ``core/order_lines`` guard
``warehouse/orders_fact``; ``core/customers`` guards ``warehouse/customers_dim``; ``core/products``
guards ``warehouse/products_dim``).

Salla's raw assets are partitioned by day and merchant: their checks read the merchant's raw
source (``<source>/<merchant>``) and report one evaluation per (date, merchant) partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from kingtavo_pipeline.defs.partitions import daily_partitions
from kingtavo_pipeline.defs.quality.checks import (
    DISTINCT_RECORDS,
    QualityCheck,
    completeness_check,
    metric_reconciliation_check,
    money_check,
    overdue_check,
    reconciliation_check,
    schema_drift_check,
    sql_rule_check,
    uniqueness_check,
    validity_check,
    volume_check,
)
from kingtavo_pipeline.quality.rules import (
    CurrencyCode,
    Email,
    NotInFuture,
    OneOf,
    Predicate,
    SqlRule,
    reference_exists_rule,
    sql_literal,
)

CUSTOMERS = dg.AssetKey(["core", "customers"])
PRODUCTS = dg.AssetKey(["core", "products"])
ORDERS = dg.AssetKey(["core", "orders"])
ORDER_LINES = dg.AssetKey(["core", "order_lines"])
ORDERS_FACT = dg.AssetKey(["warehouse", "orders_fact"])
CUSTOMERS_DIM = dg.AssetKey(["warehouse", "customers_dim"])
PRODUCTS_DIM = dg.AssetKey(["warehouse", "products_dim"])
WEBHOOK_EVENTS = dg.AssetKey(["raw", "webhooks", "events"])

# sample keys of core rows: <source name>/<merchant id>/<source id> (merchant '' for single-tenant sources)
ENTITY_SAMPLE_KEY = ("source_name", "merchant_id", "source_id")
# webhook events are judged by the day (UTC) they were received; samples name the event by source and id
RECEIVED_DAY = "(received_at AT TIME ZONE 'UTC')::date"
EVENT_SAMPLE_KEY = ("source_name", "id")


@dataclass(frozen=True)
class CheckGroup:
    """The checks one step runs, and the partitions they are evaluated on."""

    checks: list[QualityCheck]
    partitions_def: dg.PartitionsDefinition = daily_partitions


# --- what the mappings read ----------------------------------------------------------------------


def mapping_fields(spec) -> tuple[dict[str, str | None], set[str]]:
    """(expected, known) top-level payload keys of a mapping (:class:`MappingSpec`).

    Expected: keys read by a single-path field, and the array a required ``expand`` walks; their
    JSON type when the mapping implies it (``object`` for a key read into, ``array`` for
    ``items[]``), else None. Known: keys read only as alternatives (``paths:``), by overrides or
    time-zone paths, or by an optional ``expand``: never new, never required.
    """
    expected: dict[str, str | None] = {}
    known: set[str] = set()
    nested: dict[str, str] = {}  # key -> the JSON type a path into it implies

    def root(path: str, expand: str | None) -> str | None:
        if path == "$index" or path.startswith(("@", "^.")):
            return None
        if path.startswith("$."):
            path = path[2:]
        elif expand:
            return None  # an element's own path: inside the expanded array
        head, _, rest = path.partition(".")
        head = head.removesuffix("[]")
        if rest:  # read into: an object, or an array when the next segment is a position (categories.0.name)
            nested[head] = "array" if rest.split(".")[0].isdigit() else "object"
        return head or None

    for target in spec.targets.values():
        if target.expand:
            head, _, rest = target.expand.partition(".")
            key = head.removesuffix("[]")
            if target.required:
                expected[key] = "array" if head.endswith("[]") else "object"
            else:
                known.add(key)
        for field_spec in target.fields.values():
            inputs = field_spec.inputs
            keys = [k for k in (root(p, target.expand) for p in inputs) if k]
            if field_spec.paths is not None and len(field_spec.paths) > 1:
                known.update(keys)
            else:
                for key in keys:
                    expected.setdefault(key, None)
            if field_spec.timezone_path:
                key = root(field_spec.timezone_path, target.expand)
                if key:
                    known.add(key)
    for override in spec.overrides.values():
        for field_spec in override.fields.values():
            known.update(k for k in (root(p, None) for p in field_spec.inputs) if k)
    for key in expected:
        if expected[key] is None and key in nested:
            expected[key] = nested[key]
    return expected, known - set(expected)


def source_mapping_fields(source, entity: str) -> tuple[dict[str, str | None], set[str]]:
    """The fields the mapping of ``source``'s ``entity`` reads; none when it cannot be read (core
    reports the broken mapping; drift then compares with earlier partitions only)."""
    from kingtavo_pipeline.mapping import MappingFileError, load_mapping
    from kingtavo_pipeline.transform.entities import mapping_path

    try:
        return mapping_fields(load_mapping(mapping_path(source, entity)))
    except (MappingFileError, OSError):
        return {}, set()


def _specs(sources: Iterable) -> list:
    from kingtavo_pipeline.mapping import MappingFileError, load_mapping
    from kingtavo_pipeline.transform.entities import mapping_path

    specs = []
    for source in sources:
        for entity in source.entities:
            try:
                specs.append(load_mapping(mapping_path(source, entity)))
            except (MappingFileError, OSError):
                continue
    return specs


def mapped_values(sources: Iterable, table: str, column: str, always: Iterable[str] = ()) -> tuple[str, ...] | None:
    """Every value the sources' mappings can write to ``table.column`` (enumeration maps, their
    defaults, constants, plus ``always``, e.g. the column's default): the mapped enumeration a
    validity check allows. None when a mapping writes the column from a source path without an
    enumeration: then the values are open and no enumeration can be checked."""
    values: set[str] = set(always)
    for spec in _specs(sources):
        target = spec.targets.get(table)
        fields = [target.fields.get(column)] if target else []
        first = next(iter(spec.targets))
        fields += [o.fields.get(f"{table}.{column}") or (o.fields.get(column) if first == table else None)
                   for o in spec.overrides.values()]
        for field_spec in fields:
            if field_spec is None:
                continue
            if field_spec.is_const:
                if field_spec.const is not None:
                    values.add(str(field_spec.const))
            elif field_spec.enum is None:
                return None
            else:
                values.update(str(v) for v in field_spec.enum.map.values() if v is not None)
                if field_spec.enum.default is not None:
                    values.add(str(field_spec.enum.default))
            if field_spec.default is not None:
                values.add(str(field_spec.default))
    return tuple(sorted(values))


# --- raw API sources -----------------------------------------------------------------------------


def raw_api_checks(sources: Sequence) -> tuple[list[QualityCheck], list[QualityCheck]]:
    """(checks of daily raw API assets, checks of date x merchant ones): schema drift against the
    mapping and landed volume, per entity."""
    from kingtavo_pipeline.sources.config import SallaSource

    daily: list[QualityCheck] = []
    per_merchant: list[QualityCheck] = []
    for source in sources:
        multi = isinstance(source, SallaSource)
        for entity in source.entities:
            key = dg.AssetKey(["raw", source.source_type, entity])
            expected, known = source_mapping_fields(source, entity)
            base = (f"source_type = {sql_literal(source.source_type)} AND entity = {sql_literal(entity)}")
            checks = [
                schema_drift_check(key, source.source_type, source.name, expected, entity=entity,
                                   known_fields=sorted(known), per_merchant=multi),
                volume_check(key, "raw_data", count_expr=DISTINCT_RECORDS,
                             where=base if multi else f"{base} AND source_name = {sql_literal(source.name)}",
                             merchant_filter=("source_name", f"{source.name}/") if multi else None),
            ]
            (per_merchant if multi else daily).extend(checks)
    return daily, per_merchant


# --- core entity tables --------------------------------------------------------------------------

# An order's total is its lines' total adjusted by what the order carries beyond its lines: the
# order-level discount not spread over lines, shipping, and tax not charged on lines (e.g. VAT on
# shipping). Salla spreads discounts over lines and taxes lines; Printavo's lines carry neither.
ORDER_TOTAL_MATCHES_LINES = SqlRule(
    "order_total_matches_lines",
    """SELECT o.partition_date, o.source_name || '/' || o.merchant_id || '/' || o.source_id AS key
       FROM orders o
       LEFT JOIN LATERAL (
           SELECT sum(l.total) AS total, sum(l.discount) AS discount, sum(l.tax) AS tax FROM order_lines l
           WHERE l.source_type = o.source_type AND l.source_name = o.source_name
             AND l.merchant_id = o.merchant_id AND l.order_source_id = o.source_id) s ON true
       WHERE o.partition_date >= %(start)s AND o.partition_date < %(end)s
         AND abs(o.total - (coalesce(s.total, 0)
                            - (coalesce(o.discount, 0) - coalesce(s.discount, 0))
                            + coalesce(o.shipping, 0)
                            + (coalesce(o.tax, 0) - coalesce(s.tax, 0)))) > %(tolerance)s""",
    params=(("tolerance", 0.01),),
    tables=("orders", "order_lines"),
    description="order total = sum of its lines' totals - order discount not on lines + shipping + tax not on "
    "lines, within the tolerance",
)

LINE_HAS_ORDER = reference_exists_rule(
    "line_has_order", child_table="order_lines",
    child_columns=("source_type", "source_name", "merchant_id", "order_source_id"),
    parent_table="orders", parent_columns=("source_type", "source_name", "merchant_id", "source_id"),
    child_key=ENTITY_SAMPLE_KEY, description="every order line belongs to an order in core/orders",
)


def order_customer_exists(sources: Sequence) -> SqlRule:
    """Every order's customer is in core/customers, for sources that pull customers (the others
    legitimately have none there)."""
    pulling = sorted({(s.source_type, s.name) for s in sources if "customers" in s.entities})
    where = " OR ".join(f"(c.source_type = {sql_literal(t)} AND c.source_name = {sql_literal(n)})" for t, n in pulling)
    return reference_exists_rule(
        "order_customer_exists", child_table="orders",
        child_columns=("source_type", "source_name", "merchant_id", "customer_source_id"),
        parent_table="customers", parent_columns=("source_type", "source_name", "merchant_id", "source_id"),
        child_key=ENTITY_SAMPLE_KEY, child_where=where or "false",
        description="every order's customer (of a source that pulls customers) is in core/customers",
    )


def _duplicates_rule(name: str, table: str, column: str, description: str) -> SqlRule:
    """Rows of the window sharing ``lower(column)`` with another record of the same source and merchant."""
    return SqlRule(
        name,
        f"""WITH window_values AS (
               SELECT DISTINCT source_type, source_name, merchant_id, lower(btrim({column})) AS v FROM {table}
               WHERE partition_date >= %(start)s AND partition_date < %(end)s AND btrim({column}) <> ''),
           dup AS (
               SELECT t.source_type, t.source_name, t.merchant_id, lower(btrim(t.{column})) AS v FROM {table} t
               JOIN window_values w ON w.source_type = t.source_type AND w.source_name = t.source_name
                    AND w.merchant_id = t.merchant_id AND w.v = lower(btrim(t.{column}))
               GROUP BY 1, 2, 3, 4 HAVING count(*) > 1)
           SELECT t.partition_date, t.source_name || '/' || t.merchant_id || '/' || t.source_id AS key
           FROM {table} t JOIN dup d ON d.source_type = t.source_type AND d.source_name = t.source_name
                AND d.merchant_id = t.merchant_id AND d.v = lower(btrim(t.{column}))
           WHERE t.partition_date >= %(start)s AND t.partition_date < %(end)s""",
        tables=(table,),
        description=description,
    )


DUPLICATE_CUSTOMER_EMAILS = _duplicates_rule(
    "unique_email", "customers", "email",
    "no two customers of one source and merchant share an email (a duplicate the source did not merge)")
DUPLICATE_PRODUCT_SKUS = _duplicates_rule(
    "unique_sku", "products", "sku", "no two products of one source and merchant share a SKU")


def core_entity_checks(sources: Sequence) -> dict[str, CheckGroup]:
    keys = ENTITY_SAMPLE_KEY
    # the tables' column defaults are values too (status 'unknown', kind 'order')
    order_statuses = mapped_values(sources, "orders", "status", always=["unknown"])
    order_kinds = mapped_values(sources, "orders", "kind", always=["order"])
    product_statuses = mapped_values(sources, "products", "status", always=["unknown"])
    order_enums = [OneOf(c, v) for c, v in (("status", order_statuses), ("kind", order_kinds)) if v]
    product_enums = [OneOf("status", product_statuses)] if product_statuses else []
    # completeness looks at nullable columns only: a NOT NULL column (orders.currency and total,
    # order_lines.quantity, products.name) cannot be incomplete, and a check that cannot fail is noise
    return {
        "core_orders_quality_checks": CheckGroup([
            completeness_check(ORDERS, "orders", ["order_number", "ordered_at", "source_updated_at"],
                               key_columns=keys),
            validity_check(ORDERS, "orders", [CurrencyCode("currency"), NotInFuture("ordered_at"), *order_enums],
                           key_columns=keys),
            money_check(ORDERS, "orders", ["total", "subtotal", "discount", "tax", "shipping"], key_columns=keys),
            sql_rule_check(ORDERS, ORDER_TOTAL_MATCHES_LINES),
            sql_rule_check(ORDERS, order_customer_exists(sources)),
            volume_check(ORDERS, "orders", money_columns=["total"]),
        ]),
        "core_order_lines_quality_checks": CheckGroup([
            completeness_check(ORDER_LINES, "order_lines", ["total"], key_columns=keys),
            validity_check(ORDER_LINES, "order_lines", [CurrencyCode("currency")], key_columns=keys),
            money_check(ORDER_LINES, "order_lines", ["quantity", "unit_price", "discount", "tax", "total"],
                        key_columns=keys),
            sql_rule_check(ORDER_LINES, LINE_HAS_ORDER),
        ]),
        "core_customers_quality_checks": CheckGroup([
            completeness_check(CUSTOMERS, "customers", ["email", "full_name"], key_columns=keys),
            validity_check(CUSTOMERS, "customers", [Email("email"), NotInFuture("created_at")], key_columns=keys),
            sql_rule_check(CUSTOMERS, DUPLICATE_CUSTOMER_EMAILS, kind="uniqueness"),
            volume_check(CUSTOMERS, "customers"),
        ]),
        "core_products_quality_checks": CheckGroup([
            completeness_check(PRODUCTS, "products", ["sku", "price"], key_columns=keys),
            validity_check(PRODUCTS, "products", [CurrencyCode("currency"), *product_enums, NotInFuture("created_at")],
                           key_columns=keys),
            money_check(PRODUCTS, "products", ["price"], key_columns=keys),
            sql_rule_check(PRODUCTS, DUPLICATE_PRODUCT_SKUS, kind="uniqueness"),
            volume_check(PRODUCTS, "products"),
        ]),
    }


# --- the orders star -----------------------------------------------------------------------------

# Fact rows (one per line, one for an order without lines), orders, the orders' totals (once per
# order) and the lines' totals, per day: core computes what the fact should hold, ClickHouse what it holds.
ORDERS_FACT_CORE_SQL = """
SELECT o.partition_date, sum(greatest(coalesce(s.n, 0), 1)), count(*), sum(o.total), sum(coalesce(s.total, 0))
FROM orders o
LEFT JOIN LATERAL (
    SELECT count(*) AS n, sum(l.total) AS total FROM order_lines l
    WHERE l.source_type = o.source_type AND l.source_name = o.source_name
      AND l.merchant_id = o.merchant_id AND l.order_source_id = o.source_id) s ON true
WHERE o.partition_date >= %(start)s AND o.partition_date < %(end)s
GROUP BY 1
"""
ORDERS_FACT_WAREHOUSE_SQL = """
SELECT partition_date, sum(lines), count(), sum(order_total), sum(line_total)
FROM (SELECT partition_date, source_type, source_name, merchant_id, order_source_id, count() AS lines,
             any(order_total) AS order_total, sum(ifNull(line_total, 0)) AS line_total
      FROM orders_fact FINAL WHERE partition_date >= {start} AND partition_date < {end}
      GROUP BY partition_date, source_type, source_name, merchant_id, order_source_id)
GROUP BY partition_date
"""


def warehouse_entity_checks() -> list[QualityCheck]:
    return [
        uniqueness_check(ORDERS_FACT, "orders_fact",
                         ("source_type", "source_name", "merchant_id", "order_source_id", "line_source_id")),
        metric_reconciliation_check(
            ORDERS_FACT, core_sql=ORDERS_FACT_CORE_SQL, warehouse_sql=ORDERS_FACT_WAREHOUSE_SQL,
            counts=["rows", "orders"], sums=["order_total", "line_total"],
            description="PostgreSQL orders and order_lines and ClickHouse orders_fact agree per partition on fact rows, "
            "orders, the sum of order totals and the sum of line totals."),
        uniqueness_check(CUSTOMERS_DIM, "customers_dim", ("source_type", "source_name", "merchant_id", "source_id")),
        reconciliation_check(CUSTOMERS_DIM, "customers", "customers_dim"),
        uniqueness_check(PRODUCTS_DIM, "products_dim", ("source_type", "source_name", "merchant_id", "source_id")),
        reconciliation_check(PRODUCTS_DIM, "products", "products_dim", money_columns=["price"]),
    ]


# --- webhook events ------------------------------------------------------------------------------


def webhook_checks() -> list[QualityCheck]:
    """Webhook events by the day they were received: the share that failed or was ignored, events
    pending too long, and the day's volume."""
    common = {"partition_expr": RECEIVED_DAY, "key_columns": EVENT_SAMPLE_KEY}
    return [
        validity_check(WEBHOOK_EVENTS, "webhook_events", [Predicate("status", "failed", "status = 'failed'")],
                       name="failed_events", description="Share of the day's events that could not be applied "
                       "(status failed, sent to dead_letters) is within the configured limit.", **common),
        validity_check(WEBHOOK_EVENTS, "webhook_events", [Predicate("status", "ignored", "status = 'ignored'")],
                       name="ignored_events", description="Share of the day's events ignored (nothing core models) "
                       "is within the configured limit.", **common),
        overdue_check(WEBHOOK_EVENTS, "webhook_events", waiting="status = 'pending'", since_column="received_at",
                      name="pending_overdue", **common),
        volume_check(WEBHOOK_EVENTS, "webhook_events", partition_expr=RECEIVED_DAY),
    ]


def entity_check_groups(sources, *, webhooks: bool = True) -> dict[str, CheckGroup]:
    """Op name -> the checks it runs, for the API sources of ``sources`` (a loaded sources file)."""
    from kingtavo_pipeline.defs.ingest.api import salla_partitions

    api = list(sources.api())
    groups: dict[str, CheckGroup] = {}
    if api:
        daily, per_merchant = raw_api_checks(api)
        if daily:
            groups["raw_api_quality_checks"] = CheckGroup(daily)
        if per_merchant:
            groups["raw_salla_quality_checks"] = CheckGroup(per_merchant, salla_partitions)
        groups.update(core_entity_checks(api))
        groups["warehouse_entities_quality_checks"] = CheckGroup(warehouse_entity_checks())
    if webhooks:
        groups["webhook_events_quality_checks"] = CheckGroup(webhook_checks())
    return groups
