"""Errors the storage layer raises instead of driver internals."""

from __future__ import annotations

import re


class StoreUnavailableError(RuntimeError):
    """A store could not be started or reached. The message names the URL or data path and the log."""


def redact_url(url: str) -> str:
    """Hide a password in a connection URL so it can go into an error message or a log."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
