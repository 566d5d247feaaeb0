"""Streaming CSV extraction into RAW FRAMES (``source_id``, ``occurred_at``, ``payload``).

Files are read in ``chunksize`` batches by pandas' C parser with every value kept as a string,
so memory stays flat however large the file. Encoding and delimiter are detected per file
unless the source pins them.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import charset_normalizer
import numpy as np
import pandas as pd

from ..transform.unified import TS_DTYPE, parse_timestamps
from .config import CsvSource

log = logging.getLogger(__name__)

RAW_COLUMNS = ("source_id", "occurred_at", "payload")
SAMPLE_BYTES = 64 * 1024
DELIMITER_CANDIDATES = ",;\t|"
_SNIFF_LINES = 100

# Longest BOMs first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def empty_raw_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": pd.Series(dtype="str"),
            "occurred_at": pd.Series(dtype=TS_DTYPE),
            "payload": pd.Series(dtype="str"),
        }
    )


# ------------------------------------------------------------------------------------ detection


def _decodes(sample: bytes, encoding: str, complete: bool) -> bool:
    """True when ``sample`` decodes; a multi-byte char cut at the sample's end is not an error."""
    try:
        codecs.getincrementaldecoder(encoding)().decode(sample, final=complete)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


# On short Western text charset-normalizer scores cp1250, cp1252, iso8859_10... exactly alike and
# then picks alphabetically, turning "Señor" into "Seńor". Among equally good guesses, prefer these.
_PREFERRED_SINGLE_BYTE = ("cp1252", "latin_1", "iso8859_15")


def _charset_normalizer_guess(sample: bytes) -> str | None:
    matches = list(charset_normalizer.from_bytes(sample))
    if not matches:
        return None
    best = matches[0]
    tied = [m for m in matches if m.chaos == best.chaos and m.coherence == best.coherence]
    for preferred in _PREFERRED_SINGLE_BYTE:
        for match in tied:
            if preferred == match.encoding or preferred in match.could_be_from_charset:
                return codecs.lookup(preferred).name
    try:
        return codecs.lookup(best.encoding).name
    except LookupError:
        return None


def detect_encoding(path: str | Path) -> str:
    """Codec name for the file: BOM, else utf-8 if it decodes, else charset-normalizer's guess.

    Only the first 64 KiB are examined; rows read later with the guessed codec replace
    undecodable bytes rather than fail the whole file.
    """
    with open(path, "rb") as fh:
        sample = fh.read(SAMPLE_BYTES + 1)
    complete = len(sample) <= SAMPLE_BYTES
    sample = sample[:SAMPLE_BYTES]
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    if _decodes(sample, "utf-8", complete):
        return "utf-8"
    guess = _charset_normalizer_guess(sample)
    if guess and _decodes(sample, guess, complete):
        return guess
    # Not utf-8 and no confident guess: Western single-byte text is by far the likeliest.
    return "cp1252" if _decodes(sample, "cp1252", complete) else "latin-1"


def _field_count_score(sample: str, delimiter: str) -> tuple[float, int]:
    """(share of rows having the most common field count, that count); (0, 0) if it never splits."""
    rows = [r for r in csv.reader(io.StringIO(sample), delimiter=delimiter) if r]
    counts = Counter(len(r) for r in rows)
    if not counts:
        return (0.0, 0)
    mode, freq = counts.most_common(1)[0]
    if mode < 2:
        return (0.0, 0)
    return (freq / len(rows), mode)


def detect_delimiter(text_sample: str) -> str:
    """One of ``, ; \\t |``. csv.Sniffer proposes; field-count consistency decides.

    The Sniffer alone picks "," for "1;19,90;..." rows (both look regular, "," is its favourite),
    so its answer is kept only if no candidate splits the rows more consistently into more fields.
    Falls back to "," when nothing splits.
    """
    lines = text_sample.splitlines(keepends=True)
    if len(lines) > 1 and not text_sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line of a sample is usually cut
    sample = "".join(lines[:_SNIFF_LINES])
    if not sample.strip():
        return ","
    scores = {d: _field_count_score(sample, d) for d in DELIMITER_CANDIDATES}
    best = max(DELIMITER_CANDIDATES, key=lambda d: scores[d])  # ties keep candidate order
    if scores[best] == (0.0, 0):
        return ","
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITER_CANDIDATES).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in scores and scores[sniffed] >= scores[best]:
        return sniffed
    return best


# ------------------------------------------------------------------------------------ streaming


