"""App config for the bench's ceiling view; installed only by bench/settings.py."""
from django.apps import AppConfig


class BareappConfig(AppConfig):
    name = "bench.bareapp"
    label = "bareapp"
    default_auto_field = "django.db.models.BigAutoField"
