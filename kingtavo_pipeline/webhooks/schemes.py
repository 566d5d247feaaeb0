"""Webhook signature schemes: verify a request's raw body against one or more shared secrets.

Pure logic (no I/O). Every comparison is constant time (``hmac.compare_digest``) and every
configured secret is tried, so a secret can be rotated by configuring the new one beside the old.
Timestamped schemes (Slack, Stripe, Standard Webhooks) also reject a timestamp more than
``tolerance_seconds`` away from now in either direction, which bounds how long a captured request
can be replayed (the dedupe key catches replays inside that window).

Headers are looked up by lower-case name: pass Starlette's case-insensitive ``Headers`` or a plain
``dict`` (which is lower-cased here). :func:`sign_headers` produces what each provider sends, for
tests, benchmarks and the sandbox's webhook sender.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PROVIDERS = ("salla", "salla_token", "github", "slack", "stripe", "shopify", "standard", "hmac")
TIMESTAMPED = frozenset({"slack", "stripe", "standard"})
DEFAULT_TOLERANCE_SECONDS = 300

_DIGESTS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "sha512": hashlib.sha512}

# Headers that carry a signature or a credential, per provider (the generic scheme adds its own).
SIGNATURE_HEADERS: dict[str, tuple[str, ...]] = {
    "salla": ("x-salla-signature",),
    "salla_token": ("authorization",),
    "github": ("x-hub-signature-256", "x-hub-signature"),
    "slack": ("x-slack-signature",),
    "stripe": ("stripe-signature",),
    "shopify": ("x-shopify-hmac-sha256",),
    "standard": ("webhook-signature",),
    "hmac": (),
}


class VerificationError(Exception):
    """The request is not signed by a configured secret. ``reason`` is a short metric label:
    ``missing_signature``, ``bad_signature``, ``malformed_signature`` or ``stale_timestamp``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HmacOptions:
    """The generic ``hmac`` scheme: ``header: <prefix><encoding(HMAC-<algorithm>(secret, body))>``."""

    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.algorithm not in _DIGESTS:
            raise ValueError(f"algorithm must be one of {', '.join(_DIGESTS)}, not {self.algorithm!r}")
        if self.encoding not in ("hex", "base64"):
            raise ValueError(f"encoding must be hex or base64, not {self.encoding!r}")
        if not self.header.strip():
            raise ValueError("header must name the signature header")


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    return {k.lower(): v for k, v in headers.items()} if isinstance(headers, dict) else headers


def _mac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, _DIGESTS[algorithm]).digest()


def _ascii(value: str) -> bytes:
    # compare_digest refuses non-ASCII str; header values are latin-1 text, so compare bytes
    return value.strip().encode("utf-8", "replace")


