"""Admin for accounts and their sign-ins."""
from django.contrib import admin

from users.models import TokenFamily, User
from users.services import token_families_revoke


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "mobile", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff")
    search_fields = ("email", "mobile")
    readonly_fields = ("date_joined", "last_login")
    exclude = ("password",)


@admin.register(TokenFamily)
class TokenFamilyAdmin(admin.ModelAdmin):
    """Sign-ins: one row per chain of refresh tokens. Revoking one signs that device out (its refresh and access
    tokens stop working); deactivating or deleting the account signs out all of them."""

    list_display = ("id", "user", "created_at", "expires_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("user__email", "user__mobile")
    readonly_fields = ("id", "user", "current_jti", "created_at", "expires_at", "revoked_at")
    actions = ("revoke",)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected sign-ins")
    def revoke(self, request, queryset) -> None:
        count = token_families_revoke(family_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} sign-in(s) revoked.")
