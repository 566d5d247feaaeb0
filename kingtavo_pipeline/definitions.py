"""The code location: every definition under ``kingtavo_pipeline/defs``, merged.

Importing this module reads the sources file and builds definitions; it opens no connection and
starts no server (stores are opened by the steps that use them).
"""

import dagster as dg

import kingtavo_pipeline.defs


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_defs(kingtavo_pipeline.defs)
