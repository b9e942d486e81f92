"""Settings for `make bench` only (bench/run.py sets DJANGO_SETTINGS_MODULE=bench.settings and puts the
repository root on PYTHONPATH): the product's settings plus the bare view and scenario 2's synchronous send.
Nothing here is read in a deployment."""
from config.settings import *  # noqa: F403
from config.settings import CELERY_TASK_ALWAYS_EAGER, INSTALLED_APPS, env_bool

# The bare one-INSERT view the bench measures the API against, at /bench/bare/.
INSTALLED_APPS = [*INSTALLED_APPS, "bench.bareapp"]
ROOT_URLCONF = "bench.urls"

# Scenario 2: send inside the request, like the synchronous design this service replaces. Celery's eager mode
# runs the delivery job in the API process before the response; the product's settings never set it with a
# broker configured.
BENCH_SYNC_SEND = env_bool("BENCH_SYNC_SEND", False)
CELERY_TASK_ALWAYS_EAGER = CELERY_TASK_ALWAYS_EAGER or BENCH_SYNC_SEND
