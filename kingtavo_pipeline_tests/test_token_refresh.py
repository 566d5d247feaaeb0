"""Salla's OAuth refresh against the sandbox's token endpoint, with tokens in the real PostgreSQL store.

A refresh token is single-use there as on Salla: a second use answers invalid_grant and revokes the
merchant's grant, so every test below would end revoked if the lock or the re-read were broken.
"""

from __future__ import annotations

import logging
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cryptography.fernet import Fernet

from kingtavo_pipeline.connectors.salla import SallaConnector
from kingtavo_pipeline.connectors.tokens import (
    CredentialKey,
    CredentialRevokedError,
    TokenEndpoint,
    TokenManager,
    TokenPersistError,
)
from kingtavo_pipeline.extract.http import AuthError, HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
from kingtavo_pipeline.storage import credentials as creds
from kingtavo_pipeline.storage.credentials import (
    CredentialKeyError,
    PostgresTokenStore,
    list_credentials,
    load_cipher,
    save_credentials,
)

FAST = HttpPolicy(max_attempts=3, backoff_initial=0.05, backoff_max=0.2)
TWO_WEEKS = 14 * 86400


@pytest.fixture(autouse=True)
def _fresh_limiters():
    reset_limiters()
    yield
    reset_limiters()


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(days=20, salla_requests_per_minute=10_000))
    with sb.running() as base:
        yield sb, base


def _seed(store, sb: Sandbox, merchant: str, expires_in: float = TWO_WEEKS) -> tuple[str, str]:
    m = sb.credentials.salla_merchant(merchant)
    save_credentials(store, "salla", "salla", merchant, m.access_token, m.refresh_token, expires_in)
    return m.access_token, m.refresh_token


def _manager(store, sb: Sandbox, base: str, merchant: str) -> TokenManager:
    c = sb.credentials
    return TokenManager(
        PostgresTokenStore(store),
        CredentialKey("salla", "salla", merchant),
        TokenEndpoint(f"{base}/salla/oauth2/token", c.salla_client_id, c.salla_client_secret),
    )


def _connector(store, sb: Sandbox, base: str, merchant: str) -> SallaConnector:
    c = sb.credentials
    return SallaConnector(
        merchant,
        base_url=f"{base}/salla/admin/v2",
        token_url=f"{base}/salla/oauth2/token",
        client_id=c.salla_client_id,
        client_secret=c.salla_client_secret,
        tokens=PostgresTokenStore(store),
        policy=FAST,
    )


def _row(store, merchant: str) -> dict:
    row = store.fetch_all(
        "SELECT access_token_enc, refresh_token_enc, status, status_reason, refreshed_count "
        "FROM source_credentials WHERE source_type = 'salla' AND account_id = %s",
        (merchant,),
    )[0]
    return dict(zip(("access_enc", "refresh_enc", "status", "reason", "count"), row))


def _token_works(base: str, token: str) -> bool:
    r = httpx.get(
        f"{base}/salla/admin/v2/products", params={"per_page": 1}, headers={"Authorization": f"Bearer {token}"}
    )
    return r.status_code == 200