def _json_lines(frame: pd.DataFrame) -> list[str]:
    """One compact JSON object string per row, built by pandas in one go."""
    if frame.empty:
        return []
    text = frame.to_json(orient="records", lines=True, force_ascii=False)
    # pandas escapes "/" as "\/": valid JSON but noisy. Every "\/" is such an escape (a literal
    # backslash is always written "\\"), so a plain replace is safe.
    rows = text.replace("\\/", "/").rstrip("\n").split("\n")
    if len(rows) != len(frame):  # cannot happen: JSON escapes newlines inside values
        raise AssertionError(f"expected {len(frame)} JSON lines, got {len(rows)}")
    return rows


def _clean_header(columns: list[object]) -> list[str]:
    """Strip names, drop a BOM left on the first one, and keep names unique (JSON keys)."""
    names: list[str] = []
    seen: Counter[str] = Counter()
    for i, col in enumerate(columns):
        name = str(col)
        if i == 0:
            name = name.lstrip("\ufeff")
        name = name.strip() or f"column_{i + 1}"
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}.{seen[name] - 1}")
    return names


def _find_column(columns: list[str], wanted: str | None) -> str | None:
    """Exact match, else a case-insensitive one (headers are often re-cased by exports)."""
    if not wanted:
        return None
    if wanted in columns:
        return wanted
    folded = {c.casefold(): c for c in reversed(columns)}
    return folded.get(wanted.strip().casefold())


def _raw_frame(
    chunk: pd.DataFrame,
    source: CsvSource,
    file_name: str,
    first_line: int,
) -> pd.DataFrame:
    n = len(chunk)
    columns = list(chunk.columns)
    chunk = chunk.fillna("")  # short rows come back as NaN even with na_filter off

    payload_frame = chunk.assign(_file=file_name, _line=np.arange(first_line, first_line + n, dtype="int64"))
    payload = _json_lines(payload_frame)

    id_col = _find_column(columns, source.id_column)
    ids = chunk[id_col].astype(str).str.strip() if id_col else pd.Series("", index=chunk.index, dtype="str")
    need_hash = (ids == "").to_numpy()
    if need_hash.any():
        # Content hash over the row alone (sorted keys, no _file/_line): the same row gets the same id.
        canonical = _json_lines(chunk.loc[need_hash, sorted(columns)])
        ids = ids.astype(object)
        ids[need_hash] = [hashlib.sha256(c.encode("utf-8")).hexdigest() for c in canonical]

    date_col = _find_column(columns, source.date_column)
    if date_col:
        occurred = parse_timestamps(chunk[date_col], dayfirst=source.dayfirst, date_format=source.date_format)
    else:
        occurred = pd.Series(pd.NaT, index=chunk.index, dtype=TS_DTYPE)

    return pd.DataFrame(
        {
            "source_id": ids.astype("str").reset_index(drop=True),
            "occurred_at": occurred.astype(TS_DTYPE).reset_index(drop=True),
            "payload": pd.Series(payload, dtype="str"),
        }
    )


def _iter_file(source: CsvSource, path: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    encoding = detect_encoding(path) if source.encoding == "auto" else source.encoding
    delimiter = source.delimiter
    if delimiter == "auto":
        with open(path, encoding=encoding, errors="replace", newline="") as fh:
            delimiter = detect_delimiter(fh.read(SAMPLE_BYTES))
    log.debug("csv %s: %s (encoding=%s, delimiter=%r)", source.name, path, encoding, delimiter)

    try:
        reader = pd.read_csv(
            path,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            chunksize=batch_size,
            encoding=encoding,
            encoding_errors="replace",
            engine="c",
            index_col=False,  # a trailing delimiter must not turn the first column into the index
            on_bad_lines="warn",  # a row with too many fields is logged and skipped, not fatal
        )
    except pd.errors.EmptyDataError:
        log.warning("csv %s: %s is empty, skipped", source.name, path)
        return

    next_line = 1
    with reader:
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    chunk = next(reader)
                except StopIteration:
                    break
            for w in caught:
                log.warning("csv %s: %s: %s", source.name, path.name, str(w.message).strip())
            if chunk.empty:
                continue
            chunk.columns = _clean_header(list(chunk.columns))
            yield _raw_frame(chunk, source, path.name, next_line)
            next_line += len(chunk)


def iter_raw_batches(source: CsvSource, batch_size: int = 50_000) -> Iterator[pd.DataFrame]:
    """Stream every file of ``source`` as RAW FRAMES of at most ``batch_size`` rows.

    Batches never span files. ``payload`` is the row as JSON (values as strings) plus ``_file``
    and ``_line`` (1-based data record number, header excluded).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for path in source.files():
        yield from _iter_file(source, path, batch_size)
