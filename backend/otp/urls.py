"""Routes of the OTP login API, at the paths the contract names."""
from django.urls import path

from otp import apis

urlpatterns = [
    path("register/", apis.RegisterApi.as_view(), name="register"),
    path("login/", apis.LoginApi.as_view(), name="login"),
    path("verify-otp/", apis.VerifyOtpApi.as_view(), name="verify-otp"),
    path("profile/", apis.ProfileApi.as_view(), name="profile"),
    path("token/refresh/", apis.TokenRefreshApi.as_view(), name="token-refresh"),
    path("logout/", apis.LogoutApi.as_view(), name="logout"),
    path("webhooks/twilio/status/", apis.ProviderStatusApi.as_view(provider_name="twilio"), name="twilio-status"),
]
