"""The user model: an account is an email address and/or a mobile number, never a password for the API."""
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone


class UserManager(BaseUserManager):
    def create_user(self, *, email: str | None = None, mobile: str | None = None, password: str | None = None, **extra):
        user = self.model(email=email or None, mobile=mobile or None, **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        # Callers pass normalised addresses; uniqueness and "at least one" are the database's constraints.
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str, **extra):
        """`manage.py createsuperuser`: the address as the API stores it; ValidationError when the rules refuse it."""
        from otp.addresses import email_normalize

        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email=email_normalize(email).value, password=password, **extra)

    def get_by_natural_key(self, username):
        # The admin's login: any spelling of the address that the API would take for the same account.
        from django.core.exceptions import ValidationError

        from otp.addresses import email_normalize

        try:
            username = email_normalize(username).value
        except ValidationError:
            pass
        return super().get_by_natural_key(username)


class User(AbstractBaseUser, PermissionsMixin):
    # Stored normalised (see otp.addresses): lower-cased email, E.164 mobile.
    email = models.EmailField(max_length=254, unique=True, null=True, blank=True)
    mobile = models.CharField(max_length=16, unique=True, null=True, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(email__isnull=False) | Q(mobile__isnull=False),
                name="user_has_email_or_mobile",
            ),
        ]

    def __str__(self) -> str:
        return self.email or self.mobile or f"user {self.pk}"

    def clean_fields(self, exclude=None):
        # The address rules are otp.addresses' (the admin's form applies them: users.admin). Django's own
        # EmailValidator would then judge the stored spelling by other rules (it refuses the non-ASCII local
        # parts EMAIL_ALLOW_SMTPUTF8 allows), so the email is left out here.
        super().clean_fields(exclude={*(exclude or ()), "email"})

class TokenFamily(models.Model):
    """One sign-in's chain of refresh tokens (RFC 9700 section 4.14.2, refresh token rotation).

    Every refresh token carries its family's id (claim `fam`, copied through each rotation). Only the newest
    token of a family, `current_jti`, may be refreshed; presenting any older one is reuse, and revokes the whole
    family in one write (`revoked_at`), as does logout. Deleting the account deletes its families.
    """

    # A uuid4 in hex, like the tokens' `jti`; a token issued before families existed has its own jti here.
    id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="token_families")
    current_jti = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    # The newest token's expiry, the latest of the family's: past it, no token of the family works, and beat
    # deletes the row.
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "sign-in (refresh token family)"
        verbose_name_plural = "sign-ins (refresh token families)"

    def __str__(self) -> str:
        return f"sign-in {self.id} of user {self.user_id}"


class DeviceToken(models.Model):
    """A device token (OWASP's "device cookie", Authentication Cheat Sheet: protect against targeted lockout):
    proof that this client signed in to `user` with `address` before.

    A request for that address carrying a live token (unexpired, unrevoked, its account active and still owning
    the address) is judged in the device class: its own send cooldown, hourly cap, failure budget and codes,
    which requests without one cannot spend (otp.throttles). Only the token's keyed hash is stored
    (users.device_tokens), so logout and the admin can revoke it and a copy of the database gives none back.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="device_tokens")
    # The normalised address the token was issued for (otp.addresses): an email or an E.164 number.
    address = models.CharField(max_length=254)
    # HMAC-SHA256 of the token, hex (users.device_tokens.device_token_hash).
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    # created_at + OTP_DEVICE_TOKEN_TTL_DAYS; past it the token is ignored, and beat deletes the row.
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"device token {self.pk} of user {self.user_id} for {self.address}"
