"""Response headers every answer of the API carries."""
from django.conf import settings


class SecurityHeadersMiddleware:
    """`Cache-Control: no-store` on every response that did not choose its own caching, and HSTS when the
    public URL is https.

    Token responses (/verify-otp/, /token/refresh/) must never be kept by a browser or a shared cache (RFC 6749
    section 5.1; OWASP REST Security Cheat Sheet); the profile and every error are per user or per moment too.
    Pages that may be cached say so themselves (/home/ is public for 300 s). HSTS (RFC 6797) is decided by
    PUBLIC_BASE_URL rather than by the request's scheme, because TLS usually ends before nginx.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store"
        if settings.PUBLIC_HTTPS:
            response["Strict-Transport-Security"] = f"max-age={settings.HSTS_SECONDS}; includeSubDomains"
        return response
