"""URL map of the whole service."""
import re

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from core import views as core_views
from otp import pages as otp_pages

urlpatterns = [
    path("", include("otp.urls")),
    path("healthz", core_views.HealthzApi.as_view(), name="healthz"),
    path("readyz", core_views.ReadyzApi.as_view(), name="readyz"),
    path("metrics", core_views.metrics, name="metrics"),
    path("home/", otp_pages.home, name="home"),
    path("", otp_pages.root, name="root"),
    path("api/schema/", core_views.SchemaApi.as_view(), name="schema"),
    path("api/docs/", core_views.DocsPage.as_view(), name="docs"),
    path("admin/", admin.site.urls),
    # Last: any other path is a JSON 404, even with DEBUG on (Django's debug 404 page is HTML).
    re_path(r"", core_views.not_found),
]
if settings.DEBUG:  # the quick run; elsewhere nginx serves the collected files
    urlpatterns.insert(-1, re_path(rf"^{re.escape(settings.STATIC_URL.lstrip('/'))}(?P<path>.*)$", core_views.static_file))

handler400 = "core.views.bad_request"
handler403 = "core.views.permission_denied"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
