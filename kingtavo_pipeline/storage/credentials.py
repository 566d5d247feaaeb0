"""OAuth credentials at rest: the PostgreSQL :class:`~kingtavo_pipeline.connectors.tokens.TokenStore`.

Tokens are encrypted with Fernet (AES-128-CBC + HMAC-SHA256). The key comes from
``KINGTAVO_SECRET_KEY``: a Fernet key (``Fernet.generate_key()``), or several separated by commas
to rotate keys (the first encrypts, all decrypt); any other string is hashed (SHA-256) into a key.
Without it, a key is generated once into ``$KINGTAVO_HOME/secret.key`` (mode 0600) and a warning
is logged: fine on one machine, but every process that shares the database must use the same key,
so production sets the variable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..connectors.tokens import ACTIVE, REVOKED, CredentialKey, StoredCredential, TokenPair
from ..settings import get_settings
from .postgres import PostgresStore

log = logging.getLogger(__name__)

SECRET_KEY_ENV = "KINGTAVO_SECRET_KEY"
KEY_FILE_NAME = "secret.key"
# a refresher holds the row lock across one token POST (30 s read timeout); waiting longer means
# something is stuck, and failing beats hanging a run forever
LOCK_TIMEOUT = "90s"

_COLUMNS = (
    "access_token_enc, refresh_token_enc, access_expires_at, refresh_expires_at, status, refreshed_count, status_reason"
)
_KEY_WHERE = "source_type = %s AND source_name = %s AND account_id = %s"

_cipher_cache: dict[tuple[str, str], MultiFernet] = {}
_cipher_lock = threading.Lock()


class CredentialKeyError(RuntimeError):
    """Stored tokens cannot be decrypted with the configured key (or the key is unusable)."""


# --- the key -----------------------------------------------------------------------------------


def _fernet(secret: str) -> Fernet:
    """A Fernet for a proper key, or for a key derived from any other string."""
    try:
        if len(base64.urlsafe_b64decode(secret.encode())) == 32:
            return Fernet(secret.encode())
    except (binascii.Error, ValueError):
        pass
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def key_file(home: Path | None = None) -> Path:
    return (home or get_settings().home_path) / KEY_FILE_NAME


def _read_or_create_key_file(path: Path) -> str:
    """The key in ``path``, created atomically (0600) when absent; concurrent creators agree on one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won the race: then use its key
            log.warning(
                "%s is not set: generated an encryption key for stored credentials in %s (mode 0600). "
                "Every process sharing this database needs the same key; set %s in production.",
                SECRET_KEY_ENV,
                path,
                SECRET_KEY_ENV,
            )
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("credential key file %s had mode %o; narrowing it to 0600", path, mode)
        path.chmod(0o600)
    key = path.read_text().strip()
    if not key:
        raise CredentialKeyError(f"credential key file {path} is empty; delete it or set {SECRET_KEY_ENV}")
    return key


def load_cipher(home: Path | None = None) -> MultiFernet:
    """The cipher for stored credentials (``KINGTAVO_SECRET_KEY``, else the key file under ``home``)."""
    configured = os.environ.get(SECRET_KEY_ENV, "").strip()
    cache_key = (configured, "" if configured else str(key_file(home)))
    with _cipher_lock:
        cipher = _cipher_cache.get(cache_key)
        if cipher is None:
            secrets = (
                [s.strip() for s in configured.split(",") if s.strip()]
                if configured
                else [_read_or_create_key_file(key_file(home))]
            )
            cipher = _cipher_cache[cache_key] = MultiFernet([_fernet(s) for s in secrets])
        return cipher


# --- the store ---------------------------------------------------------------------------------


class _LockedRow:
    """One credential row under ``FOR UPDATE`` inside the caller's transaction."""

    def __init__(
        self, conn: psycopg.Connection, key: CredentialKey, cipher: MultiFernet, current: StoredCredential | None
    ):
        self._conn = conn
        self._key = key
        self._cipher = cipher
        self._current = current

    @property
    def current(self) -> StoredCredential | None:
        return self._current

    def replace(self, pair: TokenPair) -> None:
        _upsert(self._conn, self._key, pair, self._cipher, refreshed=True)
        self._current = StoredCredential(pair, ACTIVE, (self._current.refreshed_count if self._current else 0) + 1)

    def revoke(self, reason: str) -> None:
        self._conn.execute(
            f"UPDATE source_credentials SET status = %s, status_reason = %s, updated_at = now() WHERE {_KEY_WHERE}",
            (REVOKED, reason, *_key_params(self._key)),
        )
        log.error("%s: credential marked revoked (%s)", self._key, reason)


