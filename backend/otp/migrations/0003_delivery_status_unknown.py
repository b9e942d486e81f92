"""A delivery may end `unknown`: the provider may have taken the message and the worker could not learn whether.
Choices only: no column changes, no rows rewritten."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("otp", "0002_delivery_provider"),
    ]

    operations = [
        migrations.AlterField(
            model_name="delivery",
            name="status",
            field=models.CharField(
                choices=[("queued", "Queued"), ("sending", "Sending"), ("sent", "Sent"), ("failed", "Failed"),
                         ("unknown", "Unknown")],
                default="queued", max_length=16,
            ),
        ),
    ]
