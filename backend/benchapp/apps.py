"""App config for the benchmark-only ceiling view."""
from django.apps import AppConfig


class BenchappConfig(AppConfig):
    name = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"