def test_expired_access_token_is_refreshed_transparently_and_stored_encrypted(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[0]
    old_access, old_refresh = _seed(store, sb, merchant)
    sb.advance(days=15)  # the 14-day access token expires on the sandbox's token clock

    with _connector(store, sb, base, merchant) as conn:
        products = [r.payload for page in conn.pull_all("products") for r in page.records]

    assert products == sb.truth.salla_products(merchant)
    assert sb.salla_refresh_count(merchant) == 1
    statuses = [r.status for r in sb.requests("salla")]
    assert statuses[0] == 401 and set(statuses[1:]) == {200}  # one rejection, then the new token

    stored = PostgresTokenStore(store).load(CredentialKey("salla", "salla", merchant))
    assert stored is not None and stored.status == "active"
    new = stored.pair
    assert new.access_token != old_access and new.refresh_token != old_refresh
    row = _row(store, merchant)
    assert row["count"] == 1
    # at rest: ciphertext, neither equal to nor containing the tokens
    for token, enc in ((new.access_token, row["access_enc"]), (new.refresh_token, row["refresh_enc"])):
        assert token.encode() not in bytes(enc) and bytes(enc) != token.encode()
    assert _token_works(base, new.access_token)


def test_token_near_expiry_is_refreshed_before_the_request(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[1]
    _seed(store, sb, merchant, expires_in=30)  # inside the 60 s skew: refresh first
    with _connector(store, sb, base, merchant) as conn:
        assert sum(len(p.records) for p in conn.pull_all("products")) == len(sb.truth.salla_products(merchant))
    assert sb.salla_refresh_count(merchant) == 1
    assert all(r.status == 200 for r in sb.requests("salla"))  # never sent the expiring token


def test_two_concurrent_refreshers_refresh_once_and_share_the_token(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[0]
    stale, _ = _seed(store, sb, merchant)
    managers = [_manager(store, sb, base, merchant) for _ in range(2)]
    barrier = threading.Barrier(2)

    def refresh(manager: TokenManager) -> str:
        barrier.wait()
        return manager.refresh(stale_access_token=stale)

    with ThreadPoolExecutor(2) as pool:
        tokens = list(pool.map(refresh, managers))

    assert tokens[0] == tokens[1] != stale
    assert sb.salla_refresh_count(merchant) == 1
    assert len(sb.requests("salla_oauth")) == 1  # the second refresher re-read the row instead
    assert not sb.state.oauth.is_revoked(merchant)
    row = _row(store, merchant)
    assert row["status"] == "active" and row["count"] == 1
    assert _token_works(base, tokens[0])


def test_reused_refresh_token_revokes_the_row_with_a_clear_error(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[2]
    old_access, old_refresh = _seed(store, sb, merchant)
    _manager(store, sb, base, merchant).refresh(stale_access_token=old_access)
    # an old backup of the pair is restored: its refresh token was spent above
    save_credentials(store, "salla", "salla", merchant, old_access, old_refresh, expires_in=0)

    manager = _manager(store, sb, base, merchant)
    with pytest.raises(CredentialRevokedError, match=f"merchant {merchant} must reinstall the app") as err:
        manager.access_token()
    assert isinstance(err.value, AuthError) and "invalid_grant" in str(err.value)
    assert old_refresh not in str(err.value)
    row = _row(store, merchant)
    assert row["status"] == "revoked" and "invalid_grant" in row["reason"]
    assert sb.state.oauth.is_revoked(merchant)
    assert [c["status"] for c in list_credentials(store, "salla")] == ["revoked"]

    # a revoked row fails fast: the token endpoint is not called again
    calls = len(sb.requests("salla_oauth"))
    with _connector(store, sb, base, merchant) as conn, pytest.raises(CredentialRevokedError, match="reinstall"):
        list(conn.pull_all("products"))
    assert len(sb.requests("salla_oauth")) == calls


def _fail_commits(store, failures: int) -> None:
    """Make the next ``failures`` commits that update a credential row fail (a deferred trigger at COMMIT)."""
    with store.transaction() as conn:
        conn.execute("CREATE SEQUENCE test_cred_commit_failures")
        conn.execute(
            f"""CREATE FUNCTION test_fail_cred_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('test_cred_commit_failures') <= {failures} THEN
                        RAISE EXCEPTION 'simulated commit failure';
                    END IF;
                    RETURN NULL;
                END $$"""
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER test_fail_cred_commit AFTER UPDATE ON source_credentials "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_cred_commit()"
        )


def _stop_failing(store) -> None:
    with store.transaction() as conn:
        conn.execute("DROP TRIGGER IF EXISTS test_fail_cred_commit ON source_credentials")
        conn.execute("DROP FUNCTION IF EXISTS test_fail_cred_commit()")
        conn.execute("DROP SEQUENCE IF EXISTS test_cred_commit_failures")


def test_issued_pair_survives_a_failed_commit(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[0]
    stale, _ = _seed(store, sb, merchant)
    _fail_commits(store, 1)
    try:
        token = _manager(store, sb, base, merchant).refresh(stale_access_token=stale)
    finally:
        _stop_failing(store)
    assert sb.salla_refresh_count(merchant) == 1
    stored = PostgresTokenStore(store).load(CredentialKey("salla", "salla", merchant))
    assert stored.pair.access_token == token and stored.status == "active"
    # the stored refresh token is the live one: the next rotation succeeds
    _manager(store, sb, base, merchant).refresh(stale_access_token=token)
    assert sb.salla_refresh_count(merchant) == 2 and not sb.state.oauth.is_revoked(merchant)


def test_unsaved_pair_is_kept_and_stored_before_the_next_refresh(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[1]
    stale, _ = _seed(store, sb, merchant)
    manager = _manager(store, sb, base, merchant)
    _fail_commits(store, 1 + creds_attempts())
    try:
        with pytest.raises(TokenPersistError, match="could not be stored"):
            manager.refresh(stale_access_token=stale)
    finally:
        _stop_failing(store)
    assert PostgresTokenStore(store).load(CredentialKey("salla", "salla", merchant)).pair.access_token == stale
    # the store is back: the pair kept in memory is stored first, and no second refresh is needed
    token = manager.refresh(stale_access_token=stale)
    assert sb.salla_refresh_count(merchant) == 1
    assert PostgresTokenStore(store).load(CredentialKey("salla", "salla", merchant)).pair.access_token == token
    assert _token_works(base, token)


def creds_attempts() -> int:
    from kingtavo_pipeline.connectors.tokens import PERSIST_ATTEMPTS

    return PERSIST_ATTEMPTS


def test_key_file_is_created_private_and_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(creds.SECRET_KEY_ENV, raising=False)
    monkeypatch.setattr(creds, "_cipher_cache", {})
    with caplog.at_level(logging.WARNING, logger=creds.__name__):
        cipher = load_cipher(tmp_path)
    path = tmp_path / creds.KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "KINGTAVO_SECRET_KEY is not set" in caplog.text
    secret = cipher.encrypt(b"refresh-token")
    monkeypatch.setattr(creds, "_cipher_cache", {})  # as a new process would
    assert load_cipher(tmp_path).decrypt(secret) == b"refresh-token"


def test_secret_key_from_the_environment_rotates(store, monkeypatch):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(creds.SECRET_KEY_ENV, old)
    save_credentials(store, "salla", "salla", "42", "at-1", "rt-1", 3600)
    key = CredentialKey("salla", "salla", "42")
    monkeypatch.setenv(creds.SECRET_KEY_ENV, f"{new},{old}")  # new key first, old still decrypts
    assert PostgresTokenStore(store).load(key).pair.refresh_token == "rt-1"
    monkeypatch.setenv(creds.SECRET_KEY_ENV, new)
    with pytest.raises(CredentialKeyError, match="cannot be decrypted"):
        PostgresTokenStore(store).load(key)
    monkeypatch.setenv(creds.SECRET_KEY_ENV, "just a passphrase and not a Fernet key")
    save_credentials(store, "salla", "salla", "43", "at-2", None, None)
    assert PostgresTokenStore(store).load(CredentialKey("salla", "salla", "43")).pair.access_token == "at-2"
