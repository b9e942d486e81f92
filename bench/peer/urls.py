"""The peer's URL map: drfpasswordless's own (`/auth/email/` sends a code by email, `/auth/token/` trades it)."""
from django.urls import include, path

urlpatterns = [path("", include("drfpasswordless.urls"))]
