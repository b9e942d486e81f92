"""gunicorn settings for the API; the port comes from the same settings module as everything else."""
import json
import multiprocessing
import os

import gunicorn.glogging
import gunicorn.util

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
from django.conf import settings  # noqa: E402  (reading settings validates them: a bad one stops start-up here)

from core.observability import logging_configure  # noqa: E402

# Behind nginx on the same host; compose overrides this with --bind 0.0.0.0:8000.
bind = f"127.0.0.1:{settings.API_PORT}"
# WEB_CONCURRENCY is gunicorn's own variable; sync workers suit short requests behind nginx's buffering. Unset,
# gunicorn's usual 2 x cores + 1, but at most MAX_DEFAULT_WORKERS: each worker holds a PostgreSQL connection, and
# on a large host (or in a container, which sees every core of its host) 2 x cores + 1 alone would take more
# than PostgreSQL's default max_connections (100). docs/operations.md has the connection arithmetic.
MAX_DEFAULT_WORKERS = 8
workers = settings.WEB_CONCURRENCY or min(multiprocessing.cpu_count() * 2 + 1, MAX_DEFAULT_WORKERS)
worker_class = "sync"
preload_app = True
timeout = 30
graceful_timeout = 20
keepalive = 30  # nginx keeps its upstream connections open
control_socket_disable = True  # else gunicorn writes a socket under ~/.gunicorn, outside the checkout
# Requests are logged by nginx (its access log, with the request id) and, at LOG_LEVEL=debug, by the API itself
# (core.observability); gunicorn's own access line would repeat them.
accesslog = None


class AppFormatLogger(gunicorn.glogging.Logger):
    """gunicorn's logger with its own lines (its start, workers booted or timed out, requests it refuses) handed to
    the app's logging (settings.LOGGING): every line of the API's log one JSON object with DEBUG off, plain text
    with it on. gunicorn's `logconfig_dict` would do this too, but it also turns on gunicorn's access line (see
    accesslog above), at a cost on every request."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logging_configure(settings.LOGGING)  # as django.setup() will again
        self.error_log.handlers.clear()
        self.error_log.propagate = True


logger_class = AppFormatLogger


def on_starting(server) -> None:
    """Once, in the master, before any worker: refuse a broker whose Redis would lose jobs (one line naming
    CELERY_BROKER_URL). preload_app has already set Django up."""
    from config.celery import app, broker_redis_check_at_start

    broker_redis_check_at_start(app)


# gunicorn's own answers to requests it refuses before the app sees them: the codes nginx's template gives the same
# statuses (nginx/templates/default.conf.template), else one by class.
_GUNICORN_ERROR_CODES = {400: "bad_request", 403: "permission_denied", 414: "uri_too_long", 417: "expectation_failed",
                         431: "headers_too_large", 500: "server_error", 501: "not_implemented"}


def _json_error_write(sock, status_int, reason, mesg) -> None:
    """gunicorn.util.write_error in JSON: `{"detail", "code"}` instead of its HTML page.

    gunicorn refuses some requests that nginx passes on as they are (a second Content-Type, a control character
    in a header value, a raw non-ASCII byte in the request target: RFC 9110 sections 5.3 and 5.5, RFC 9112
    section 3.2) and answered them with an HTML 400 that nginx relayed untouched; the contract wants every error
    in JSON. gunicorn has no setting or hook for that page, and its workers call this function through its
    module, so replacing it here (in the master, before any worker forks) covers every worker.
    """
    code = _GUNICORN_ERROR_CODES.get(status_int, "bad_request" if status_int < 500 else "server_error")
    body = json.dumps({"detail": f"{reason}: {mesg}" if mesg else f"{reason}.", "code": code}).encode()  # ASCII
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn.util.write_error = _json_error_write
