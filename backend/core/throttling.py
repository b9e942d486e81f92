"""Per-client-IP throttles for DRF views, on the GCRA rates of core.ratelimit."""
import ipaddress

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from core.keys import throttle_digest
from core.ratelimit import rate_hit, rate_parse

# One IPv6 client usually holds a whole /64 (RFC 6177 assigns at least that much to a site, and SLAAC picks
# addresses inside it at will, RFC 4941), so a per-address limit would be no limit at all.
IPV6_CLIENT_PREFIX = 64


def client_key(ident: str) -> str:
    """The throttle identity of a client address: an IPv4 address as it is, an IPv6 address as the first
    address of its /64 (an IPv4-mapped IPv6 address counts as the IPv4 one). Anything else is used as given."""
    try:
        address = ipaddress.ip_address(ident.strip())
    except ValueError:
        return ident
    if address.version == 6 and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False).network_address)
    return str(address)


def client_ip(request) -> str | None:
    """The client's address as the trusted proxies passed it on (TRUSTED_PROXY_COUNT), grouped as client_key
    groups it: the identity every per-client limit uses, DRF's throttles and django-axes alike. None for a
    request with no address (one made inside the process, as a test's forced login)."""
    ident = BaseThrottle().get_ident(request)
    return client_key(ident) if ident else None


class _IpRateThrottle(BaseThrottle):
    """DRF's get_ident honours NUM_PROXIES (TRUSTED_PROXY_COUNT), so a client cannot forge its address."""

    scope = ""
    rate_setting = ""

    def allow_request(self, request, view) -> bool:
        limit, period = rate_parse(getattr(settings, self.rate_setting))
        # Keyed, like the address throttles' keys: a Redis dump should not list the clients' addresses.
        key = f"ip:{self.scope}:{throttle_digest(client_ip(request) or 'unknown')}"
        self.wait_seconds = rate_hit(key=key, limit=limit, period=period)
        return self.wait_seconds == 0

    def wait(self) -> int:
        return self.wait_seconds


class IpSendThrottle(_IpRateThrottle):
    scope = "send"
    rate_setting = "OTP_IP_SEND_RATE"


class IpVerifyThrottle(_IpRateThrottle):
    scope = "verify"
    rate_setting = "OTP_IP_VERIFY_RATE"
