"""Deliveries record the provider that delivers them; rows written before this are filled in from their
channel and the providers the settings choose now (what delivered them, unless the settings changed since)."""
from django.conf import settings
from django.db import migrations, models


def provider_backfill(apps, schema_editor):
    Delivery = apps.get_model("otp", "Delivery")
    Delivery.objects.filter(channel="email", provider="").update(provider=settings.EMAIL_PROVIDER)
    Delivery.objects.filter(channel="sms", provider="").update(provider=settings.SMS_BACKEND)


class Migration(migrations.Migration):

    dependencies = [
        ("otp", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="provider",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
        migrations.RunPython(provider_backfill, migrations.RunPython.noop),
    ]
