"""Every way an account is made or edited applies the API's address rules (otp.addresses): the service, the
admin, createsuperuser and user_create; and address_audit lists accounts stored under older rules."""
import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from users.models import User
from users.services import user_create

pytestmark = pytest.mark.django_db


def test_user_create_normalises_by_the_api_rules():
    assert user_create(email=" Alice@Straße.de ").email == "alice@xn--strae-oqa.de"
    assert user_create(mobile="+1 415 555 2671").mobile == "+14155552671"


@pytest.mark.parametrize("fields", [{"email": "root@localhost"}, {"email": "root@[127.0.0.1]"},
                                    {"email": "jörg@example.com"}, {"mobile": "+1 415 555 CODE"}, {"mobile": "12"}])
def test_user_create_refuses_what_the_api_refuses(fields):
    with pytest.raises(ValidationError):
        user_create(**fields)
    assert not User.objects.exists()


@pytest.fixture
def admin_client():
    admin = User.objects.create_superuser(email="admin@example.com", password="a-long-admin-password")
    client = APIClient()
    client.force_login(admin)
    return client


def _admin_add(client, **fields):
    form = {"email": "", "mobile": "", "is_active": "on", **fields}
    return client.post("/admin/users/user/add/", form)


@pytest.mark.parametrize("email", ["root@localhost", "root@[127.0.0.1]", '"root"@example.com', "jörg@example.com"])
def test_the_admin_refuses_addresses_the_api_refuses(admin_client, email):
    response = _admin_add(admin_client, email=email)
    assert response.status_code == 200 and b"errorlist" in response.content  # the form again, with the error
    assert not User.objects.filter(is_staff=False).exists()


def test_the_admin_stores_addresses_as_the_api_does(admin_client, settings):
    assert _admin_add(admin_client, email=" Bob@Straße.de ", mobile="+1 415 555 2672").status_code == 302
    user = User.objects.get(is_staff=False)
    assert (user.email, user.mobile) == ("bob@xn--strae-oqa.de", "+14155552672")
    settings.EMAIL_ALLOW_SMTPUTF8 = True
    assert _admin_add(admin_client, email="Jörg@example.com").status_code == 302
    assert User.objects.filter(email="jörg@example.com").exists()


def test_an_admin_edit_keeps_an_empty_address_empty(admin_client):
    user = user_create(mobile="+14155552673")
    response = admin_client.post(f"/admin/users/user/{user.pk}/change/",
                                 {"email": "", "mobile": "+1 (415) 555-2673", "is_active": "on"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.email is None and user.mobile == "+14155552673"


def test_createsuperuser_applies_the_same_rules(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-admin-password")
    with pytest.raises(CommandError):
        call_command("createsuperuser", "--noinput", "--email", "root@localhost", stdout=io.StringIO())
    call_command("createsuperuser", "--noinput", "--email", "Root@Straße.de", stdout=io.StringIO())
    assert User.objects.get().email == "root@xn--strae-oqa.de"


def test_the_admin_login_finds_the_account_however_its_address_is_spelled():
    User.objects.create_superuser(email="Admin@Straße.de", password="a-long-admin-password")

    def login(username):
        response = APIClient().post("/admin/login/?next=/admin/",
                                    {"username": username, "password": "a-long-admin-password"})
        return response.status_code == 302 and response["Location"] == "/admin/"

    assert not login("ADMIN@STRASSE.de")  # another domain
    assert login("Admin@STRAẞE.de")


# --- address_audit: accounts stored under an address the rules now refuse or spell differently -------------------


def _stored(**fields):
    """An account written as older code wrote it, past today's rules."""
    return User.objects.create_user(**fields)


def test_address_audit_lists_accounts_the_rules_refuse_or_spell_differently():
    ok = _stored(email="alice@example.com")
    legacy = _stored(email="carol@strasse.de")  # fine: strasse.de is a domain of its own
    sharp = _stored(email="dave@straße.de")  # stored before normalisation: the rules say xn--strae-oqa.de
    literal = _stored(email="root@[127.0.0.1]")
    local = _stored(email="root@localhost")
    mobile = _stored(mobile="+14155552674")
    vanity = _stored(mobile="+1 415 555 CODE")
    clash_a = _stored(email="erin@xn--strae-oqa.de")
    clash_b = _stored(email="Erin@Straße.de")

    out = io.StringIO()
    call_command("address_audit", stdout=out)
    text = out.getvalue()
    for user in (sharp, literal, local, vanity, clash_b):
        assert f"{user.pk}\t" in text, (user, text)
    for user in (ok, legacy, mobile, clash_a):
        assert f"{user.pk}\t" not in text, (user, text)
    assert "refused" in text and "dave@xn--strae-oqa.de" in text and f"user {clash_a.pk}" in text
    assert "5 of 9 accounts" in text

    out = io.StringIO()
    call_command("address_audit", "--json", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {row["id"] for row in rows} == {sharp.pk, literal.pk, local.pk, vanity.pk, clash_b.pk}
    row = next(row for row in rows if row["id"] == sharp.pk)
    assert row == {"id": sharp.pk, "field": "email", "stored": "dave@straße.de", "verdict": "normalised",
                   "normalised": "dave@xn--strae-oqa.de", "detail": "", "clashes_with": None}


def test_address_audit_changes_nothing():
    _stored(email="root@localhost")
    before = list(User.objects.values_list("id", "email", "mobile"))
    call_command("address_audit", stdout=io.StringIO())
    assert list(User.objects.values_list("id", "email", "mobile")) == before
