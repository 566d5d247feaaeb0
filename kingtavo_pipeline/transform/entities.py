"""The core entity tables and which mapping file maps each raw entity of an API source into them.

Pure: the mapping engine (``kingtavo_pipeline.mapping``) does the work; this module picks the
files (a source's ``mappings`` entry, else the shipped ``mappings/<type>_<entity>.yaml``) and
shapes the engine's output into the columns each core table has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kingtavo_pipeline import mapping as mapping_engine
from kingtavo_pipeline.mapping import MAPPINGS_DIR, CompiledMapping, compile_file

# Parents first: an order's customer and products are written before it, lines after it.
ENTITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("source_id", "email", "first_name", "last_name", "full_name", "phone", "city", "country",
                  "created_at", "source_updated_at"),
    "products": ("source_id", "sku", "name", "status", "price", "currency", "stock_quantity", "category",
                 "created_at", "source_updated_at"),
    "orders": ("source_id", "order_number", "kind", "status", "raw_status", "customer_source_id", "currency",
               "subtotal", "discount", "tax", "shipping", "total", "ordered_at", "source_updated_at"),
    "order_lines": ("source_id", "order_source_id", "product_source_id", "sku", "name", "quantity", "unit_price",
                    "discount", "tax", "total", "currency", "source_updated_at"),
}
ENTITY_TABLES = tuple(ENTITY_COLUMNS)
# Raw rows core reads and maps per batch (one ``EntityMapper.map`` per entity in it): bounds the
# memory of a batch; the mapping benchmark maps batches of the same size.
ENTITY_BATCH_ROWS = 20_000
# what every core row carries from its raw record
CARRIED = ("raw_data_id", "partition_date", "observed_seq")


@dataclass
class EntityResult:
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    mapped_raw_ids: list[int]


def mapping_path(source, entity: str) -> Path:
    configured = getattr(source, "mappings", {}).get(entity)
    return Path(configured) if configured else MAPPINGS_DIR / f"{source.source_type}_{entity}.yaml"


class EntityMapper:
    """The compiled mappings of one API source, one per raw entity."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self._compiled: dict[str, CompiledMapping] = {}

    @classmethod
    def for_source(cls, source) -> EntityMapper:
        return cls({entity: mapping_path(source, entity) for entity in source.entities})

    def fingerprint(self) -> str:
        """What decides how the source maps: every mapping file's content and the engine's version
        (a change to either re-maps)."""
        digest = hashlib.sha256(f"engine {mapping_engine.ENGINE_VERSION}\0".encode())
        for entity, path in sorted(self.paths.items()):
            digest.update(entity.encode() + b"\0" + Path(path).read_bytes() + b"\0")
        return digest.hexdigest()

    def compiled(self, entity: str) -> CompiledMapping:
        if entity not in self._compiled:
            self._compiled[entity] = compile_file(self.paths[entity])
        return self._compiled[entity]

    def map(self, entity: str, raw: pd.DataFrame) -> EntityResult:
        """Map a batch of raw rows (raw_data_id, source_id, partition_date, observed_seq, merchant_id,
        payload as JSON text) of one raw entity into core table frames and rejects."""
        output = self.compiled(entity).run(raw.reset_index(drop=True))
        tables = {}
        for table, frame in output.frames.items():
            if table not in ENTITY_COLUMNS:
                continue
            columns = [c for c in ENTITY_COLUMNS[table] if c in frame] + [c for c in CARRIED if c in frame]
            tables[table] = frame[columns]
        rejected = set(output.rejects["raw_data_id"].astype("int64").tolist()) if not output.rejects.empty else set()
        mapped = [int(i) for i in raw["raw_data_id"].tolist() if int(i) not in rejected]
        return EntityResult(tables, output.rejects, mapped)
