"""Streaming CSV extraction into RAW FRAMES (``source_id``, ``occurred_at``, ``payload``, ``error``).

Files are read block by block by pyarrow's streaming CSV reader with every value kept as a string,
so memory stays flat however large the file. Encoding and delimiter are detected per file
unless the source pins them.

Nothing is dropped: a record with more fields than the header comes out as a row whose ``error``
says what is wrong and whose ``payload`` keeps the original text (``_raw``), for dead-lettering.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import charset_normalizer
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..transform.unified import TS_DTYPE, parse_timestamps
from .config import CsvSource, SourceConfigError

log = logging.getLogger(__name__)

# content_hash identifies the record's content without its provenance (what raw_data dedupes on)
RAW_COLUMNS = ("source_id", "occurred_at", "payload", "error", "content_hash")
SAMPLE_BYTES = 64 * 1024
# pyarrow reads BLOCK_BYTES at a time (its memory is a few dozen times that) and cannot parse a
# record longer than a block; a file holding one is read again with bigger blocks, up to the max.
BLOCK_BYTES = 1024 * 1024
MAX_BLOCK_BYTES = 256 * 1024 * 1024
_HEADER_PROBE_BYTES = 64 * 1024
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
            "error": pd.Series(dtype=object),
            "content_hash": pd.Series(dtype="str"),
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
    rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]  # "\r"-only files too
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


class _Utf8Stream(io.RawIOBase):
    """The file re-encoded to UTF-8 for pyarrow; undecodable bytes become U+FFFD, never an error."""

    def __init__(self, path: Path, encoding: str) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (all if negative) unless the file ends first."""
        while not self._eof and (size < 0 or len(self._pending) < size):
            data = self._file.read(max(size, SAMPLE_BYTES) if size >= 0 else -1)
            self._eof = not data
            text = self._decoder.decode(data, final=self._eof)
            self._pending += text.encode("utf-8", errors="replace")
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_options(block_size: int) -> pacsv.ReadOptions:
    # Serial reading is what makes pyarrow report the row number of a set-aside record.
    return pacsv.ReadOptions(use_threads=False, block_size=block_size)


def _parse_options(delimiter: str, on_invalid) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid)


def _header(path: Path, encoding: str, delimiter: str) -> list[str] | None:
    """The header's fields as pyarrow splits them (so they key ``column_types``); None if empty."""
    block = _HEADER_PROBE_BYTES
    while True:
        with _Utf8Stream(path, encoding) as stream:
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=_read_options(block),
                    parse_options=_parse_options(delimiter, lambda row: "skip"),
                )
            except pa.ArrowInvalid as exc:
                if "Empty CSV file" in str(exc):
                    return None
                if "straddl" in str(exc) and block < MAX_BLOCK_BYTES:
                    block = min(block * 16, MAX_BLOCK_BYTES)  # a record longer than the probe's block
                    continue
                raise ValueError(f"{path}: cannot read the CSV header: {exc}") from exc
            names = reader.schema.names
            reader.close()
            return names


def _split(text: str, delimiter: str) -> list[str]:
    """The fields of one record's text (the text pyarrow hands over for a set-aside record)."""
    return [field for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) for field in row]


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


# What JSON text escapes (a quote, a backslash, control characters): values without any are
# written as they are, between quotes.
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _json_text(value: str) -> str:
    """``value`` as :func:`_json_lines` writes a string (quotes included)."""
    line = _json_lines(pd.DataFrame({"k": [value]}, dtype=object))[0]
    return line[len('{"k":') : -1]


