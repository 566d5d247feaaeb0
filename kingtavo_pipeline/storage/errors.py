"""Errors the storage layer raises instead of driver internals, and the redaction every message
that may name a store goes through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager


class StoreUnavailableError(RuntimeError):
    """A store could not be started or reached. The message names the URL or data path and the log."""


class DatabaseError(RuntimeError):
    """A PostgreSQL error as it may be shown and stored: its class and the server's primary message
    (:func:`describe_error`). The driver's own text carries DETAIL ("Failing row contains (...)",
    "Key (...)=(...)") and SQLAlchemy's the statement's parameters, i.e. payload data; Dagster keeps
    a failed step's exception text in its event log and shows it in the UI."""


def is_database_error(exc: BaseException) -> bool:
    """A psycopg or SQLAlchemy error, or one wrapping a driver's error in ``.orig``."""
    return type(exc).__module__.split(".")[0] in ("psycopg", "sqlalchemy") or isinstance(
        getattr(exc, "orig", None), BaseException)


@contextmanager
def row_data_kept_out() -> Iterator[None]:
    """Re-raise a database error as :class:`DatabaseError`, with the same traceback (which holds
    code, not values) and without the original chained to it. Other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise DatabaseError(describe_error(exc)).with_traceback(exc.__traceback__) from None


MASK = "***"

# Keys whose values are credentials, in URL queries and key=value DSNs alike.
_SECRET_KEYS = r"(?:ssl)?password|passwd|pwd|secret|token|access_token|api_?key|access_key|secret_key"

# scheme://userinfo@...: userinfo may hold unescaped '@', '/', '?' (see _redact_userinfo).
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"<>]*)")
# ?password=... / &password=...: the value runs to the next '&', '#', space or quote.
_QUERY_SECRET = re.compile(rf"([?&;](?:{_SECRET_KEYS})=)[^&#\s'\"]*", re.IGNORECASE)
# key=value DSN: password=secret, password = 'se cret' (libpq quoting: \' and \\ escapes).
_KV_SECRET = re.compile(
    rf"(?<![?&;\w])((?:{_SECRET_KEYS})\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s'\"]+)",
    re.IGNORECASE,
)
# Mappings printed as text: {'password': 'secret'}, "password": "secret".
_MAPPING_SECRET = re.compile(
    rf"""((['"])(?:{_SECRET_KEYS})\2\s*:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,}}]+)""",
    re.IGNORECASE,
)


def _redact_userinfo(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    first_at = rest.find("@")
    if first_at < 0:
        return match.group(0)
    # The authority ends at the last '@' before the query: a password may hold '@' or '/'
    # unescaped, while a query value after '?' may hold an '@' that is not userinfo.
    query = re.search(r"[?#]", rest[first_at:])
    end = first_at + query.start() if query else len(rest)
    at = rest.rfind("@", 0, end)
    userinfo, tail = rest[:at], rest[at:]
    if ":" not in userinfo:
        return match.group(0)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{user}:{MASK}{tail}"


def redact_url(text: str) -> str:
    """Hide every password in ``text``: a URL, a key=value DSN, or a message that contains them.

    ``scheme://user:pass@host`` keeps the user (``user:***@host``); ``?password=``/``&password=``
    query values, ``password=...`` DSN values (quoted or not) and printed ``'password': ...``
    mapping entries become ``***``.
    """
    if not text:
        return text
    text = _URL.sub(_redact_userinfo, str(text))
    text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
    text = _KV_SECRET.sub(rf"\1{MASK}", text)
    return _MAPPING_SECRET.sub(rf"\1'{MASK}'", text)


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""


# A quoted fragment of a server message: in data exceptions (SQLSTATE class 22) it is the value.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _server_message(exc: BaseException) -> str | None:
    """The PostgreSQL server's primary message (no DETAIL, CONTEXT or query), or None."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if not primary:
        return None
    sqlstate = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("22"):
        # e.g. invalid input syntax for type integer: "<the row's value>"
        primary = _QUOTED.sub('"…"', primary)
    context = getattr(diag, "context", None) or ""
    if context.startswith("COPY "):
        # where in a COPY, without the value: 'COPY items, line 5, column id: "<value>"'
        primary += f" ({context.split(': ', 1)[0].splitlines()[0]})"
    return primary


def describe_error(exc: BaseException, limit: int = 4000) -> str:
    """``ClassName: message`` safe to store or show: no row values, no credentials.

    Database errors (psycopg, or SQLAlchemy wrapping one) keep the server's primary message only:
    their full text carries DETAIL ("Failing row contains (...)", "Key (...)=(...)") and the
    statement's parameters, i.e. payload data. Every text goes through :func:`redact_url`.
    """
    name = type(exc).__name__
    # SQLAlchemy's DBAPIError/StatementError keep the driver's error in .orig; their own text
    # appends "[SQL: ...] [parameters: ...]".
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        message = _server_message(orig) or _first_line(str(orig))
        name = f"{name} ({type(orig).__name__})"
    elif type(exc).__module__.split(".")[0] in ("psycopg", "sqlalchemy"):
        message = _server_message(exc) or _first_line(str(exc))
    else:
        message = str(exc)
    message = redact_url(message)
    return (f"{name}: {message}" if message else name)[:limit]
