"""App config for one-time codes and their delivery."""
from django.apps import AppConfig


class OtpConfig(AppConfig):
    name = "otp"
    default_auto_field = "django.db.models.BigAutoField"
