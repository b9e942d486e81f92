"""App config for one-time codes and their delivery."""
import math

from django.apps import AppConfig
from django.conf import settings


class OtpConfig(AppConfig):
    name = "otp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        delivery_chain_check()
        failure_budget_check()
        sms_segment_check()

        from core.metrics import gauge_source_register

        gauge_source_register(send_budget_gauges)


def sms_segment_check() -> None:
    """With OTP_SMS_APP_HASH set, refuse to start unless the SMS, with the longest code and this SERVICE_NAME and
    PUBLIC_BASE_URL, fits one segment (160 GSM-7 characters, or 70 UCS-2): Android's SMS Retriever hands the app
    only a message it received whole, and a concatenated one costs one SMS per part. Raises SystemExit with one
    line naming OTP_SMS_APP_HASH (the setting that asked for one segment) and what makes the text long."""
    from otp.messages import sms_length, sms_message_render

    if not settings.OTP_SMS_APP_HASH:
        return
    used, room, encoding = sms_length(sms_message_render(code="0" * settings.OTP_LENGTH).text)
    if used > room:
        raise SystemExit(
            f"Invalid setting OTP_SMS_APP_HASH={settings.OTP_SMS_APP_HASH!r}: expected an SMS of one segment, but "
            f"with SERVICE_NAME={settings.SERVICE_NAME!r} and PUBLIC_BASE_URL's host it is {used} {encoding} "
            f"characters of {room}: shorten SERVICE_NAME (or unset OTP_SMS_APP_HASH)."
        )


def send_budget_gauges() -> dict[str, dict[str, float]]:
    """/metrics' gauges of the channel-wide send budgets (otp.throttles.send_budget_usage): the share spent, and
    whether it is past OTP_SEND_BUDGET_SOFT_PERCENT, by budget (sms, sms_shared, email, email_shared)."""
    from otp.throttles import send_budget_usage

    usage = send_budget_usage()
    soft = settings.OTP_SEND_BUDGET_SOFT_PERCENT / 100
    return {"otp_send_budget_used_ratio": usage,
            "otp_send_budget_soft_exceeded": {name: float(used >= soft) for name, used in usage.items()}}


def failure_budget_check() -> None:
    """Refuse to start unless the failure budget allows at most 1 % of the code space in compared wrong guesses
    a year (contract: One-time codes; at 6 digits, 10,000). Raises SystemExit with one line naming the setting."""
    from otp.throttles import failure_budget_yearly_maximum

    allowed = 10 ** settings.OTP_LENGTH // 100
    if failure_budget_yearly_maximum() > allowed:
        raise SystemExit(
            f"Invalid setting OTP_MAX_FAILURES_PER_DAY={settings.OTP_MAX_FAILURES_PER_DAY!r}: expected a value that "
            f"keeps the wrong guesses compared for one address within {allowed} a year (1 % of the "
            f"{settings.OTP_LENGTH}-digit code space; now {failure_budget_yearly_maximum()}): "
            f"at most {allowed // 366} a day with OTP_LENGTH={settings.OTP_LENGTH}."
        )


