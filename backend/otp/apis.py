"""HTTP endpoints: parse input, call one service, shape output."""
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsers import FormParser
from core.throttling import IpSendThrottle, IpVerifyThrottle
from otp.addresses import email_normalize, mobile_normalize
from otp.codes import code_length, code_normalize
from otp.models import Purpose
from otp.selectors import device_token_find
from otp.services import code_request, code_verify, delivery_status_callback_record
from users.services import token_refresh, token_revoke


class StrictCharField(serializers.CharField):
    """A CharField that rejects numbers and other non-strings instead of quietly turning 5 into "5"."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class AddressField(StrictCharField):
    def __init__(self, *, normalize, **kwargs):
        self.normalize = normalize
        super().__init__(required=False, trim_whitespace=True, max_length=254, **kwargs)

    def run_validation(self, data=serializers.empty):
        value = super().run_validation(data)  # type and length checks first, then normalise
        try:
            return self.normalize(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc


@extend_schema_field(OpenApiTypes.STR)
class DeviceTokenField(serializers.Field):
    """An optional device token, passed on as sent: never a field error. A value that is not a live token for
    the address (forged, expired, revoked, another account's, not even a string) is ignored by the service, and
    the request is answered exactly as one without it (contract: device tokens), so no answer tells a valid
    token from any other."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True, **kwargs)

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


DEVICE_TOKEN_HELP = ("The `device_token` a successful /verify-otp/ for this address returned: its requests are "
                     "judged apart from a flood without one. Optional; any other value is ignored.")


class AddressInputSerializer(serializers.Serializer):
    email = AddressField(normalize=email_normalize, help_text="An email address; trimmed and lower-cased.")
    mobile = AddressField(normalize=mobile_normalize,
                          help_text="A mobile number in E.164 (+14155552671), or national in OTP_DEFAULT_REGION.")
    device_token = DeviceTokenField(help_text=DEVICE_TOKEN_HELP)

    def validate(self, attrs):
        given = [attrs[name] for name in ("email", "mobile") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError("Give exactly one of email or mobile.", code="one_address")
        attrs["address"] = given[0]
        return attrs


class CodeSentOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()
    channel = serializers.ChoiceField(choices=["email", "sms"])
    expires_in = serializers.IntegerField()


ERROR_SHAPE = inline_serializer("Error", {"detail": serializers.CharField(), "code": serializers.CharField()})
BAD_REQUEST = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description='Field errors as `{"field": ["message"]}`, or `{"detail", "code"}` for a body that is not JSON '
                '(`parse_error`) and, on /verify-otp/, for any code that does not open the account (`invalid_code`).',
    examples=[OpenApiExample("Field error", value={"email": [
                  "The part after the @-sign is not valid. It should have a period."]}),
              OpenApiExample("Not JSON", value={"detail": "JSON parse error - Expecting value", "code": "parse_error"}),
              OpenApiExample("Wrong, expired or used code", value={"detail": "Invalid or expired code.",
                                                                   "code": "invalid_code"})],
)
THROTTLED = OpenApiResponse(response=ERROR_SHAPE, description="Throttled; `Retry-After` says when to try again.")
SEND_THROTTLED = OpenApiResponse(response=ERROR_SHAPE, description=(
    "Throttled (`throttled`), or a send budget of the channel is spent (`sms_budget`, `email_budget`); "
    "`Retry-After` says when to try again."))
UNAVAILABLE = OpenApiResponse(response=ERROR_SHAPE, description="The database, cache or broker is unavailable.")
CODE_SENT_DETAIL = "If the address can receive it, a code is on its way."


class _CodeRequestApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [IpSendThrottle]
    purpose: Purpose

    def post(self, request):
        serializer = AddressInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        address = serializer.validated_data["address"]
        device = device_token_find(token=serializer.validated_data.get("device_token"), address=address) is not None
        code_request(address=address, purpose=self.purpose, device=device)
        # The shape CodeSentOutputSerializer documents, built as a plain dict: its three values are ours, so running
        # them through the serializer on every request only cost CPU (docs/performance.md).
        output = {"detail": CODE_SENT_DETAIL, "channel": address.channel.value, "expires_in": settings.OTP_TTL_SECONDS}
        return Response(output, status=status.HTTP_202_ACCEPTED)


_code_request_schema = dict(
    request=AddressInputSerializer,
    responses={202: CodeSentOutputSerializer, 400: BAD_REQUEST, 429: SEND_THROTTLED, 503: UNAVAILABLE},
    examples=[OpenApiExample("By email", value={"email": "alice@example.com"}, request_only=True),
              OpenApiExample("By mobile", value={"mobile": "+14155552671"}, request_only=True)],
)


class RegisterApi(_CodeRequestApi):
    purpose = Purpose.REGISTER

    @extend_schema(summary="Send a sign-up code", description="A code is sent whether or not an account exists.",
                   **_code_request_schema)
    def post(self, request):
        return super().post(request)


class LoginApi(_CodeRequestApi):
    purpose = Purpose.LOGIN

    @extend_schema(summary="Send a sign-in code",
                   description="A code is sent only if the account exists; the answer is the same either way.",
                   **_code_request_schema)
    def post(self, request):
        return super().post(request)


class VerifyInputSerializer(AddressInputSerializer):
    code = StrictCharField(help_text="The digits from the email or SMS, in any script, spaces or dashes between "
                                     "them allowed (123 456, 123-456, ١٢٣٤٥٦).")

    def validate_code(self, value: str) -> str:
        code = code_normalize(value)
        if code is None:
            raise serializers.ValidationError(f"Enter the {code_length()}-digit code.")
        return code


class TokenPairOutputSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField()
    device_token = serializers.CharField(help_text="Send it back with /register/, /login/ and /verify-otp/ for "
                                                   "this address (and with /logout/ to revoke it); valid "
                                                   "OTP_DEVICE_TOKEN_TTL_DAYS, replaced at each sign-in.")


class VerifyOtpApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [IpVerifyThrottle]

    @extend_schema(summary="Trade a code for tokens", request=VerifyInputSerializer,
                   responses={200: TokenPairOutputSerializer, 400: BAD_REQUEST, 429: THROTTLED, 503: UNAVAILABLE},
                   examples=[OpenApiExample("By email", value={"email": "alice@example.com", "code": "123456"},
                                            request_only=True)])
    def post(self, request):
        serializer = VerifyInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        address = serializer.validated_data["address"]
        sign_in = code_verify(address=address, code=serializer.validated_data["code"],
                              device_token=device_token_find(token=serializer.validated_data.get("device_token"),
                                                             address=address))
        output = {"access": sign_in.access, "refresh": sign_in.refresh, "token_type": "Bearer",
                  "expires_in": sign_in.expires_in, "device_token": sign_in.device_token}
        return Response(TokenPairOutputSerializer(output).data)


class ProfileOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField(allow_null=True)
    mobile = serializers.CharField(allow_null=True)
    date_joined = serializers.DateTimeField()
    last_login = serializers.DateTimeField(allow_null=True)


class ProfileApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="The signed-in account", responses={200: ProfileOutputSerializer, 401: ERROR_SHAPE})
    def get(self, request):
        return Response(ProfileOutputSerializer(request.user).data)


