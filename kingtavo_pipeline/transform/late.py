"""Which partitions to run again for records that landed after their day was processed (pure).

A raw step lands every record its source delivers under the record's own day, so a late record
(a file row for last week, an API update to an old order) waits in ``raw_data`` until a core run
takes its day. :func:`plan_late_runs` turns those waiting
days into contiguous ranges to run (one single-run backfill each) and the cursor to keep: it never
passes an observation it did not ask for, so records of a day that does not exist yet, or still
being landed by a run in progress (whose own core step will take them), are asked for later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class PendingDay:
    day: date
    records: int
    min_seq: int
    max_seq: int
    run_ids: Sequence[str]


@dataclass(frozen=True)
class LateRange:
    start: date
    end: date  # inclusive
    records: int
    max_seq: int

    @property
    def run_key(self) -> str:
        return f"late:{self.start.isoformat()}...{self.end.isoformat()}@{self.max_seq}"


def plan_late_runs(
    pending: Iterable[PendingDay],
    *,
    cursor: int,
    day_exists: Callable[[date], bool],
    run_in_progress: Callable[[str], bool],
) -> tuple[list[LateRange], int, list[str]]:
    """-> (ranges to run, the new cursor, reasons for the days held back)."""
    ready: list[PendingDay] = []
    held: list[PendingDay] = []
    reasons: list[str] = []
    for item in sorted(pending, key=lambda p: p.day):
        if not day_exists(item.day):
            held.append(item)
            reasons.append(f"{item.day}: no partition yet ({item.records} record(s))")
        elif any(run_in_progress(r) for r in item.run_ids if r):
            held.append(item)
            reasons.append(f"{item.day}: still being landed by a run in progress")
        else:
            ready.append(item)
    ranges: list[LateRange] = []
    for item in ready:
        last = ranges[-1] if ranges else None
        if last is not None and item.day == last.end + timedelta(days=1):
            ranges[-1] = LateRange(last.start, item.day, last.records + item.records, max(last.max_seq, item.max_seq))
        else:
            ranges.append(LateRange(item.day, item.day, item.records, item.max_seq))
    new_cursor = max([cursor, *(r.max_seq for r in ranges)])
    if held:
        new_cursor = min(new_cursor, min(h.min_seq for h in held) - 1)
    return ranges, max(new_cursor, cursor), reasons
