"""The small front end at /home/: one static page that talks to the JSON API."""
from django.shortcuts import render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from otp.codes import code_input_attributes


@require_GET
@cache_control(public=True, max_age=300)
def home(request):
    # The page holds nothing per user (tokens live in the browser's memory), so any cache may keep it.
    return render(request, "otp/home.html", {"code_input": code_input_attributes()})
