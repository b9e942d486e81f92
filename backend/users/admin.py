"""Admin for accounts."""
from django.contrib import admin

from users.models import User


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "mobile", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff")
    search_fields = ("email", "mobile")
    readonly_fields = ("date_joined", "last_login")
    exclude = ("password",)
