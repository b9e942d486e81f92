"""The bench's URL map: the service's own, plus the bare view at /bench/bare/ ahead of the service's 404."""
from django.urls import include, path

from bench.bareapp.views import BareInsertApi
from config.urls import handler400, handler403, handler404, handler500  # noqa: F401  (read from ROOT_URLCONF)

urlpatterns = [
    path("bench/bare/", BareInsertApi.as_view()),
    path("", include("config.urls")),
]
