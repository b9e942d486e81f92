"""One-time codes (hashed) and the record of each delivery."""
from django.db import models
from django.db.models import Q
from django.utils import timezone

from otp.addresses import Channel


class Purpose(models.TextChoices):
    REGISTER = "register", "Register"
    LOGIN = "login", "Login"


class OneTimeCode(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        USED = "used", "Used"
        SUPERSEDED = "superseded", "Superseded"
        BURNED = "burned", "Burned"
        # Its delivery ended without a provider taking it (no account for a login, a budget spent, a refusal, the
        # broker down): the code that it superseded, if still live, is active again (otp.services.code_withdraw).
        UNSENT = "unsent", "Unsent"

    address = models.CharField(max_length=254)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    # The client class that asked for it: True for a request carrying a live device token for the address
    # (users.models.DeviceToken). A new code supersedes only its own class's, and verify compares only its own
    # class's, so requests without a token can neither supersede nor burn a device-token client's code.
    device = models.BooleanField(default=False)
    code_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    # The id of the active code of its class this one superseded when it was issued (written by the issue
    # statement), so that, if this one is never sent, exactly that one is the user's again. No foreign key: the
    # purge deletes rows in any order, and a link to a deleted row just leads nowhere.
    supersedes_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            # Verify and supersede read only the active codes of one address: old rows never slow them.
            models.Index(fields=["address", "-created_at"], condition=Q(status="active"), name="otp_code_active_addr"),
            models.Index(fields=["expires_at"], name="otp_code_expires_at"),
            models.Index(fields=["id"], condition=~Q(status="active"), name="otp_code_inactive"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} code for {self.address} ({self.status})"


class Delivery(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        # The provider may have taken the message, and the worker could not learn whether (a read timeout, a
        # connection dropped after the request, no final SMTP reply in time). Final: never sent again.
        UNKNOWN = "unknown", "Unknown"

    address = models.CharField(max_length=254)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    # A login code is sent only if the account exists when the worker sends it.
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    # The registry name of the provider that delivers it (otp.providers.registry).
    provider = models.CharField(max_length=32, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    provider_id = models.CharField(max_length=255, blank=True, default="")
    provider_status = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The code's expiry, copied so a delivery outlives the purge of its code.
    expires_at = models.DateTimeField()
    # While a worker holds the send; a redelivered job may take over once it lapses.
    lease_until = models.DateTimeField(null=True, blank=True)
    # A run took it over from a holder whose lease had lapsed: that holder may have handed the message to its
    # provider before it died, so the code is never withdrawn as unsent (otp.services.code_withdraw).
    taken_over = models.BooleanField(default=False, db_default=False)  # the database's too: old releases' inserts

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status__in=["queued", "sending"]), name="otp_delivery_pending"),
            models.Index(fields=["provider_id"], condition=~Q(provider_id=""), name="otp_delivery_provider_id"),
            models.Index(fields=["address", "-created_at"], name="otp_delivery_addr"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} delivery to {self.address} ({self.status})"
