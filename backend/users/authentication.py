"""Bearer authentication for the API: simplejwt's, plus the sign-in's revocation, read in the same query."""
from django.db.models import Exists, OuterRef
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication as SimpleJWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.settings import api_settings

from users.models import TokenFamily, User
from users.tokens import FAMILY_CLAIM


class JWTAuthentication(SimpleJWTAuthentication):
    """An access token works while its account exists and is active (simplejwt's rules) and while the sign-in
    it came from (its `fam` claim) is not revoked: logout, or reuse of a rotated refresh token, ends the access
    tokens of that sign-in at once rather than when they expire.

    Raises AuthenticationFailed (401, codes user_not_found, user_inactive, token_not_valid).
    """

    def get_raw_token(self, header: bytes) -> bytes | None:
        """simplejwt's, with the scheme (`Bearer`) matched without regard to case, as RFC 9110 section 11.1 has it:
        `bearer <token>` was taken for no token at all (a 401 at /profile/; found by an attack pass). Returns the
        token, or None for another scheme; raises AuthenticationFailed for a header that is not two words."""
        parts = header.split()
        if parts and parts[0].lower() == b"bearer":
            parts[0] = b"Bearer"
        return super().get_raw_token(b" ".join(parts))

    def get_user(self, validated_token) -> User:
        try:
            user_id = validated_token[api_settings.USER_ID_CLAIM]
        except KeyError as exc:
            raise InvalidToken("Token contained no recognizable user identification") from exc
        family_id = validated_token.get(FAMILY_CLAIM)
        try:
            users = User.objects.filter(**{api_settings.USER_ID_FIELD: user_id})
            if family_id is not None:
                # One query, as before: the revocation check rides on the account's lookup.
                users = users.annotate(signed_out=~Exists(TokenFamily.objects.filter(
                    id=str(family_id), user=OuterRef("pk"), revoked_at__isnull=True)))
            user = users.get()
        except (User.DoesNotExist, ValueError, TypeError) as exc:
            raise AuthenticationFailed("User not found", code="user_not_found") from exc
        if not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        if getattr(user, "signed_out", False):
            raise AuthenticationFailed("Token is invalid or expired.", code="token_not_valid")
        return user


class JWTAuthenticationScheme(SimpleJWTScheme):
    """The OpenAPI security scheme (bearer JWT) for the class above, as drf-spectacular has it for simplejwt's."""

    target_class = "users.authentication.JWTAuthentication"