def _any_equal(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """True when one candidate equals one expected value; every pair is compared (constant time)."""
    found = False
    for candidate in candidates:
        for value in expected:
            found |= hmac.compare_digest(candidate, value)
    return found


def _require(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise VerificationError("missing_signature", f"header {name} is missing")
    return value


def _timestamp(value: str, now: float, tolerance: int, header: str) -> None:
    try:
        ts = int(value.strip())
    except ValueError:
        raise VerificationError("malformed_signature", f"header {header} is not a Unix timestamp") from None
    if abs(now - ts) > tolerance:
        raise VerificationError("stale_timestamp", f"timestamp {ts} is more than {tolerance}s from now")


def standard_secret_bytes(secret: str) -> bytes:
    """A Standard Webhooks secret (``whsec_<base64>``, prefix optional) as the HMAC key."""
    raw = secret.strip()
    raw = raw[len("whsec_") :] if raw.startswith("whsec_") else raw
    try:
        # padding optional, as in the reference library
        key = base64.b64decode(raw.rstrip("=") + "=" * (-len(raw.rstrip("=")) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("a Standard Webhooks secret must be 'whsec_' followed by base64")
    return key


class Verifier:
    """Verifies requests for one provider against every configured secret.

    ``verify(headers, body, now=None)`` returns ``None`` or raises :class:`VerificationError`.
    Secrets are decoded once here, not per request.
    """

    def __init__(
        self,
        provider: str,
        secrets: Sequence[str],
        *,
        tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
        hmac_options: HmacOptions | None = None,
    ):
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
        if not secrets:
            raise ValueError("at least one secret is required")
        if provider == "hmac" and hmac_options is None:
            raise ValueError("the hmac provider needs HmacOptions (header, algorithm, encoding, prefix)")
        self.provider = provider
        self.tolerance = int(tolerance_seconds)
        self.hmac_options = hmac_options
        if provider == "standard":
            self._keys = [standard_secret_bytes(s) for s in secrets]
        else:
            self._keys = [s.encode() for s in secrets]
        self._verify: Callable[[Mapping[str, str], bytes, float], None] = getattr(self, f"_verify_{provider}")

    @property
    def signature_headers(self) -> tuple[str, ...]:
        """Lower-case names of the headers that carry this scheme's signature or credential."""
        extra = (self.hmac_options.header.lower(),) if self.hmac_options else ()
        return SIGNATURE_HEADERS[self.provider] + extra

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        self._verify(_lower(headers), body, time.time() if now is None else now)

    def _expected(self, message: bytes, algorithm: str = "sha256") -> list[bytes]:
        return [_mac(key, message, algorithm) for key in self._keys]

    def _hex_match(self, provided: str, message: bytes, algorithm: str = "sha256") -> bool:
        expected = [m.hex().encode() for m in self._expected(message, algorithm)]
        return _any_equal([_ascii(provided).lower()], expected)

    def _fail(self) -> None:
        raise VerificationError("bad_signature", f"{self.provider} signature does not match any configured secret")

    def _verify_salla(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        if not self._hex_match(_require(headers, "x-salla-signature"), body):
            self._fail()

    def _verify_salla_token(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        # Salla's token strategy puts the webhook secret in Authorization; accept it bare or as
        # "Bearer <token>" (both forms appear in Salla's material and in merchant setups)
        value = _require(headers, "authorization").strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not _any_equal([_ascii(value)], self._keys):
            self._fail()

    def _verify_github(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = _require(headers, "x-hub-signature-256").strip()
        if not value.startswith("sha256="):
            raise VerificationError("malformed_signature", "X-Hub-Signature-256 does not start with sha256=")
        if not self._hex_match(value[7:], body):
            self._fail()

    def _verify_slack(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        signature = _require(headers, "x-slack-signature").strip()
        ts = _require(headers, "x-slack-request-timestamp").strip()
        _timestamp(ts, now, self.tolerance, "X-Slack-Request-Timestamp")
        if not signature.startswith("v0="):
            raise VerificationError("malformed_signature", "X-Slack-Signature does not start with v0=")
        if not self._hex_match(signature[3:], b"v0:" + ts.encode() + b":" + body):
            self._fail()

    def _verify_stripe(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        ts: str | None = None
        signatures: list[bytes] = []
        for item in _require(headers, "stripe-signature").split(","):
            key, _, value = item.strip().partition("=")
            if key == "t" and ts is None:
                ts = value
            elif key == "v1":  # v0 is Stripe's test-mode scheme; only v1 is a real signature
                signatures.append(_ascii(value).lower())
        if ts is None or not signatures:
            raise VerificationError("malformed_signature", "Stripe-Signature lacks t= or v1=")
        _timestamp(ts, now, self.tolerance, "Stripe-Signature t")
        expected = [m.hex().encode() for m in self._expected(ts.encode() + b"." + body)]
        if not _any_equal(signatures, expected):
            self._fail()

    def _verify_shopify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        provided = _ascii(_require(headers, "x-shopify-hmac-sha256"))
        expected = [base64.b64encode(m) for m in self._expected(body)]
        if not _any_equal([provided], expected):
            self._fail()

    def _verify_standard(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        msg_id = _require(headers, "webhook-id").strip()
        ts = _require(headers, "webhook-timestamp").strip()
        signature = _require(headers, "webhook-signature")
        _timestamp(ts, now, self.tolerance, "webhook-timestamp")
        # space-separated "v1,<base64>" entries; other versions (v1a: asymmetric) are not ours
        provided = [_ascii(entry[3:]) for entry in signature.split() if entry.startswith("v1,")]
        if not provided:
            raise VerificationError("malformed_signature", "webhook-signature has no v1 entry")
        expected = [base64.b64encode(m) for m in self._expected(f"{msg_id}.{ts}.".encode() + body)]
        if not _any_equal(provided, expected):
            self._fail()

    def _verify_hmac(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        options = self.hmac_options
        assert options is not None
        value = _require(headers, options.header.lower()).strip()
        if options.prefix:
            if not value.startswith(options.prefix):
                raise VerificationError("malformed_signature", f"{options.header} does not start with {options.prefix}")
            value = value[len(options.prefix) :]
        macs = self._expected(body, options.algorithm)
        if options.encoding == "hex":
            ok = _any_equal([_ascii(value).lower()], [m.hex().encode() for m in macs])
        else:
            ok = _any_equal([_ascii(value)], [base64.b64encode(m) for m in macs])
        if not ok:
            self._fail()


def verify(
    provider: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    hmac_options: HmacOptions | None = None,
) -> None:
    """One-shot :meth:`Verifier.verify` (services build a :class:`Verifier` once per source)."""
    Verifier(provider, secrets, tolerance_seconds=tolerance_seconds, hmac_options=hmac_options).verify(
        headers, body, now
    )


def sign_headers(
    provider: str,
    body: bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    msg_id: str | None = None,
    hmac_options: HmacOptions | None = None,
) -> dict[str, str]:
    """The signature headers ``provider`` sends with ``body`` (plus the timestamp/id they sign)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    key = secret.encode()
    if provider == "salla":
        return {"X-Salla-Security-Strategy": "Signature", "X-Salla-Signature": _mac(key, body).hex()}
    if provider == "salla_token":
        return {"X-Salla-Security-Strategy": "Token", "Authorization": f"Bearer {secret}"}
    if provider == "github":
        return {"X-Hub-Signature-256": "sha256=" + _mac(key, body).hex()}
    if provider == "slack":
        mac = _mac(key, b"v0:" + ts.encode() + b":" + body).hex()
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac}"}
    if provider == "stripe":
        return {"Stripe-Signature": f"t={ts},v1={_mac(key, ts.encode() + b'.' + body).hex()}"}
    if provider == "shopify":
        return {"X-Shopify-Hmac-SHA256": base64.b64encode(_mac(key, body)).decode()}
    if provider == "standard":
        msg_id = msg_id or "msg_" + hashlib.sha256(ts.encode() + body).hexdigest()[:24]
        mac = _mac(standard_secret_bytes(secret), f"{msg_id}.{ts}.".encode() + body)
        return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    if provider == "hmac":
        if hmac_options is None:
            raise ValueError("the hmac provider needs HmacOptions")
        mac = _mac(key, body, hmac_options.algorithm)
        encoded = mac.hex() if hmac_options.encoding == "hex" else base64.b64encode(mac).decode()
        return {hmac_options.header: hmac_options.prefix + encoded}
    raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
