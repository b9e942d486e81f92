"""Middleware of the API: the response headers every answer carries, and the checks on a request's body that
must run before anything reads it (Django's form parsing or DRF's parsers)."""
import codecs

from django.conf import settings
from django.http import JsonResponse
from django.urls import Resolver404, resolve
from rest_framework.views import APIView
from whitenoise.middleware import WhiteNoiseMiddleware

from core.errors import DependencyUnavailable
from core.exception_handler import error_body, outage_as_error, unavailable_headers


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


class HeadBodyMiddleware:
    """A HEAD answer without its content (RFC 9110 section 9.3.2), its Content-Length the GET's.

    Django answers HEAD with GET's body, and gunicorn dropped it with a warning line per request ("WSGI app sent body
    bytes on a no-body response", with no request id): a balancer checking health with HEAD filled the API's log
    (found by a new-user pass). Outermost, so it sees the final answer; a streamed one is left to the server.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method == "HEAD" and not response.streaming and response.content:
            response["Content-Length"] = str(len(response.content))
            response.content = b""
        return response


# What a body may be declared in: JSON is UTF-8 (RFC 8259 section 8.1), a form is ASCII once percent-encoded, and
# Latin-1 is what HTTP/1.1 took for text by default. Names as codecs.lookup() gives them.
READABLE_CHARSETS = {"utf-8", "ascii", "iso8859-1"}


def _charset_readable(name: str) -> bool:
    try:
        return codecs.lookup(name).name in READABLE_CHARSETS
    except LookupError:
        return False


class BodyCharsetMiddleware:
    """Answers 415 JSON when a request declares its body in any other charset, or in one Python does not know.

    Django takes any name `codecs.lookup` knows as the body's encoding, including codecs that are not text
    encodings at all (`rot13`, `zlib`, `base64`) or that cannot decode (`undefined`): reading the body with one
    raised errors no parser expected, a 500. Django ignores a name it does not know and reads the body as UTF-8,
    which is a guess: refused too. (Latin-1 was listed under a name `codecs.lookup` never gives, so it was refused;
    both found by an attack pass.)
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        declared = request.content_params.get("charset")
        if declared is not None and not _charset_readable(declared):
            response = JsonResponse(error_body(f'Unsupported charset "{declared}": send UTF-8.',
                                               "unsupported_media_type"), status=415)
            allowed = _api_view_allowed_methods(request.path_info)
            if allowed:  # as on every other answer of an API endpoint (DRF's finalize_response adds it there)
                response["Allow"] = allowed
            return response
        return self.get_response(request)


def _api_view_allowed_methods(path: str) -> str | None:
    """The `Allow` value of the DRF view that `path` routes to ("POST, OPTIONS"), or None when it routes to none."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    view_class = getattr(match.func, "cls", None)
    if view_class is None or not issubclass(view_class, APIView):
        return None
    return ", ".join(view_class(**getattr(match.func, "view_initkwargs", {})).allowed_methods)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise (static files through gunicorn, in both stacks), with its own error answers in JSON.

    WhiteNoise answers a method other than GET or HEAD on a static file with a 405, and a `Range` past the file's
    end with a 416, both with an empty body and no Content-Type; /static/ is not among the paths whose errors may
    be pages (contract: every error outside /home/, /admin/ and /api/docs/ is JSON with `detail` and `code`).
    Its headers that say what would work (`Allow`, `Content-Range`) are kept.
    """

    @staticmethod
    def serve(static_file, request):
        response = WhiteNoiseMiddleware.serve(static_file, request)
        if response.status_code < 400:
            return response
        if response.status_code == 405:
            body = error_body(f'Method "{request.method}" not allowed.', "method_not_allowed")
        elif response.status_code == 416:
            body = error_body("The requested range is not satisfiable.", "range_not_satisfiable")
        else:
            body = error_body("The request could not be handled.", "error")
        answer = JsonResponse(body, status=response.status_code)
        for name in ("Allow", "Content-Range"):
            if response.has_header(name):
                answer[name] = response[name]
        return answer


class OutageMiddleware:
    """A database, cache or broker outage raised in a view outside DRF (the admin and django-axes's record of its
    logins, the pages) answered as DRF's views answer one: 503 naming the dependency, with Retry-After
    (core.exception_handler). Django's handler500 answered them 500, the wrong status for a request that may be
    repeated. Other exceptions go on to Django's handlers."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        error = outage_as_error(exception)
        if not isinstance(error, DependencyUnavailable):
            return None
        return JsonResponse(error_body(error.detail, error.default_code), status=error.status_code,
                            headers=unavailable_headers(error))
