"""Named transform functions a mapping file may apply to a field, each over a whole column.

A transform takes the field's input columns (sequences of raw JSON values, None when missing: lists,
arrays or Series) and keyword parameters from the mapping file, and returns one pandas Series;
the text functions run in Arrow compute. Register new ones with
:func:`register`; mapping files are validated against :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kingtavo_pipeline.mapping.columns import _series, arrow_text, convert_decimal, to_arrow

TransformFn = Callable[..., pd.Series]


@dataclass(frozen=True)
class Transform:
    name: str
    fn: TransformFn
    min_inputs: int = 1
    max_inputs: int | None = 1  # None: any number
    params: frozenset[str] = frozenset()
    doc: str = ""


REGISTRY: dict[str, Transform] = {}


def register(name: str, *, inputs: tuple[int, int | None] = (1, 1), params: tuple[str, ...] = ()) -> Callable[[TransformFn], TransformFn]:
    def wrap(fn: TransformFn) -> TransformFn:
        REGISTRY[name] = Transform(name, fn, inputs[0], inputs[1], frozenset(params), (fn.__doc__ or "").strip())
        return fn

    return wrap


def text(values: Any) -> pd.Series:
    """Raw values -> text (numbers as written, booleans lower case, trimmed; blank -> <NA>), Arrow-backed."""
    arr, _ = to_arrow(values)
    return _series(arrow_text(arr))


def _arrow_text(values: Any) -> pa.Array:
    return arrow_text(to_arrow(values)[0])


@register("strip")
def strip(inputs: list) -> pd.Series:
    """Trim surrounding whitespace; blank becomes missing."""
    return text(inputs[0])


@register("lower")
def lower(inputs: list) -> pd.Series:
    return _series(pc.utf8_lower(_arrow_text(inputs[0])))


@register("upper")
def upper(inputs: list) -> pd.Series:
    return _series(pc.utf8_upper(_arrow_text(inputs[0])))


@register("title")
def title(inputs: list) -> pd.Series:
    return _series(pc.utf8_title(_arrow_text(inputs[0])))


@register("concat", inputs=(1, None), params=("sep",))
def concat(inputs: list, sep: str = "") -> pd.Series:
    """Join the present inputs with ``sep``; missing when all are missing."""
    parts = [_arrow_text(column) for column in inputs]
    # Arrow's "skip" emits no element at all for a row whose inputs are all missing, so the result
    # would be shorter than the batch and every later row would take the next record's value. An
    # empty first part keeps the row; "" then reads as missing.
    missing = parts[0].is_null()
    for part in parts[1:]:
        missing = pc.and_(missing, part.is_null())
    parts[0] = pc.if_else(missing, "", parts[0])
    joined = pc.binary_join_element_wise(*parts, sep, null_handling="skip")
    return _series(arrow_text(joined))


@register("join", inputs=(1, None), params=("sep",))
def join(inputs: list, sep: str = " ") -> pd.Series:
    """Like ``concat`` with a space between parts by default (e.g. first and last name)."""
    return concat(inputs, sep=sep)


@register("first_non_null", inputs=(1, None))
def first_non_null(inputs: list) -> pd.Series:
    """The first input that is present and not blank, in the order given (values keep their JSON type
    when all inputs share it, else all become text)."""
    arrays = []
    for i, column in enumerate(inputs):
        arr, nested = to_arrow(column)
        if i == 0 and pa.types.is_string(arr.type):
            arr = arrow_text(arr)
            if arr.null_count == 0:  # every row has its first input: the rest are not read (all text)
                return _series(arr)  # (first_input_complete tells this before: see the engine)
        if pa.types.is_string(arr.type) and i > 0:
            arr = arrow_text(arr)  # a blank string is no value
        arrays.append((arr, nested))
    types = {a.type for a, _ in arrays if not pa.types.is_null(a.type)}
    if len(types) > 1:
        arrays = [(arrow_text(a), n) for a, n in arrays]
    kind = next(iter(types)) if len(types) == 1 else pa.string()
    out = pc.coalesce(*[a.cast(kind) for a, _ in arrays])
    return _series(out)


def first_input_complete(column: Any) -> bool:
    """Whether ``first_non_null`` over this first input stops at it, reading none of the others
    (the condition it checks first): every value a non-blank string."""
    arr, _ = to_arrow(column)
    return pa.types.is_string(arr.type) and arrow_text(arr).null_count == 0


@register("split_name", params=("part",))
def split_name(inputs: list, part: str = "first") -> pd.Series:
    """A full name -> its first word (``part: first``) or the rest (``part: last``)."""
    if part not in ("first", "last"):
        raise ValueError(f"split_name: part must be 'first' or 'last', not {part!r}")
    name = pc.replace_substring_regex(_arrow_text(inputs[0]), r"\s+", " ")
    if part == "first":
        return _series(pc.replace_substring_regex(name, r" .*$", ""))
    return _series(arrow_text(pc.replace_substring_regex(pc.if_else(pc.match_substring(name, " "), name, ""), r"^[^ ]* ", "")))


@register("replace", params=("pattern", "value"))
def replace(inputs: list, pattern: str = "", value: str = "") -> pd.Series:
    """Regular-expression replace (e.g. keep the digits of a phone number: ``pattern: '[^0-9+]'``)."""
    return _series(arrow_text(pc.replace_substring_regex(_arrow_text(inputs[0]), pattern, value)))


@register("prefix", params=("value",))
def prefix(inputs: list, value: str = "") -> pd.Series:
    """Put ``value`` before present values (e.g. a source's id namespace)."""
    return _series(pc.binary_join_element_wise(value, _arrow_text(inputs[0]), ""))


# ISO-3166 alpha-2 for names, alpha-3 codes and common spellings met in commerce data. Unknown
# values are kept as written (upper-cased when they look like a code), not dropped.
_COUNTRIES = {
    "SA": ["saudi arabia", "kingdom of saudi arabia", "ksa", "sau", "السعودية", "المملكة العربية السعودية"],
    "AE": ["united arab emirates", "uae", "are", "الإمارات", "الامارات"],
    "KW": ["kuwait", "kwt", "الكويت"],
    "QA": ["qatar", "qat", "قطر"],
    "BH": ["bahrain", "bhr", "البحرين"],
    "OM": ["oman", "omn", "عمان"],
    "EG": ["egypt", "egy", "مصر"],
    "JO": ["jordan", "jor", "الأردن"],
    "US": ["united states", "united states of america", "usa", "u.s.a.", "u.s.", "america"],
    "CA": ["canada", "can"],
    "MX": ["mexico", "mex"],
    "GB": ["united kingdom", "uk", "great britain", "gbr", "england"],
    "IE": ["ireland", "irl"],
    "DE": ["germany", "deu", "deutschland"],
    "FR": ["france", "fra"],
    "ES": ["spain", "esp", "españa"],
    "IT": ["italy", "ita", "italia"],
    "NL": ["netherlands", "nld", "the netherlands", "holland"],
    "BE": ["belgium", "bel"],
    "CH": ["switzerland", "che"],
    "AT": ["austria", "aut"],
    "SE": ["sweden", "swe"],
    "NO": ["norway", "nor"],
    "DK": ["denmark", "dnk"],
    "FI": ["finland", "fin"],
    "PL": ["poland", "pol"],
    "PT": ["portugal", "prt"],
    "TR": ["turkey", "türkiye", "turkiye", "tur"],
    "IN": ["india", "ind"],
    "PK": ["pakistan", "pak"],
    "CN": ["china", "chn"],
    "JP": ["japan", "jpn"],
    "KR": ["south korea", "korea", "kor"],
    "AU": ["australia", "aus"],
    "NZ": ["new zealand", "nzl"],
    "BR": ["brazil", "bra", "brasil"],
    "AR": ["argentina", "arg"],
    "ZA": ["south africa", "zaf"],
    "NG": ["nigeria", "nga"],
    "MA": ["morocco", "mar"],
}
COUNTRY_CODES = {alias: code for code, aliases in _COUNTRIES.items() for alias in [code.lower(), *aliases]}


_ALIASES = pa.array(list(COUNTRY_CODES), pa.string())
_CODES = pa.array(list(COUNTRY_CODES.values()), pa.string())


@register("iso_country")
def iso_country(inputs: list) -> pd.Series:
    """Country names, alpha-3 codes or alpha-2 codes -> ISO-3166 alpha-2 where known (else as written)."""
    t = _arrow_text(inputs[0])
    code = pc.take(_CODES, pc.index_in(pc.utf8_lower(t), value_set=_ALIASES))
    return _series(pc.coalesce(code, t))


@register("is_present")
def is_present(inputs: list) -> pd.Series:
    """"true" where the value is present (not null, not blank), else "false" (e.g. Strapi's publishedAt -> status)."""
    arr, nested = to_arrow(inputs[0])
    present = pc.is_valid(arrow_text(arr))
    if nested is not None:
        present = pc.or_(present, pa.array(nested))
    return _series(pc.if_else(present, "true", "false"))


@register("id_or_position", inputs=(3, 3), params=("sep",))
def id_or_position(inputs: list, sep: str = ":") -> pd.Series:
    """A child row's own id, else "<parent id><sep><position>" (inputs: id, parent id, ``$index``)."""
    own = _arrow_text(inputs[0])
    if own.null_count == 0:  # every row has its own id
        return _series(own)
    parent, index = (_arrow_text(column) for column in inputs[1:])
    return _series(pc.coalesce(own, pc.binary_join_element_wise(parent, index, sep)))




@register("multiply", inputs=(2, None))
def multiply(inputs: list[pd.Series]) -> pd.Series:
    """The exact decimal product of the inputs (e.g. unit price x quantity); bad inputs give missing."""
    product = None
    for column in inputs:
        values = pa.array(convert_decimal(column).values)
        product = values if product is None else pc.round(pc.multiply(product, values).cast(pa.decimal128(38, 8), safe=False), 4)
    return pd.Series(pd.arrays.ArrowExtensionArray(product.cast(pa.decimal128(38, 4))))


@register("sum", params=("key",))
def sum_(inputs: list[pd.Series], key: str = "") -> pd.Series:
    """The exact sum of an array's numbers, or of ``key`` (a dotted path) in each element; money
    objects count by their ``amount``. An empty array sums to 0; a missing one stays missing."""
    from decimal import Decimal, InvalidOperation

    def amount(element):
        for part in key.split(".") if key else []:
            element = element.get(part) if isinstance(element, dict) else None
        if isinstance(element, dict):
            element = element.get("amount")
        try:
            return Decimal(str(element)) if element is not None and not isinstance(element, bool) else Decimal(0)
        except InvalidOperation:
            return Decimal("NaN")

    # per element, but only over arrays that are there (most are empty or absent)
    def total(items):
        if not isinstance(items, list):
            return None
        value = sum((amount(e) for e in items), Decimal(0))
        return str(items) if value.is_nan() else str(value)  # the decimal conversion then rejects it

    values = inputs[0].to_numpy(dtype=object, na_value=None) if isinstance(inputs[0], pd.Series) else inputs[0]
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        types = set(map(type, values))
        if types <= {list, type(None)} and not any(filter(None, values)):
            # the common case: every array empty (or absent) sums to 0 (or stays missing), no Decimal per row
            return _sum_of_empty(values, types)
    return pd.Series([total(v) for v in values], dtype=object)


# sum_ answers a column of only empty arrays (or only absent ones) without looking at each row
_EMPTY_AT_ONCE = True


def _sum_of_empty(values: Any, types: set) -> pd.Series:
    """Sums of arrays that are all empty or absent: "0" for an array, None for an absent one. When
    the column holds one of the two only (``types``, the classes of its values), every row gets the
    same answer, so the column is built at once (every array empty: Arrow strings, the very array
    the converters would make of the "0"s); the rows are looked at one by one otherwise."""
    if _EMPTY_AT_ONCE and len(types) == 1:
        if list in types:
            return _series(pa.array(["0"], pa.string()).take(pa.array(np.zeros(len(values), dtype=np.int64))))
        return pd.Series([None] * len(values), dtype=object)
    return pd.Series(["0" if v.__class__ is list else None for v in values], dtype=object)
