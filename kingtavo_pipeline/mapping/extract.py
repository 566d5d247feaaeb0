"""JSON payloads -> columns of raw values, one list per mapped path.

Decoding is one ``orjson.loads`` per record. Extraction is one generated function per mapping that
decodes each record and reads every path the mapping needs from it in the same pass, into tuples
(transposed into columns by ``zip``): the per-field work is inline dictionary lookups (shared
prefixes looked up once) in a single loop, not a Python call per field per record. Arrays named by
an ``expand`` path become one tuple per element, with the record's row number and the element's
position. What follows (types, enums, transforms, validation) is column work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

LeafKind = Literal["plain", "money", "datetime"]
_EMPTY: dict = {}
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _parse_one(text: Any) -> tuple[dict | None, str | None]:
    """One payload -> (object, None) or (None, why it is not a JSON object)."""
    if isinstance(text, dict):
        return text, None
    if isinstance(text, memoryview):
        text = bytes(text)
    if not isinstance(text, (str, bytes, bytearray)):
        return None, f"payload: expected a JSON object string, got {type(text).__name__}"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # orjson refuses what the json module reads (integers beyond 64 bits); json's message is clearer
            value = json.loads(text)
        except ValueError as exc:
            return None, f"payload: invalid JSON ({exc})"
    if value.__class__ is not dict:
        return None, f"payload: not a JSON object (got {_JSON_TYPES.get(type(value), type(value).__name__)})"
    return value, None


def decode_json(payloads: Sequence[Any]) -> tuple[list[dict | None], list[str | None]]:
    """Payload texts -> objects (None where bad) and error messages (None where good)."""
    payloads = list(payloads)
    try:
        docs = list(map(orjson.loads, payloads))  # the common case: every payload is good JSON text
    except (orjson.JSONDecodeError, TypeError):
        docs = None
    if docs is not None and all(d.__class__ is dict for d in docs):
        return docs, [None] * len(docs)
    pairs = [_parse_one(p) for p in payloads]
    return [d for d, _ in pairs], [e for _, e in pairs]


# ------------------------------------------------------------------------------------- paths


def split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if obj.__class__ is dict else None


def _index(obj: Any, i: int) -> Any:
    return obj[i] if obj.__class__ is list and -len(obj) <= i < len(obj) else None


def _expr(var: str, segments: Sequence[str], safe: bool) -> str:
    """Python source reading ``segments`` from ``var``. Fast form: ``(x or E).get(k)``, which raises
    on a non-object in the way (the record is then read again in the safe form, which yields None)."""
    expr = var
    for i, seg in enumerate(segments):
        if seg.lstrip("-").isdigit():
            expr = f"_index({expr}, {int(seg)})"
        elif safe:
            expr = f"_get({expr}, {seg!r})"
        elif i == 0:
            expr = f"{expr}.get({seg!r})"
        else:
            expr = f"({expr} or E).get({seg!r})"
    return expr


@dataclass(frozen=True)
class Leaf:
    """A path read from one level, and how its value is unwrapped: a money object to its ``amount``,
    a PHP DateTime object (``{date, timezone_type, timezone}``) to its ``date`` plus a zone column."""

    path: str
    kind: LeafKind = "plain"

    @property
    def width(self) -> int:
        return 2 if self.kind == "datetime" else 1


def _leaf_exprs(var: str, leaf: Leaf, safe: bool, expr: str | None = None) -> list[str]:
    expr = expr or _expr(var, split_path(leaf.path), safe)
    if leaf.kind == "money":
        return [f"(_t.get('amount') if (_t := {expr}).__class__ is dict else _t)"]
    if leaf.kind == "datetime":
        return [
            f"(_t.get('date') if (_t := {expr}).__class__ is dict else _t)",
            "(_t.get('timezone') if _t.__class__ is dict else None)",
        ]
    return [expr]


def _fast_block(var: str, leaves: Sequence[Leaf], tag: str) -> tuple[list[str], list[str]]:
    """Statements and expressions reading ``leaves`` from ``var`` in the fast form, each shared prefix
    (``amounts`` of ``amounts.total`` and ``amounts.tax.amount``) looked up once into a local."""
    statements: list[str] = []
    locals_: dict[tuple[str, ...], str] = {(): var}
    exprs: list[str] = []
    for leaf in leaves:
        segments = split_path(leaf.path)
        # hoist the object prefixes (not array indexes, which the safe helpers handle)
        depth = 0
        while depth < len(segments) - 1 and not segments[depth].lstrip("-").isdigit():
            prefix = segments[: depth + 1]
            if prefix not in locals_:
                name = f"_{tag}{len(locals_)}"
                parent = locals_[segments[:depth]]
                statements.append(f"{name} = {parent}.get({segments[depth]!r}) or E")
                locals_[prefix] = name
            depth += 1
        base = locals_[segments[:depth]]
        rest = segments[depth:]
        expr = _expr(base, rest, safe=False) if rest else base
        exprs += _leaf_exprs(var, leaf, False, expr)
    return statements, exprs


_NAMESPACE = {"E": _EMPTY, "_get": _get, "_index": _index, "loads": orjson.loads}


def _compile(source: str, name: str) -> Any:
    namespace = dict(_NAMESPACE)
    exec(compile(source, f"<mapping extractor {name}>", "exec"), namespace)  # noqa: S102 - code built from validated paths
    return namespace[name]


def _columns(rows: list[tuple], width: int) -> list[Sequence]:
    if not rows:
        return [() for _ in range(width)]
    return list(zip(*rows))  # tuples: Arrow and numpy read them as they read lists


def _name_columns(leaves: list[Leaf], columns: list[Sequence], n: int) -> dict[str, Sequence]:
    out: dict[str, Sequence] = {}
    i = 0
    for leaf in leaves:
        out[column_name(leaf)] = columns[i] if columns else [None] * n
        if leaf.kind == "datetime":
            out[zone_column_name(leaf)] = columns[i + 1] if columns else [None] * n
        i += leaf.width
    return out


def column_name(leaf: Leaf) -> str:
    return f"{leaf.kind}:{leaf.path}"


def zone_column_name(leaf: Leaf) -> str:
    return f"zone:{leaf.path}"


@dataclass
class Expand:
    """An array to expand: ``levels`` the array paths (``a[].b[]`` -> [``a``, ``b``]), ``leaves`` read
    from each innermost element, ``parent_leaves`` from the element enclosing it."""

    levels: list[str]
    leaves: list[Leaf]
    parent_leaves: list[Leaf]


@dataclass
class Expanded:
    """Rows of an expanded array: ``rows`` the record each came from, ``index`` its position among
    that record's rows, ``present`` per record whether the (outermost) array was there."""

    rows: Sequence[int]
    index: Sequence[int]
    present: list[bool]
    columns: dict[str, Sequence]
    parent_columns: dict[str, Sequence]


