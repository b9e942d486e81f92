"""The small front end at /home/: one static page that talks to the JSON API."""
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from core.exception_handler import error_body
from otp.codes import code_input_attributes


@require_GET
@cache_control(public=True, max_age=300)
def home(request):
    # The page holds nothing per user (tokens live in the browser's memory), so any cache may keep it.
    return render(request, "otp/home.html", {"code_input": code_input_attributes()})


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
