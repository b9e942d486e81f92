"""WSGI entry point for gunicorn."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import every view now: with gunicorn's preload_app this happens once in the master, not on each worker's
# first request.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns
