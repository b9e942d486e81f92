"""The Celery app shared by the API (to enqueue) and the workers and beat (to run)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("otp_service")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
