"""Property-based fuzzing of every endpoint in this process: odd JSON, odd bodies and content types, odd webhook
forms (signed and unsigned), odd headers. The one property: a request never gets a 500, and every answer it
gets is the contract's JSON. (tests/faults/test_schema_fuzz.py does the same from the OpenAPI schema, over HTTP.)
"""
import encodings.aliases
import json
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from rest_framework.test import APIClient
from twilio.request_validator import RequestValidator

from tests.support.env import TWILIO_AUTH_TOKEN

pytestmark = pytest.mark.django_db(transaction=True)

POST_ENDPOINTS = {
    "/register/": ("email", "mobile", "device_token"),
    "/login/": ("email", "mobile", "device_token"),
    "/verify-otp/": ("email", "mobile", "code", "device_token"),
    "/token/refresh/": ("refresh",),
    "/logout/": ("refresh", "device_token"),
}
WEBHOOK = "/webhooks/twilio/status/"
EXAMPLES = hsettings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON scalars at their edges: huge integers, extreme floats, every kind of text (surrogates included: JSON
# escapes carry them), and text that looks like what a field wants.
_text = st.one_of(st.text(max_size=300), st.text(alphabet=st.characters(), max_size=40),
                  st.sampled_from(["", " ", "\x00", "\ud800", "a" * 40 + "@" + "ü." * 105 + "com", "root@[127.0.0.1]",
                                   "+1 415 555 2671", "١٢٣٤٥٦", "123 456", "eyJ.eyJ.sig", "alice@straße.de"]))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
                     st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(_text, children, max_size=4)),
                     max_leaves=12)


@pytest.fixture
def client():
    return APIClient(raise_request_exception=False)


def assert_contract_answer(response):
    assert response.status_code < 500, (response.status_code, response.content[:500])
    if response.status_code in (204, 205) or not response.content:
        return
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body, dict) and body, body
        if "detail" in body:
            assert isinstance(body["detail"], str) and isinstance(body.get("code"), str), body
        else:  # field errors: DRF's {"field": ["message", ...]}
            assert all(isinstance(messages, (list, dict)) for messages in body.values()), body


@EXAMPLES
@given(path=st.sampled_from(sorted(POST_ENDPOINTS)), data=st.data())
def test_odd_json_in_each_field_never_gets_a_500(client, path, data):
    fields = data.draw(st.lists(st.sampled_from(POST_ENDPOINTS[path]), unique=True, max_size=3))
    body = {field: data.draw(_json) for field in fields}
    raw = json.dumps(body).encode()  # \ud800 travels as an escape, as any client may send it
    assert_contract_answer(client.generic("POST", path, raw, content_type="application/json"))


