"""Admin for accounts: addresses are checked and stored by the API's rules (otp.addresses)."""
from django import forms
from django.contrib import admin

from otp.addresses import email_normalize, mobile_normalize
from users.models import User


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
