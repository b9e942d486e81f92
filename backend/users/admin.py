"""Admin for accounts and their sign-ins: addresses are checked and stored by the API's rules (otp.addresses)."""
from django import forms
from django.contrib import admin

from otp.addresses import email_normalize, mobile_normalize
from users.models import DeviceToken, TokenFamily, User
from users.services import device_tokens_revoke, token_families_revoke, users_delete


class UserAdminForm(forms.ModelForm):
    # Plain text fields: the rules are otp.addresses', not those of Django's EmailField.
    email = forms.CharField(required=False, empty_value=None, max_length=320)
    mobile = forms.CharField(required=False, empty_value=None, max_length=64)

    class Meta:
        model = User
        exclude = ("password",)

    def clean_email(self):
        value = self.cleaned_data["email"]
        return email_normalize(value).value if value else None

    def clean_mobile(self):
        value = self.cleaned_data["mobile"]
        return mobile_normalize(value).value if value else None


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    form = UserAdminForm
    list_display = ("id", "email", "mobile", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff")
    search_fields = ("email", "mobile")
    readonly_fields = ("date_joined", "last_login")
    exclude = ("password",)

    def delete_model(self, request, obj) -> None:
        users_delete(ids=[obj.pk])

    def delete_queryset(self, request, queryset) -> None:
        users_delete(ids=list(queryset.values_list("pk", flat=True)))


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


@admin.register(DeviceToken)
class DeviceTokenAdmin(admin.ModelAdmin):
    """Device tokens: one per device that signed in with an address (only a keyed hash is stored). Revoking one
    puts that device back among the clients without a token, which a flood against the address can lock out;
    a deactivated account's tokens count for nothing already."""

    list_display = ("id", "user", "address", "created_at", "expires_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("address", "user__email", "user__mobile")
    readonly_fields = ("user", "address", "token_hash", "created_at", "expires_at", "revoked_at")
    actions = ("revoke",)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected device tokens")
    def revoke(self, request, queryset) -> None:
        count = device_tokens_revoke(ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} device token(s) revoked.")
