"""Which class delivers each channel: the `EMAIL_BACKEND` and `SMS_BACKEND` choices, mapped to provider classes.

Adding a provider is a module under otp/providers/ and one line here (docs/architecture.md has the recipe).
This module imports no provider at import time, so the settings can validate their choices against it.
"""
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

EMAIL_PROVIDERS: dict[str, str] = {
    "smtp": "otp.providers.smtp.SmtpEmailProvider",
    # Django's in-memory mail backend, behind the same sender: what the test suite reads.
    "locmem": "otp.providers.smtp.SmtpEmailProvider",
    "console": "otp.providers.console.ConsoleEmailProvider",
}
SMS_PROVIDERS: dict[str, str] = {
    "console": "otp.providers.console.ConsoleSmsProvider",
    "twilio": "otp.providers.twilio.TwilioSmsProvider",
}
PROVIDERS: dict[str, dict[str, str]] = {"email": EMAIL_PROVIDERS, "sms": SMS_PROVIDERS}

# Once the provider has answered, the worker records the outcome within this many seconds (its tries stop in
# time: otp.services.delivering). The lease covers it, so no other run takes a delivery over while the first
# still records what the provider said: a takeover then would send the code again.
OUTCOME_RECORD_SECONDS = 16.0
# And this margin on top: a lease is written and compared on the database's clock (core.clock), and each worker's
# reading of it may lag by part of a round trip, or a worker may pause (a full CPU, a page-in) before it records.
LEASE_MARGIN_SECONDS = 5


def provider_name(channel: str) -> str:
    """The registry name chosen for `channel` ("email" or "sms") by the settings (EMAIL_PROVIDER, SMS_BACKEND)."""
    return settings.EMAIL_PROVIDER if channel == "email" else settings.SMS_BACKEND


def provider_class(channel: str, name: str | None = None) -> type:
    """The provider class registered as `name` (default: the one the settings chose) for `channel`.

    Raises KeyError for a name the registry does not hold (settings refuse such a choice at start-up).
    """
    return _import(PROVIDERS[channel][name or provider_name(channel)])


@cache
def _import(path: str) -> type:
    return import_string(path)


_instances: dict[type, object] = {}


def provider_for(channel: str):
    """The provider that delivers `channel` now: one instance per class and process (providers keep no
    per-message state). Tests substitute a provider by patching this one name, `otp.providers.provider_for`."""
    cls = provider_class(channel)
    instance = _instances.get(cls)
    if instance is None:
        instance = _instances.setdefault(cls, cls())
    return instance


def providers_configured() -> list[type]:
    """The provider class the settings chose for each channel."""
    return [provider_class(channel) for channel in PROVIDERS]


def delivery_lease_seconds() -> float:
    """How long a worker holds a delivery, in seconds: the longest `timeout_seconds` of the configured providers
    (each covers its whole wait, outcome checks included), plus OUTCOME_RECORD_SECONDS to record the outcome,
    plus LEASE_MARGIN_SECONDS, so two runs never send one code at once."""
    return (max(cls.timeout_seconds for cls in providers_configured()) + OUTCOME_RECORD_SECONDS
            + LEASE_MARGIN_SECONDS)
