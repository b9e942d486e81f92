"""Per-client-IP throttles for DRF views, on the fixed-window counters of core.ratelimit."""
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from core.ratelimit import rate_parse, window_hit


class _IpRateThrottle(BaseThrottle):
    """DRF's get_ident honours NUM_PROXIES (TRUSTED_PROXY_COUNT), so a client cannot forge its address."""

    scope = ""
    rate_setting = ""

    def allow_request(self, request, view) -> bool:
        limit, window = rate_parse(getattr(settings, self.rate_setting))
        self.wait_seconds = window_hit(key=f"ip:{self.scope}:{self.get_ident(request)}", limit=limit, window=window)
        return self.wait_seconds == 0

    def wait(self) -> int:
        return self.wait_seconds


class IpSendThrottle(_IpRateThrottle):
    scope = "send"
    rate_setting = "OTP_IP_SEND_RATE"


class IpVerifyThrottle(_IpRateThrottle):
    scope = "verify"
    rate_setting = "OTP_IP_VERIFY_RATE"
