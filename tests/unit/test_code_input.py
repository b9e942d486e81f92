"""Codes as people type them (contract, One-time codes): decimal digits of any script, spaces or dashes between
them, nothing else; mobile numbers accept the same digits and the same spacers."""
import re
import sys
import unicodedata

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given, settings as hsettings, strategies as st

from otp.addresses import mobile_normalize
from otp.codes import code_input_attributes, code_normalize

ARABIC_INDIC = "".join(chr(0x660 + int(d)) for d in "123456")
PERSIAN = "".join(chr(0x6F0 + int(d)) for d in "123456")
FULL_WIDTH = "".join(chr(0xFF10 + int(d)) for d in "123456")
DEVANAGARI = "".join(chr(0x966 + int(d)) for d in "123456")


@pytest.mark.parametrize("typed", [
    "123456", "123 456", "123-456", "12 34 56", "1 2 3 4 5 6", "123 - 456", "123\u00a0456", "123\u2009456",
    "123\u202f456", "123\u2013456", "123\u2010456", "123\u2011456", "123\u3000456",
    ARABIC_INDIC, PERSIAN, FULL_WIDTH, DEVANAGARI, ARABIC_INDIC[:3] + " " + ARABIC_INDIC[3:], "١٢٣456",
    "  123456  ",
])
def test_codes_are_read_the_way_people_type_them(typed):
    assert code_normalize(typed) == "123456"


@pytest.mark.parametrize("typed", [
    "12345", "1234567", "123 45", "12345a", "a123456", "¹²³⁴⁵⁶", "123456²", "①②③④⑤⑥", "Ⅻ23456",  # superscripts,
    "123.456", "123_456", "123/456", "123+456", "123\t456", "123\n456", "123\u200b456", "123\u00ad456",  # circled,
    "-123456", "123456-", "- 123456", "", " ", "--", "12345６7", "123 456 7",  # roman numerals are not Nd
    "123\x00456", "12e456", "0x1E24", "123,456", "123\u2212456",  # a minus sign is not a dash (Sm, not Pd)
])
def test_anything_else_makes_the_code_invalid(typed):
    assert code_normalize(typed) is None


def test_every_decimal_digit_of_every_script_counts(settings):
    zeros = [chr(c) for c in range(sys.maxunicode + 1)
             if unicodedata.category(chr(c)) == "Nd" and unicodedata.decimal(chr(c)) == 0]
    for zero in zeros:
        typed = "".join(chr(ord(zero) + int(d)) for d in "204817")
        assert code_normalize(typed) == "204817", hex(ord(zero))


@hsettings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
def test_a_normalised_code_is_always_ascii_digits_of_the_code_length(typed):
    code = code_normalize(typed)
    if code is not None:
        assert re.fullmatch(r"[0-9]{6}", code)
        assert sum(unicodedata.category(char) == "Nd" for char in typed) == 6


def test_the_page_input_does_not_block_what_the_api_accepts():
    attributes = code_input_attributes()
    pattern = attributes.get("pattern")
    maxlength = int(attributes.get("maxlength", "1000"))
    for typed in ["123 456", "123-456", ARABIC_INDIC, "123\u2009456", "1 2 3 4 5 6", "123 - 456"]:
        assert code_normalize(typed)
        assert len(typed) <= maxlength, typed
        if pattern:  # the browser anchors the pattern and reads it as a JavaScript (Unicode) regular expression
            assert _js_pattern_matches(pattern, typed), (pattern, typed)


def _js_pattern_matches(pattern: str, value: str) -> bool:
    # The pattern is written in the subset both Python's `regex`-less engine and JavaScript read alike once the
    # Unicode property classes are expanded.
    classes = {r"\p{Nd}": "Nd", r"\p{Zs}": "Zs", r"\p{Pd}": "Pd"}
    allowed = [category for escape, category in classes.items() if escape in pattern]
    assert pattern == "[" + "".join(escape for escape in classes if escape in pattern) + "]*", pattern
    return all(unicodedata.category(char) in allowed for char in value)


# --- mobile numbers take the same digits and the same spacers --------------------------------------------------


@pytest.mark.parametrize("typed", [
    "+1 415 555 2671", "+1\u00a0415\u00a0555\u00a02671", "+1\u2009415\u2009555\u20092671",
    "+1\u202f415\u202f555\u202f2671", "+1\u2007415\u20075552671", "+1-415-555-2671", "+1\u2013415\u20135552671",
    "+1\u2e3a415\u2e3a5552671", "+1\ufe58415\ufe585552671", "+1\u301c415\u301c5552671",
    "+" + "".join(chr(0x660 + int(d)) for d in "14155552671"), "+١٤١٥ ٥٥٥ ٢٦٧١",
    "+" + "".join(chr(0xFF10 + int(d)) for d in "14155552671"), "+1 (415) 555-2671", "+1.415.555.2671",
])
def test_mobiles_accept_the_digits_and_spacers_codes_accept(typed):
    assert mobile_normalize(typed).value == "+14155552671"


@pytest.mark.parametrize("typed", [
    "+1 415 555 CODE",  # phonenumbers reads letters as a keypad would (vanity numbers): a number nobody typed
    "1-800-FLOWERS", "+1 415 555 267¹", "+1 415 555 2671²", "+1 415 555 26७1x",
])
def test_mobiles_refuse_what_codes_refuse(typed):
    with pytest.raises(ValidationError):
        mobile_normalize(typed)
