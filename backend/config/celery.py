"""The Celery app shared by the API (to enqueue) and the workers and beat (to run)."""
import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# redis:// and rediss:// brokers get kombu's Redis transport keeping one client per channel (core/broker.py).
# Registered under the schemes' own names, so kombu still reads everything else, TLS for rediss:// included,
# off the URL as it would for its own transport.
TRANSPORT_ALIASES.update(redis="core.broker:Transport", rediss="core.broker:Transport")

app = Celery("otp_service")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
