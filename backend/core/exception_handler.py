"""The one DRF exception handler: every error leaves the API as the contract's JSON shape."""
import logging

import kombu.exceptions
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import CACHE_OUTAGES, DATABASE_OUTAGES, DependencyUnavailable, RateLimited, ServiceError

logger = logging.getLogger(__name__)

# Which dependency an infrastructure exception means, for a 503 that names it.
_UNAVAILABLE = (
    (DATABASE_OUTAGES, "database"),
    (CACHE_OUTAGES, "cache"),
    ((kombu.exceptions.OperationalError,), "broker"),
)


def error_body(detail: str, code: str) -> dict:
    return {"detail": detail, "code": code}


def outage_as_error(exc: Exception) -> Exception:
    """`exc` as the service answers it: a database, cache or broker outage as DependencyUnavailable naming the
    dependency (503), anything else as it is."""
    for types, dependency in _UNAVAILABLE:
        if isinstance(exc, types):
            return DependencyUnavailable(dependency)
    return exc


# When a client may try again after a 503 of an outage (the API's, /readyz's), in seconds.
OUTAGE_RETRY_AFTER_SECONDS = 5


def unavailable_headers(exc: DependencyUnavailable) -> dict[str, str]:
    """Log the outage `exc` and return the headers of its 503: when to try again, in seconds."""
    logger.warning("%s unavailable", exc.dependency)
    return {"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: `exc` raised in a view as the contract's JSON answer (`context` is DRF's: the view
    and the request). Every 401 names the bearer scheme in WWW-Authenticate (RFC 9110 section 15.5.2): DRF adds it
    only to its own authentication's 401s, and /token/refresh/ and /logout/ judge their tokens themselves."""
    response = _error_response(exc, context)
    if (response is not None and response.status_code == status.HTTP_401_UNAUTHORIZED
            and not response.has_header("WWW-Authenticate") and api_settings.DEFAULT_AUTHENTICATION_CLASSES):
        challenge = api_settings.DEFAULT_AUTHENTICATION_CLASSES[0]().authenticate_header(context.get("request"))
        if challenge:
            response["WWW-Authenticate"] = challenge
    return response


def _error_response(exc: Exception, context: dict) -> Response | None:
    exc = outage_as_error(exc)
    if isinstance(exc, ServiceError):
        response = Response(error_body(exc.detail, exc.default_code), status=exc.status_code)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.wait_seconds)
        if isinstance(exc, DependencyUnavailable):
            for name, value in unavailable_headers(exc).items():
                response[name] = value
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("Request body is too large.", "request_too_large"), status=413)
    if isinstance(exc, SuspiciousOperation):
        # Django's name for a request that breaks one of its limits (DATA_UPLOAD_MAX_NUMBER_FIELDS, a bad Host):
        # the client's doing, as its own middleware answers it outside DRF (400).
        return Response(error_body(f"Bad request: {exc}", "bad_request"), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DataError):
        # A value PostgreSQL refuses (too long, a NUL byte, out of range) got past the input checks: the request's
        # doing, so a 400, never a 500. Logged as an error all the same: the check it slipped past needs fixing.
        logger.error("a request value was refused by the database: %s", exc)
        return Response(error_body("A value in the request cannot be stored.", "invalid_input"),
                        status=status.HTTP_400_BAD_REQUEST)

    # DRF turns Django's two into its own inside its handler, too late for the `code` added below.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        if isinstance(exc, DatabaseError):
            logger.exception("database error")
        else:
            logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
        return Response(error_body("Internal server error.", "server_error"), status=status.HTTP_500_INTERNAL_SERVER_ERROR)

    # Field errors keep DRF's {"field": [...]} shape; request-level errors get a machine-readable code.
    if isinstance(exc, APIException) and not isinstance(exc, ValidationError):
        data = response.data if isinstance(response.data, dict) else {}
        if "detail" in data and "code" not in data:
            codes = exc.get_codes()
            data["code"] = codes if isinstance(codes, str) else exc.default_code
            response.data = data
    return response
