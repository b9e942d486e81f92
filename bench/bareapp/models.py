"""The benchmark's ceiling: a table that one bare view inserts into. Installed only by bench/settings.py."""
from django.db import models


class BareRow(models.Model):
    note = models.CharField(max_length=254)
    created_at = models.DateTimeField(auto_now_add=True)
