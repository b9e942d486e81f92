"""Request ids, JSON log lines, and per-request metrics: what an operator sees of each request and job.

The request id comes from nginx (`X-Request-ID`) or is made here; it is logged with every line written while
the request runs, returned to the client, and handed to the delivery job so the worker's lines carry it too.
"""
import contextvars
import json
import logging
import logging.config
import re
import time
import uuid

from core.metrics import metric_count, metric_observe

# The Celery message header that carries the request id from the API to the job it enqueued.
REQUEST_ID_HEADER = "otp_request_id"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

access_logger = logging.getLogger("otp.access")


def request_id_current() -> str:
    return request_id_var.get()


class request_id_bound:
    """`with request_id_bound(rid):` log lines written inside carry `rid` (a worker running a request's job)."""

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id if request_id and _REQUEST_ID.match(request_id) else "-"

    def __enter__(self):
        self.token = request_id_var.set(self.request_id)

    def __exit__(self, *exc):
        request_id_var.reset(self.token)


def logging_configure(config: dict) -> None:
    """Apply `config` (settings.LOGGING, a `logging.config.dictConfig` dict) and send Python's warnings through
    it, as records of the `py.warnings` logger (`logging.captureWarnings`), so that a warning is one line in the
    log's format too: Celery's SecurityWarning for a worker run as root was five plain-text lines among the JSON.
    Django calls this once at set-up (`LOGGING_CONFIG`); gunicorn's logger calls it before Django is set up.
    Returns None; raises ValueError for a config dictConfig refuses."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


class RequestIdFilter(logging.Filter):
    """Gives each record `request_id`: the one bound in this context, else that of the request the record names.

    Django's handler logs a 4xx or 5xx answer (`django.request`, "Service Unavailable: /metrics") after the
    middleware has returned and unbound the id; the record then carries the request (`extra={"request": ...}`),
    which RequestObservabilityMiddleware marked with its id. Without that, such lines read `request_id "-"` and
    could not be matched with nginx's access line (an operator pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id == "-":
            request_id = getattr(getattr(record, "request", None), "otp_request_id", "-")
        record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Messages are written by our code, which never logs a code or a token."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ("method", "path", "status", "duration_ms", "client"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RequestObservabilityMiddleware:
    """Sets the request id, then counts, times and logs the request once it is answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        request.otp_request_id = request_id  # for log lines written after this returns (RequestIdFilter)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            elapsed = time.perf_counter() - started
            match = getattr(request, "resolver_match", None)
            route = match.route if match and match.route else "unmatched"
            metric_count("http_requests_total", method=request.method, route=route, status=response.status_code)
            metric_observe("http_request_duration_seconds", elapsed, route=route)
            # The path only: query strings are not logged, so nothing a client puts there reaches the logs.
            # DEBUG: nginx's access log already has every request with its id, and this line is costly
            # (docs/performance.md).
            access_logger.debug("request", extra={"method": request.method, "path": request.path,
                                                 "status": response.status_code,
                                                 "duration_ms": round(elapsed * 1000, 2)})
            return response
        finally:
            request_id_var.reset(token)
