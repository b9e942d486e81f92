"""The peer's user: the model drfpasswordless's own tests use (email and mobile, each unique), plus one index.

drfpasswordless finds the user with `email__iexact`, which PostgreSQL answers with `UPPER(email::text) = UPPER(%s)`:
the unique index on `email` cannot serve that, so without an index on `UPPER(email)` every request would scan the
users table. The service has an index for its own lookup; the peer gets one for its lookup too.
"""
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager
from django.db import models
from django.db.models.functions import Upper


class User(AbstractBaseUser):
    email = models.EmailField(max_length=255, unique=True, blank=True, null=True)
    mobile = models.CharField(max_length=17, unique=True, blank=True, null=True)
    is_active = models.BooleanField(default=True)

    objects = BaseUserManager()

    USERNAME_FIELD = "email"

    class Meta:
        indexes = [models.Index(Upper("email"), name="peer_user_email_upper")]
