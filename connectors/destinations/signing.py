"""Standard Webhooks signatures (https://www.standardwebhooks.com), both directions.

`webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">` with the secret
given as `whsec_<base64>`. Byte for byte what the `standardwebhooks` library signs and verifies
(the tests check ours against its `Webhook.verify` and its `sign` against our `verify`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_SECONDS = 300  # receivers reject anything older (or newer) than five minutes
PREFIX = "whsec_"


class SignatureError(Exception):
    """A status report whose signature, headers or timestamp do not check out."""


def secret_bytes(secret: str) -> bytes:
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    key = base64.b64decode(raw + "==")
    if not key:
        raise ValueError("an empty webhook secret")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def verify(secret: str, received: Mapping[str, str], body: bytes, now: float | None = None) -> str:
    """Check a signed request; returns its `webhook-id`. Raises `SignatureError`."""
    lowered = {k.lower(): v for k, v in received.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is outside the five-minute tolerance")
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1].encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return msg_id
    raise SignatureError("no matching signature")
