"""Where a newcomer lands: `/` leads to the front end, and nothing on the way answers anything but JSON errors."""
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_bare_address_redirects_to_the_front_end():
    client = Client()
    for method in ("get", "head"):
        response = getattr(client, method)("/")
        assert response.status_code == 302, method
        assert response["Location"] == "/home/"  # relative: right behind nginx and any TLS front
    page = client.get("/", follow=True)
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_other_methods_on_the_bare_address_are_a_json_405(method):
    # A browser's or curl's POST carries no CSRF token; the answer must still be the API's JSON, not a 403 page.
    response = getattr(Client(enforce_csrf_checks=True), method)("/", data="{}", content_type="application/json")
    assert response.status_code == 405
    assert response.json() == {"detail": f'Method "{method.upper()}" not allowed.', "code": "method_not_allowed"}
    assert response["Allow"] == "GET, HEAD"
