"""Load mapping files (YAML or JSON) and validate them; every error names the file and the field."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kingtavo_pipeline.config_errors import format_validation_errors
from kingtavo_pipeline.mapping.engine import CompiledMapping, MappingError
from kingtavo_pipeline.mapping.spec import MappingSpec

# The mappings shipped with the package: kingtavo_pipeline/mappings/<integration>_<entity>.yaml
MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"


class MappingFileError(ValueError):
    """A mapping file that cannot be used; the message starts with the file and the field."""


def parse_mapping(data: Any, source: str = "<mapping>") -> MappingSpec:
    """A decoded mapping document -> :class:`MappingSpec`, or :class:`MappingFileError`."""
    if not isinstance(data, dict):
        raise MappingFileError(f"{source}: a mapping file must hold a mapping (got {type(data).__name__})")
    try:
        return MappingSpec.model_validate(data)
    except ValidationError as exc:
        raise MappingFileError(f"{source}: {format_validation_errors(exc)}") from None


def load_mapping(path: str | Path) -> MappingSpec:
    """Read and validate one mapping file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise MappingFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from None
    return parse_mapping(data, str(path))


def compile_file(path: str | Path) -> CompiledMapping:
    """Load, validate and compile a mapping file."""
    spec = load_mapping(path)
    try:
        return CompiledMapping(spec, name=str(path))
    except MappingError as exc:
        raise MappingFileError(str(exc)) from None


@lru_cache(maxsize=None)
def shipped_mapping(integration: str, entity: str) -> CompiledMapping:
    """The packaged mapping for ``integration``/``entity`` (``mappings/<integration>_<entity>.yaml``), compiled once."""
    path = MAPPINGS_DIR / f"{integration}_{entity}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))
        raise MappingFileError(f"{path.name}: no shipped mapping for {integration}/{entity} (have: {', '.join(known)})")
    return compile_file(path)


def shipped_mappings() -> dict[str, Path]:
    return {p.stem: p for p in sorted(MAPPINGS_DIR.glob("*.yaml"))}