class RefreshInputSerializer(serializers.Serializer):
    refresh = StrictCharField()


class LogoutInputSerializer(RefreshInputSerializer):
    device_token = DeviceTokenField(help_text="The device token to revoke with the sign-in, if it is one of the "
                                              "same account's; any other value is ignored.")


class TokenRefreshOutputSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class TokenRefreshApi(APIView):
    """Rotation: the old refresh token stops working; of concurrent refreshes with one token exactly one wins."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [IpVerifyThrottle]

    @extend_schema(summary="New access and refresh tokens", request=RefreshInputSerializer, responses={
        200: TokenRefreshOutputSerializer, 400: BAD_REQUEST, 401: ERROR_SHAPE, 429: THROTTLED, 503: UNAVAILABLE},
        description="Send one refresh at a time: a refresh token already rotated, presented again (also by a "
                    "concurrent request), revokes every token of that sign-in (RFC 9700 reuse detection).")
    def post(self, request):
        serializer = RefreshInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = token_refresh(refresh=serializer.validated_data["refresh"])
        return Response(TokenRefreshOutputSerializer({"access": tokens.access, "refresh": tokens.refresh}).data)


def _bearer_token(request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, the scheme in any case (RFC 9110 section 11.1: with
    `bearer`, logout skipped its check of another account's access token); None without one, or another scheme."""
    parts = request.headers.get("Authorization", "").split()
    if not parts or parts[0].lower() != "bearer":
        return None
    return parts[1] if len(parts) == 2 else ""


class LogoutApi(APIView):
    # The refresh token is the credential: an expired access token sent along must not turn logout into a 401,
    # so DRF's authentication stays out and the service judges the header.
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(summary="Revoke a refresh token and every token rotated from it, and a device token",
                   request=LogoutInputSerializer,
                   description="No access token is needed. An `Authorization` header with an expired access token "
                               "is ignored; a forged one, or another account's, gets 401.",
                   responses={205: OpenApiResponse(description="No body; also for a token already revoked"),
                              400: BAD_REQUEST, 401: ERROR_SHAPE, 503: UNAVAILABLE})
    def post(self, request):
        serializer = LogoutInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token_revoke(refresh=serializer.validated_data["refresh"], access=_bearer_token(request),
                     device_token=serializer.validated_data.get("device_token"))
        return Response(status=status.HTTP_205_RESET_CONTENT)


class ProviderStatusApi(APIView):
    """A provider's signed delivery-status callback; `provider_name` (set in otp.urls) is its registry name."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [FormParser]
    provider_name = ""

    @extend_schema(summary="Delivery status callback from the SMS provider",
                   description="The form the provider posts, signed by it over this URL as the public sees it.",
                   request={"application/x-www-form-urlencoded": OpenApiTypes.OBJECT},
                   responses={204: OpenApiResponse(description="No body"), 400: ERROR_SHAPE, 403: ERROR_SHAPE,
                              415: ERROR_SHAPE})
    def post(self, request):
        params = request.data.dict() if hasattr(request.data, "dict") else {}
        # The provider signs the URL it called, query included (it names the delivery): the public one.
        delivery_status_callback_record(provider_name=self.provider_name, url=f"{settings.PUBLIC_BASE_URL}{request.get_full_path()}",
                                        params=params, headers=request.headers)
        return Response(status=status.HTTP_204_NO_CONTENT)
