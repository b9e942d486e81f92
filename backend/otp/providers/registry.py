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

# The lease outlasts the provider's own timeout by this many seconds: time to record the outcome.
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


def delivery_lease_seconds() -> float:
    """How long a worker holds a delivery while it talks to a provider, in seconds: the longest timeout of the
    configured providers plus LEASE_MARGIN_SECONDS, so two workers never send one code at once."""
    return max(provider_class(channel).timeout_seconds for channel in PROVIDERS) + LEASE_MARGIN_SECONDS
