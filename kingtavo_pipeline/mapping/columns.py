"""Column functions: raw JSON values of one field over a batch -> typed values and per-row problems.

Every function works on a whole column (Arrow compute or pandas), never a Python call per value,
except for the rare column that mixes JSON types (numbers and strings, objects where scalars are
expected), which is normalised element by element first.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

TS_DTYPE = "datetime64[us, UTC]"
DECIMAL_TYPE = pa.decimal128(18, 4)
DECIMAL_DTYPE = pd.ArrowDtype(DECIMAL_TYPE)
TEXT_DTYPE = pd.ArrowDtype(pa.string())
# decimal(18,4) holds 14 integer digits
_DECIMAL_LIMIT = 10**14
_MAX_INT64 = 2**63 - 1
_URL_RE = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+[^\s]*$"
# money rounds half away from zero (what invoices print), not to even
_HALF_UP = "half_towards_infinity"
_PLAIN_NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)$"
# a time of day followed by a zone designator: such strings carry their own offset
_AWARE_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?|UTC|GMT)$"


@dataclass
class Problem:
    """Rows of one column that failed: ``mask`` over the column, ``reasons`` for the masked rows."""

    mask: np.ndarray
    error_type: str
    reasons: np.ndarray | str


@dataclass
class Converted:
    values: pd.Series
    problems: list[Problem]


def quote(values: Sequence[Any], limit: int = 80) -> np.ndarray:
    """repr-style quoting for messages, long values cut (only ever called on the bad subset)."""
    out = []
    for v in values:
        if isinstance(v, Decimal):
            v = str(v)
        text = repr(v)
        out.append(text if len(text) <= limit + 2 else repr(str(v)[:limit] + "..."))
    return np.array(out, dtype=object)


# ------------------------------------------------------------------------------ raw -> Arrow


class Column(list):
    """A column of raw values (a list) as the extractor fills it (see :class:`ArrowChunks`)."""

    __slots__ = ()


_NONE = type(None)


class ArrowColumn(Sequence):
    """A column of raw JSON scalars held only as their Arrow array of strings, integers, floats,
    booleans or nulls: read as a sequence it gives back exactly the Python values (str, int, float,
    bool, None) the array was built from, so it stands for that list anywhere (see
    :class:`ArrowChunks`).

    A float64 array is all an int/float/bool mix converts to (5 -> 5.0, True -> 1.0): ``types``
    then holds each value's class, and a value that was an int or a bool is read back as one
    (exact: Arrow refuses an int a double does not hold exactly)."""

    __slots__ = ("arrow", "types")

    def __init__(self, arrow: pa.Array, types: list[type] | None = None) -> None:
        self.arrow = arrow
        self.types = types

    def __len__(self) -> int:
        return len(self.arrow)

    def __iter__(self) -> Any:
        return iter(self._values())

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._values()[i]
        i = int(i)
        value = self.arrow[i].as_py()
        return value if self.types is None else _typed(value, self.types[i])

    def _values(self) -> list:
        values = self.arrow.to_pylist()
        if self.types is None:
            return values
        return [_typed(v, t) for v, t in zip(values, self.types)]

    def take(self, rows: np.ndarray) -> ArrowColumn:
        types = None if self.types is None else [self.types[i] for i in rows]
        return ArrowColumn(self.arrow.take(pa.array(rows)), types)


def _typed(value: Any, kind: type) -> Any:
    """A value read from a float64 array as the class it had (int, bool) before it became a float."""
    return value if value is None or kind is float else kind(value)


# Types whose arrays ArrowChunks joins: a list of such values converts element by element, so the
# array of the whole list is the chunks' arrays end to end.
_CHUNKABLE = (pa.string(), pa.int64(), pa.float64(), pa.bool_())
# ArrowChunks converts a column once it holds this many new values: a pa.array call costs ~5 us
# besides its values, so a column of one value per record waits for several flushes (512 measured
# best overall: 1024 did as well on batches mapped back to back but worse on batches mapped right
# after they were built, as the bench and core do; beyond, chunks leave the cache)
_CHUNK_VALUES = 512
_CHUNK_TEXT_LIMIT = 2**31 - 1  # beyond, Arrow would need large_string for the whole list


class _Chunks:
    """One column's state in :class:`ArrowChunks`."""

    __slots__ = ("column", "parts", "kind", "size", "text", "types")

    def __init__(self, column: Column) -> None:
        self.column = column
        self.parts: list[pa.Array] | None = []  # None: given up, the column holds every value
        self.kind: pa.DataType | None = None  # the type of the non-null chunks
        self.size = 0  # values converted
        self.text = 0
        self.types: list[type] | None = None  # float64: each value's class (see ArrowColumn)

    def flush(self, least: int = 1) -> None:
        column, parts = self.column, self.parts
        if parts is None or len(column) < least:
            return
        try:
            arr = pa.array(column, from_pandas=True)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return self.give_up()
        kind = arr.type
        if kind != pa.null():
            if not isinstance(arr, pa.Array) or kind not in _CHUNKABLE or (self.kind is not None and kind != self.kind):
                return self.give_up()
            self.kind = kind
            if kind == pa.string():
                self.text += arr.buffers()[2].size if arr.buffers()[2] is not None else 0
                if self.text > _CHUNK_TEXT_LIMIT:
                    return self.give_up()
        if kind == pa.float64() or self.types is not None:
            types = self.types
            if types is None:
                types = self.types = [_NONE] * self.size  # the chunks so far held only missing values
            types += map(type, column)
            if arr.null_count and types[-len(column) :].count(_NONE) != arr.null_count:
                del types[-len(column) :]  # a NaN, which from_pandas reads as missing
                return self.give_up()
        parts.append(arr)
        self.size += len(column)
        del column[:]  # freed while still in the CPU cache; the array gives them back

    def give_up(self) -> None:
        """No array for this column: it gets back every value it had."""
        if self.parts:
            self.column[0:0] = self._joined()
        self.parts = None

    def _joined(self) -> ArrowColumn:
        parts = self.parts or []
        if self.kind is not None:
            parts = [pa.nulls(len(p), self.kind) if p.type == pa.null() else p for p in parts]
        return ArrowColumn(parts[0] if len(parts) == 1 else pa.concat_arrays(parts), self.types)

    def result(self) -> Sequence:
        return self.column if not self.parts else self._joined()


