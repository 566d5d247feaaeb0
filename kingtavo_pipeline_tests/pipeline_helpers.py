"""Helpers for tests that run the asset graph through real Dagster runs."""

from __future__ import annotations

import dagster as dg

from kingtavo_pipeline.definitions import defs as load_definitions

SAMPLE_START, SAMPLE_END = "2024-11-01", "2024-11-03"


def run_unified_job(start: str = SAMPLE_START, end: str = SAMPLE_END, *, instance=None, raise_on_error=True):
    """One single-run backfill of the whole CSV/RSS graph over [start, end], in process."""
    job = load_definitions().resolve_job_def("unified_items_job")
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
        raise_on_error=raise_on_error,
    )


def table_counts(store, clickhouse) -> dict[str, int]:
    counts = {t: store.fetch_value(f"SELECT count(*) FROM {t}") for t in ("raw_data", "unified_items", "dead_letters")}
    counts["warehouse_unified_items"] = clickhouse.query("SELECT count() FROM unified_items FINAL").result_rows[0][0]
    return counts


def one_csv_source(tmp_path, monkeypatch, fields: str):
    """Make ``tmp_path/orders.csv`` the only source (``orders``: ``id_column: id``, ``date_column:
    day``, ``fields: {...}`` as given) for core, and return ``(its raw asset, the resources)``.

    The raw asset is not among core's declared deps, so tests materialize the layers in order.
    Calling it again with other fields re-maps the same file."""
    import kingtavo_pipeline.defs.core.assets as core_assets
    from kingtavo_pipeline.defs.ingest.assets import build_raw_assets
    from kingtavo_pipeline.sources.config import load_sources

    (tmp_path / "sources.yaml").write_text(
        "csv:\n  - name: orders\n    path: orders.csv\n    id_column: id\n    date_column: day\n"
        f"    fields: {{{fields}}}\n"
    )
    sources = load_sources(tmp_path / "sources.yaml")
    monkeypatch.setattr(core_assets, "SOURCES", sources)
    [raw_asset] = build_raw_assets(sources)
    return raw_asset, dict(load_definitions().resources)


# --- API sources against the sandbox (or any local server) ------------------------------------


def partition_range(start: str, end: str) -> dict[str, str]:
    """The tags of a single-run backfill over ``[start, end]`` (dates, or multi-partition keys)."""
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def http_yaml(http: dict | None) -> str:
    """A source's ``http:`` block (indented for a list entry), or ''."""
    if not http:
        return ""
    return "    http:\n" + "".join(f"      {k}: {v}\n" for k, v in http.items())


def sandbox_sources_yaml(base_url: str, *, printavo: bool = True, salla_merchants=(), salla_entities=None,
                         salla_rpm: int = 6000, http: dict | None = None) -> str:
    """A sources file with the sandbox's Printavo and/or Salla (``salla_merchants``) as API sources."""
    text = ""
    if printavo:
        text += (f"printavo:\n  - name: printavo\n    base_url: {base_url}/printavo/api/v2\n"
                 "    entities: [invoices, customers]\n    requests_per_window: 1000\n    window_seconds: 1\n"
                 + http_yaml(http))
    if salla_merchants:
        text += (f"salla:\n  - name: salla\n    base_url: {base_url}/salla/admin/v2\n"
                 f"    token_url: {base_url}/salla/oauth2/token\n    requests_per_minute: {salla_rpm}\n"
                 f"    merchants: [{', '.join(repr(str(m)) for m in salla_merchants)}]\n"
                 + (f"    entities: [{', '.join(salla_entities)}]\n" if salla_entities else "")
                 + http_yaml(http))
    return text


def use_api_sources(tmp_path, monkeypatch, yaml_text: str):
    """Make ``yaml_text`` (written to ``tmp_path/sources.yaml``) the API sources of the raw API
    assets and of core; returns ``(sources, raw assets, resources)``."""
    import kingtavo_pipeline.defs.core.entities as core_entities
    import kingtavo_pipeline.defs.ingest.api as ingest_api
    from kingtavo_pipeline.sources.config import load_sources

    path = tmp_path / "sources.yaml"
    path.write_text(yaml_text)
    sources = load_sources(path)
    for module in (ingest_api, core_entities):
        monkeypatch.setattr(module, "SOURCES", sources)
    return sources, ingest_api.build_api_raw_assets(sources.api()), dict(load_definitions().resources)


def sandbox_credentials(monkeypatch, store, box, merchants=()) -> None:
    """The sandbox's Printavo and Salla app credentials in the environment (``monkeypatch``; for a
    subprocess, :func:`sandbox_env`), and each merchant's token pair stored in ``source_credentials``."""
    from kingtavo_pipeline.storage.credentials import save_credentials

    for key, value in sandbox_env(box).items():
        monkeypatch.setenv(key, value)
    for merchant_id in merchants:
        merchant = box.credentials.salla_merchant(merchant_id)
        save_credentials(store, "salla", "salla", merchant.merchant_id, merchant.access_token,
                         merchant.refresh_token, 3600)


def sandbox_env(box) -> dict[str, str]:
    creds = box.credentials
    return {"PRINTAVO_EMAIL": creds.printavo_email, "PRINTAVO_TOKEN": creds.printavo_token,
            "SALLA_CLIENT_ID": creds.salla_client_id, "SALLA_CLIENT_SECRET": creds.salla_client_secret}


def salla_raw_assets(raw_assets) -> list:
    return [a for a in raw_assets if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]


def daily_raw_assets(raw_assets) -> list:
    return [a for a in raw_assets if not isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]


def salla_key(day: str, merchant: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": day, "merchant": merchant})
