"""What every API connector yields, and the one shape the raw layer lands.

A connector is pure: it sees a base URL, credentials and an HTTP policy, and pages through an
API. It never touches a database; the raw asset lands each :class:`Page` and only then stores the
page's checkpoint, so a checkpoint never moves past data that was not committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class SourceRecord:
    """One API object as the API returned it (children the connector fetched embedded in it)."""

    entity: str
    source_id: str
    payload: dict[str, Any]
    # the business time that places the record in a daily partition (an order's creation time)
    occurred_at: datetime | None
    # the API's own modification time: decides which version wins; None when the API has none
    updated_at: datetime | None
    merchant_id: str = ""


@dataclass(frozen=True)
class Page:
    """A page of records and the resume position that is valid once they are committed."""

    records: list[SourceRecord]
    checkpoint: str | None = None
    # the API's own total for the query, when it reports one (reconciliation)
    reported_total: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Connector(Protocol):
    """An API source. ``entities`` names what it can pull."""

    entities: tuple[str, ...]

    def pull(self, entity: str, *, start: datetime, end: datetime) -> Iterator[Page]:
        """Every record of ``entity`` whose ``occurred_at`` falls in ``[start, end)`` (a partition)."""
        ...

    def pull_changes(self, entity: str, *, since: str | None) -> Iterator[Page]:
        """Records changed after the checkpoint ``since`` (None: the connector's default look-back).

        Each page's ``checkpoint`` is the next ``since``; it is stored only after the page is landed.
        """
        ...
