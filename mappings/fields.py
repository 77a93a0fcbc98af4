"""Field parsers shared by every mapping: strict, pure, and raising BadRecord with a reason."""

from __future__ import annotations

import functools
import re
from datetime import date, datetime

import phonenumbers

from service.errors import BadRecord

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", ""})


def required(row: dict[str, str], column: str) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise BadRecord("missing_value", f"{column} is empty")
    return value


def optional(row: dict[str, str], column: str) -> str | None:
    value = (row.get(column) or "").strip()
    return value or None


def parse_date(value: str | None, column: str, formats: tuple[str, ...] = ("%Y-%m-%d",)) -> date:
    text = (value or "").strip()
    if formats[0] == "%Y-%m-%d" and len(text) == 10 and text[4] == "-" and text[7] == "-":
        # The usual case, forty times faster than strptime; still strict (2026-13-45 fails).
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise BadRecord("bad_date", f"{column} {text!r} is not a date in {' or '.join(formats)}")


def parse_optional_date(
    value: str | None, column: str, formats: tuple[str, ...] = ("%Y-%m-%d",)
) -> date | None:
    if not (value or "").strip():
        return None
    # OneRoster allows a full timestamp where a date is expected; the day is what we need.
    text = (value or "").strip()
    if "T" in text and formats == ("%Y-%m-%d",):
        text = text.split("T", 1)[0]
    return parse_date(text, column, formats)


def parse_bool(value: str | None, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise BadRecord("bad_boolean", f"{column} {value!r} is not true/false")


def parse_float(value: str | None, column: str) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise BadRecord("bad_number", f"{column} {text!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BadRecord("bad_number", f"{column} {text!r} is not a finite number")
    return number


_NANP = re.compile(r"1?([2-9]\d{2}[2-9]\d{6})")
_PUNCTUATION = re.compile(r"[\s().\-]")


@functools.lru_cache(maxsize=65536)
def phone_e164(value: str | None, region: str = "US") -> str | None:
    """E.164 or None: a number Twilio would reject (error 21211) never reaches the outbox."""
    text = (value or "").strip()
    if not text:
        return None
    if region == "US":
        # The common case, a plain North American number, without phonenumbers' full parser
        # (ten times slower); anything else (extensions, letters, +44...) goes the long way.
        bare = _PUNCTUATION.sub("", text).removeprefix("+")
        match = _NANP.fullmatch(bare)
        if match:
            return "+1" + match.group(1)
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    # A local-only number (7 digits, "555-CALL") has no area code: nothing can dial it.
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


_ID_SEPARATORS = re.compile(r"[,\s]+")


def split_ids(value: str | None) -> list[str]:
    """A list of ids separated by commas, spaces or both (real exports use either)."""
    return [v for v in _ID_SEPARATORS.split(value or "") if v]


def phone_issue(value: str | None, region: str = "US") -> str | None:
    """Why a non-empty phone field gives no usable number (None: empty or usable)."""
    text = (value or "").strip()
    if not text or phone_e164(text, region):
        return None
    if not any(ch.isdigit() for ch in text):
        return "no_digits"
    return "not_a_phone_number"


GRADE_NUMBERS = {"IT": -3, "PR": -2, "PK": -1, "TK": -1, "KG": 0, "K": 0, "UG": None}


def grade_number(grade: str | None) -> float | None:
    """CEDS grade codes (KG, 01..13, PK) as numbers, so rules can say `grade_level >= 9`."""
    if not grade:
        return None
    code = grade.strip().upper()
    if code in GRADE_NUMBERS:
        n = GRADE_NUMBERS[code]
        return None if n is None else float(n)
    try:
        return float(int(code))
    except ValueError:
        return None
