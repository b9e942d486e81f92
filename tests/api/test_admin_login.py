"""Admin sign-ins, the only password logins, are throttled per client address (django-axes)."""
import pytest
from django.test import Client

from tests.support import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(settings):
    # What is tested is who may try, not the hash: a fast hasher keeps the test quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = factories.user(email="admin@example.com", is_staff=True, is_superuser=True)
    user.set_password("the-right-password-for-tests")
    user.save()
    return user


def login(password: str, ip: str = "203.0.113.7"):
    client = Client()
    return client.post("/admin/login/?next=/admin/", {"username": "admin@example.com", "password": password},
                       HTTP_X_FORWARDED_FOR=ip)


def test_after_five_wrong_passwords_even_the_right_one_is_refused_with_the_real_wait(admin_user):
    assert [login(f"wrong-{n}").status_code for n in range(4)] == [200] * 4  # the form again, with its error
    locked = login("wrong-4")
    assert locked.status_code == 429 and locked["Retry-After"] == "900"
    right = login("the-right-password-for-tests")
    assert right.status_code == 429 and int(right["Retry-After"]) == 900


def test_a_locked_out_address_does_not_lock_the_admin_out_elsewhere(admin_user):
    for n in range(6):
        login(f"wrong-{n}", ip="198.51.100.9")
    response = login("the-right-password-for-tests", ip="203.0.113.50")
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_an_ipv6_client_is_locked_out_across_its_64(admin_user):
    for n in range(5):
        login(f"wrong-{n}", ip=f"2001:db8:7:7::{n + 1}")
    assert login("the-right-password-for-tests", ip="2001:db8:7:7:ffff::1").status_code == 429


@pytest.mark.django_db(transaction=True)
def test_an_outage_during_an_admin_login_is_a_503_naming_the_database(admin_user, read_only_database):
    # The admin is not a DRF view: its errors reach Django's handler, which answered every outage with a 500.
    read_only_database.on()
    for password in ("wrong-0", "the-right-password-for-tests"):  # django-axes records the one; login() the other
        response = login(password)
        assert response.status_code == 503 and response["Retry-After"], response.content
        assert response.json() == {"detail": "Service temporarily unavailable (database).",
                                    "code": "service_unavailable"}
