"""What a verified webhook request says: event type, dedupe key, account, JSON payload, and the
headers kept for audit. Pure logic (no I/O).

The dedupe key is the provider's delivery id where it sends one (a redelivery repeats it); where
it sends none (Salla, the generic scheme without ``id_header``) it is the SHA-256 of the raw body,
so a byte-identical redelivery is stored once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

# Never stored: credentials and signatures (a stored signature plus body would let anyone with
# read access replay the request within the tolerance window).
_SECRET_HEADER_PARTS = ("signature", "authorization", "cookie", "token", "secret", "hmac", "api-key", "apikey", "password")


class PayloadError(ValueError):
    """The body is not what the provider sends (not JSON, not a JSON object, not form data)."""


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    event_type: str | None
    dedupe_key: str
    account: str | None
    payload_json: str  # a JSON object as text, stored into ``payload jsonb``


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which are valid JSON (and valid jsonb numerics)
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise PayloadError("body is not JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(f"body is JSON but not an object ({type(value).__name__})")
    return value


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value).replace("\x00", "")  # text columns cannot hold NUL either


def _dig(payload: Mapping[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _payload_text(payload: dict[str, Any], body: bytes) -> str:
    """The body as JSON text for ``jsonb``: usually the body itself.

    jsonb cannot hold U+0000, so such characters become U+FFFD (the raw body was verified
    already; the stored copy is for processing). Bodies that are not UTF-8 are re-serialised.
    """
    if b"\\u0000" in body:
        return json.dumps(_without_nul(payload), ensure_ascii=False)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return json.dumps(payload, ensure_ascii=False)


def _slack_payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Slack sends JSON (Events API) or form data (slash commands; interactivity as ``payload=<json>``)."""
    content_type = (headers.get("content-type") or "").lower()
    if "json" in content_type:
        return _json_object(body)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("body is neither JSON nor form data") from None
    if not pairs:
        raise PayloadError("body is empty")
    form = dict(pairs)
    if set(form) == {"payload"}:
        try:
            nested = orjson.loads(form["payload"])
        except orjson.JSONDecodeError:
            raise PayloadError("form field 'payload' is not JSON") from None
        if isinstance(nested, dict):
            return nested
    return form


def parse_event(
    provider: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    id_header: str | None = None,
    event_header: str | None = None,
) -> ParsedEvent:
    """Parse a verified request; raises :class:`PayloadError` for a body the provider would not send.

    ``headers`` is looked up by lower-case name (Starlette ``Headers`` or a lower-cased dict).
    ``id_header``/``event_header`` name the delivery-id and event-type headers of the generic scheme.
    """
    get = headers.get
    if provider == "slack":
        payload = _slack_payload(headers, body)
        event_type = _text(_dig(payload, "event", "type") if payload.get("type") == "event_callback" else None)
        event_type = event_type or _text(payload.get("type")) or _text(payload.get("command"))
        # Events API: event_id is stable across retries; commands/interactions: trigger_id
        dedupe = _text(payload.get("event_id")) or _text(payload.get("trigger_id")) or body_digest(body)
        account = _text(payload.get("team_id")) or _text(_dig(payload, "team", "id"))
        return ParsedEvent(event_type, dedupe, account, json.dumps(_without_nul(payload), ensure_ascii=False))

    payload = _json_object(body)
    text = _payload_text(payload, body)
    if provider in ("salla", "salla_token"):
        # Salla documents no delivery id: a redelivery repeats the body byte for byte
        return ParsedEvent(_text(payload.get("event")), body_digest(body), _text(payload.get("merchant")), text)
    if provider == "github":
        account = _text(_dig(payload, "repository", "full_name")) or _text(_dig(payload, "organization", "login"))
        dedupe = _text(get("x-github-delivery")) or body_digest(body)
        return ParsedEvent(_text(get("x-github-event")), dedupe, account, text)
    if provider == "stripe":
        dedupe = _text(payload.get("id")) or body_digest(body)
        return ParsedEvent(_text(payload.get("type")), dedupe, _text(payload.get("account")), text)
    if provider == "shopify":
        dedupe = _text(get("x-shopify-webhook-id")) or _text(get("x-shopify-event-id")) or body_digest(body)
        return ParsedEvent(_text(get("x-shopify-topic")), dedupe, _text(get("x-shopify-shop-domain")), text)
    if provider == "standard":
        return ParsedEvent(_text(payload.get("type")), _text(get("webhook-id")) or body_digest(body), None, text)
    # generic hmac: headers when configured, else the usual payload keys
    event_type = (_text(get(event_header.lower())) if event_header else None) or _text(
        payload.get("type") or payload.get("event")
    )
    dedupe = (_text(get(id_header.lower())) if id_header else None) or body_digest(body)
    return ParsedEvent(event_type, dedupe, _text(payload.get("merchant") or payload.get("account")), text)


def audit_headers(headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()) -> dict[str, str]:
    """The request's headers minus signatures, credentials and cookies (names lower-cased).

    ``drop`` adds names (the generic scheme's configured signature header).
    """
    dropped = {d.lower() for d in drop}
    kept: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in dropped or any(part in lname for part in _SECRET_HEADER_PARTS):
            continue
        kept[lname] = value if lname not in kept else f"{kept[lname]}, {value}"
    return kept
