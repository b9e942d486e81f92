"""The one DRF exception handler: every error leaves the API as the contract's JSON shape."""
import logging

import kombu.exceptions
import redis.exceptions
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import DependencyUnavailable, RateLimited, ServiceError

logger = logging.getLogger(__name__)

# Which dependency an infrastructure exception means, for a 503 that names it.
_UNAVAILABLE = (
    ((OperationalError, InterfaceError), "database"),
    ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError), "cache"),
    ((kombu.exceptions.OperationalError,), "broker"),
)


def error_body(detail: str, code: str) -> dict:
    return {"detail": detail, "code": code}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    for types, dependency in _UNAVAILABLE:
        if isinstance(exc, types):
            exc = DependencyUnavailable(dependency)
    if isinstance(exc, ServiceError):
        response = Response(error_body(exc.detail, exc.default_code), status=exc.status_code)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.wait_seconds)
        if isinstance(exc, DependencyUnavailable):
            logger.warning("%s unavailable", exc.dependency)
            response["Retry-After"] = "5"
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("Request body is too large.", "request_too_large"), status=413)

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
