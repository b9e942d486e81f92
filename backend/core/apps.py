"""App config for cross-cutting pieces: errors, throttles, health checks."""
from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
