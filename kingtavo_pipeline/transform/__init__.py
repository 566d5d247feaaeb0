"""Transformations from raw payloads to the unified schema (pure pandas)."""

from .unified import (
    ERROR_TYPES,
    REJECT_COLUMNS,
    UNIFIED_FIELDS,
    VALID_COLUMNS,
    VERSION_COLUMNS,
    FieldSpec,
    MappingResult,
    map_to_unified,
    parse_amounts,
    parse_timestamps,
)

__all__ = [
    "ERROR_TYPES",
    "REJECT_COLUMNS",
    "UNIFIED_FIELDS",
    "VALID_COLUMNS",
    "VERSION_COLUMNS",
    "FieldSpec",
    "MappingResult",
    "map_to_unified",
    "parse_amounts",
    "parse_timestamps",
]