def _escapes(values: pa.Array) -> np.ndarray | None:
    """Rows of ``values`` holding a character JSON escapes; None when there is none at all (one
    pass over the column's bytes settles the common case)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    data = values.buffers()[2]
    if data is not None:
        raw = np.frombuffer(data, dtype=np.uint8)
        if not ((raw < 0x20) | (raw == 0x22) | (raw == 0x5C)).any():
            return None
    return pc.match_substring_regex(values, _NEEDS_ESCAPE).to_numpy(zero_copy_only=False)


def _payloads(data: pd.DataFrame, file_name: str, lines: np.ndarray) -> tuple[pa.Array | list[str], list[str]]:
    """Each row's payload (:func:`_json_lines` of the row plus ``_file`` and ``_line``, the same
    text) and its :func:`content_hash`, built column-wise by Arrow; rows holding a character JSON
    escapes take :func:`_json_lines`."""
    columns = list(data.columns)
    if not len(data):
        return [], []
    if "_file" in columns or "_line" in columns:  # the provenance keys replace a column: the slow way
        payload = _json_lines(data.assign(_file=file_name, _line=lines))
        return payload, [content_hash(p) for p in payload]
    values = [pa.array(data[c], pa.string()) for c in columns]
    special = None
    for v in values:
        hit = _escapes(v)
        if hit is not None:
            special = hit if special is None else special | hit
    parts: list = []
    for i, column in enumerate(columns):
        parts += [("{" if i == 0 else '",') + _json_text(column) + ':"', values[i]]
    parts.append('"')
    body = pc.binary_join_element_wise(*parts, "")
    provenance = ',"_file":' + _json_text(file_name) + ',"_line":'
    payload = pc.binary_join_element_wise(body, provenance, pc.cast(pa.array(lines), pa.string()), "}", "")
    hashes = [hashlib.sha256(b).hexdigest() for b in pc.cast(body, pa.binary()).to_pylist()]
    rows = np.flatnonzero(special) if special is not None else ()
    if len(rows):
        payload = payload.to_pylist()
        slow = _json_lines(data.iloc[rows].assign(_file=file_name, _line=lines[rows]))
        for i, text in zip(rows, slow):
            payload[i] = text
            hashes[i] = content_hash(text)
    return payload, hashes


def _clean_header(columns: list[object]) -> list[str]:
    """Strip names, drop a BOM left on the first one, and keep names unique (JSON keys).

    An empty name becomes "Unnamed: <i>" (0-based), as pandas named it, so payloads stay the same.
    """
    names: list[str] = []
    seen: Counter[str] = Counter()
    for i, col in enumerate(columns):
        name = str(col)
        if name == "":
            name = f"Unnamed: {i}"
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


# Internal columns of a chunk; NUL keeps them apart from any header name.
_LINE, _ERROR, _RAW = "\0line", "\0error", "\0raw"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _raw_frame(chunk: pd.DataFrame, source: CsvSource, file_name: str, columns: list[str]) -> pd.DataFrame:
    """RAW FRAME of a chunk: ``columns`` (strings), ``_LINE`` and, if any row is malformed, ``_ERROR``
    (message) and ``_RAW`` (its text); a malformed row's columns hold its fields by position."""
    chunk = chunk.reset_index(drop=True)
    n = len(chunk)
    lines = chunk[_LINE].to_numpy(dtype="int64")
    bad = chunk[_ERROR].notna().to_numpy() if _ERROR in chunk else np.zeros(n, dtype=bool)
    data = chunk[columns].fillna("")  # short rows are padded with ""; this is just a guard

    if bad.any():
        good = ~bad
        payload = np.empty(n, dtype=object)
        hashes = np.empty(n, dtype=object)
        good_payload, hashes[good] = _payloads(data[good], file_name, lines[good])
        payload[good] = good_payload.to_pylist() if isinstance(good_payload, pa.Array) else good_payload
        payload[bad] = [
            _dumps({"_file": file_name, "_line": int(line) if line > 0 else None, "_raw": raw})
            for line, raw in zip(lines[bad], chunk.loc[bad, _RAW])
        ]
        hashes[bad] = [content_hash(p) for p in payload[bad]]
        errors = chunk[_ERROR].astype(object).where(pd.Series(bad), None).to_numpy()
    else:
        payload, hashes = _payloads(data, file_name, lines)
        errors = np.full(n, None, dtype=object)

    id_col = _find_column(columns, source.id_column)
    ids = data[id_col].astype(str).str.strip() if id_col else pd.Series("", index=data.index, dtype="str")
    need_hash = (ids == "").to_numpy()
    if need_hash.any():
        ids = ids.astype(object)
        # Content hash over the row alone (sorted keys, no _file/_line): the same row gets the same id.
        rows = need_hash & ~bad
        if rows.any():
            canonical = _json_lines(data.loc[rows, sorted(columns)])
            ids[rows] = [hashlib.sha256(c.encode("utf-8")).hexdigest() for c in canonical]
        # A malformed row without a recognisable id: hash of its text.
        rows = need_hash & bad
        if rows.any():
            ids[rows] = [hashlib.sha256(str(raw).encode("utf-8")).hexdigest() for raw in chunk.loc[rows, _RAW]]

    date_col = _find_column(columns, source.date_column)
    if date_col:
        occurred = parse_timestamps(data[date_col], dayfirst=source.dayfirst, date_format=source.date_format)
        occurred = occurred.astype(TS_DTYPE)
        if bad.any():
            occurred[bad] = pd.NaT
    else:
        occurred = pd.Series(pd.NaT, index=data.index, dtype=TS_DTYPE)

    return pd.DataFrame(
        {
            "source_id": ids.astype("str").reset_index(drop=True),
            "occurred_at": occurred.astype(TS_DTYPE).reset_index(drop=True),
            "payload": pd.Series(payload, dtype="str"),
            "error": pd.Series(errors, dtype=object),
            "content_hash": pd.Series(hashes, dtype="str"),
        }
    )