@EXAMPLES
@given(path=st.sampled_from(sorted(POST_ENDPOINTS) + [WEBHOOK, "/profile/", "/nowhere/", "/register"]),
       body=st.one_of(st.binary(max_size=300), _json.map(lambda value: json.dumps(value).encode()),
                      st.sampled_from([b"[" * 5000, b"{" * 5000, b'{"email": ' + b"9" * 5000 + b"}", b"1e999",
                                       b'{"email": NaN}', b"\xef\xbb\xbf{}", b'{"a": "\\ud800"}'])),
       content_type=st.sampled_from([
           "application/json", "application/json; charset=utf-8", "application/json; charset=utf-16",
           "application/json; charset=latin-1", "application/json; charset=undefined", "application/json; charset=",
           "application/json; charset=idna", "application/json; charset=punycode", "application/json; charset=utf-7",
           "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-32",
           "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
           "text/plain", "text/html", "", "*/*", "application/json; charset=utf-8; charset=rot13", "a/b/c",
           "application/json;;;", "application/merge-patch+json", "application/vnd.api+json"]),
       method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET", "OPTIONS"]))
def test_odd_bodies_and_content_types_never_get_a_500(client, path, body, content_type, method):
    assert_contract_answer(client.generic(method, path, body, content_type=content_type))


@EXAMPLES
@given(path=st.sampled_from(["/profile/", "/logout/", "/token/refresh/", "/register/", "/api/schema/"]),
       authorization=st.one_of(st.text(alphabet=st.characters(max_codepoint=255, exclude_categories=["Cc"]),
                                       max_size=200),
                               st.builds(lambda token: f"Bearer {token}", st.text(
                                   alphabet=st.characters(max_codepoint=255, exclude_categories=["Cc"]), max_size=300))),
       accept=st.sampled_from(["application/json", "text/html", "*/*", "application/xml", "", "application/json; q=0"]),
       forwarded_for=st.one_of(st.sampled_from(["", "::1", "fe80::1%eth0", "[::1]:80", "1.2.3.4, ::ffff:10.0.0.1",
                                                "2001:db8::1, 2001:db8::2", "999.1.1.1", ",,,"]),
                               st.text(alphabet=st.characters(max_codepoint=255, exclude_categories=["Cc"]),
                                       max_size=60)))
def test_odd_headers_never_get_a_500(client, path, authorization, accept, forwarded_for):
    response = client.generic("POST" if path != "/profile/" else "GET", path, b'{"refresh": "x"}',
                              content_type="application/json", HTTP_AUTHORIZATION=authorization, HTTP_ACCEPT=accept,
                              HTTP_X_FORWARDED_FOR=forwarded_for)
    assert_contract_answer(response)


# --- the status webhook: forms signed and unsigned ----------------------------------------------------------------

_form_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
_twilio_like = st.fixed_dictionaries({}, optional={
    "MessageSid": st.one_of(st.just("SM" + "0" * 32), _form_text),
    "MessageStatus": st.one_of(st.sampled_from(["queued", "sending", "sent", "delivered", "undelivered", "failed",
                                                "read", "canceled", "SENT", ""]), _form_text),
    "ErrorCode": st.one_of(st.sampled_from(["30003", "", "0"]), _form_text),
    "AccountSid": _form_text, "To": _form_text, "From": _form_text,
})
_forms = st.one_of(_twilio_like, st.dictionaries(_form_text, _form_text, max_size=6))


@EXAMPLES
@given(form=_forms, signed=st.booleans(), extra_raw=st.one_of(st.just(b""), st.binary(max_size=40)),
       content_type=st.sampled_from(["application/x-www-form-urlencoded",
                                     "application/x-www-form-urlencoded; charset=utf-8",
                                     "application/x-www-form-urlencoded; charset=latin-1",
                                     "application/x-www-form-urlencoded; charset=utf-16"]))
def test_webhook_forms_signed_or_not_never_get_a_500(client, settings, form, signed, extra_raw, content_type):
    settings.TWILIO_AUTH_TOKEN = TWILIO_AUTH_TOKEN
    body = urlencode(form).encode()
    if extra_raw:  # bytes no encoder would write: bad percent-escapes, invalid UTF-8, stray separators
        body += b"&" + extra_raw + b"=" + quote_from_bytes(extra_raw).encode()
    headers = {}
    if signed:
        url = f"{settings.PUBLIC_BASE_URL}{WEBHOOK}"
        params = {key: values[-1] for key, values in _parsed(body).items()}
        headers["HTTP_X_TWILIO_SIGNATURE"] = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(url, params)
    response = client.generic("POST", WEBHOOK, body, content_type=content_type, **headers)
    assert_contract_answer(response)
    if not signed:
        assert response.status_code in (400, 403, 415), response.content


def _parsed(body: bytes) -> dict:
    from django.http import QueryDict

    return dict(QueryDict(body).lists())


# Every codec name Python knows, which Django therefore takes as a body's charset.
CODEC_NAMES = sorted(set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values()) |
                     {"rot13", "undefined", "idna", "punycode", "unicode_escape", "raw_unicode_escape", "utf-8-sig"})


@pytest.mark.parametrize("charset, status", [
    ("utf-8", 202), ("UTF8", 202), ("us-ascii", 202), ("latin-1", 202), ("iso-8859-1", 202),
    ("x-bogus", 415), ("", 415), ("utf-16", 415), ("rot13", 415),
])
def test_a_body_declared_in_a_charset_is_read_only_in_the_readable_ones(client, charset, status):
    # Latin-1 was refused (listed under a name codecs.lookup never gives); an unknown name was read as UTF-8.
    response = client.generic("POST", "/register/", b'{"email": "alice@example.com"}',
                              content_type=f"application/json; charset={charset}")
    assert response.status_code == status, (charset, response.content)
    if status == 415:
        assert response.json()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("path, content_type, body", [
    ("/register/", "application/json", b'{"email": "alice@example.com"}'),
    (WEBHOOK, "application/x-www-form-urlencoded", b"MessageSid=SM1&MessageStatus=sent"),
])
def test_every_charset_python_knows_gets_an_answer_not_a_500(client, path, content_type, body):
    for name in CODEC_NAMES:
        response = client.generic("POST", path, body, content_type=f"{content_type}; charset={name}")
        assert response.status_code < 500, (name, response.content)
        assert response["Content-Type"].startswith("application/json"), name
