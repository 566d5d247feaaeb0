"""The shape of a mapping file (pydantic): one raw entity of one integration -> one or more targets.

Paths are dotted keys into the record (``amounts.total``); a numeric segment indexes an array
(``images.0.url``). In an ``expand`` target the record is a list of array elements named by a path
whose array segments end in ``[]`` (``items[]``, ``lineItemGroups.nodes[].lineItems.nodes[]``); its
field paths are relative to the element, ``$.`` reads the record itself, ``^.`` the enclosing
element of a nested expand, ``$index`` is the element's position among the record's rows, and
``@source_id`` / ``@merchant_id`` read the raw row's bookkeeping columns.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kingtavo_pipeline.mapping.transforms import REGISTRY

FieldType = Literal["text", "url", "decimal", "number", "integer", "timestamp"]
BOOKKEEPING_INPUTS = ("source_id", "merchant_id", "raw_data_id")
_SEGMENT = r"[A-Za-z_][A-Za-z0-9_\-]*|-?\d+"
PATH_RE = re.compile(rf"^(?:{_SEGMENT})(?:\.(?:{_SEGMENT}))*$")
EXPAND_RE = re.compile(rf"^(?:(?:{_SEGMENT})(?:\.(?:{_SEGMENT}))*\[\])(?:\.(?:{_SEGMENT})(?:\.(?:{_SEGMENT}))*\[\])*$")


def check_input(path: str) -> str:
    """Validate one field input reference (see the module docstring)."""
    if path == "$index" or (path.startswith("@") and path[1:] in BOOKKEEPING_INPUTS):
        return path
    if path.startswith("@"):
        raise ValueError(f"unknown raw column {path!r} (known: {', '.join('@' + c for c in BOOKKEEPING_INPUTS)})")
    bare = path[2:] if path.startswith(("$.", "^.")) else path
    if not PATH_RE.match(bare):
        raise ValueError(f"{path!r} is not a dotted path (keys and array indexes separated by '.')")
    return path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformCall(_Model):
    """``lower``, or ``{name: concat, sep: " "}``: a registered transform and its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _known(self) -> TransformCall:
        transform = REGISTRY.get(self.name)
        if transform is None:
            raise ValueError(f"unknown transform {self.name!r} (known: {', '.join(sorted(REGISTRY))})")
        unknown = sorted(set(self.params) - transform.params)
        if unknown:
            allowed = ", ".join(sorted(transform.params)) or "none"
            raise ValueError(f"transform {self.name!r}: unknown parameter(s) {unknown} (allowed: {allowed})")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EnumSpec(_Model):
    """Values -> canonical values (keys compared case-insensitively unless told otherwise)."""

    map: dict[str, str]
    default: str | None = None
    case_insensitive: bool = True

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `1: pending` as an int key and `yes:` as a bool; the source's value is text
        if isinstance(value, dict):
            return {(str(k).lower() if isinstance(k, bool) else str(k)): v for k, v in value.items()}
        return value


class FieldSpec(_Model):
    """One output column: where it comes from (``path``, ``paths`` or ``const``), and how it is read."""

    path: str | None = None
    paths: list[str] | None = None
    const: Any = None
    type: FieldType = "text"
    required: bool = False
    default: Any = None
    transform: list[TransformCall] = Field(default_factory=list)
    enum: EnumSpec | None = None
    # timestamps: the zone of times without an offset (a sibling path, else this zone, else the file's)
    timezone: str | None = None
    timezone_path: str | None = None
    format: str | None = None
    dayfirst: bool = False
    unit: Literal["s", "ms", "us"] | None = None
    # integers: the smallest value accepted
    min: float | None = None

    @field_validator("transform", mode="before")
    @classmethod
    def _transform_list(cls, value: Any) -> Any:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]

    @field_validator("path", "timezone_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else check_input(value)

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("paths must not be empty")
            for path in value:
                check_input(path)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_zone(value)

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        # ``const: null`` is a source too (a column the integration does not have)
        given = [name for name in ("path", "paths", "const") if getattr(self, name) is not None or name in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, paths, const (got {given or 'none'})")
        inputs = len(self.paths) if self.paths is not None else 1
        first = REGISTRY[self.transform[0].name] if self.transform else None
        if inputs > 1 and (first is None or (first.max_inputs is not None and first.max_inputs < inputs)):
            raise ValueError(f"{inputs} paths need a first transform that takes several inputs (concat, join, first_non_null)")
        for call in self.transform[1:]:
            if REGISTRY[call.name].min_inputs > 1:
                raise ValueError(f"transform {call.name!r} takes several inputs: it can only come first")
        if self.timezone_path is not None and self.type != "timestamp":
            raise ValueError("timezone_path applies to timestamp fields only")
        return self

    @property
    def is_const(self) -> bool:
        return "const" in self.model_fields_set

    @property
    def inputs(self) -> list[str]:
        if self.paths is not None:
            return list(self.paths)
        return [self.path] if self.path is not None else []


class TargetSpec(_Model):
    """One output entity. ``expand`` makes one row per array element instead of one per record;
    ``required: true`` rejects a record whose (outermost) array is missing."""

    expand: str | None = None
    required: bool = False
    fields: dict[str, FieldSpec]

    @field_validator("expand")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        if value is not None and not EXPAND_RE.match(value):
            raise ValueError(f"{value!r} is not an array path (array segments end in '[]', e.g. items[] or a.nodes[].b.nodes[])")
        return value

    @model_validator(mode="after")
    def _references(self) -> TargetSpec:
        if not self.fields:
            raise ValueError("a target needs at least one field")
        levels = len(self.expand.split("[]")) - 1 if self.expand else 0
        for name, spec in self.fields.items():
            for path in [*spec.inputs, *([spec.timezone_path] if spec.timezone_path else [])]:
                if path.startswith("^.") and levels < 2:
                    raise ValueError(f"fields.{name}: {path!r} reads an enclosing element, which needs a nested expand")
                if path == "$index" and not levels:
                    raise ValueError(f"fields.{name}: $index needs an expand target")
        return self


class OverrideSpec(_Model):
    """Field specs replacing the file's for one merchant's rows: ``<target>.<field>``, or ``<field>``
    of the first target."""

    fields: dict[str, FieldSpec]


class MappingSpec(_Model):
    integration: str
    entity: str
    description: str | None = None
    version: int = 1
    timezone: str = "UTC"  # of times without an offset, unless a field says otherwise
    targets: dict[str, TargetSpec]
    overrides: dict[str, OverrideSpec] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("overrides", mode="before")
    @classmethod
    def _merchant_keys(cls, value: Any) -> Any:
        # merchant ids are text in the raw table; YAML reads a bare 12345 as an int
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _overrides_name_fields(self) -> MappingSpec:
        if not self.targets:
            raise ValueError("a mapping needs at least one target")
        for merchant, override in self.overrides.items():
            for key in override.fields:
                target, name = self.resolve_override(key)
                if target not in self.targets or name not in self.targets[target].fields:
                    raise ValueError(f"overrides.{merchant}.fields.{key}: no such field in the mapping's targets")
        return self

    def resolve_override(self, key: str) -> tuple[str, str]:
        target, _, name = key.partition(".")
        if name and target in self.targets:
            return target, name
        return next(iter(self.targets)), key


def check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value
