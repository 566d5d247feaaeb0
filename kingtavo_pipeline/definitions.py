"""The code location: each part under ``kingtavo_pipeline/defs`` exposes a small ``Definitions``;
this module only merges them.

Importing it reads the sources file and builds definitions; it opens no connection and starts no
server (stores are opened by the steps that use them). The merge is explicit rather than a folder
scan because every Dagster step process loads this module: keeping that cheap keeps steps fast.
"""

import warnings

import dagster as dg

# Single-run backfills and partitioned asset checks are marked beta/preview; we rely on them on purpose.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from kingtavo_pipeline.defs import resources, schedules  # noqa: E402
from kingtavo_pipeline.defs.core import assets as core  # noqa: E402
from kingtavo_pipeline.defs.core import entities as core_entities  # noqa: E402
from kingtavo_pipeline.defs.core import sensors as core_sensors  # noqa: E402
from kingtavo_pipeline.defs.ingest import api as ingest_api  # noqa: E402
from kingtavo_pipeline.defs.ingest import assets as ingest  # noqa: E402
from kingtavo_pipeline.defs import quality, webhooks  # noqa: E402
from kingtavo_pipeline.defs.warehouse import assets as warehouse  # noqa: E402
from kingtavo_pipeline.defs.warehouse import entities as warehouse_entities  # noqa: E402


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        resources.defs(), ingest.defs(), ingest_api.defs(), core.defs(), core_entities.defs(), core_sensors.defs(),
        warehouse.defs(), warehouse_entities.defs(), schedules.defs(), webhooks.defs(), quality.defs()
    )
