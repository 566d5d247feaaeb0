"""Ground truth: the current version of every object, rendered by the same code as the APIs but
without faults, and the ids the malformed-record switch currently breaks."""

from __future__ import annotations

from datetime import date
from typing import Any

from kingtavo_pipeline.sandbox.data import utc_date
from kingtavo_pipeline.sandbox.state import SandboxState

ENTITIES = {"salla": ("orders", "products", "customers"), "printavo": ("invoices", "quotes", "customers", "statuses")}


class Truth:
    def __init__(self, state: SandboxState):
        self._state = state
        self._world = state.world

    # ------------------------------------------------------------ Salla

    def salla_orders(
        self, merchant_id: str | int, start: date | None = None, end: date | None = None
    ) -> list[dict[str, Any]]:
        """Order details with ``items``, created (Asia/Riyadh date) within [start, end], by id."""
        m = self._world.merchant(merchant_id)
        orders = sorted(self._world.salla_orders(m, start, end), key=lambda o: o.id)
        return [self._world.salla_order_full(m, o) for o in orders]

    def salla_order_count(self, merchant_id: str | int, start: date | None = None, end: date | None = None) -> int:
        return len(self._world.salla_orders(self._world.merchant(merchant_id), start, end))

    def salla_products(self, merchant_id: str | int) -> list[dict[str, Any]]:
        return self._world.salla_products(self._world.merchant(merchant_id))

    def salla_customers(self, merchant_id: str | int) -> list[dict[str, Any]]:
        return self._world.salla_customers(self._world.merchant(merchant_id))

    # ------------------------------------------------------------ Printavo

    def _printavo(self, kind: str, start: date | None, end: date | None) -> list[dict[str, Any]]:
        out = []
        for o in self._world.printavo_orders(kind):
            day = utc_date(o.created_ts)  # Invoice.createdAt, a date
            if (start is None or day >= start) and (end is None or day <= end):
                out.append(self._world.printavo_order_plain(o))
        return out

    def printavo_invoices(self, start: date | None = None, end: date | None = None) -> list[dict[str, Any]]:
        """Invoices whose ``createdAt`` is within [start, end], as plain dicts (connections as {"nodes": [...]})."""
        return self._printavo("Invoice", start, end)

    def printavo_quotes(self, start: date | None = None, end: date | None = None) -> list[dict[str, Any]]:
        return self._printavo("Quote", start, end)

    def printavo_customers(self) -> list[dict[str, Any]]:
        return self._world.printavo_customers()

    def printavo_statuses(self) -> list[dict[str, Any]]:
        return self._world.printavo_statuses()

    # ------------------------------------------------------------ faults

    def malformed_ids(
        self,
        api: str,
        entity: str,
        merchant_id: str | int | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[str]:
        """Ids of the records the API currently returns broken (``Faults.malformed_rate``)."""
        faults = self._state.faults
        if api == "salla":
            ids = self._salla_ids(entity, merchant_id, start, end)
            return [str(i) for i in ids if faults.is_malformed("salla", entity, i)]
        if api == "printavo" and entity in ("invoices", "quotes", "orders"):
            kind = {"invoices": "Invoice", "quotes": "Quote"}.get(entity)
            ids = [
                o.id
                for o in self._world.printavo_orders(kind)
                if (start is None or utc_date(o.created_ts) >= start) and (end is None or utc_date(o.created_ts) <= end)
            ]
            return [i for i in ids if faults.is_malformed("printavo", "orders", i)]
        return []

    def drifted_ids(
        self,
        api: str,
        entity: str,
        merchant_id: str | int | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[str]:
        """Ids of the Salla records the schema-drift switches currently apply to (``Faults.drift_rate``)."""
        faults = self._state.faults
        if api != "salla" or not faults.drifting:
            return []
        ids = self._salla_ids(entity, merchant_id, start, end)
        return [str(i) for i in ids if faults.is_drifted("salla", entity, i)]

    def _salla_ids(self, entity: str, merchant_id: str | int | None, start: date | None,
                   end: date | None) -> list[int]:
        """A merchant's record ids of ``entity`` (orders created in [start, end]); [] for others."""
        m = self._world.merchant(merchant_id)
        if entity == "orders":
            return [o.id for o in self._world.salla_orders(m, start, end)]
        if entity == "products":
            return [p["id"] for p in self._world.salla_products(m)]
        if entity == "customers":
            return [c["id"] for c in self._world.salla_customers(m)]
        return []

    # ------------------------------------------------------------ HTTP view

    def report(
        self, api: str, entity: str, merchant_id: str | None = None, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """What ``GET /_sandbox/truth/{api}/{entity}`` answers."""
        if entity not in ENTITIES.get(api, ()):
            raise KeyError(f"unknown truth {api}/{entity}; known: {ENTITIES}")
        if api == "salla":
            if merchant_id is None:
                raise ValueError("merchant_id is required for Salla truth")
            data = {
                "orders": lambda: self.salla_orders(merchant_id, start, end),
                "products": lambda: self.salla_products(merchant_id),
                "customers": lambda: self.salla_customers(merchant_id),
            }[entity]()
        else:
            data = {
                "invoices": lambda: self.printavo_invoices(start, end),
                "quotes": lambda: self.printavo_quotes(start, end),
                "customers": self.printavo_customers,
                "statuses": self.printavo_statuses,
            }[entity]()
        return {
            "api": api,
            "entity": entity,
            "merchant_id": merchant_id,
            "start": start.isoformat() if start else None,
            "end": end.isoformat() if end else None,
            "count": len(data),
            "malformed_ids": self.malformed_ids(api, entity, merchant_id, start, end),
            "drifted_ids": self.drifted_ids(api, entity, merchant_id, start, end),
            "data": data,
        }
