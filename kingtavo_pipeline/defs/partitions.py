"""Partitions shared by every layer: one day, in UTC.

The current day is a partition too (``end_offset=1``): webhook events and the 15-minute pulls
land under today, and core and the warehouse take them within the day rather than after
midnight. Today's partition is open: the daily schedules run for yesterday (``yesterday``), and
the quality checks that judge a whole day (volume) leave an open day alone.
"""

import datetime as dt

import dagster as dg

FIRST_DAY = "2024-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC", end_offset=1)

# Backfills over many days run as one run per asset step, over the whole time window.
single_run_backfill = dg.BackfillPolicy.single_run()


def yesterday(now: dt.datetime) -> str:
    """The partition key of the last complete day (UTC) at ``now``."""
    return (now.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