class ArrowChunks:
    """Arrow arrays of growing :class:`Column` lists, built a chunk of new values at a time.

    The extractor calls :meth:`flush` every few hundred records, while the values it has just
    appended are still in the CPU cache: converting the whole column afterwards reads Python
    objects scattered over the batch's memory and took 3-5 times as long. A column converts once it
    holds :data:`_CHUNK_VALUES` new values (array elements come several per record, record values
    one; every pa.array call has its cost whatever its length). The values are then
    dropped from the list (freed while in the cache, their memory reused by the next records):
    :meth:`results` gives those columns as :class:`ArrowColumn`, which reads back the same values.

    Exact: ``pa.array`` infers one type for the whole list and converts each value to it. When
    every chunk inferred the same type among :data:`_CHUNKABLE` (chunks of only missing values
    aside, which become nulls of that type), the whole list would have inferred that type too and
    converted each value the same way, so the joined chunks are that array. Any other outcome (a
    chunk of another type: ints then floats, mixed JSON types, objects, arrays, a failed
    conversion) leaves that column a plain list of every value, converted whole later, as before.
    """

    def __init__(self) -> None:
        self.states: list[_Chunks] = []

    def start(self, columns: Sequence[Column]) -> None:
        self.states = [_Chunks(c) for c in columns]

    def flush(self) -> None:
        for state in self.states:
            state.flush(_CHUNK_VALUES)

    def results(self) -> dict[int, Sequence]:
        """Convert what is left; each column (by id) -> what stands for it."""
        for state in self.states:
            state.flush()
        return {id(state.column): state.result() for state in self.states}


def _scalar_text(v: Any) -> str | None:
    if v is None or v.__class__ is str:
        return v
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, float) and v != v:  # NaN from pandas stands for missing
        return None
    return str(v)