@dataclass
class Extracted:
    root: dict[str, Sequence]
    expanded: list[Expanded]
    errors: dict[int, str]  # row -> why its payload is not a JSON object


def _expand_body(j: int, spec: Expand, safe: bool, indent: int) -> list[str]:
    """Source appending one tuple per innermost element of record ``d`` (row ``r``) to ``out{j}``."""
    pad = " " * indent
    lines = [f"{pad}k = 0"]
    var = "d"
    depth = len(spec.levels)
    for level, path in enumerate(spec.levels):
        array, elem = f"a{j}_{level}", f"e{j}_{level}"
        lines += [f"{pad}{array} = {_expr(var, split_path(path), safe)}", f"{pad}if {array}.__class__ is list:"]
        pad += "    "
        if level == 0:
            lines.append(f"{pad}present{j}.append(True)")
        lines += [f"{pad}for {elem} in {array}:", f"{pad}    if {elem}.__class__ is not dict:", f"{pad}        {elem} = E"]
        pad += "    "
        var = elem
    inner = f"e{j}_{depth - 1}"
    parent = f"e{j}_{depth - 2}" if depth > 1 else "d"
    if safe:
        values = [e for leaf in spec.leaves for e in _leaf_exprs(inner, leaf, True)]
        values += [e for leaf in spec.parent_leaves for e in _leaf_exprs(parent, leaf, True)]
    else:
        statements, values = _fast_block(inner, spec.leaves, f"i{j}_")
        parent_statements, parent_values = _fast_block(parent, spec.parent_leaves, f"p{j}_")
        lines += [f"{pad}{line}" for line in statements + parent_statements]
        values += parent_values
    lines += [f"{pad}app{j}((r, k, {', '.join(values)}{',' if values else ''}))", f"{pad}k += 1"]
    lines += [" " * indent + "else:", " " * indent + f"    present{j}.append(False)"]
    return lines