_PROVENANCE = ',"_file":'


def content_hash(payload: str) -> str:
    """Hash of a row's values without where it was read (``_file``, ``_line``, written last by
    :func:`_raw_frame`): a row that only moved to another line or file is the same observation."""
    cut = payload.rfind(_PROVENANCE)
    return hashlib.sha256((payload[:cut] if cut > 0 else payload).encode("utf-8")).hexdigest()


class _SetAside:
    """Records pyarrow's parser set aside (field count differs from the header), put back in order.

    pyarrow numbers records from 1, header included, blank lines not counted, and reports each
    set-aside record before it returns the batch of the block holding it. Good records therefore
    get the numbers not taken by a set-aside one, and ``_line`` = number - 1 - whitespace-only
    records before it (those are skipped, as pandas did).
    """

    def __init__(self, columns: list[str], delimiter: str) -> None:
        self.columns = columns
        self.width = len(columns)
        self.delimiter = delimiter
        self.reported: list[tuple[int | None, int, int, str]] = []  # filled by the parser
        self.pending: list[tuple[int, int, int, str]] = []  # numbered, not yet placed
        self.next_number = 2  # of the next good record (1 is the header)
        self.blanks = 0  # whitespace-only records placed so far

    def on_invalid(self, row: pacsv.InvalidRow) -> str:
        self.reported.append((row.number, row.expected_columns, row.actual_columns, row.text))
        return "skip"

    def _blank(self, row: tuple[int | None, int, int, str]) -> bool:
        """A whitespace-only line: skipped and not counted, as pandas did."""
        _, expected, actual, text = row
        return actual < expected and not text.strip() and self.delimiter not in text

    def _extras(
        self, rows: list[tuple[int | None, int, int, str]], lines: list[int], unnumbered: bool = False
    ) -> list[pd.DataFrame]:
        """Set-aside records as chunk rows: short ones padded (good), over-long ones malformed.

        ``unnumbered`` records (pyarrow could not say where they were) are all kept as malformed.
        """
        values, line_col, error_col, raw_col = [], [], [], []
        for row, line in zip(rows, lines):
            _, expected, actual, text = row
            if self._blank(row):
                continue
            fields = _split(text, self.delimiter)
            if not unnumbered and (len(fields) <= self.width or not any(fields[self.width :])):
                # Too few fields (padded with ""), or only empty ones past the header (a trailing
                # delimiter): nothing is lost, so it is a good record.
                values.append(fields[: self.width] + [""] * (self.width - len(fields)))
                error, raw = None, None
            else:
                values.append(fields[: self.width])  # by position: column i's value unless shifted
                where = f"line {line}" if line > 0 else "line unknown"
                error, raw = f"{where}: expected {expected} fields, saw {actual}", text
            line_col.append(line)
            error_col.append(error)
            raw_col.append(raw)
        if not values:
            return []
        frame = pd.DataFrame(values, columns=self.columns, dtype="str")
        frame[_LINE] = np.asarray(line_col, dtype="int64")
        frame[_ERROR] = pd.Series(error_col, dtype=object)
        frame[_RAW] = pd.Series(raw_col, dtype=object)
        return [frame]

    def place(self, good: pd.DataFrame | None, last: bool = False) -> pd.DataFrame | None:
        """``good`` (the rows of the batch just read, in order) with ``_LINE``, merged with the
        set-aside records that come before, between or right after them; ``last`` places all."""
        unnumbered = [r for r in self.reported if r[0] is None]
        self.pending.extend(r for r in self.reported if r[0] is not None)
        self.reported.clear()
        self.pending.sort(key=lambda r: r[0])

        count = 0 if good is None else len(good)
        taken = np.fromiter((r[0] for r in self.pending), dtype="int64", count=len(self.pending))
        numbers = np.arange(self.next_number, self.next_number + count + len(taken), dtype="int64")
        if len(taken):
            numbers = numbers[~np.isin(numbers, taken)]
        numbers = numbers[:count]
        limit = int(numbers[-1]) + 1 if count else self.next_number
        # Placed now: set-aside records before the limit, and a run of them right after it (no good
        # record can come in between), so pending never grows past one block.
        i = 0
        while i < len(self.pending) and (last or self.pending[i][0] <= limit):
            if self.pending[i][0] == limit:
                limit += 1
            i += 1
        placed, self.pending = self.pending[:i], self.pending[i:]
        self.next_number = limit

        blank = np.array([r[0] for r in placed if self._blank(r)], dtype="int64")
        parts: list[pd.DataFrame] = []
        if count:
            parts.append(good.assign(**{_LINE: numbers - 1 - self.blanks - np.searchsorted(blank, numbers)}))
        if placed:
            at = np.array([r[0] for r in placed], dtype="int64")
            parts += self._extras(placed, (at - 1 - self.blanks - np.searchsorted(blank, at)).tolist())
        self.blanks += len(blank)
        if len(parts) > 1:
            merged = pd.concat(parts, ignore_index=True)
            order = np.argsort(merged[_LINE].to_numpy(), kind="stable")
            parts = [merged.iloc[order].reset_index(drop=True)]
        parts += self._extras(unnumbered, [0] * len(unnumbered), unnumbered=True)  # text only, at the end
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


