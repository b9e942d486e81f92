"""Admin for codes (hash and timestamps only) and delivery records."""
from django.contrib import admin

from otp.models import Delivery, OneTimeCode


@admin.register(OneTimeCode)
class OneTimeCodeAdmin(admin.ModelAdmin):
    list_display = ("id", "address", "channel", "purpose", "status", "attempts", "created_at", "expires_at")
    list_filter = ("status", "channel", "purpose")
    search_fields = ("address",)
    readonly_fields = [field.name for field in OneTimeCode._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "address", "channel", "status", "provider_status", "attempts", "created_at", "sent_at")
    list_filter = ("status", "channel")
    search_fields = ("address", "provider_id")
    readonly_fields = [field.name for field in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False
