"""App config of the peer's user model."""
from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "bench.peer.accounts"
    label = "peeraccounts"
    default_auto_field = "django.db.models.BigAutoField"
