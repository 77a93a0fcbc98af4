"""Field parsers: the fast phone path must agree with the full phonenumbers parser."""

from __future__ import annotations

import phonenumbers
from hypothesis import given
from hypothesis import strategies as st

from mappings.fields import phone_e164


def reference(text: str) -> str | None:
    try:
        parsed = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    # A local-only number (no area code) cannot be dialled or texted.
    if (
        phonenumbers.is_possible_number_with_reason(parsed)
        != phonenumbers.ValidationResult.IS_POSSIBLE
    ):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


FORMATS = ["({a}) {b}-{c}", "{a}-{b}-{c}", "+1{a}{b}{c}", "1 {a} {b} {c}", "{a}.{b}.{c}",
           "{a}{b}{c}", " {a} {b} {c} ", "+1 ({a}) {b}-{c}"]  # fmt: skip


@given(
    a=st.integers(0, 999),
    b=st.integers(0, 999),
    c=st.integers(0, 9999),
    fmt=st.sampled_from(FORMATS),
)
def test_fast_phone_path_matches_phonenumbers(a: int, b: int, c: int, fmt: str) -> None:
    text = fmt.format(a=f"{a:03d}", b=f"{b:03d}", c=f"{c:04d}")
    assert phone_e164(text) == reference(text)


def test_numbers_outside_north_america_and_junk() -> None:
    for text in ["+44 20 7946 0958", "555-0101", "212 555 0101 x12", "call me", "", None]:
        assert phone_e164(text) == (reference(text) if text else None)
    assert phone_e164("555-0101") is None  # seven digits: no area code, nothing to text
