"""The vendors that deliver codes, each behind one small interface, chosen by settings through the registry.

`base` holds the interface and its errors; one module per provider; `registry`
maps the `EMAIL_BACKEND` and `SMS_BACKEND` choices to the provider classes. Services import only this package.
"""
from otp.providers.base import (Provider, SendOutcomeUnknownError, SendPermanentError, SendRecipientRefusedError,
                                SendTransientError, StatusCallbackMalformed, StatusReport)
from otp.providers.registry import delivery_lease_seconds, provider_class, provider_for, provider_name

__all__ = ["Provider", "SendOutcomeUnknownError", "SendPermanentError", "SendRecipientRefusedError",
           "SendTransientError", "StatusCallbackMalformed", "StatusReport",
           "delivery_lease_seconds", "provider_class", "provider_for", "provider_name"]
