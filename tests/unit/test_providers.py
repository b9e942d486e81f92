"""A provider is added through the registry alone (the recipe in docs/architecture.md)."""
import pytest

from otp import providers, services
from otp.addresses import mobile_normalize
from otp.models import Delivery, Purpose
from otp.providers import registry


class ThrowawaySmsProvider:
    """A provider written for this test only, as a new SMS vendor's module would be."""

    name = "throwaway"
    channel = "sms"
    timeout_seconds = 40.0
    sent: list = []

    def send(self, *, to, message, delivery_id):
        self.sent.append((to, message.text))
        return f"throwaway-{len(self.sent)}"


@pytest.fixture
def throwaway(monkeypatch, settings):
    monkeypatch.setitem(registry.SMS_PROVIDERS, "throwaway", f"{__name__}.ThrowawaySmsProvider")
    settings.SMS_BACKEND = "throwaway"
    ThrowawaySmsProvider.sent = []
    return ThrowawaySmsProvider


@pytest.mark.django_db
def test_a_provider_registered_in_the_registry_delivers(throwaway, fixed_code):
    delivery = services.code_issue(address=mobile_normalize("+14155552671"), purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])
    assert throwaway.sent == [("+14155552671", throwaway.sent[0][1])] and fixed_code[-1] in throwaway.sent[0][1]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider, delivery.provider_id) == ("sent", "throwaway", "throwaway-1")


def test_the_lease_outlasts_the_slowest_configured_provider(throwaway):
    # Its whole wait, the time to record the outcome, and a margin for the clocks of the workers.
    assert providers.delivery_lease_seconds() == 40.0 + registry.OUTCOME_RECORD_SECONDS + registry.LEASE_MARGIN_SECONDS


def test_every_registered_provider_declares_the_interface():
    for channel, names in registry.PROVIDERS.items():
        for name in names:
            cls = registry.provider_class(channel, name)
            assert cls.channel == channel and cls.timeout_seconds >= 0 and callable(cls.send), (channel, name)
