"""International text through the API: addresses by the contract's rules, codes typed in any script."""
import email
import email.policy
import re

import pytest
from rest_framework.test import APIClient

from otp import services
from otp.models import Delivery, OneTimeCode
from otp.providers.smtp import _email_connections
from tests.support.http import post
from tests.support.smtp import SmtpServer, code_from_email
from users.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return APIClient()


def test_a_sharp_s_domain_is_mailed_to_its_own_domain(client):
    assert post(client, "/register/", {"email": "alice@straße.de"}).status_code == 202
    assert Delivery.objects.get().address == "alice@xn--strae-oqa.de"  # never alice@strasse.de


@pytest.mark.parametrize("email", ["root@[127.0.0.1]", "root@localhost", '"root"@example.com', "jörg@example.com"])
def test_addresses_mail_systems_refuse_are_a_400(client, email):
    response = post(client, "/register/", {"email": email})
    assert response.status_code == 400 and response.json()["email"]
    assert not OneTimeCode.objects.exists()


def test_smtputf8_local_parts_when_the_operator_allows_them(client, settings):
    settings.EMAIL_ALLOW_SMTPUTF8 = True
    assert post(client, "/register/", {"email": "Jörg@Straße.de"}).status_code == 202
    assert Delivery.objects.get().address == "jörg@xn--strae-oqa.de"


@pytest.fixture
def relay(request, settings):
    """A real SMTP server as the mail relay, offering SMTPUTF8 or not (the test's parameter)."""
    server = SmtpServer(smtputf8=request.param).start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = server.port
    settings.EMAIL_ALLOW_SMTPUTF8 = True
    yield server
    _email_connections.close_idle()
    server.stop()


@pytest.mark.parametrize("relay", [True], indirect=True)
def test_a_smtputf8_address_gets_its_code_at_its_own_mailbox_and_signs_in(client, relay, fixed_code):
    assert post(client, "/register/", {"email": "Jörg@Straße.de"}).status_code == 202
    delivery = Delivery.objects.get()
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])

    (message,) = relay.inbox.messages
    assert relay.inbox.rcpt_commands == ["TO:<jörg@xn--strae-oqa.de>"]  # never =?utf-8?b?asO2cmc=?=@xn--...
    assert "SMTPUTF8" in message["X-Envelope-Mail-Options"].split()
    assert b"\r\nTo: j\xc3\xb6rg@xn--strae-oqa.de\r\n" in relay.inbox.raw[0]
    read = email.message_from_string(relay.inbox.raw[0].decode("utf-8"), policy=email.policy.default)
    assert read["To"].addresses[0].addr_spec == "jörg@xn--strae-oqa.de"
    response = post(client, "/verify-otp/", {"email": "jörg@straße.de", "code": code_from_email(read)})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("relay", [False], indirect=True)
def test_a_smtputf8_address_behind_a_relay_without_smtputf8_fails_at_once_and_nothing_is_mailed(client, relay,
                                                                                                 fixed_code):
    assert post(client, "/register/", {"email": "Jörg@Straße.de"}).status_code == 202
    delivery = Delivery.objects.get()
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])

    delivery.refresh_from_db()
    assert delivery.status == "failed" and "SMTPUTF8" in delivery.last_error  # not retried: no try can succeed
    assert relay.inbox.rcpt_commands == [] and relay.inbox.messages == []


@pytest.mark.parametrize("typed", ["123 456", "123-456", "١٢٣٤٥٦", "۱۲۳۴۵۶", "１２３４５６", "123\u00a0456",
                                   "123\u2009456", "  123 – 456 "])
def test_a_code_typed_with_spaces_dashes_or_other_digits_signs_in(client, fixed_code, typed):
    assert post(client, "/register/", {"email": "alice@example.com"}).status_code == 202
    assert fixed_code[-1] == "123456"
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": typed})
    assert response.status_code == 200, response.content
    assert User.objects.get().email == "alice@example.com"


@pytest.mark.parametrize("typed", ["¹²³⁴⁵⁶", "123.456", "12345", "abcdef", "-123456"])
def test_other_characters_make_the_code_invalid(client, typed):
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": typed})
    assert response.status_code == 400 and response.json() == {"code": ["Enter the 6-digit code."]}


def test_a_mobile_in_arabic_indic_digits_with_thin_spaces_signs_in_with_a_code_typed_alike(client, fixed_code):
    mobile = "+١\u2009٤١٥\u2009٥٥٥\u2009٢٦٧١"
    assert post(client, "/register/", {"mobile": mobile}).status_code == 202
    response = post(client, "/verify-otp/", {"mobile": mobile, "code": "١٢٣ ٤٥٦"})
    assert response.status_code == 200, response.content
    assert User.objects.get().mobile == "+14155552671"


def test_the_home_page_input_lets_through_what_the_api_accepts(client):
    # No `pattern` (it would block a code typed with spaces or other digits before home.js reads it), a maxlength
    # with room for spacers, and the attributes that bring up digits and offer the code from an SMS.
    page = client.get("/home/").content.decode()
    code_input = re.search(r'<input id="code"[^>]*>', page).group(0)
    assert "pattern=" not in code_input
    assert 'maxlength="24"' in code_input
    assert 'inputmode="numeric"' in code_input and 'autocomplete="one-time-code"' in code_input