def delivery_chain_check() -> None:
    """Refuse to start unless provider wait < delivery lease < the broker's visibility timeout (< the code's
    life, checked in the settings).

    The provider wait is the longest `timeout_seconds` of the configured providers: the whole of one send, checks
    of an unknown outcome and the SMTP final reply (EMAIL_FINAL_REPLY_TIMEOUT_SECONDS) included. The lease adds
    the time to record the outcome (registry.OUTCOME_RECORD_SECONDS, within which the tries of
    otp.services.delivering end) and a margin for clocks. A worker that still waits on a provider, or still
    records its answer, after its lease lapsed, or after the broker handed its job to another worker, is exactly
    how a second worker sends the same code again (contract: Delivery). The lease is derived from the configured
    providers (otp.providers.registry), hence this check runs once the apps are ready rather than in the settings
    module. Raises SystemExit with one line naming the variable to change: OTP_TTL_SECONDS when the visibility
    timeout is unset and follows a code life too short for the lease; the provider's own setting when it is what
    makes the chain too long and lowering it can repair it; CELERY_VISIBILITY_TIMEOUT_SECONDS otherwise.
    """
    from otp import providers
    from otp.providers import registry

    lease = providers.delivery_lease_seconds()
    visibility = settings.CELERY_VISIBILITY_TIMEOUT_SECONDS
    # A run that finds the delivery held retries just after the lease lapses: that delay must be due before
    # the broker would hand the job out again.
    if lease + 1 < visibility:
        return
    # Unset, the visibility timeout is half the code's life up to 60 s (config.settings): when a longer code life
    # would make it long enough, the code's life is the setting to name, with the least value that works.
    least_visibility = math.floor(lease) + 2
    if settings.CELERY_VISIBILITY_TIMEOUT_DERIVED and visibility < 60 and least_visibility <= 60:
        raise SystemExit(
            f"Invalid setting OTP_TTL_SECONDS={settings.OTP_TTL_SECONDS!r}: expected at least "
            f"{2 * least_visibility} with the configured providers: the visibility timeout "
            f"(CELERY_VISIBILITY_TIMEOUT_SECONDS, unset: half of OTP_TTL_SECONDS, at most 60) must be above the "
            f"delivery lease ({lease:g} s: the slowest provider's whole wait, plus "
            f"{registry.OUTCOME_RECORD_SECONDS:g} s to record the outcome and a {registry.LEASE_MARGIN_SECONDS} s "
            f"margin) plus 1 (or set CELERY_VISIBILITY_TIMEOUT_SECONDS yourself, below OTP_TTL_SECONDS)."
        )
    configured = registry.providers_configured()
    slowest = max(configured, key=lambda cls: cls.timeout_seconds)
    # The longest provider wait that fits: the visibility timeout less 1 s, the record time and the margin.
    room = visibility - 1 - (lease - slowest.timeout_seconds)
    setting = getattr(slowest, "timeout_setting", "")
    if setting:
        below = getattr(settings, setting) - (slowest.timeout_seconds - room)
        if below > 1 and all(cls.timeout_seconds < room for cls in configured if cls is not slowest):
            raise SystemExit(
                f"Invalid setting {setting}={getattr(settings, setting)!r}: expected a value below {below:g}, so "
                f"that the delivery lease ({lease:g} s: the slowest provider's whole wait, plus "
                f"{registry.OUTCOME_RECORD_SECONDS:g} s to record the outcome and a {registry.LEASE_MARGIN_SECONDS} s "
                f"margin) plus 1 stays below CELERY_VISIBILITY_TIMEOUT_SECONDS={visibility} (or raise that, below "
                f"OTP_TTL_SECONDS)."
            )
    if settings.CELERY_VISIBILITY_TIMEOUT_DERIVED:
        # Neither a longer code life alone nor a shorter provider wait alone repairs it: say what the value is.
        raise SystemExit(
            f"Invalid setting CELERY_VISIBILITY_TIMEOUT_SECONDS={visibility!r} (unset: half of OTP_TTL_SECONDS="
            f"{settings.OTP_TTL_SECONDS}, at most 60): expected a value above the delivery lease ({lease:g} s: the "
            f"slowest configured provider's whole wait{f' ({setting})' if setting else ''}, plus "
            f"{registry.OUTCOME_RECORD_SECONDS:g} s to record the outcome and a {registry.LEASE_MARGIN_SECONDS} s "
            f"margin) plus 1: shorten that wait, or set CELERY_VISIBILITY_TIMEOUT_SECONDS and OTP_TTL_SECONDS above it."
        )
    raise SystemExit(
        f"Invalid setting CELERY_VISIBILITY_TIMEOUT_SECONDS={visibility!r}: expected a value above the delivery "
        f"lease ({lease:g} s: the slowest configured provider's whole wait, plus {registry.OUTCOME_RECORD_SECONDS:g} s "
        f"to record the outcome and a {registry.LEASE_MARGIN_SECONDS} s margin) plus 1, and below OTP_TTL_SECONDS."
    )
