"""The API's parsers: DRF's, held to the body limit, and with pathologically nested JSON answered 400 instead of
crashing."""
import io
import sys

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError


def _body_read(stream) -> io.BytesIO:
    """The body, at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes of it; raises RequestDataTooBig (413) past that.

    Django holds only `request.body` and its own form parsing to that limit; DRF reads the request's stream, so
    without this a body of any size sent to gunicorn directly (nginx stops it at 64 KiB) was read whole.
    """
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    data = b"" if stream is None else stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
    return io.BytesIO(data)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        body = _body_read(stream)
        try:
            return super().parse(body, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply.") from exc
        except ParseError as exc:
            # CPython refuses to read an integer of more than sys.get_int_max_str_digits() digits (4300) with a
            # ValueError whose text DRF passed on: "... use sys.set_int_max_str_digits() to increase the limit",
            # advice to the server's programmer, in a client's answer (an attack pass).
            if "integer string conversion" in str(exc.__context__):
                raise ParseError(f"JSON parse error - a number has more than {sys.get_int_max_str_digits()} "
                                 "digits.") from exc
            raise


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        return super().parse(_body_read(stream), media_type, parser_context)
