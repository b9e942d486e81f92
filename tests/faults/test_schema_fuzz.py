"""Schema-driven fuzzing: schemathesis sends what the OpenAPI schema allows (and some it does not) to a live API.

Every answer must be a documented status with a body matching the schema, and never a 5xx. A status webhook's
form is sent twice, unsigned and then signed, so it also reaches past the signature check.
"""
import pytest
import requests
import schemathesis
from django.http import QueryDict
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)
from schemathesis.checks import not_a_server_error

from tests.support.env import TWILIO_AUTH_TOKEN, delivery_env
from tests.support.isolation import redis_db_url
from tests.support.mini_stack import MiniStack

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(django_db_setup, django_db_blocker, smtp_server, twilio_standin):
    with django_db_blocker.unblock():
        env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    # Guards up high: this run looks for crashes and schema drift, not for throttling.
    stack = MiniStack({**env, "REDIS_URL": redis_db_url(12), "OTP_IP_SEND_RATE": "100000/min",
                       "OTP_IP_VERIFY_RATE": "100000/min", "OTP_RESEND_COOLDOWN_SECONDS": "1"}).start_api()
    yield stack
    stack.stop()


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, live_api):
    case.call_and_validate(base_url=live_api.url, checks=CHECKS)
    if "/webhooks/" in case.path and case.method.upper() == "POST":
        case.headers = {**(case.headers or {}), "X-Twilio-Signature": _twilio_signature(case, live_api)}
        case.call_and_validate(base_url=live_api.url, checks=CHECKS)


def _twilio_signature(case, live_api) -> str:
    """Twilio's signature of the form exactly as it will be sent and as the API will read it (the last value of
    each field), over the public URL the API checks it against."""
    from twilio.request_validator import RequestValidator

    sent = requests.Request(**case.as_transport_kwargs(base_url=live_api.url)).prepare()
    body = sent.body.encode() if isinstance(sent.body, str) else sent.body or b""
    params = QueryDict(body).dict() if b"=" in body else {}
    url = f"{live_api.env['PUBLIC_BASE_URL'].rstrip('/')}{case.formatted_path}"
    return RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(url, params)