class BatchExtractor:
    """Decodes and extracts in one pass: each payload is parsed (orjson) and read for every path of
    every level at once, then dropped, so the decoded objects never pile up (memory, cache)."""

    def __init__(self, leaves: list[Leaf], expands: list[Expand]) -> None:
        self.leaves = leaves
        self.expands = expands
        statements, exprs = _fast_block("d", leaves, "r")
        safe = [e for leaf in leaves for e in _leaf_exprs("d", leaf, True)]
        width = sum(leaf.width for leaf in leaves)
        lines = [
            "def extract(payloads):",
            "    root = []",
            "    rapp = root.append",
            "    bad = []",
            f"    none_row = (None,) * {width}",
        ]
        for j in range(len(expands)):
            lines += [f"    out{j} = []", f"    app{j} = out{j}.append", f"    present{j} = []"]
        lines += [
            "    for r, p in enumerate(payloads):",
            "        try:",
            "            d = loads(p)",
            "        except Exception:",  # invalid JSON, or not text (an already decoded object passes)
            "            d = p",
            "        if d.__class__ is not dict:",
            "            bad.append(r)",
            "            rapp(none_row)",
            *(f"            present{j}.append(False)" for j in range(len(expands))),
            "            continue",
        ]
        if leaves:
            lines += [
                "        try:",
                *(f"            {line}" for line in statements),
                f"            rapp(({', '.join(exprs)},))",
                "        except (AttributeError, TypeError):",
                f"            rapp(({', '.join(safe)},))",
            ]
        else:
            lines.append("        rapp(none_row)")
        for j, spec in enumerate(expands):
            lines += [
                f"        mark = len(out{j})",
                "        try:",
                *_expand_body(j, spec, safe=False, indent=12),
                "        except (AttributeError, TypeError):",
                f"            del out{j}[mark:]",
                f"            del present{j}[r:]",
                *_expand_body(j, spec, safe=True, indent=12),
            ]
        outs = ", ".join(f"(out{j}, present{j})" for j in range(len(expands)))
        lines.append(f"    return root, bad, [{outs}]")
        self.source = "\n".join(lines)
        self._fn = _compile(self.source, "extract")

    def __call__(self, payloads: Sequence[Any]) -> Extracted:
        root_rows, bad, outs = self._fn(payloads)
        errors = {r: _parse_one(payloads[r])[1] or "payload: not a JSON object" for r in bad}
        width = sum(leaf.width for leaf in self.leaves)
        root = _name_columns(self.leaves, _columns(root_rows, width), len(root_rows)) if self.leaves else {}
        expanded = []
        for spec, (rows, present) in zip(self.expands, outs):
            own = sum(leaf.width for leaf in spec.leaves)
            columns = _columns(rows, 2 + own + sum(leaf.width for leaf in spec.parent_leaves))
            expanded.append(Expanded(
                rows=columns[0],
                index=columns[1],
                present=present,
                columns=_name_columns(spec.leaves, columns[2 : 2 + own], len(rows)),
                parent_columns=_name_columns(spec.parent_leaves, columns[2 + own :], len(rows)),
            ))
        return Extracted(root, expanded, errors)
