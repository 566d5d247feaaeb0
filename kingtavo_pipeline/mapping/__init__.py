"""Declarative mappings: raw API records -> core entity rows, vectorised over a batch.

Pure: pandas, pyarrow, orjson and pydantic; no Dagster, no database. A mapping file (YAML or JSON,
see :mod:`.spec`) names the targets of one raw entity and how each field is read; :func:`map_batch`
runs a compiled mapping over a batch of raw rows.
"""

from kingtavo_pipeline.mapping.columns import Problem, parse_amounts, parse_timestamps
from kingtavo_pipeline.mapping.engine import (
    BOOKKEEPING,
    ENGINE_VERSION,
    ERROR_TYPES,
    REJECT_COLUMNS,
    CompiledMapping,
    Evaluated,
    MappingError,
    MappingOutput,
    compile_mapping,
    evaluate,
    map_batch,
)
from kingtavo_pipeline.mapping.extract import decode_json
from kingtavo_pipeline.mapping.loader import (
    MAPPINGS_DIR,
    MappingFileError,
    compile_file,
    load_mapping,
    parse_mapping,
    shipped_mapping,
    shipped_mappings,
)
from kingtavo_pipeline.mapping.spec import EnumSpec, FieldSpec, MappingSpec, OverrideSpec, TargetSpec, TransformCall
from kingtavo_pipeline.mapping.transforms import REGISTRY, register

__all__ = [
    "BOOKKEEPING",
    "ENGINE_VERSION",
    "ERROR_TYPES",
    "MAPPINGS_DIR",
    "REGISTRY",
    "REJECT_COLUMNS",
    "CompiledMapping",
    "EnumSpec",
    "Evaluated",
    "FieldSpec",
    "MappingError",
    "MappingFileError",
    "MappingOutput",
    "MappingSpec",
    "OverrideSpec",
    "Problem",
    "TargetSpec",
    "TransformCall",
    "compile_file",
    "compile_mapping",
    "decode_json",
    "evaluate",
    "load_mapping",
    "map_batch",
    "parse_amounts",
    "parse_mapping",
    "parse_timestamps",
    "register",
    "shipped_mapping",
    "shipped_mappings",
]
