"""gunicorn settings for the API; the port comes from the same settings module as everything else."""
import multiprocessing
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
from django.conf import settings  # noqa: E402  (reading settings validates them: a bad one stops start-up here)

# Behind nginx on the same host; compose overrides this with --bind 0.0.0.0:8000.
bind = f"127.0.0.1:{settings.API_PORT}"
# WEB_CONCURRENCY is gunicorn's own variable; sync workers suit short requests behind nginx's buffering. Unset,
# gunicorn's usual 2 x cores + 1, but at most MAX_DEFAULT_WORKERS: each worker holds a PostgreSQL connection, and
# on a large host (or in a container, which sees every core of its host) 2 x cores + 1 alone would take more
# than PostgreSQL's default max_connections (100). docs/operations.md has the connection arithmetic.
MAX_DEFAULT_WORKERS = 8
workers = int(os.environ.get("WEB_CONCURRENCY") or min(multiprocessing.cpu_count() * 2 + 1, MAX_DEFAULT_WORKERS))
worker_class = "sync"
preload_app = True
timeout = 30
graceful_timeout = 20
keepalive = 30  # nginx keeps its upstream connections open
control_socket_disable = True  # else gunicorn writes a socket under ~/.gunicorn, outside the checkout
# The API writes its own JSON access line (core.observability), with the request id.
accesslog = None


def on_starting(server) -> None:
    """Once, in the master, before any worker: refuse a broker whose Redis would lose jobs (one line naming
    CELERY_BROKER_URL). preload_app has already set Django up."""
    from config.celery import app, broker_redis_check_at_start

    broker_redis_check_at_start(app)