def to_arrow(values: Any) -> tuple[pa.Array, np.ndarray | None]:
    """Raw values -> one Arrow array, and a mask of JSON objects/arrays (None when there are none).

    A column of one JSON type converts in C. A column mixing types (or holding objects/arrays)
    becomes strings, objects/arrays null and flagged.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.__class__ is ArrowColumn:
        values = values.arrow  # pa.array(values, from_pandas=True), built while extracting
    if isinstance(values, pa.Array):
        arr = values
    else:
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.ArrowDtype):
            return to_arrow(pa.array(values))
        if isinstance(values, pd.Series):
            values = values.to_numpy(dtype=object, na_value=None)
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
            arr = None
    if arr is not None and not pa.types.is_nested(arr.type):
        if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
            arr = arr.cast(pa.string())
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        return arr, None
    if arr is not None:  # objects/arrays, no scalars but nulls
        nested = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        return pa.nulls(len(arr), pa.string()), nested
    seq = list(values)
    nested = np.fromiter((v.__class__ is dict or v.__class__ is list for v in seq), dtype=bool, count=len(seq))
    text = [None if bad else _scalar_text(v) for v, bad in zip(seq, nested)]
    return pa.array(text, pa.string()), (nested if nested.any() else None)


def is_null(values: Any) -> np.ndarray:
    arr, nested = to_arrow(values)
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return null if nested is None else null & ~nested


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _nested_problem(nested: np.ndarray | None, what: str) -> list[Problem]:
    if nested is None or not nested.any():
        return []
    return [Problem(nested, "invalid_type", f"an object/array is not {what}")]


def arrow_text(arr: pa.Array) -> pa.Array:
    """Scalars -> strings, trimmed, "" -> null."""
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_boolean(arr.type):
        return pc.if_else(arr, "true", "false")  # never blank: nothing to trim
    elif pa.types.is_floating(arr.type):
        # Python's repr (the shortest exact form, as JSON wrote it), not Arrow's formatting
        return pa.array([_scalar_text(v) for v in arr.to_pylist()], pa.string())
    elif pa.types.is_integer(arr.type):
        return arr.cast(pa.string())
    elif not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    edges = _edges(arr) if _EDGES_FIRST and isinstance(arr, pa.Array) else None
    if edges is not None and edges[0]:
        if not edges[1]:
            return arr  # nothing to trim, nothing blank
    else:
        arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


# arrow_text looks at the strings' first and last bytes before trimming (see _edges)
_EDGES_FIRST = True
# First bytes of UTF-8 that start no whitespace character: what utf8_trim_whitespace trims is
# U+0009-000D, U+001C-0020, U+0085, U+00A0 (lead byte C2), U+1680 (E1), U+2000-200A, U+2028,
# U+2029, U+202F, U+205F (E2) and U+3000 (E3). Bytes never first in valid UTF-8 count as unsafe.
_SAFE_FIRST = np.zeros(256, dtype=bool)
_SAFE_FIRST[0x21:0x80] = True
_SAFE_FIRST[0xC3:0xE1] = True
_SAFE_FIRST[0xE4:0xF5] = True


def _edges(arr: pa.Array) -> tuple[bool, bool]:
    """For a string array: (no present string starts or ends with a character
    ``utf8_trim_whitespace`` trims, some present string is empty), read from the offsets and the
    first and last bytes of each string in numpy, which costs a fraction of trimming (that copies
    every string). When the first is true, trimming gives the array back unchanged.

    The last character of a string ending in a byte >= 0x80 is found from its lead byte (valid
    UTF-8, as every Arrow string array here is: two bytes from a lead byte C0-DF, three from E0-EF,
    else four): it is whitespace only with lead C2 (two bytes) or E1, E2, E3 (three bytes); a
    character of four bytes never is. Any doubt counts as whitespace, and the trim is done."""
    buffers = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[arr.offset : arr.offset + n + 1] if n else np.zeros(1, np.int32)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    filled = ends > starts
    if arr.null_count:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        blank = bool((~filled & valid).any())
        filled &= valid
    else:
        blank = not filled.all()
    starts, ends = starts[filled], ends[filled]
    if not _SAFE_FIRST[data[starts]].all():
        return False, blank
    last = data[ends - 1]
    if (last <= 0x20).any():
        return False, blank
    wide = last >= 0x80
    if wide.any():
        ends, starts = ends[wide], starts[wide]
        if (last[wide] >= 0xC0).any() or ((ends - starts) < 2).any():
            return False, blank
        second = data[ends - 2]
        two = second >= 0xC0  # lead of a two-byte character
        if (two & ((second == 0xC2) | (second >= 0xE0))).any():
            return False, blank
        rest = ~two
        if rest.any():
            ends, starts = ends[rest], starts[rest]
            if ((ends - starts) < 3).any():
                return False, blank
            third = data[ends - 3]
            three = third >= 0xC0  # lead of a three-byte character
            if (three & ((third < 0xE0) | (third >= 0xF0) | (third == 0xE1) | (third == 0xE2) | (third == 0xE3))).any():
                return False, blank
            if (second[rest] < 0x80).any() or ((~three) & (third < 0x80)).any():
                return False, blank  # not the continuation bytes valid UTF-8 has there
    return True, blank


def _series(arr: pa.Array, dtype: Any = None) -> pd.Series:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pd.Series(pd.arrays.ArrowExtensionArray(arr)) if dtype is None else pd.Series(arr.to_pandas(), dtype=dtype)


# ---------------------------------------------------------------------------------- converters


def convert_text(values: Any, **_: Any) -> Converted:
    arr, nested = to_arrow(values)
    return Converted(_series(arrow_text(arr)), _nested_problem(nested, "text"))


def convert_url(values: Any, **_: Any) -> Converted:
    arr, nested = to_arrow(values)
    text = arrow_text(arr)
    ok = pc.fill_null(pc.match_substring_regex(text, _URL_RE), True)
    bad = ~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    problems = _nested_problem(nested, "a URL")
    if bad.any():
        problems.append(Problem(bad, "invalid_value", quote(text.filter(pa.array(bad)).to_pylist()) + " is not an http(s) URL"))
        text = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), text)
    return Converted(_series(text), problems)


def _as_string(values: pd.Series) -> pd.Series:
    """Any JSON scalars -> pandas ``string``, stripped; None/NaN/"" -> <NA>."""
    obj = pd.Series(values, copy=False).astype(object)
    text = obj.where(obj.notna(), None).astype("string").str.strip()
    return text.mask(text == "")


def normalize_number_text(text: pd.Series) -> pd.Series:
    """Money strings -> plain "-1234.50" text (unparseable ones stay as they are and fail later).

    The separator that comes last is the decimal one; a lone comma is decimal too, except in
    "1,234"-shaped values (1-3 digits, comma, exactly three digits), read as a US thousands group.
    Several dots with no comma ("1.234.567") are thousands groups.
    """
    s = text.str.replace(r"[\s\u00a0\u202f'’_]", "", regex=True)
    s = s.str.replace(r"(?i)^(?:[€$£¥]|EUR|USD|GBP|SAR|ر\.س)|(?:[€$£¥]|EUR|USD|GBP|SAR|ر\.س)$", "", regex=True)
    commas = s.str.count(",").fillna(0)
    dots = s.str.count(r"\.").fillna(0)
    comma_last = (s.str.rfind(",") > s.str.rfind(".")).fillna(False)
    us_group = s.str.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+").fillna(False)
    decimal_comma = ((commas > 0) & (dots > 0) & comma_last) | ((commas == 1) & (dots == 0) & ~us_group)
    dot_groups = (commas == 0) & (dots > 1)
    normal = s.str.replace(",", "", regex=False)
    normal = normal.mask(decimal_comma, s.str.replace(".", "", regex=False).str.replace(",", ".", regex=False))
    return normal.mask(dot_groups, s.str.replace(".", "", regex=False))


def parse_amounts(values: pd.Series) -> pd.Series:
    """Money strings -> float64 (NaN when unparseable or not finite).

    Accepts "1234.50", "1,234.50", "1234,50", "1.234,50", "€ 19,90" (see :func:`normalize_number_text`).
    """
    text = _as_string(values)
    number = pd.to_numeric(text, errors="coerce").astype("float64")
    todo = text.notna() & number.isna()  # fast path: plain numbers need no separator handling
    if todo.any():
        number[todo] = pd.to_numeric(normalize_number_text(text[todo]), errors="coerce").astype("float64")
    return number.where(np.isfinite(number))


def convert_float(values: Any, **_: Any) -> Converted:
    """Numbers and money strings -> float64 (the unified schema's ``amount``)."""
    arr, nested = to_arrow(values)
    text = _series(arrow_text(arr)).astype(object)
    text = text.where(text.notna(), None)
    number = parse_amounts(text)
    bad = (text.notna() & number.isna()).to_numpy()
    problems = _nested_problem(nested, "a number")
    if bad.any():
        problems.append(Problem(bad, "invalid_type", quote(text[bad].tolist()) + " is not a number"))
    return Converted(number.astype("float64"), problems)


def _decimal_from_text(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Strings -> decimal(38,12) rounded to 4 places, exactly as written; and the not-a-number mask."""
    plain = pc.fill_null(pc.match_substring_regex(text, _PLAIN_NUMBER_RE), True)
    if pc.all(plain).as_py() is not False:
        normal = text  # plain numbers need no separator handling
    else:
        strings = _series(text).astype(object)
        strings = strings.where(strings.notna(), None).astype("string")
        normal = pa.array(normalize_number_text(strings).to_numpy(dtype=object, na_value=None), pa.string())
    plain = pc.fill_null(pc.match_substring_regex(normal, _PLAIN_NUMBER_RE), False)
    bad = _valid(text) & ~np.asarray(plain.to_numpy(zero_copy_only=False), dtype=bool)
    good = pc.if_else(plain, normal, pa.scalar(None, pa.string()))
    # more than 12 decimals are cut, not refused: they round away below at 4 places anyway
    return pc.round(good.cast(pa.decimal128(38, 12), safe=False), 4, round_mode=_HALF_UP), bad


# Below these magnitudes numbers convert in numpy (see _decimal_from_numbers); above, through Arrow's decimals.
_FAST_FLOAT_LIMIT = 1e8
_HALF_MARGIN = 0.01  # in units of the 4th decimal: a float this close to a half-way point takes the exact path


def _decimal_from_numbers(arr: pa.Array) -> pa.Array | None:
    """int64/float64 -> decimal(18,4) computed in numpy, or None where the exact Arrow route must
    decide: integers at or beyond the decimal's range, floats not finite, of |x| >= 1e8 or within
    1e-6 of a half-way point between two 4-place decimals (which way it rounds depends on digits
    below what the float product resolves). Elsewhere the result is the one Arrow's route gives:
    the nearest 4-place decimal to the float (half away from zero), since the product's error
    (< 4e-4 units at these magnitudes) cannot cross a rounding boundary kept 0.01 units away."""
    if arr.type == pa.int64():
        v = pc.fill_null(arr, 0).to_numpy()
        if ((v >= _DECIMAL_LIMIT) | (v <= -_DECIMAL_LIMIT)).any():
            return None
        unscaled = v * 10_000
    elif arr.type == pa.float64():
        x = pc.fill_null(arr, 0.0).to_numpy()
        with np.errstate(invalid="ignore"):
            if not (np.abs(x) < _FAST_FLOAT_LIMIT).all():  # also NaN / infinities
                return None
        y = np.abs(x) * 10_000.0
        whole = np.floor(y)
        if (np.abs(y - whole - 0.5) < _HALF_MARGIN).any():
            return None
        unscaled = np.floor(y + 0.5).astype(np.int64)
        unscaled = np.where(x < 0, -unscaled, unscaled)
    else:
        return None
    words = np.empty((len(arr), 2), dtype=np.int64)
    words[:, 0] = unscaled
    words[:, 1] = unscaled >> 63  # two's complement high word
    validity = pa.array(_valid(arr)).buffers()[1] if arr.null_count else None
    return pa.Array.from_buffers(DECIMAL_TYPE, len(arr), [validity, pa.py_buffer(words)], null_count=arr.null_count)


def _via_unique(text: pa.Array, convert: Any) -> pd.Series | None:
    """A long text column of few distinct values (a status, "0") converted once per distinct value
    and spread back; None when that is not worth it or when a value fails (the caller then
    converts every row, which words the problems per row)."""
    if len(text) < 1024:
        return None
    unique = pc.unique(text)
    if len(unique) * 16 > len(text):
        return None
    each = convert(unique)
    if each.problems:
        return None
    return _series(pc.take(pa.array(each.values), pc.index_in(text, value_set=unique)))


def convert_decimal(values: Any, **_: Any) -> Converted:
    """Numbers, numeric strings ("1,234.50", "19,90") and money objects' amounts -> decimal(18,4).

    JSON numbers arrive as floats; a float's nearest 4-place decimal is the number the JSON wrote
    (for up to 15 significant digits), so the result is exact for money. Strings convert exactly.
    """
    arr, nested = to_arrow(values)
    problems = _nested_problem(nested, "a number")
    n = len(arr)
    not_number = np.zeros(n, dtype=bool)
    dropped = np.zeros(n, dtype=bool)  # numbers nulled for their size before the cast
    if pa.types.is_null(arr.type) or n == 0:
        return Converted(_series(pa.nulls(n, DECIMAL_TYPE)), problems)
    if pa.types.is_boolean(arr.type):
        not_number = _valid(arr)
        wide = pa.nulls(n, pa.decimal128(38, 12))
    elif pa.types.is_decimal(arr.type):
        wide = pc.round(arr.cast(pa.decimal128(38, 12), safe=False), 4, round_mode=_HALF_UP)
    elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        fast = _decimal_from_numbers(arr)
        if fast is not None:
            return Converted(_series(fast), problems)
        number = arr.cast(pa.float64())
        # out-of-range and non-finite values are nulled before the cast, which would refuse them
        keep = pc.fill_null(pc.and_(pc.is_finite(number), pc.less(pc.abs(number), float(_DECIMAL_LIMIT))), False)
        not_number = _valid(arr) & ~np.asarray(pc.fill_null(pc.is_finite(number), True).to_numpy(zero_copy_only=False), dtype=bool)
        dropped = _valid(arr) & ~np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool) & ~not_number
        if pa.types.is_integer(arr.type):
            wide = pc.if_else(keep, arr, pa.scalar(None, arr.type)).cast(pa.decimal128(38, 12))
        else:
            wide = pc.round(pc.if_else(keep, number, pa.scalar(None, pa.float64())).cast(pa.decimal128(38, 12)), 4, round_mode=_HALF_UP)
    else:
        text = arrow_text(arr)
        repeated = _via_unique(text, convert_decimal)
        if repeated is not None:
            return Converted(repeated, problems)
        wide, not_number = _decimal_from_text(text)
    if not_number.any():
        problems.append(Problem(not_number, "invalid_type", quote(_bad_values(arr, not_number, values)) + " is not a number"))
    limit = pa.scalar(Decimal(_DECIMAL_LIMIT), pa.decimal128(38, 12))
    too_big = np.asarray(pc.fill_null(pc.greater_equal(pc.abs(wide), limit), False).to_numpy(zero_copy_only=False), dtype=bool)
    too_big |= dropped
    if too_big.any():
        problems.append(Problem(too_big, "invalid_value", quote(_bad_values(arr, too_big, values)) + " is out of range for decimal(18,4)"))
        wide = pc.if_else(pa.array(too_big), pa.scalar(None, wide.type), wide)
    return Converted(_series(wide.cast(DECIMAL_TYPE)), problems)


def _bad_values(arr: pa.Array, mask: np.ndarray, original: Any = None) -> list:
    """The failing values for messages: as the JSON had them when the raw sequence is at hand."""
    if original is not None and not isinstance(original, (pa.Array, pa.ChunkedArray, pd.Series)):
        rows = np.flatnonzero(mask)
        return [original[i] for i in rows]
    return arr.filter(pa.array(mask)).to_pylist()


def convert_integer(values: Any, *, min: float | None = None, **_: Any) -> Converted:
    """Whole numbers (also "1,234" or "2.0") -> Int64."""
    arr, nested = to_arrow(values)
    text = _series(arrow_text(arr)).astype(object)
    text = text.where(text.notna(), None)
    number = parse_amounts(text)
    present = text.notna()
    problems = _nested_problem(nested, "an integer")

    def problem(mask: pd.Series, error_type: str, reason: str) -> None:
        mask = mask.fillna(False).to_numpy(dtype=bool)
        if mask.any():
            problems.append(Problem(mask, error_type, quote(text[mask].tolist()) + reason))

    not_number = present & number.isna()
    problem(not_number, "invalid_type", " is not an integer")
    # a float holds integers exactly only below 2**53: beyond that the text is read exactly
    exact, exact_fraction = _exact_integers(text, present & number.notna() & (number.abs() >= _EXACT_FLOAT_INT))
    fractional = present & number.notna() & ((number != np.floor(number)) | exact_fraction)
    problem(fractional, "invalid_value", " is not a whole number")
    below = present & number.notna() & ~fractional & (number < min) if min is not None else pd.Series(False, index=text.index)
    problem(below, "invalid_value", f" must be >= {min:g}" if min is not None else "")
    outside = exact.map(lambda v: isinstance(v, int) and not (_MIN_INT64 <= v <= _MAX_INT64)).astype(bool)
    too_big = present & number.notna() & ~fractional & (outside | (exact.isna() & (number.abs() >= 2.0**63)))
    problem(too_big, "invalid_value", " is too large")
    keep = ~(fractional | below | too_big)
    out = number.where(keep & exact.isna()).round().astype("Int64")
    fix = keep & exact.notna()
    if fix.any():
        out[fix] = exact[fix].astype("Int64")
    return Converted(out, problems)


_EXACT_FLOAT_INT = 2**53
_MIN_INT64 = -(2**63)


def _exact_integers(text: pd.Series, rows: pd.Series) -> tuple[pd.Series, pd.Series]:
    """For ``rows`` (numbers too large for a float to hold exactly): the integer the text writes
    (``"9007199254740993"``, ``"1,234"``, ``"3.0"``), and whether it has a fraction a float lost.
    None / False where the text is no plain decimal number (the float's reading then stands)."""
    out = pd.Series(None, index=text.index, dtype=object)
    fraction = pd.Series(False, index=text.index)
    for i in np.flatnonzero(rows.to_numpy(dtype=bool)):
        try:
            value = Decimal(str(text.iloc[i]).strip().replace(",", "").replace("_", ""))
        except ArithmeticError:
            continue
        if not value.is_finite():
            continue
        if value == value.to_integral_value():
            out.iloc[i] = int(value)
        else:
            fraction.iloc[i] = True
    return out, fraction


@functools.lru_cache(maxsize=256)  # a zone name's validity does not change; checking it costs ~0.1 ms
def _zone_ok(zone: str) -> bool:
    try:
        pd.Timestamp("2000-01-01").tz_localize(zone)
    except Exception:  # unknown zone names raise several exception types
        return False
    return True


def parse_timestamps(values: pd.Series, *, dayfirst: bool = False, date_format: str | None = None) -> pd.Series:
    """Strings -> ``datetime64[us, UTC]``; unparseable or empty -> NaT. Naive times are taken as UTC.

    Tiered so the common case stays vectorised: ISO-8601 first (never reordered by ``dayfirst``,
    which dateutil would do to "2024-11-01"), then one inferred format for the rest, and only what
    is still left goes element by element (``format="mixed"``).
    """
    text = _as_string(values).astype(object)
    text = text.where(text.notna(), None)
    out = pd.Series(pd.NaT, index=text.index, dtype=TS_DTYPE)
    if text.isna().all():
        return out
    with warnings.catch_warnings():
        # "Could not infer format..." and dayfirst hints are expected for mixed inputs.
        warnings.simplefilter("ignore", UserWarning)
        if date_format:
            attempts = [{"format": date_format}]
        else:
            attempts = [{"format": "ISO8601"}, {"dayfirst": dayfirst}, {"format": "mixed", "dayfirst": dayfirst}]
        for kwargs in attempts:
            rest = out.isna() & text.notna()
            if not rest.any():
                break
            try:
                parsed = pd.to_datetime(text[rest], errors="coerce", utc=True, **kwargs)
            except (ValueError, TypeError, OverflowError):  # e.g. an inferred format that cannot apply
                continue
            out[rest] = parsed.astype(TS_DTYPE)
    return out


def _localize(wall: pd.Series, zones: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC-tagged wall-clock times -> the same wall time in each row's zone, in UTC; bad zones flagged."""
    naive = wall.dt.tz_localize(None)
    out = wall.copy()
    bad_zone = np.zeros(len(wall), dtype=bool)
    for zone in pd.unique(zones.dropna()):
        rows = (zones == zone).to_numpy(dtype=bool)
        if zone in ("UTC", "Z", "Etc/UTC"):
            continue
        if not _zone_ok(zone):
            bad_zone |= rows & wall.notna().to_numpy()
            out[rows] = pd.NaT
            continue
        local = naive[rows].dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
        out[rows] = local.dt.tz_convert("UTC").astype(TS_DTYPE)
    return out, bad_zone


# convert_timestamp first tries Arrow's parse of times without offset over the whole column
_NAIVE_FIRST = True


def _arrow_times(text: pa.Array, aware: np.ndarray, zones: pa.Array | None, timezone: str,
                 naive_all: pa.Array | None = None) -> pa.Array | None:
    """The fast path: ISO-8601 strings parsed by Arrow's cast, naive ones placed in their zone.
    None when any string is not Arrow's ISO-8601 (the tiered pandas parser then takes over)."""
    utc = pa.timestamp("us", "UTC")
    try:
        if aware.all():
            return text.cast(utc)
        naive = naive_all if naive_all is not None else \
            pc.if_else(pa.array(aware), pa.scalar(None, pa.string()), text).cast(pa.timestamp("us"))
        offset = pc.if_else(pa.array(aware), text, pa.scalar(None, pa.string())).cast(utc) if aware.any() else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    zone_of = zones if zones is not None else pa.nulls(len(text), pa.string())
    zone_of = pc.fill_null(zone_of, timezone)
    out = pa.nulls(len(text), utc)
    for zone in pc.unique(zone_of).to_pylist():
        rows = pc.equal(zone_of, zone)
        if not _zone_ok(zone):
            return None  # the pandas path reports the bad zone per row
        local = pc.assume_timezone(naive, timezone=zone, ambiguous="earliest", nonexistent="earliest").cast(utc)
        out = pc.if_else(rows, local, out)
    return out if offset is None else pc.coalesce(offset, out)


def convert_timestamp(
    values: Any,
    *,
    zones: Any = None,
    timezone: str | None = None,
    dayfirst: bool = False,
    format: str | None = None,
    unit: str | None = None,
    **_: Any,
) -> Converted:
    """ISO-8601 (with or without offset), "Y-m-d H:i:s", date-only, other formats, epoch numbers -> UTC.

    A time without an offset is in ``zones`` (the row's zone, e.g. a sibling ``timezone`` field)
    or else ``timezone`` (the configured zone; UTC when none). JSON numbers are epoch seconds (or
    ``unit``); digit strings are too when ``unit`` is given.
    """
    arr, nested = to_arrow(values)
    problems = _nested_problem(nested, "a date/time")
    n = len(arr)
    timezone = timezone or "UTC"
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        number = pd.Series(arr.cast(pa.float64()).to_numpy(zero_copy_only=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = pd.to_datetime(number, unit=unit or "s", utc=True, errors="coerce").astype(TS_DTYPE)
        bad = (number.notna() & out.isna()).to_numpy()
        if bad.any():
            problems.append(Problem(bad, "invalid_type", quote(_bad_values(arr, bad)) + " is not a valid date/time"))
        return Converted(out, problems)
    text_arr = arrow_text(arr)
    zone_arr = arrow_text(to_arrow(zones)[0]) if zones is not None else None
    naive_all = None
    if not (format or dayfirst or unit) and _NAIVE_FIRST:
        try:  # all of them ISO-8601 without an offset (Arrow refuses any string with one): no regex pass
            naive_all = text_arr.cast(pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if naive_all is not None:
        aware = np.zeros(n, dtype=bool)
    else:
        aware = np.asarray(pc.fill_null(pc.match_substring_regex(text_arr, _AWARE_RE), False).to_numpy(zero_copy_only=False), dtype=bool)
    if not (format or dayfirst or unit):
        fast = _arrow_times(text_arr, aware, zone_arr, timezone, naive_all)
        if fast is not None:
            return Converted(pd.Series(fast.to_pandas(), dtype=TS_DTYPE), problems)
    text = _series(text_arr).astype(object)
    text = text.where(text.notna(), None)
    digits = pc.fill_null(pc.match_substring_regex(text_arr, r"^\d{9,13}(?:\.\d+)?$"), False)
    epoch = np.asarray(digits.to_numpy(zero_copy_only=False), dtype=bool)
    if not unit and epoch.any():
        # digit strings are epoch times only with a unit; JSON numbers (in a column mixing types) always
        raw = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else values
        epoch[epoch] = [isinstance(raw[i], (int, float)) and not isinstance(raw[i], bool) for i in np.flatnonzero(epoch)] \
            if not isinstance(raw, (pa.Array, pa.ChunkedArray)) else False
    unit = unit or "s"
    out = parse_timestamps(text.where(~epoch, None), dayfirst=dayfirst, date_format=format)
    if epoch.any():
        out[epoch] = pd.to_datetime(pd.to_numeric(text[epoch]), unit=unit, utc=True).astype(TS_DTYPE)
    naive = out.notna().to_numpy() & ~aware & ~epoch
    bad_zone = np.zeros(n, dtype=bool)
    zone_of = pd.Series(timezone, index=out.index, dtype=object)
    if zone_arr is not None:
        row_zones = _series(zone_arr).astype(object)
        zone_of = row_zones.where(row_zones.notna(), zone_of)
    if naive.any() and (zone_arr is not None or timezone != "UTC"):
        local, bad = _localize(out[naive], zone_of[naive])
        out[naive] = local
        bad_zone[np.flatnonzero(naive)] = bad
    bad = (text.notna() & out.isna()).to_numpy() & ~bad_zone
    if bad.any():
        problems.append(Problem(bad, "invalid_type", quote(text[bad].tolist()) + " is not a valid date/time"))
    if bad_zone.any():
        problems.append(Problem(bad_zone, "invalid_value", quote(zone_of[bad_zone].tolist()) + " is not a known time zone"))
    return Converted(out.astype(TS_DTYPE), problems)


CONVERTERS = {
    "text": convert_text,
    "url": convert_url,
    "decimal": convert_decimal,
    "number": convert_float,
    "integer": convert_integer,
    "timestamp": convert_timestamp,
}

OUTPUT_DTYPES = {
    "text": TEXT_DTYPE,
    "url": TEXT_DTYPE,
    "decimal": DECIMAL_DTYPE,
    "number": "float64",
    "integer": "Int64",
    "timestamp": TS_DTYPE,
}


def enum_map(
    values: Any, mapping: dict[str, str], *, default: str | None, case_insensitive: bool = True
) -> tuple[pa.Array, Problem | None]:
    """Map text values through ``mapping``; unmapped ones -> ``default``, or a problem when there is none."""
    arr, nested = to_arrow(values)
    text = arrow_text(arr)
    keys = list(mapping)
    probe = pc.utf8_lower(text) if case_insensitive else text
    lookup = pa.array([k.lower() for k in keys] if case_insensitive else keys, pa.string())
    index = pc.index_in(probe, value_set=lookup)
    mapped = pc.take(pa.array([mapping[k] for k in keys], pa.string()), index)
    unmapped = pc.and_(pc.is_valid(text), pc.is_null(index))
    problem = None
    if default is not None:
        mapped = pc.if_else(unmapped, pa.scalar(default, pa.string()), mapped)
        if nested is not None:
            mapped = pc.if_else(pa.array(nested), pa.scalar(default, pa.string()), mapped)
    else:
        bad = np.asarray(unmapped.to_numpy(zero_copy_only=False), dtype=bool)
        if bad.any():
            shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
            problem = Problem(bad, "invalid_value", quote(text.filter(pa.array(bad)).to_pylist()) + f" is not one of {shown}")
    return mapped, problem


def fill_default(values: Any, default: Any) -> Any:
    """Null values -> ``default`` (a JSON scalar, converted later with the rest)."""
    arr, nested = to_arrow(values)
    if nested is not None:
        return values  # objects stay as they are and fail conversion
    if pa.types.is_null(arr.type):
        return pa.array([default] * len(arr))
    try:
        return pc.fill_null(arr, pa.scalar(default).cast(arr.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # a default of another JSON type than the column's: both become text
        return pc.fill_null(arrow_text(arr), pa.scalar(_scalar_text(default), pa.string()))
