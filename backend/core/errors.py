"""Expected failures raised by services; core.exception_handler turns each into the contract's JSON."""
import redis.exceptions
from django.db import InterfaceError, OperationalError

from core.redis_failover import FAILOVER_ERRORS, WRITE_REFUSALS

# The database errors that mean an outage (no connection, a dropped one, a statement timeout): the request may
# be repeated once it is over (503). Any other DatabaseError (a value too long for its column, a NUL byte, a
# broken constraint) is the request's own doing or a bug, never a reason to give a throttle back.
DATABASE_OUTAGES = (OperationalError, InterfaceError)
# The errors of the Redis behind the throttles (REDIS_URL) that mean an outage: 503, "cache".
# So is a failover's answer still there after a try on a new connection, and a server refusing writes for its own
# state: full memory, too few replicas, a failed snapshot (core.redis_failover).
CACHE_OUTAGES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *FAILOVER_ERRORS, *WRITE_REFUSALS)


class ServiceError(Exception):
    status_code = 400
    default_detail = "The request could not be completed."
    default_code = "error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)


class InvalidCode(ServiceError):
    # One body for wrong, expired, used, burned and unknown: the answer must not tell them apart.
    default_detail = "Invalid or expired code."
    default_code = "invalid_code"


class RateLimited(ServiceError):
    status_code = 429
    default_detail = "Too many requests. Try again later."
    default_code = "throttled"

    def __init__(self, wait_seconds: int, detail: str | None = None) -> None:
        self.wait_seconds = max(1, int(wait_seconds))
        super().__init__(detail or f"Too many requests. Try again in {self.wait_seconds} seconds.")


class SmsBudgetSpent(RateLimited):
    """An SMS volume budget (per destination prefix, or for all SMS) is spent, or SMS is turned off."""

    default_code = "sms_budget"

    def __init__(self, wait_seconds: int) -> None:
        super().__init__(wait_seconds, f"Too many codes are being texted right now. Try again in "
                                       f"{max(1, int(wait_seconds))} seconds.")


class EmailBudgetSpent(RateLimited):
    """An email volume budget (per recipient domain, or for all email) is spent, or email is turned off."""

    default_code = "email_budget"

    def __init__(self, wait_seconds: int) -> None:
        super().__init__(wait_seconds, f"Too many codes are being emailed right now. Try again in "
                                       f"{max(1, int(wait_seconds))} seconds.")


class TokenRejected(ServiceError):
    status_code = 401
    default_detail = "Token is invalid or expired."
    default_code = "token_not_valid"


class SignatureInvalid(ServiceError):
    """A callback whose signature is missing or wrong: not from the provider it claims."""

    status_code = 403
    default_detail = "Missing or invalid signature."
    default_code = "permission_denied"


class CallbackMalformed(ServiceError):
    """A provider's signed callback without a field every such callback carries (contract: 4xx for a malformed
    body)."""

    default_detail = "Malformed callback."
    default_code = "parse_error"


class NumberNotAllowed(ServiceError):
    """A valid mobile number that the SMS destination rules refuse (otp.addresses.sms_destination_refusal)."""

    default_detail = "Codes are not sent by SMS to this number."
    default_code = "number_not_allowed"


class DependencyUnavailable(ServiceError):
    """A database, cache or broker outage: the request may be repeated once it is over."""

    status_code = 503
    default_code = "service_unavailable"

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        super().__init__(f"Service temporarily unavailable ({dependency}).")
