"""Webhook signature schemes, event parsing, limits and the webhooks file: pure logic, no servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks

from kingtavo_pipeline.webhooks.config import (
    WebhookConfigError,
    load_webhooks,
    parse_webhooks,
    source_secrets,
)
from kingtavo_pipeline.webhooks.events import PayloadError, audit_headers, body_digest, parse_event
from kingtavo_pipeline.webhooks.limits import IpAllowList, RateLimiter
from kingtavo_pipeline.webhooks.schemes import (
    HmacOptions,
    VerificationError,
    Verifier,
    sign_headers,
    standard_secret_bytes,
    verify,
)

NOW = 1_700_000_000
BODY = b'{"event":"order.created","merchant":1234509876,"data":{"id":42,"total":{"amount":120.5}}}'
STANDARD_SECRET = "whsec_" + base64.b64encode(b"kingtavo-standard-webhooks-secret").decode()
STANDARD_SECRET_OLD = "whsec_" + base64.b64encode(b"the previous standard secret").decode()
HMAC_OPTIONS = HmacOptions(header="X-Partner-Signature", algorithm="sha512", encoding="base64", prefix="sha512=")

# (provider, secret, another valid secret for rotation, options)
PROVIDER_CASES = [
    ("salla", "salla-secret-1", "salla-secret-0", None),
    ("salla_token", "salla-token-1", "salla-token-0", None),
    ("github", "gh-secret", "gh-secret-old", None),
    ("slack", "8f742231b10e8888abcd99yyyzzz85a5", "slack-old", None),
    ("stripe", "whsec_stripe_test_1", "whsec_stripe_test_0", None),
    ("shopify", "shpss_secret", "shpss_old", None),
    ("standard", STANDARD_SECRET, STANDARD_SECRET_OLD, None),
    ("hmac", "partner-secret", "partner-old", HMAC_OPTIONS),
]
IDS = [c[0] for c in PROVIDER_CASES]
TIMESTAMPED = {"slack", "stripe", "standard"}


def _verify(provider, headers, body, secrets, options, now=NOW, tolerance=300):
    verify(provider, headers, body, secrets, tolerance_seconds=tolerance, now=now, hmac_options=options)


def _reason(provider, headers, body, secrets, options, now=NOW) -> str:
    with pytest.raises(VerificationError) as info:
        _verify(provider, headers, body, secrets, options, now=now)
    return info.value.reason


# --- the providers' own published examples --------------------------------------------------------


def test_github_published_example():
    headers = {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}
    verify("github", headers, b"Hello, World!", ["It's a Secret to Everybody"])
    assert sign_headers("github", b"Hello, World!", "It's a Secret to Everybody") == headers
    with pytest.raises(VerificationError):
        verify("github", headers, b"Hello, World?", ["It's a Secret to Everybody"])


# Slack's documented example ("Verifying requests from Slack"). Its body's command is
# /webhook-collect: with any other command the published signature does not match.
SLACK_EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_EXAMPLE_HEADERS = {
    "X-Slack-Request-Timestamp": "1531420618",
    "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
}


def test_slack_published_example():
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    verify("slack", SLACK_EXAMPLE_HEADERS, SLACK_EXAMPLE_BODY, [secret], now=1531420618 + 10)
    assert sign_headers("slack", SLACK_EXAMPLE_BODY, secret, timestamp=1531420618) == SLACK_EXAMPLE_HEADERS
    # the example is from 2018: with today's clock it is a replay
    with pytest.raises(VerificationError) as info:
        verify("slack", SLACK_EXAMPLE_HEADERS, SLACK_EXAMPLE_BODY, [secret])
    assert info.value.reason == "stale_timestamp"


def test_slack_example_parses_to_command_event():
    event = parse_event("slack", {"content-type": "application/x-www-form-urlencoded"}, SLACK_EXAMPLE_BODY)
    payload = json.loads(event.payload_json)
    assert payload["command"] == "/webhook-collect" and payload["text"] == ""
    assert event.event_type == "/webhook-collect"
    assert event.account == "T1DC2JH3J"
    assert event.dedupe_key == "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"


def test_stripe_salla_shopify_match_independent_computation():
    secret = "known-secret"
    mac = hmac.new(secret.encode(), BODY, hashlib.sha256)
    verify("salla", {"X-Salla-Signature": mac.hexdigest()}, BODY, [secret])
    verify("salla", {"X-Salla-Signature": mac.hexdigest().upper()}, BODY, [secret])  # hex case is not meaning
    verify("shopify", {"X-Shopify-Hmac-SHA256": base64.b64encode(mac.digest()).decode()}, BODY, [secret])
    signed = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    verify("stripe", {"Stripe-Signature": f"t={NOW},v1={signed},v0=ignored"}, BODY, [secret], now=NOW)
    # several v1 entries (Stripe sends one per active secret during a roll): any one may match
    verify("stripe", {"Stripe-Signature": f"t={NOW},v1={'0' * 64},v1={signed}"}, BODY, [secret], now=NOW)
    with pytest.raises(VerificationError):
        verify("stripe", {"Stripe-Signature": f"t={NOW},v0={signed}"}, BODY, [secret], now=NOW)


def test_standard_webhooks_cross_checked_with_reference_library():
    lib = standardwebhooks.Webhook(STANDARD_SECRET)
    now = int(time.time())
    # the library signs, we verify
    signature = lib.sign("msg_2abc", datetime.fromtimestamp(now, tz=timezone.utc), BODY)
    headers = {"webhook-id": "msg_2abc", "webhook-timestamp": str(now), "webhook-signature": signature}
    verify("standard", headers, BODY, [STANDARD_SECRET])
    # several space-separated signatures (rotation on the sender's side), one of them ours
    headers_multi = dict(headers, **{"webhook-signature": "v1,bm90IGl0 v1a,ZWQyNTUxOQ== " + signature})
    verify("standard", headers_multi, BODY, [STANDARD_SECRET])
    # we sign, the library verifies
    ours = sign_headers("standard", BODY, STANDARD_SECRET, timestamp=now, msg_id="msg_ours")
    assert lib.verify(BODY, ours) == json.loads(BODY)
    # an unprefixed, unpadded secret is the same key to both
    bare = STANDARD_SECRET.removeprefix("whsec_").rstrip("=")
    assert standard_secret_bytes(bare) == standard_secret_bytes(STANDARD_SECRET)
    verify("standard", headers, BODY, [bare])
    with pytest.raises(ValueError):
        standard_secret_bytes("whsec_not base64!")


def test_salla_token_accepts_bare_and_bearer():
    verify("salla_token", {"Authorization": "tok-123"}, BODY, ["tok-123"])
    verify("salla_token", {"Authorization": "Bearer tok-123"}, BODY, ["tok-123"])
    verify("salla_token", {"authorization": "bearer  tok-123 "}, BODY, ["tok-123"])
    assert _reason("salla_token", {"Authorization": "Bearer tok-124"}, BODY, ["tok-123"], None) == "bad_signature"
    assert _reason("salla_token", {"Authorization": "Basic dG9rLTEyMw=="}, BODY, ["tok-123"], None) == "bad_signature"


# --- every scheme: valid, tampered, wrong secret, missing header, rotation, timestamps ---------------


@pytest.mark.parametrize(("provider", "secret", "old", "options"), PROVIDER_CASES, ids=IDS)
def test_valid_signature_accepted_and_header_names_case_insensitive(provider, secret, old, options):
    headers = sign_headers(provider, BODY, secret, timestamp=NOW, hmac_options=options)
    _verify(provider, headers, BODY, [secret], options)
    _verify(provider, {k.upper(): v for k, v in headers.items()}, BODY, [secret], options)


@pytest.mark.parametrize(("provider", "secret", "old", "options"), PROVIDER_CASES, ids=IDS)
def test_tampered_body_rejected(provider, secret, old, options):
    if provider == "salla_token":
        # a token does not sign the body: tampering is undetectable by design (prefer "salla")
        headers = sign_headers(provider, BODY, secret)
        _verify(provider, headers, BODY.replace(b"120.5", b"999.5"), [secret], options)
        return
    headers = sign_headers(provider, BODY, secret, timestamp=NOW, hmac_options=options)
    assert _reason(provider, headers, BODY.replace(b"120.5", b"999.5"), [secret], options) == "bad_signature"
    assert _reason(provider, headers, BODY + b" ", [secret], options) == "bad_signature"


@pytest.mark.parametrize(("provider", "secret", "old", "options"), PROVIDER_CASES, ids=IDS)
def test_wrong_secret_rejected(provider, secret, old, options):
    headers = sign_headers(provider, BODY, old, timestamp=NOW, hmac_options=options)
    assert _reason(provider, headers, BODY, [secret], options) == "bad_signature"


@pytest.mark.parametrize(("provider", "secret", "old", "options"), PROVIDER_CASES, ids=IDS)
def test_rotation_accepts_old_and_new_secret(provider, secret, old, options):
    for signing in (secret, old):
        headers = sign_headers(provider, BODY, signing, timestamp=NOW, hmac_options=options)
        _verify(provider, headers, BODY, [secret, old], options)
    third = STANDARD_SECRET_OLD.replace("whsec_", "whsec_AA") if provider == "standard" else "a-third-secret"
    headers = sign_headers(provider, BODY, third, timestamp=NOW, hmac_options=options)
    assert _reason(provider, headers, BODY, [secret, old], options) == "bad_signature"


@pytest.mark.parametrize(("provider", "secret", "old", "options"), PROVIDER_CASES, ids=IDS)
def test_each_missing_header_rejected(provider, secret, old, options):
    headers = sign_headers(provider, BODY, secret, timestamp=NOW, hmac_options=options)
    required = [h for h in headers if h.lower() != "x-salla-security-strategy"]
    assert required
    for name in required:
        partial = {k: v for k, v in headers.items() if k != name}
        assert _reason(provider, partial, BODY, [secret], options) == "missing_signature", name
    assert _reason(provider, {}, BODY, [secret], options) == "missing_signature"
    assert _reason(provider, {name: "" for name in required}, BODY, [secret], options) == "missing_signature"


@pytest.mark.parametrize("provider", sorted(TIMESTAMPED))
def test_timestamp_outside_tolerance_rejected_both_directions(provider):
    secret = dict((c[0], c[1]) for c in PROVIDER_CASES)[provider]
    headers = sign_headers(provider, BODY, secret, timestamp=NOW)
    _verify(provider, headers, BODY, [secret], None, now=NOW + 300)  # at the edge: still fine
    _verify(provider, headers, BODY, [secret], None, now=NOW - 300)
    assert _reason(provider, headers, BODY, [secret], None, now=NOW + 301) == "stale_timestamp"
    assert _reason(provider, headers, BODY, [secret], None, now=NOW - 301) == "stale_timestamp"
    with pytest.raises(VerificationError) as info:
        _verify(provider, headers, BODY, [secret], None, now=NOW + 50, tolerance=30)
    assert info.value.reason == "stale_timestamp"


def test_malformed_signatures_rejected():
    assert _reason("github", {"X-Hub-Signature-256": "sha1=abc"}, BODY, ["s"], None) == "malformed_signature"
    assert _reason("stripe", {"Stripe-Signature": "garbage"}, BODY, ["s"], None) == "malformed_signature"
    headers = sign_headers("slack", BODY, "s", timestamp=NOW)
    headers["X-Slack-Request-Timestamp"] = "yesterday"
    assert _reason("slack", headers, BODY, ["s"], None) == "malformed_signature"
    # non-ASCII in a signature header is a mismatch, not a crash
    assert _reason("salla", {"X-Salla-Signature": "é" * 64}, BODY, ["s"], None) == "bad_signature"


def test_generic_hmac_options():
    for algorithm, encoding, prefix in [("sha256", "hex", ""), ("sha1", "hex", "sha1="), ("sha512", "base64", "")]:
        options = HmacOptions("X-Sig", algorithm, encoding, prefix)
        digest = hmac.new(b"k", BODY, getattr(hashlib, algorithm)).digest()
        value = prefix + (digest.hex() if encoding == "hex" else base64.b64encode(digest).decode())
        Verifier("hmac", ["k"], hmac_options=options).verify({"x-sig": value}, BODY)
        assert sign_headers("hmac", BODY, "k", hmac_options=options) == {"X-Sig": value}
    options = HmacOptions("X-Sig", prefix="sha256=")
    with pytest.raises(VerificationError) as info:
        Verifier("hmac", ["k"], hmac_options=options).verify({"X-Sig": "sha1=00"}, BODY)
    assert info.value.reason == "malformed_signature"
    with pytest.raises(ValueError):
        HmacOptions("X-Sig", algorithm="md5")


# --- events: type, dedupe key, account, payload, audit headers --------------------------------------


def test_parse_event_per_provider():
    salla = parse_event("salla", {}, BODY)
    assert (salla.event_type, salla.account, salla.dedupe_key) == ("order.created", "1234509876", body_digest(BODY))
    assert json.loads(salla.payload_json)["data"]["id"] == 42

    gh = parse_event(
        "github",
        {"x-github-event": "push", "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
        b'{"repository":{"full_name":"kingtavo/shop"},"ref":"refs/heads/main"}',
    )
    assert (gh.event_type, gh.dedupe_key, gh.account) == ("push", "72d3162e-cc78-11e3-81ab-4c9367dc0958", "kingtavo/shop")

    stripe = parse_event("stripe", {}, b'{"id":"evt_1","type":"invoice.paid","account":"acct_9"}')
    assert (stripe.event_type, stripe.dedupe_key, stripe.account) == ("invoice.paid", "evt_1", "acct_9")

    shopify = parse_event(
        "shopify",
        {"x-shopify-topic": "orders/create", "x-shopify-webhook-id": "b54557e4", "x-shopify-shop-domain": "shop.example"},
        b'{"id":820982911946154508}',
    )
    assert (shopify.event_type, shopify.dedupe_key, shopify.account) == ("orders/create", "b54557e4", "shop.example")

    std = parse_event("standard", {"webhook-id": "msg_1"}, b'{"type":"invoice.paid","data":{}}')
    assert (std.event_type, std.dedupe_key) == ("invoice.paid", "msg_1")

    generic = parse_event(
        "hmac", {"x-delivery": "d-1", "x-event": "job.done"}, b'{"a":1}', id_header="X-Delivery", event_header="X-Event"
    )
    assert (generic.event_type, generic.dedupe_key) == ("job.done", "d-1")

    slack_json = parse_event(
        "slack",
        {"content-type": "application/json"},
        b'{"type":"event_callback","event_id":"Ev1","team_id":"T1","event":{"type":"app_mention"}}',
    )
    assert (slack_json.event_type, slack_json.dedupe_key, slack_json.account) == ("app_mention", "Ev1", "T1")
    form = b"payload=" + b'{"type":"block_actions","trigger_id":"tr1","team":{"id":"T2"}}'.replace(b'"', b"%22")
    interactive = parse_event("slack", {}, form)
    assert (interactive.event_type, interactive.dedupe_key, interactive.account) == ("block_actions", "tr1", "T2")


def test_parse_event_rejects_what_providers_never_send():
    for body in (b"not json", b"[1,2]", b'"text"', b"", b"\xff\xfe{"):
        with pytest.raises(PayloadError):
            parse_event("github", {}, body)
    with pytest.raises(PayloadError):
        parse_event("slack", {"content-type": "application/json"}, b"token=abc")
    with pytest.raises(PayloadError):
        parse_event("slack", {}, b"")


def test_parse_event_values_postgres_can_store():
    big = b'{"event":"order.created","n":123456789012345678901234567890}'  # valid JSON, over 64 bits
    assert json.loads(parse_event("salla", {}, big).payload_json)["n"] == 123456789012345678901234567890
    nul = parse_event("salla", {}, b'{"event":"a\\u0000b","note":"x\\u0000y"}')
    assert "\\u0000" not in nul.payload_json and json.loads(nul.payload_json)["note"] == "x\ufffdy"
    assert nul.event_type == "ab"


def test_audit_headers_drop_secrets():
    headers = [
        ("Content-Type", "application/json"),
        ("X-Salla-Signature", "abc"),
        ("Authorization", "Bearer t"),
        ("Cookie", "session=1"),
        ("Stripe-Signature", "t=1,v1=2"),
        ("X-Shopify-Hmac-SHA256", "zz"),
        ("webhook-signature", "v1,zz"),
        ("X-Hub-Signature-256", "sha256=1"),
        ("X-Partner-Sig", "p"),
        ("X-GitHub-Delivery", "d1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2"),
    ]
    kept = audit_headers(headers, drop=["x-partner-sig"])
    assert kept == {
        "content-type": "application/json",
        "x-github-delivery": "d1",
        "x-forwarded-for": "10.0.0.1, 10.0.0.2",
    }


# --- limits ---------------------------------------------------------------------------------------


def test_rate_limiter_bucket_and_retry_after():
    clock = [100.0]
    limiter = RateLimiter(5, clock=lambda: clock[0])
    assert [limiter.acquire() for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire()
    assert wait == pytest.approx(0.2)
    assert RateLimiter.retry_after(wait) == "1"
    assert RateLimiter.retry_after(2.1) == "3"
    clock[0] += 0.2
    assert limiter.acquire() == 0.0
    assert limiter.acquire() > 0
    clock[0] += 10  # refills to the burst, not beyond
    assert sum(limiter.acquire() == 0.0 for _ in range(20)) == 5


def test_ip_allow_list():
    from ipaddress import ip_network

    allow = IpAllowList([ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")])
    assert allow.allows("10.1.2.3") and allow.allows("::ffff:10.0.0.1") and allow.allows("2001:db8::1")
    assert not allow.allows("127.0.0.1") and not allow.allows(None) and not allow.allows("not-an-ip")


# --- the webhooks file ----------------------------------------------------------------------------


def test_example_config_loads():
    from pathlib import Path

    import kingtavo_pipeline

    config = load_webhooks(Path(kingtavo_pipeline.__file__).parent / "webhooks.example.yaml")
    providers = {w.provider for w in config.webhooks}
    assert providers == {"salla", "salla_token", "github", "slack", "stripe", "shopify", "standard", "hmac"}
    salla = config.source("salla")
    assert salla.secrets_env == ("SALLA_WEBHOOK_SECRET", "SALLA_WEBHOOK_SECRET_PREVIOUS")
    assert (salla.tolerance_seconds, salla.max_body_bytes, salla.rate_limit_per_second) == (300, 1048576, 500)


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "hooks.yaml"
    path.write_text("webhooks:\n  - name: shop\n    provider: shopfiy\n    secrets_env: [S]\n    tolerence_seconds: 5\n")
    with pytest.raises(WebhookConfigError) as info:
        load_webhooks(path)
    message = str(info.value)
    assert str(path) in message
    assert "webhooks[0] (shop).provider" in message
    assert "webhooks[0] (shop).tolerence_seconds: unknown key 'tolerence_seconds'" in message
    assert "did you mean 'tolerance_seconds'" in message and "\n" not in message

    cases = {
        "webhooks:\n  - {name: a, provider: github, secrets_env: [S], header: X}\n": "apply to provider hmac only",
        "webhooks:\n  - {name: a, provider: hmac, secrets_env: [S]}\n": "needs 'header'",
        "webhooks:\n  - {name: a, provider: github, secrets_env: ['not a name']}\n": "not environment variable names",
        "webhooks:\n  - {name: a, provider: github, secrets_env: [S]}\n  - {name: a, provider: slack, secrets_env: [T]}\n": "unique",
        "webhooks:\n  - {name: a, provider: github}\n": "required key 'secrets_env' is missing",
        "webhooks:\n  - {name: a, provider: github, secrets_env: [S], allow_ips: [10.0.0.0/33]}\n": "allow_ips",
        "webhooks:\n  - {name: A/b, provider: github, secrets_env: [S]}\n": "webhooks[0] (A/b).name",
        "webhooks: [\n": "not valid YAML",
        "- just a list\n": "expected a mapping",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(WebhookConfigError) as info:
            load_webhooks(path)
        assert expected in str(info.value) and str(path) in str(info.value), (text, str(info.value))
    with pytest.raises(WebhookConfigError, match="does not exist"):
        load_webhooks(tmp_path / "missing.yaml")
    assert parse_webhooks(None).webhooks == () and parse_webhooks({"webhooks": None}).webhooks == ()


def test_secrets_from_environment():
    config = parse_webhooks(
        {
            "webhooks": [
                {"name": "s", "provider": "salla", "secrets_env": ["NEW", "OLD"]},
                {"name": "std", "provider": "standard", "secrets_env": "STD"},
            ]
        }
    )
    salla, std = config.webhooks
    assert source_secrets(salla, {"NEW": "n", "OLD": "o"}) == ("n", "o")
    assert source_secrets(salla, {"OLD": "o", "NEW": " "}) == ("o",)
    with pytest.raises(WebhookConfigError) as info:
        source_secrets(salla, {})
    assert "NEW, OLD" in str(info.value) and "'s'" in str(info.value)
    with pytest.raises(WebhookConfigError) as info:
        source_secrets(std, {"STD": "whsec_!!!"})
    assert "STD" in str(info.value) and "!!!" not in str(info.value)  # names the variable, never the value
