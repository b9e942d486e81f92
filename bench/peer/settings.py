"""Settings of the peer project (bench/run.py starts it with DJANGO_SETTINGS_MODULE=bench.peer.settings).

drfpasswordless as its README sets it up, sending the code by email inside the request through Django's SMTP
backend, to the bench's own SMTP server. The choices a careful deployer would make are made in the peer's
favour, so that a win over it is a real one: a database connection pool (Django's default opens a connection per
request), token authentication only, no sessions, and an index that serves its user lookup (see
accounts/models.py). Everything else is the package's default. The bench passes PEER_DATABASE_NAME,
EMAIL_HOST and EMAIL_PORT.
"""
import os

SECRET_KEY = "bench-peer-only-secret-key-not-used-anywhere-else"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework.authtoken",
    "drfpasswordless",
    "bench.peer.accounts",
]
# startproject's middleware, less sessions, auth and messages, which an API on token authentication has no use for.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "bench.peer.urls"
WSGI_APPLICATION = "bench.peer.wsgi.application"
AUTH_USER_MODEL = "peeraccounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PEER_DATABASE_NAME", "otp_bench_peer"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        # Django's connection pool, as the service has (config/settings.py): connections are kept between
        # requests, and the threads of a gthread worker share a few instead of holding one each.
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 8, "timeout": 5}},
        "CONN_HEALTH_CHECKS": True,
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
}

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = os.environ.get("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_TIMEOUT = 10

PASSWORDLESS_AUTH = {
    "PASSWORDLESS_AUTH_TYPES": ["EMAIL"],
    "PASSWORDLESS_EMAIL_NOREPLY_ADDRESS": "noreply@example.com",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