class _RecordTooLong(Exception):
    """A record does not fit in one block: read the file again with bigger blocks."""


def _read_chunks(
    path: Path, encoding: str, delimiter: str, names: list[str], set_aside: _SetAside, block_size: int
) -> Iterator[pd.DataFrame]:
    """The file's records in order, a block at a time, as chunks for :func:`_raw_frame`."""
    with _Utf8Stream(path, encoding) as stream:
        reader = pacsv.open_csv(
            stream,
            read_options=_read_options(block_size),
            parse_options=_parse_options(delimiter, set_aside.on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False
            ),
        )
        with reader:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    if "straddl" in str(exc):
                        raise _RecordTooLong(str(exc)) from exc
                    raise ValueError(f"{path}: cannot parse the CSV: {exc}") from exc
                good = None
                if batch.num_rows:
                    good = pa.Table.from_batches([batch]).rename_columns(set_aside.columns).to_pandas()
                chunk = set_aside.place(good)
                if chunk is not None and len(chunk):
                    yield chunk
    chunk = set_aside.place(None, last=True)
    if chunk is not None and len(chunk):
        yield chunk


# Keys the reader adds to every payload; ``fields`` may map them too.
_READER_KEYS = ("_file", "_line")
_HEADER_SHOWN = 40


def _check_columns(source: CsvSource, path: Path, columns: list[str]) -> None:
    """Every column the source names must be in the header, else nothing of the file could be
    dated or mapped: fail with the source, file, missing names and the header found."""
    missing: list[str] = []

    def note(what: str, wanted: str, pool: list[str]) -> None:
        close = difflib.get_close_matches(wanted, pool, n=1, cutoff=0.6)
        missing.append(f"{what} {wanted!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    for what, wanted in (("id_column", source.id_column), ("date_column", source.date_column)):
        if wanted and _find_column(columns, wanted) is None:  # matched case-insensitively, as read
            note(what, wanted, columns)
    for field, column in source.fields.items():
        if column not in columns and column not in _READER_KEYS:  # payload keys match exactly
            note(f"fields.{field}", column, columns)
    if missing:
        shown = ", ".join(repr(c) for c in columns[:_HEADER_SHOWN])
        more = f", ... ({len(columns)} columns)" if len(columns) > _HEADER_SHOWN else ""
        raise SourceConfigError(
            f"csv source {source.name!r}: {path}: column(s) not in the file's header: {'; '.join(missing)}. "
            f"Header found: {shown}{more}"
        )


class _FilePlan:
    """How one file is read: its codec, delimiter and header (checked against the source)."""

    def __init__(self, path: Path, encoding: str, delimiter: str, names: list[str]) -> None:
        self.path, self.encoding, self.delimiter, self.names = path, encoding, delimiter, names
        self.columns = _clean_header(names)


def _plan_file(source: CsvSource, path: Path) -> _FilePlan | None:
    """Detect the file's codec and delimiter and check its header; None for an empty file."""
    encoding = detect_encoding(path) if source.encoding == "auto" else source.encoding
    delimiter = source.delimiter
    if delimiter == "auto":
        with open(path, encoding=encoding, errors="replace", newline="") as fh:
            delimiter = detect_delimiter(fh.read(SAMPLE_BYTES))
    log.debug("csv %s: %s (encoding=%s, delimiter=%r)", source.name, path, encoding, delimiter)

    names = _header(path, encoding, delimiter)
    if names is None:
        log.warning("csv %s: %s is empty, skipped", source.name, path)
        return None
    plan = _FilePlan(path, encoding, delimiter, names)
    _check_columns(source, path, plan.columns)
    return plan


def _iter_file(source: CsvSource, plan: _FilePlan, batch_size: int) -> Iterator[pd.DataFrame]:
    path, encoding, delimiter, names, columns = plan.path, plan.encoding, plan.delimiter, plan.names, plan.columns

    malformed: list[str] = []
    emitted_through = 0  # _line of the last record yielded
    block_size = BLOCK_BYTES
    while True:
        buffer: list[pd.DataFrame] = []
        buffered = 0
        set_aside = _SetAside(columns, delimiter)
        try:
            for chunk in _read_chunks(path, encoding, delimiter, names, set_aside, block_size):
                if emitted_through:  # re-reading after _RecordTooLong: skip what was yielded
                    chunk = chunk[chunk[_LINE].to_numpy() > emitted_through]
                buffer.append(chunk)
                buffered += len(chunk)
                while buffered >= batch_size:
                    whole = buffer[0] if len(buffer) == 1 else pd.concat(buffer, ignore_index=True)
                    head, rest = whole.iloc[:batch_size], whole.iloc[batch_size:]
                    buffer, buffered = [rest], len(rest)
                    frame = _raw_frame(head, source, path.name, columns)
                    malformed.extend(frame["error"].dropna())
                    emitted_through = max(emitted_through, int(head[_LINE].max()))
                    yield frame
        except _RecordTooLong as exc:
            if block_size >= MAX_BLOCK_BYTES:
                raise ValueError(
                    f"{path}: a record is longer than {MAX_BLOCK_BYTES // 2**20} MiB; the CSV reader cannot split it"
                ) from exc
            block_size = min(block_size * 8, MAX_BLOCK_BYTES)
            log.info("csv %s: %s: a record is longer than a block, reading again with %d MiB blocks",
                     source.name, path.name, block_size // 2**20)
            continue
        if buffered:
            whole = buffer[0] if len(buffer) == 1 else pd.concat(buffer, ignore_index=True)
            frame = _raw_frame(whole, source, path.name, columns)
            malformed.extend(frame["error"].dropna())
            yield frame
        break
    if malformed:
        shown = "; ".join(malformed[:5]) + ("; ..." if len(malformed) > 5 else "")
        log.warning("csv %s: %s: %d malformed record(s) passed on with an error: %s",
                    source.name, path.name, len(malformed), shown)


def iter_raw_batches(source: CsvSource, batch_size: int = 50_000) -> Iterator[pd.DataFrame]:
    """Stream every file of ``source`` as RAW FRAMES of at most ``batch_size`` rows, in file order.

    Batches never span files. ``payload`` is the row as JSON (values as strings) plus ``_file``
    and ``_line`` (1-based data record number: header and blank lines excluded, a record with
    quoted line breaks counted once). ``error`` is None, or for a record with more non-empty
    fields than the header "line <_line>: expected <n> fields, saw <m>"; such a row's payload is
    ``{"_file", "_line", "_raw": <the record's text>}``, its ``source_id`` the id field (by
    position) or else the sha256 of the text, and ``occurred_at`` NaT. Records with too few
    fields are padded with "" and are good.

    A file whose header lacks a column the source names (``id_column``, ``date_column``, a
    ``fields`` value) raises :class:`SourceConfigError` before any row is yielded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Every file's header is checked before the first row is yielded: a source whose columns
    # do not match fails before anything of it is landed.
    plans = [plan for path in source.files() if (plan := _plan_file(source, path)) is not None]
    for plan in plans:
        yield from _iter_file(source, plan, batch_size)


def source_fingerprint(source: CsvSource, chunk_bytes: int = 1 << 20) -> str:
    """A hash of the source's settings and of every file's name and content.

    Equal fingerprints mean reading the source again would deliver exactly the same records, so
    a raw run can skip it. Hashing reads the files once (about as fast as the disk), far cheaper
    than parsing them.
    """
    digest = hashlib.sha256(source.model_dump_json().encode())
    for path in source.files():
        digest.update(b"\0" + str(path).encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                digest.update(chunk)
    return digest.hexdigest()
