"""How an SMS is billed and split: encoding (GSM-7 or UCS-2) and segment count.

GSM-7 carries 160 characters in one segment and 153 per segment once split; a character of the
extension table (`^{}[]~|€\\`) takes two. One character outside GSM-7 (Spanish á, í, ó, ú, ñ
is only partly inside; emoji never) makes the whole text UCS-2: 70 in one segment, 67 when split,
and a character outside the Basic Multilingual Plane counts twice (UTF-16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = "^{}\\[~]|€\f"
GSM_BASIC = frozenset(_GSM_BASIC)
GSM_EXTENDED = frozenset(_GSM_EXTENDED)
GSM = GSM_BASIC | GSM_EXTENDED


@dataclass(frozen=True)
class SmsSize:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def sms_size(text: str) -> SmsSize:
    """The encoding and number of segments `text` takes as one SMS."""
    used = set(text)  # set operations: a notice's text is measured a few times when it is fitted
    if used <= GSM:
        units = len(text) + sum(text.count(c) for c in used & GSM_EXTENDED)
        single, multi = 160, 153
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
        encoding = "UCS-2"
    if units <= single:
        return SmsSize(encoding, units, 1 if units else 0)
    return SmsSize(encoding, units, -(-units // multi))


def body_digest(body: str) -> str:
    """A short fingerprint of a message's text (reconcile matches the provider's copy by it)."""
    import hashlib

    return hashlib.sha256(body.strip().encode()).hexdigest()[:32]
