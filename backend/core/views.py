"""Liveness and readiness probes, and JSON answers for errors Django raises before a DRF view runs."""
import logging

from celery import current_app as celery_app
from django.conf import settings
from django.contrib.staticfiles import views as staticfiles_views
from django.core.exceptions import SuspiciousOperation
from django.db import connection
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve, reverse
from django.views import csrf
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core.broker import broker_redis_check
from core.exception_handler import OUTAGE_RETRY_AFTER_SECONDS, error_body
from core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from core.metrics import metrics_render
from core.ratelimit import READINESS_KEY, store_ping

logger = logging.getLogger(__name__)


def _database_check() -> None:
    if connection.vendor == "postgresql":
        connection.writable_check()  # a standby answers SELECT 1 too, and the service cannot write to it
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache_check() -> None:
    store_ping()  # the Redis that holds the throttles (and the cache)


_broker_redis_checked = False


def _broker_check() -> None:
    global _broker_redis_checked
    if celery_app.conf.task_always_eager:
        return  # jobs run in-process: there is no broker to reach
    # A connection of Celery's pool, as a publish takes: a new one for each probe cost a TCP connection to the
    # broker's Redis each time, and /readyz is public (found by an attack pass: 21 connections for 20 probes).
    with celery_app.pool.acquire(block=True, timeout=2) as conn:
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            if conn.transport.driver_type == "redis":
                # A replica left behind a failover answers a connection as a primary does.
                conn.default_channel.client.set(READINESS_KEY, 1, ex=60)
        except Exception:
            conn.collect()  # not lent again as it is: the next probe connects anew, to where the address points now
            raise
    if not _broker_redis_checked:
        # An API started while Redis was down could not check its eviction policy then (on_starting in
        # config/gunicorn.conf.py): an unfit broker is not ready (core.broker.BrokerUnfit).
        broker_redis_check(celery_app, cache_url=settings.REDIS_URL)
        _broker_redis_checked = True


READINESS_CHECKS = (("database", _database_check), ("cache", _cache_check), ("broker", _broker_check))


class HealthzApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(responses=inline_serializer("Health", {"status": serializers.CharField()}))
    def get(self, request):
        return Response({"status": "ok"})


class ReadyzApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: inline_serializer("Ready", {"status": serializers.CharField()}),
                              503: inline_serializer("NotReady", {"detail": serializers.CharField(),
                                                                   "code": serializers.CharField(),
                                                                   "failed": serializers.CharField()})})
    def get(self, request):
        for name, check in READINESS_CHECKS:
            try:
                check()
            except Exception as exc:  # any failure means not ready; the log says which and why
                logger.warning("readiness check %s failed: %s", name, exc)
                return Response({**error_body(f"{name} is not answering.", "not_ready"), "failed": name}, status=503,
                                headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)})
        return Response({"status": "ok"})


class _ErrorsInJson:
    """For views whose answers are not JSON: their errors are JSON all the same (contract: every error response).

    drf-spectacular renders every answer with its view's own renderers, so an error of the schema (an unknown
    `?format=`: 404; an `Accept` it cannot serve: 406) came back as YAML, and one of the docs page as text/html.
    """

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:
            response.accepted_renderer, response.accepted_media_type = JSONRenderer(), "application/json"
        return response


class SchemaApi(_ErrorsInJson, SpectacularAPIView):
    """/api/schema/: the OpenAPI schema, YAML by default and JSON with `?format=json`; its errors are JSON."""

    authentication_classes = []
    permission_classes = []


class DocsPage(_ErrorsInJson, SpectacularSwaggerView):
    """/api/docs/: Swagger UI on /api/schema/, for GET and HEAD; any other method gets the API's JSON 405.

    OPTIONS was a 500: DRF's metadata answer went to the page's HTML renderer, which has no template for it.
    """

    http_method_names = ["get", "head"]
    url_name = "schema"
    authentication_classes = []
    permission_classes = []


@csrf_exempt  # an unknown path has nothing to protect: its answer is a 404 whatever the method, not a CSRF page
def not_found(request, exception=None):
    detail = "Not found."
    if not request.path_info.endswith("/") and _route_of(request.path_info + "/") not in (None, not_found, static_file):
        # The contract's paths end with a slash, and a POST redirected to add it would lose its body.
        detail = f"Not found. Did you mean {request.path}/ (with the slash)?"
    elif (request.path_info.endswith("/") and request.path_info != "/"
          and _route_of(request.path_info[:-1]) not in (None, not_found, static_file)):
        # The probes' and metrics' paths have none (`/healthz`, as Kubernetes' examples write them): `/healthz/`
        # was a bare 404 (a newcomer pass).
        detail = f"Not found. Did you mean {request.path[:-1]} (without the slash)?"
    return JsonResponse(error_body(detail, "not_found"), status=404)


@csrf_exempt  # like not_found: a POST to a missing file is its JSON 404, not a CSRF page
def static_file(request, path: str):
    """With DEBUG on only (the quick run, whose runserver has `--nostatic`): the static file at `path` (the part
    after STATIC_URL) as the staticfiles finders find it, or the JSON 404 of any other unknown path. Runserver's
    own static handler answered a missing file with Django's HTML debug page, and a path leaving the static
    folders (`..`, SuspiciousFileOperation) with its HTML 400 page. A path ending in `/` names no file (the finders
    would strip the slash and serve one)."""
    if path.endswith("/"):
        return not_found(request)
    try:
        return staticfiles_views.serve(request, path, insecure=True)
    except (Http404, SuspiciousOperation):
        return not_found(request)


def _route_of(path: str):
    try:
        return resolve(path).func
    except Resolver404:
        return None


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a JSON 403, except under the admin, a site for people, which keeps Django's page."""
    if request.path_info.startswith(reverse("admin:index")):
        return csrf.csrf_failure(request, reason=reason)
    return JsonResponse(error_body(f"CSRF verification failed. {reason}".strip(), "csrf_failed"), status=403)


def server_error(request):
    return JsonResponse(error_body("Internal server error.", "server_error"), status=500)


def bad_request(request, exception=None):
    return JsonResponse(error_body("Bad request.", "bad_request"), status=400)


def permission_denied(request, exception=None):
    return JsonResponse(error_body("Permission denied.", "permission_denied"), status=403)


@csrf_exempt  # read-only: any other method gets a JSON 405, not a CSRF page
def metrics(request):
    """Prometheus scrape endpoint. nginx does not proxy it: scrape the API's port from the monitoring network."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body(f'Method "{request.method}" not allowed.', "method_not_allowed"), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    depths = {}
    if not celery_app.conf.task_always_eager:
        try:
            with celery_app.connection_for_read() as conn:
                client = conn.default_channel.client
                depths = {queue: client.llen(queue) for queue in settings.OTP_QUEUE_NAMES}
        except Exception as exc:  # an unreachable broker must not hide the other figures
            logger.warning("queue depth unavailable: %s", exc)
    return HttpResponse(metrics_render(queue_depths=depths), content_type=METRICS_CONTENT_TYPE)


def admin_lockout(request, original_response=None, credentials=None):
    """django-axes' answer to an admin sign-in from a client address it has locked out: 429 with the real wait
    in Retry-After (every try during the lockout starts the cool-off again). The admin's pages are HTML, so
    this one is plain text rather than the API's JSON."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    response = HttpResponse(f"Too many failed sign-ins from your address. Try again in {seconds // 60} minutes.\n",
                            status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(seconds)
    return response
