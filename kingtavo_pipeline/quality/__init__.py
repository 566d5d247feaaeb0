"""Data-quality logic shared by the asset checks: statistics, rules, thresholds, scores and alerts.

Pure Python: no Dagster and no database imports. ``kingtavo_pipeline.defs.quality`` turns these
into asset checks that run the rules' SQL in the stores.
"""
