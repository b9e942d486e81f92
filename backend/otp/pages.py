"""The small front end at /home/: one page that talks to the JSON API, its script and style in static files."""
import hashlib
from functools import cache

from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from core.exception_handler import error_body
from otp.codes import code_input_attributes, code_length

# The page loads only its own files and talks only to its own origin: no inline script or style, no other host,
# not framed, no <base> (OWASP Content Security Policy Cheat Sheet, "strict" policy for a page without inline code).
HOME_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HOME_ASSETS = ("otp/home.js", "otp/home.css", "otp/icon.svg")


@cache
def home_asset_version() -> str:
    """A short hash of the page's static files, put in their URLs (`?v=`), so a page cached for five minutes
    never runs with a script or style of another release."""
    digest = hashlib.sha256()
    for name in HOME_ASSETS:
        with open(finders.find(name), "rb") as asset:
            digest.update(asset.read())
    return digest.hexdigest()[:12]


@require_safe  # GET and HEAD: HEAD got a 405 (a new-user pass; RFC 9110 section 9.3.2)
@cache_control(public=True, max_age=300)
def home(request):
    # The page holds nothing per user (tokens live in the browser), so any cache may keep it.
    context = {"code_input": code_input_attributes(), "code_length": code_length(),
               "service_name": settings.SERVICE_NAME, "asset_version": home_asset_version()}
    response = render(request, "otp/home.html", context)
    response["Content-Security-Policy"] = HOME_CSP
    return response


@csrf_exempt  # it changes nothing, so a POST needs no CSRF check to be told 405
def root(request):
    """`/`: a person who opens the bare address lands on the front end (302 to /home/).

    Only GET and HEAD are redirected. Any other method gets the JSON 405 the API's endpoints give (with `Allow`):
    the contract wants every error outside /home/, /admin/ and /api/docs/ in JSON, and a redirected POST would
    lose its body.
    """
    if request.method in ("GET", "HEAD"):
        return HttpResponseRedirect(reverse("home"))
    response = JsonResponse(error_body(f'Method "{request.method}" not allowed.', "method_not_allowed"), status=405)
    response["Allow"] = "GET, HEAD"
    return response
