"""Partitions shared by every layer: one day, in UTC."""

import dagster as dg

FIRST_DAY = "2024-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC")

# Backfills over many days run as one run per asset step, over the whole time window.
single_run_backfill = dg.BackfillPolicy.single_run()
