"""One way to turn a pydantic ``ValidationError`` of a YAML file into one line naming each key.

The sources, webhooks, quality and mapping files all report errors the same way: the path to the
key (``csv[1].field_map``), then what is wrong (``unknown key 'fild_map' (did you mean
'field_map'?)``, ``required key 'path' is missing``, or the validator's own message), several
joined by ``; ``. Each file supplies only what differs: the keys allowed where an unknown one
stood, and optionally a label for a list entry (``webhooks[1] (stripe)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

# pydantic adds validator and union-member names to some locations; the path is what matters
_NOISE_PREFIXES = ("function-", "TransformCall")


def unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    """``unknown key 'x' (did you mean 'y'?)``, else the allowed keys."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}" if allowed else ""
    return f"unknown key {key!r}" + (f" ({hint})" if hint else "")


def location(loc: Iterable[Any]) -> str:
    """``("csv", 1, "field_map")`` -> ``csv[1].field_map``; ``<root>`` for the top level."""
    parts = [p for p in loc if p != "[key]" and not (isinstance(p, str) and p.startswith(_NOISE_PREFIXES))]
    text = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
    return text or "<root>"


def format_validation_errors(
    exc: ValidationError,
    *,
    allowed_keys: Callable[[tuple], Iterable[str]] | None = None,
    label: Callable[[tuple], str | None] | None = None,
) -> str:
    """One line for every error of ``exc``.

    ``allowed_keys(loc)`` gives the keys allowed where the unknown key at ``loc`` stood (for a
    "did you mean" hint); ``label(loc)`` may name the list entry ``loc`` is in (it is appended to
    the entry's index: ``webhooks[1] (stripe)``).
    """
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = location(loc)
        if label is not None and len(loc) >= 2 and isinstance(loc[1], int):
            name = label(loc)
            if name:
                entry = location(loc[:2])
                where = where.replace(entry, f"{entry} ({name})", 1)
        if err["type"] == "extra_forbidden":
            msg = unknown_key_message(str(loc[-1]), allowed_keys(loc) if allowed_keys else ())
        elif "[key]" in loc and err["type"] == "literal_error":  # a dict key outside a Literal
            msg = f"unknown key; {err['msg'][0].lower()}{err['msg'][1:]}"
        elif err["type"] == "missing":
            msg = f"required key {str(loc[-1])!r} is missing"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {' '.join(msg.split())}")
    return "; ".join(parts)
