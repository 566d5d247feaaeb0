"""The fast extraction path: payloads decoded by msgspec into Structs generated from the mapping's paths.

:class:`~.extract.BatchExtractor` decodes each payload with orjson into dictionaries holding every
key of the document (a Salla order detail has hundreds; a mapping reads a few dozen), then reads
the mapped paths from them. Here msgspec decodes each payload straight into Structs that hold only
the keys the mapping reads: the rest of the document is scanned, never built into Python objects,
which halves the decode. The paths are then read by one generated function per mapping, as the
old path does (shared prefixes read once, one tuple per record or array element), with attribute
loads instead of dictionary lookups.

The values that come out are exactly the ones the old path gives for the same records (str, int,
float, bool, None, list, dict, as orjson builds them), so everything after extraction is unchanged.
Whatever the Structs cannot take goes to the old path, record by record, and the two are merged in
row order: payloads that are not JSON text or not an object (the rejects keep their messages), an
object where an array is expanded, integers beyond 64 bits (orjson reads those as floats), lone
surrogates, a BOM, NaN literals, values nested deeper than :data:`DEPTH` ... msgspec refuses all of
these, so the record is simply read the old way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import msgspec
import numpy as np

from kingtavo_pipeline.mapping.columns import ArrowChunks, Column
from kingtavo_pipeline.mapping.extract import (
    BatchExtractor,
    Expand,
    Expanded,
    Extracted,
    Leaf,
    _compile,
    _expr,
    _leaf_exprs,
    _name_columns,
    split_path,
)

# orjson reads integers beyond 64 bits as floats, msgspec as ints: records holding one in a value
# the mapping reads take the old path (orjson's own limit is 2**64 - 1; msgspec's bound must fit int64)
_INT = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# Lists and objects read as values (an array summed, a value read by position) are typed to this depth
# so that their integers are bounded too; deeper ones take the old path.
DEPTH = 8


def _value_type(depth: int) -> Any:
    scalar: Any = Union[_INT, float, str, bool, None]
    for _ in range(depth):
        scalar = Union[_INT, float, str, bool, None, list[scalar], dict[str, scalar]]  # type: ignore[valid-type]
    return scalar


_VALUE = _value_type(DEPTH)
# the extractor converts its columns to Arrow every CHUNK records (a power of two; see ArrowChunks)
CHUNK = 256


def _numeric(segment: str) -> bool:
    return segment.lstrip("-").isdigit()


class Ineligible(Exception):
    """A mapping shape the fast path does not handle (it then always takes the old path)."""


@dataclass
class _Node:
    """One key of the document the mapping reads: a leaf (plain/money/datetime), an object to go
    through (``children``), an array to expand (``element``), or a value read in Python (``python``:
    a plain leaf with paths below it, or an array indexed by position)."""

    children: dict[str, _Node] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)
    element: _Node | None = None
    python: bool = False
    struct: Any = None  # the Struct of an object node, and its empty instance
    empty: Any = None
    attr: str = ""  # the attribute holding this key in the parent's Struct

    def child(self, key: str) -> _Node:
        return self.children.setdefault(key, _Node())


def _walk(node: _Node, segments: Sequence[str]) -> _Node:
    for seg in segments:
        node = node.child(seg)
    return node


_SPECIAL = {"money": ("amount",), "datetime": ("date", "timezone")}


def _mark(node: _Node) -> None:
    """Nodes read in Python (decoded as plain values): a plain leaf that other paths go through or
    that is read as money/date too, a money/date object whose amount/date is itself an object, an
    object whose key is an array position. An expanded array there is not handled."""
    odd_special = any(
        key in node.children and (node.children[key].children or node.children[key].kinds - {"plain"} or node.children[key].element)
        for kind in node.kinds & set(_SPECIAL) for key in _SPECIAL[kind]
    )
    if (node.element is not None and (node.kinds or node.children)) or (node.python and node.element is not None):
        raise Ineligible("an expanded array that is also read as a value")
    if ("plain" in node.kinds and (node.children or len(node.kinds) > 1)) or odd_special or any(_numeric(k) for k in node.children):
        node.python = True
    for child in node.children.values():
        child.python = child.python or node.python
        _mark(child)
    if node.element is not None:
        _mark(node.element)


def _build(node: _Node, names: dict[str, Any]) -> Any:
    """The msgspec type of ``node``, creating the Structs for it and below (registered in ``names``)."""
    if node.python:
        return _VALUE
    if node.element is not None:
        element = _build(node.element, names)
        return Union[list[element], dict, int, float, str, bool, None]  # type: ignore[valid-type]
    if not node.children and node.kinds <= {"plain"}:
        return _VALUE if node.kinds else Union[dict, list, int, float, str, bool, None]
    fields = []
    for i, (key, child) in enumerate(node.children.items()):
        child.attr = f"f{i}"
        fields.append((child.attr, _build(child, names), msgspec.field(default=None, name=key)))
    for kind in sorted(node.kinds & set(_SPECIAL)):
        for key in _SPECIAL[kind]:
            if key not in node.children:
                node.children[key] = _Node(kinds={"plain"}, attr=f"f{len(fields)}")
                fields.append((node.children[key].attr, _VALUE, msgspec.field(default=None, name=key)))
    index = len(names) // 2
    node.struct = msgspec.defstruct(f"_S{index}", fields, gc=False)
    node.empty = node.struct()
    names[f"S{index}"], names[f"E{index}"] = node.struct, node.empty
    return Union[node.struct, list, int, float, str, bool, None]


def _names(node: _Node, names: dict[str, Any]) -> tuple[str, str]:
    for name, value in names.items():
        if value is node.struct:
            return name, "E" + name[1:]
    raise KeyError(node)


class _Source:
    """Generated source reading leaves from a Struct variable, shared prefixes read once."""

    def __init__(self, names: dict[str, Any], tag: str) -> None:
        self.names = names
        self.tag = tag
        self.count = 0

    def objects(self, var: str, node: _Node, segments: Sequence[str], statements: list[str],
                locals_: dict[tuple[str, ...], str]) -> tuple[str, _Node]:
        """The variable holding the Struct of ``segments`` below ``var`` (its empty Struct where the
        JSON has another value there), adding the statements that set it."""
        locals_.setdefault((), var)
        for depth in range(len(segments)):
            child = node.children[segments[depth]]
            prefix = tuple(segments[: depth + 1])
            if prefix not in locals_:
                struct, empty = _names(child, self.names)
                name = f"_{self.tag}{self.count}"
                self.count += 1
                statements.append(f"{name} = {locals_[tuple(segments[:depth])]}.{child.attr}")
                statements.append(f"if {name}.__class__ is not {struct}: {name} = {empty}")
                locals_[prefix] = name
            node = child
        return locals_[tuple(segments)], node

    def leaves(self, var: str, node: _Node, leaves: Sequence[Leaf]) -> tuple[list[str], list[str]]:
        statements: list[str] = []
        locals_: dict[tuple[str, ...], str] = {(): var}
        exprs: list[str] = []
        for leaf in leaves:
            segments = split_path(leaf.path)
            depth, current = 0, node
            while depth < len(segments) - 1 and not current.children[segments[depth]].python:
                current = current.children[segments[depth]]
                depth += 1
            base, holder = self.objects(var, node, segments[:depth], statements, locals_)
            child = holder.children[segments[depth]]
            value = f"{base}.{child.attr}"
            if child.python:  # the value is plain JSON: read the rest as the old path does
                rest = segments[depth + 1 :]
                exprs += _leaf_exprs("", Leaf(".".join(rest), leaf.kind), True, expr=_expr(value, rest, safe=True))
            elif leaf.kind == "plain":
                exprs.append(value)
            else:
                struct, _ = _names(child, self.names)
                first = child.children["amount" if leaf.kind == "money" else "date"].attr
                exprs.append(f"(_t.{first} if (_t := {value}).__class__ is {struct} else _t)")
                if leaf.kind == "datetime":
                    exprs.append(f"(_t.{child.children['timezone'].attr} if _t.__class__ is {struct} else None)")
        return statements, exprs


class FastExtractor:
    """Same contract as :class:`BatchExtractor`; the records msgspec cannot take go through it."""

    def __init__(self, leaves: list[Leaf], expands: list[Expand], fallback: BatchExtractor) -> None:
        self.fallback = fallback
        self.leaves = leaves
        self.expands = expands
        root = _Node()
        for leaf in leaves:
            _walk(root, split_path(leaf.path)).kinds.add(leaf.kind)
        chains = []  # per expand: the element node of each level
        for spec in expands:
            node, elements = root, []
            for path in spec.levels:
                array = _walk(node, split_path(path))
                array.element = array.element or _Node()
                node = array.element
                elements.append(node)
            for leaf in spec.leaves:
                _walk(elements[-1], split_path(leaf.path)).kinds.add(leaf.kind)
            for leaf in spec.parent_leaves:
                _walk(elements[-2] if len(elements) > 1 else root, split_path(leaf.path)).kinds.add(leaf.kind)
            chains.append(elements)
        _mark(root)
        names: dict[str, Any] = {}
        _build(root, names)
        if root.struct is None:
            raise Ineligible("nothing to read")
        self.source = self._source(root, chains, names)
        namespace = {**names, "decode": msgspec.json.Decoder(root.struct).decode}
        self._fn = _compile_with(self.source, namespace)

    def _source(self, root: _Node, chains: list[list[_Node]], names: dict[str, Any]) -> str:
        gen = _Source(names, "r")
        statements, exprs = gen.leaves("d", root, self.leaves)
        # one list per value read, appended to in the pass: no tuple per row, no transposition after
        # rows of records that took the old path (the others, in order, are those of the columns)
        lines = ["def extract(payloads, chunks=None):", *_column_lists("rc", len(exprs)), "    slow = []"]
        for j, spec in enumerate(self.expands):
            width = sum(leaf.width for leaf in spec.leaves) + sum(leaf.width for leaf in spec.parent_leaves)
            # per record its number of rows (row numbers and positions follow from the counts)
            lines += [*_column_lists(f"x{j}_", width), f"    present{j} = []", f"    counts{j} = []"]
        every = ", ".join(["*rc", *(f"*x{j}_" for j in range(len(self.expands)))])
        lines += [
            "    chunks = chunks or NO_CHUNKS",
            f"    chunks.start([{every}])",  # Arrow arrays of the columns, built as they grow
            "    flush = chunks.flush",
            "    for r, p in enumerate(payloads):",
            f"        if not r & {CHUNK - 1}:",
            "            flush()",
            "        try:",
            "            d = decode(p)",
            "        except Exception:",  # not JSON text, not an object, or a value the Structs refuse
            "            slow.append(r)",
            "            continue",
            *(f"        {line}" for line in statements),
            *(f"        rc{i}({e})" for i, e in enumerate(exprs)),
        ]
        for j, (spec, elements) in enumerate(zip(self.expands, chains)):
            lines += self._expand(j, spec, root, elements, names)
        outs = ", ".join(f"(x{j}_, present{j}, counts{j})" for j in range(len(self.expands)))
        lines.append(f"    return rc, slow, [{outs}]")
        return "\n".join(lines)

    @staticmethod
    def _expand(j: int, spec: Expand, root: _Node, elements: list[_Node], names: dict[str, Any]) -> list[str]:
        gen = _Source(names, f"x{j}_")
        pad = " " * 8
        # each element of a single level is one row: the count is the array's length
        single = len(spec.levels) == 1
        lines = [] if single else [f"{pad}k = 0"]
        var, holder = "d", root
        for level, path in enumerate(spec.levels):
            segments = split_path(path)
            statements: list[str] = []
            base, node = gen.objects(var, holder, segments[:-1], statements, {})
            array = node.children[segments[-1]]
            lines += [f"{pad}{line}" for line in statements]
            lines += [f"{pad}a{j}_{level} = {base}.{array.attr}", f"{pad}if a{j}_{level}.__class__ is list:"]
            pad += "    "
            if level == 0:
                lines.append(f"{pad}present{j}.append(True)")
            elem = f"e{j}_{level}"
            lines.append(f"{pad}for {elem} in a{j}_{level}:")
            pad += "    "
            if elements[level].struct is not None:
                struct, empty = _names(elements[level], names)
                lines.append(f"{pad}if {elem}.__class__ is not {struct}: {elem} = {empty}")
            var, holder = elem, elements[level]
        depth = len(spec.levels)
        statements, exprs = gen.leaves(var, elements[-1], spec.leaves)
        parent_var, parent_node = (f"e{j}_{depth - 2}", elements[-2]) if depth > 1 else ("d", root)
        parent_statements, parent_exprs = _Source(names, f"p{j}_").leaves(parent_var, parent_node, spec.parent_leaves)
        lines += [f"{pad}{line}" for line in statements + parent_statements]
        values = exprs + parent_exprs
        lines += [f"{pad}x{j}_{i}({e})" for i, e in enumerate(values)] + ([] if single else [f"{pad}k += 1"])
        if single:
            return lines + [f"            counts{j}.append(len(a{j}_0))", "        else:",
                            f"            present{j}.append(False)", f"            counts{j}.append(0)"]
        lines += ["        else:", f"            present{j}.append(False)", f"        counts{j}.append(k)"]
        return lines

    # columns' Arrow arrays built chunk by chunk during the pass (columns.ArrowChunks); False: none
    arrow_chunks = True

    def __call__(self, payloads: Sequence[Any]) -> Extracted:
        chunks = ArrowChunks() if self.arrow_chunks else NO_CHUNKS
        root_columns, slow, outs = self._fn(payloads, chunks)
        final = chunks.results()
        if final:  # the columns' stand-ins (see ArrowChunks)
            root_columns = [final[id(c)] for c in root_columns]
            outs = [([final[id(c)] for c in columns], present, counts) for columns, present, counts in outs]
        records = np.arange(len(payloads), dtype=np.int64)  # rows of the records read here
        if slow:
            records = np.delete(records, slow)
        root = _name_columns(self.leaves, root_columns, len(records)) if self.leaves else {}
        expanded = []
        for spec, (columns, present, counts) in zip(self.expands, outs):
            own = sum(leaf.width for leaf in spec.leaves)
            per_record = np.asarray(counts, dtype=np.int64)
            rows = np.repeat(records, per_record)  # row numbers of the whole batch
            n = len(rows)
            starts = np.cumsum(per_record) - per_record  # first row of each record
            expanded.append(Expanded(
                rows=rows,
                index=np.arange(n, dtype=np.int64) - np.repeat(starts, per_record),
                present=present,
                columns=_name_columns(spec.leaves, columns[:own], n),
                parent_columns=_name_columns(spec.parent_leaves, columns[own:], n),
            ))
        extracted = Extracted(root, expanded, {})
        if not slow:
            return extracted
        old = self.fallback([payloads[i] for i in slow])
        return _merge(extracted, records, old, np.asarray(slow, dtype=np.int64), len(payloads))


def _column_lists(tag: str, width: int) -> list[str]:
    """Source creating ``width`` lists, held in the list ``tag``, with their appends as ``tag0``..."""
    lines = [f"    {tag} = [Column() for _ in range({width})]"]
    lines += [f"    {tag}{i} = {tag}[{i}].append" for i in range(width)]
    return lines


class _NoChunks:
    """Stands for :class:`ArrowChunks` when its arrays are not wanted."""

    def start(self, columns: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def results(self) -> dict:
        return {}


NO_CHUNKS = _NoChunks()


def _compile_with(source: str, namespace: dict[str, Any]) -> Any:
    fn = _compile(source, "extract")
    fn.__globals__.update(namespace, Column=Column, NO_CHUNKS=NO_CHUNKS)
    return fn


def _interleave(n: int, fast_rows: np.ndarray, fast: Sequence, slow_rows: np.ndarray, slow: Sequence) -> list:
    out = np.empty(n, dtype=object)
    if len(fast_rows):
        out[fast_rows] = np.fromiter(fast, dtype=object, count=len(fast_rows))
    if len(slow_rows):
        out[slow_rows] = np.fromiter(slow, dtype=object, count=len(slow_rows))
    return out.tolist()


def _merge(fast: Extracted, fast_rows: np.ndarray, old: Extracted, slow_rows: np.ndarray, n: int) -> Extracted:
    """The two extractions as one, in row order (``old`` numbers its rows within ``slow_rows``)."""
    root = {name: _interleave(n, fast_rows, fast.root[name], slow_rows, old.root[name]) for name in fast.root}
    expanded = []
    for f, o in zip(fast.expanded, old.expanded):
        rows = np.concatenate([np.asarray(f.rows, dtype=np.int64), slow_rows[np.asarray(o.rows, dtype=np.int64)]])
        order = np.argsort(rows, kind="stable")
        present = _interleave(n, fast_rows, f.present, slow_rows, o.present)

        def join(a: Sequence, b: Sequence, order: np.ndarray = order) -> list:
            both = np.empty(len(a) + len(b), dtype=object)
            if len(a):
                both[: len(a)] = np.fromiter(a, dtype=object, count=len(a))
            if len(b):
                both[len(a) :] = np.fromiter(b, dtype=object, count=len(b))
            return both[order].tolist()

        index = np.concatenate([np.asarray(f.index, dtype=np.int64), np.asarray(o.index, dtype=np.int64)])[order]
        expanded.append(Expanded(
            rows=rows[order].tolist(), index=index.tolist(), present=present,
            columns={k: join(f.columns[k], o.columns[k]) for k in f.columns},
            parent_columns={k: join(f.parent_columns[k], o.parent_columns[k]) for k in f.parent_columns},
        ))
    errors = {int(slow_rows[r]): message for r, message in old.errors.items()}
    return Extracted(root, expanded, errors)


def fast_extractor(leaves: list[Leaf], expands: list[Expand], fallback: BatchExtractor) -> FastExtractor | BatchExtractor:
    """The fast extractor for these paths, or ``fallback`` itself for shapes it does not handle."""
    try:
        return FastExtractor(leaves, expands, fallback)
    except Ineligible:
        return fallback