class PostgresTokenStore:
    """Token pairs in ``source_credentials``, encrypted; the lock is the row's ``FOR UPDATE``."""

    def __init__(self, store: PostgresStore, cipher: MultiFernet | None = None):
        self.store = store
        self.cipher = cipher or load_cipher()

    def load(self, key: CredentialKey) -> StoredCredential | None:
        with self.store.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM source_credentials WHERE {_KEY_WHERE}", _key_params(key)
            ).fetchone()
        return self._decode(key, row)

    @contextmanager
    def locked(self, key: CredentialKey) -> Iterator[_LockedRow]:
        with self.store.transaction() as conn:
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM source_credentials WHERE {_KEY_WHERE} FOR UPDATE", _key_params(key)
            ).fetchone()
            yield _LockedRow(conn, key, self.cipher, self._decode(key, row))

    def _decode(self, key: CredentialKey, row: tuple | None) -> StoredCredential | None:
        if row is None:
            return None
        access_enc, refresh_enc, access_exp, refresh_exp, status, count, reason = row
        try:
            pair = TokenPair(
                access_token=self.cipher.decrypt(bytes(access_enc)).decode(),
                refresh_token=self.cipher.decrypt(bytes(refresh_enc)).decode() if refresh_enc is not None else None,
                access_expires_at=access_exp,
                refresh_expires_at=refresh_exp,
            )
        except InvalidToken:
            raise CredentialKeyError(
                f"{key}: stored tokens cannot be decrypted: {SECRET_KEY_ENV} (or the key file) is not the key they "
                "were saved with; restore that key, or store the tokens again with `kingtavo credentials set`"
            ) from None
        return StoredCredential(pair, status, int(count), reason)


def _key_params(key: CredentialKey) -> tuple[str, str, str]:
    return (key.source_type, key.source_name, key.account_id)


def _upsert(
    conn: psycopg.Connection, key: CredentialKey, pair: TokenPair, cipher: MultiFernet, *, refreshed: bool
) -> None:
    access_enc = cipher.encrypt(pair.access_token.encode())
    refresh_enc = cipher.encrypt(pair.refresh_token.encode()) if pair.refresh_token else None
    bump = 1 if refreshed else 0
    conn.execute(
        """INSERT INTO source_credentials AS c
               (source_type, source_name, account_id, access_token_enc, refresh_token_enc,
                access_expires_at, refresh_expires_at, status, refreshed_count, refreshed_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, 'active', %s, CASE WHEN %s THEN now() END)
           ON CONFLICT (source_type, source_name, account_id) DO UPDATE SET
               access_token_enc = EXCLUDED.access_token_enc,
               refresh_token_enc = EXCLUDED.refresh_token_enc,
               access_expires_at = EXCLUDED.access_expires_at,
               refresh_expires_at = EXCLUDED.refresh_expires_at,
               status = 'active',
               status_reason = NULL,
               updated_at = now(),
               refreshed_count = c.refreshed_count + %s,
               refreshed_at = CASE WHEN %s THEN now() ELSE c.refreshed_at END""",
        (
            *_key_params(key),
            access_enc,
            refresh_enc,
            pair.access_expires_at,
            pair.refresh_expires_at,
            bump,
            refreshed,
            bump,
            refreshed,
        ),
    )


def save_credentials(
    store: PostgresStore,
    source_type: str,
    source_name: str,
    account_id: str,
    access_token: str,
    refresh_token: str | None,
    expires_in: float | None,
    *,
    refresh_expires_in: float | None = None,
    cipher: MultiFernet | None = None,
) -> None:
    """Store (or replace) an account's token pair, active; what ``kingtavo credentials set`` calls.

    ``expires_in``: seconds the access token stays valid (None: unknown, the API's 401 will tell).
    ``refresh_expires_in``: seconds for the refresh token (None: unknown).
    """
    if not access_token:
        raise ValueError("access_token is empty")
    now = datetime.now(timezone.utc)
    pair = TokenPair(
        access_token=access_token,
        refresh_token=refresh_token or None,
        access_expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        refresh_expires_at=now + timedelta(seconds=refresh_expires_in) if refresh_expires_in is not None else None,
    )
    key = CredentialKey(source_type, source_name, str(account_id))
    with store.transaction() as conn:
        _upsert(conn, key, pair, cipher or load_cipher(), refreshed=False)


def list_credentials(store: PostgresStore, source_type: str | None = None) -> list[dict[str, Any]]:
    """Credential rows without their tokens (for ``kingtavo credentials list``)."""
    rows = store.fetch_all(
        """SELECT source_type, source_name, account_id, status, status_reason, access_expires_at,
                  refresh_expires_at, refreshed_count, refreshed_at, updated_at
           FROM source_credentials WHERE %(t)s::text IS NULL OR source_type = %(t)s
           ORDER BY source_type, source_name, account_id""",
        {"t": source_type},
    )
    names = (
        "source_type",
        "source_name",
        "account_id",
        "status",
        "status_reason",
        "access_expires_at",
        "refresh_expires_at",
        "refreshed_count",
        "refreshed_at",
        "updated_at",
    )
    return [dict(zip(names, r)) for r in rows]
