"""Settings for `make bench` only (bench/run.py sets DJANGO_SETTINGS_MODULE=bench.settings and puts the
repository root on PYTHONPATH): the product's settings plus the bare view. Nothing here is read in a deployment."""
from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

# The bare one-INSERT view the bench measures the API against, at /bench/bare/.
INSTALLED_APPS = [*INSTALLED_APPS, "bench.bareapp"]
ROOT_URLCONF = "bench.urls"
