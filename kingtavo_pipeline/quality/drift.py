"""Schema drift of raw payloads: fields that appeared, disappeared or changed type.

Compared with two references: what the mapping reads (``expected``: payload key -> JSON type, or
None for any type) and what earlier partitions delivered (``baseline``: key -> JSON types seen).
JSON types are PostgreSQL's ``jsonb_typeof`` names; ``null`` is no type (a missing value, not a
retyped field).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

JSON_TYPES = frozenset({"object", "array", "string", "number", "boolean", "null"})


@dataclass(frozen=True)
class Drift:
    new: tuple[str, ...]
    missing: tuple[str, ...]
    retyped: tuple[str, ...]  # "amount: string -> number"

    @property
    def passed(self) -> bool:
        return not (self.new or self.missing or self.retyped)


def _types(types: set[str] | frozenset[str]) -> set[str]:
    return {t for t in types if t != "null"}


def _private(key: str) -> bool:
    return key.startswith("_")  # our own bookkeeping keys (CSV _file, _line)


def schema_drift(
    observed: Mapping[str, set[str]],
    *,
    expected: Mapping[str, str | None],
    baseline: Mapping[str, set[str]] | None = None,
    strict: bool = False,
    ignore: Callable[[str], bool] = _private,
    known: Iterable[str] = (),
) -> Drift:
    """Drift of one partition's payloads (``observed``: key -> JSON types seen in it).

    ``known``: keys the mapping may read but need not find (alternatives such as
    ``paths: [currency, amounts.total.currency]``): never new, never missing.

    * missing: an expected key that no record of the partition carries;
    * new: a key the mapping does not read and no baseline partition carried (with no baseline,
      only a ``strict`` expectation can call a key new: a first load has nothing to compare with);
    * retyped: a key whose non-null types differ from its expected type, else from the baseline's.
    """
    keys = {k: _types(t) for k, t in observed.items() if not ignore(k)}
    known = set(known) | set(expected)
    base = {k: _types(t) for k, t in (baseline or {}).items() if not ignore(k)}
    missing = sorted(k for k in expected if k not in keys and not ignore(k))
    if strict:
        new = sorted(k for k in keys if k not in known)
    elif base:
        new = sorted(k for k in keys if k not in known and k not in base)
    else:
        new = []
    retyped = []
    for key, types in sorted(keys.items()):
        want = {expected[key]} if expected.get(key) else base.get(key, set())
        if types and want and not types <= want:
            retyped.append(f"{key}: {'/'.join(sorted(want))} -> {'/'.join(sorted(types))}")
    return Drift(tuple(new), tuple(missing), tuple(retyped))
