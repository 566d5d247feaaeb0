"""Fault injection: per-request failures drawn from a seeded RNG, per-record breakage decided by a
stable hash (so the same records stay broken while the switch is on, and the ground truth can name
them), and schema drift applied to payload objects."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from kingtavo_pipeline.sandbox.config import Faults
from kingtavo_pipeline.sandbox.data import rng_for

BROKEN_NUMBER = "#VALUE!"  # what a spreadsheet-fed back office leaves in a money field


@dataclass(frozen=True)
class Decision:
    """What to do with one API request: ``kind`` is None (serve it), "storm"/"429", "5xx" or "timeout"."""

    kind: str | None
    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None


class FaultInjector:
    def __init__(self, seed: int, faults: Faults | None = None):
        self.seed = seed
        self._lock = threading.Lock()
        self._generation = 0
        self.set(faults or Faults())

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._storm_left = faults.storm_429_requests
            self._generation += 1
            # reseeded on every switch: the same switches in the same request order replay exactly
            self._rng = rng_for("faults", self.seed, self._generation)

    @property
    def storm_left(self) -> int:
        return self._storm_left

    def decide(self) -> Decision:
        f = self.faults
        with self._lock:
            # three draws every request keep the sequence independent of which rates are set
            r_timeout, r_5xx, r_429 = self._rng.random(), self._rng.random(), self._rng.random()
            status_5xx = self._rng.choice((500, 502, 503))
            if self._storm_left > 0:
                self._storm_left -= 1
                return Decision("storm", 429, f.slow_seconds, f.retry_after)
        if r_timeout < f.rate_timeout:
            return Decision("timeout", 504, f.timeout_seconds)
        if r_5xx < f.rate_5xx:
            return Decision("5xx", status_5xx, f.slow_seconds)
        if r_429 < f.rate_429:
            return Decision("429", 429, f.slow_seconds, f.retry_after)
        return Decision(None, 200, f.slow_seconds)

    # ------------------------------------------------------------ records

    def is_malformed(self, api: str, entity: str, record_id: object) -> bool:
        rate = self.faults.malformed_rate
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{api}:{entity}:{record_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    def is_drifted(self, api: str, entity: str, record_id: object) -> bool:
        """Whether the drift switches apply to this record (``Faults.drift_rate`` of them, by a stable hash)."""
        if not self.drifting:
            return False
        rate = self.faults.drift_rate
        if rate >= 1:
            return True
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:drift:{api}:{entity}:{record_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    @property
    def drifting(self) -> bool:
        return bool(self.faults.rename_fields or self.faults.add_fields)

    def drift(self, obj: Any, api: str | None = None, entity: str | None = None, record_id: object = None) -> Any:
        """Schema drift on one top-level REST object: keys renamed at every depth, fields added on top.

        With ``api``/``entity``/``record_id`` only the records :meth:`is_drifted` picks drift."""
        if api is not None and not self.is_drifted(api, entity or "", record_id):
            return obj
        f = self.faults
        if f.rename_fields:
            obj = _rename(obj, f.rename_fields)
        if f.add_fields and isinstance(obj, dict):
            obj = {**obj, **f.add_fields}
        return obj


def _rename(value: Any, renames: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {renames.get(k, k): _rename(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    return value


def break_salla_order(obj: dict[str, Any]) -> dict[str, Any]:
    """A detail (``amounts.total``) or a list row (``total``) whose total is not a number."""
    obj = dict(obj)
    if "amounts" in obj:
        obj["amounts"] = {**obj["amounts"], "total": {**obj["amounts"]["total"], "amount": BROKEN_NUMBER}}
    if "total" in obj:
        obj["total"] = {**obj["total"], "amount": BROKEN_NUMBER}
    return obj


def break_salla_product(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "price": {**obj["price"], "amount": BROKEN_NUMBER}}


def break_salla_customer(obj: dict[str, Any]) -> dict[str, Any]:
    """A customer without its id."""
    return {k: v for k, v in obj.items() if k != "id"}


def break_printavo_order(obj: dict[str, Any]) -> dict[str, Any]:
    """GraphQL types keep a Float a Float, so a broken invoice total arrives as null."""
    return {**obj, "total": None}
