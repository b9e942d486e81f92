"""The one settings module: every value comes from the environment (or `.env`), with the contract's names."""
import importlib.util
import ipaddress
import os
import re
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import environ

from config.env_file import env_file_path, env_file_read
from core.redis_failover import failover_retry
from otp import queues
from otp.providers.mailbox import sender_parse
from otp.providers.registry import EMAIL_PROVIDERS, SMS_PROVIDERS

BASE_DIR = Path(__file__).resolve().parent.parent  # backend/
REPO_DIR = BASE_DIR.parent

def _fail(name: str, raw: object, expected: str) -> None:
    # One line naming the variable, no traceback: SystemExit prints its message and stops start-up.
    # Callers pass URLs with their credentials cut off, so the line never shows a password.
    raise SystemExit(f"Invalid setting {name}={raw!r}: expected {expected}.")


# The process environment wins over `.env`; config/env_file.py says which file is read (ENV_FILE).
_env_file = env_file_path()
_ENV_FILE_NAMES = env_file_read(_env_file) if _env_file else {}
# Every name the settings read (env_str records it), for the check of `.env`'s names at the end of this module.
_NAMES_READ: set[str] = set()


def env_str(name: str, default: str = "") -> str:
    # An empty value means "use the default", so `.env.example`'s blank lines are safe. Read from os.environ as it is:
    # django-environ's own reader takes a value starting with `$` for the name of another variable, and Django's
    # generated keys may start with one (a careless-operator pass met "SECRET_KEY='<default>'").
    _NAMES_READ.add(name)
    value = os.environ.get(name, "").strip()
    if _REFERENCE.fullmatch(value):
        # Before, the value of the variable it names (or empty): a `.env` counting on that would now run on the
        # literal text, so it is refused rather than reinterpreted (a review).
        _fail(name, "<hidden>" if _SECRET_NAME.search(name) else value,
              "the value itself (before this release, $NAME was read as the value of the variable NAME)")
    return value or default


_REFERENCE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
_SECRET_NAME = re.compile(r"KEY|PASSWORD|TOKEN|SECRET|SID")


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env_str(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        _fail(name, raw, bounds)
    return value


def env_int_or_none(name: str, *, minimum: int = 0) -> int | None:
    # Unset or empty: None, for a caller whose default depends on something else (cores, connections).
    return env_int(name, minimum, minimum=minimum) if env_str(name) else None


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env_str(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:
        _fail(name, raw, f"a number >= {minimum}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name, str(default)).lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off", ""}:
        return False
    _fail(name, raw, "true or false")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str]) -> str:
    raw = env_str(name, default).lower()
    if raw not in choices:
        _fail(name, raw, "one of " + ", ".join(sorted(choices)))
    return raw


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")


def env_rate(name: str, default: str) -> str:
    raw = env_str(name, default)
    if not _RATE.match(raw):
        _fail(name, raw, "a rate like 30/min (per s, min, hour or day)")
    return raw.replace(" ", "")


# --- Django -----------------------------------------------------------------------------------

# A key never holds white space: `SECRET_KEY_FALLBACKS=K0 K1` (a space, not a comma) was one key matching nothing,
# and `SECRET_KEY=<key> # rotated` took the comment into the key (a careless-operator pass). The value is not shown.
for _name in ("SECRET_KEY", "JWT_SIGNING_KEY", "OTP_HMAC_KEY", "OTP_THROTTLE_KEY", "SECRET_KEY_FALLBACKS",
              "JWT_SIGNING_KEY_FALLBACKS", "OTP_HMAC_KEY_FALLBACKS"):
    if any(re.search(r"\s", _key) for _key in env_list(_name)):
        _fail(_name, "<hidden>", "a key without spaces or comments (several keys: separated by commas)")
# Before this release a key starting with $ was read as the name of a variable, unset, so the key was empty and derived
# from SECRET_KEY: taken as written now, it would sign everyone out and void every code in flight (a review).
for _name in ("JWT_SIGNING_KEY", "OTP_HMAC_KEY", "OTP_THROTTLE_KEY"):
    if env_str(_name).startswith("$"):
        _fail(_name, "<hidden>", "a key that does not start with $ (before this release such a value was read as the "
              "name of a variable, so this service has run on the key derived from SECRET_KEY: leave it unset to "
              "keep that, or rotate to a new key as docs/operations.md says)")
INSECURE_DEFAULT_SECRET_KEY = "insecure-dev-only-secret-key-do-not-use-in-production"
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", INSECURE_DEFAULT_SECRET_KEY)
if not DEBUG and SECRET_KEY == INSECURE_DEFAULT_SECRET_KEY:
    _fail("SECRET_KEY", "<default>", "a secret of your own whenever DEBUG is off")
if len(SECRET_KEY) < 32:
    _fail("SECRET_KEY", "<hidden>", "at least 32 characters")
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
if any(re.search(r"\s", _host) for _host in ALLOWED_HOSTS):  # `localhost 127.0.0.1` was one host matching nothing
    _fail("ALLOWED_HOSTS", ",".join(ALLOWED_HOSTS), "host names separated by commas, without spaces")
# Unset, it follows HTTP_PORT (nginx's), so moving the port does not break Twilio's callbacks and their signatures.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", f"http://localhost:{env_int('HTTP_PORT', 8080, minimum=1, maximum=65535)}").rstrip("/")
# nginx's template quotes it ("...", where $ starts a variable and \ escapes): such a URL would stop nginx.
if not re.match(r'^https?://[^/\x00-\x20\x7f"$\\]+[^\x00-\x20\x7f"$\\]*$', PUBLIC_BASE_URL):
    _fail("PUBLIC_BASE_URL", PUBLIC_BASE_URL, 'an http:// or https:// URL without spaces, ", $ or \\')
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1, maximum=10)


def _proxy_ranges(name: str) -> list[str]:
    """A comma-separated list of addresses or CIDR ranges, as networks nginx's set_real_ip_from takes (host bits
    cleared: 10.0.0.7/8 is 10.0.0.0/8)."""
    ranges = []
    for item in env_list(name):
        try:
            ranges.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            _fail(name, item, "addresses or CIDR ranges such as 10.0.0.0/8,2001:db8::/32, comma-separated")
    return ranges


# The address ranges of the proxies in front of nginx (a TLS load balancer): nginx takes the client's address
# from their X-Forwarded-For (set_real_ip_from, rendered by manage.py nginx_config), so its per-client limits key
# on the client rather than on the balancer. nginx then appends that client itself, so Django still trusts one
# entry: any other TRUSTED_PROXY_COUNT would key the API's limits on an address a client can forge (too many) or
# on nginx's own view of the balancer (too few). Empty: nothing stands in front of nginx.
TRUSTED_PROXY_RANGES = _proxy_ranges("TRUSTED_PROXY_RANGES")
if TRUSTED_PROXY_RANGES and TRUSTED_PROXY_COUNT != 1:
    _fail("TRUSTED_PROXY_COUNT", TRUSTED_PROXY_COUNT, "1 when TRUSTED_PROXY_RANGES is set (nginx resolves the "
          "proxies in front of it and appends the client itself)")
if TRUSTED_PROXY_COUNT > 1:
    _fail("TRUSTED_PROXY_COUNT", TRUSTED_PROXY_COUNT, "0 (no proxy) or 1 (nginx): list the proxies in front of nginx "
          "in TRUSTED_PROXY_RANGES instead, or nginx keys its per-client limits on them")
# The Django admin through the public nginx (contract: off by default; docs/operations.md, "Admin").
ADMIN_PUBLIC = env_bool("ADMIN_PUBLIC", False)
SERVICE_NAME = env_str("SERVICE_NAME", "OTP Login")
if not SERVICE_NAME.isprintable():  # it is in every email's Subject: a line break there would end the header
    _fail("SERVICE_NAME", SERVICE_NAME, "printable text on one line")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "core",
    "users",
    "otp",
    "axes",
]

MIDDLEWARE = [
    "core.middleware.HeadBodyMiddleware",
    "core.observability.RequestObservabilityMiddleware",
    "core.middleware.SecurityHeadersMiddleware",
    "core.middleware.BodyCharsetMiddleware",
    # Before CommonMiddleware, as django-cors-headers asks: it answers preflights itself (CORS_ALLOWED_ORIGINS).
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # WhiteNoise, with its 405 and 416 in JSON.
    "core.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Outages in views outside DRF: 503, as DRF's views answer them (its process_exception runs after axes's).
    "core.middleware.OutageMiddleware",
    # Last, as django-axes asks: it answers for the admin logins its backend refused.
    "axes.middleware.AxesMiddleware",
]

# Admin sign-ins (the only password logins) are throttled by django-axes: after AXES_FAILURE_LIMIT failures from
# one client address, every try from it is refused before the password is hashed, for AXES_COOLOFF_TIME
# (OWASP Authentication Cheat Sheet, "Protect against automated attacks"). Keyed on the address, not the
# username, so nobody can lock an admin out from elsewhere.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.throttling.client_ip"
AXES_LOCKOUT_CALLABLE = "core.views.admin_lockout"
AXES_VERBOSE = False  # no banner line in every process's log

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "users.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The contract's paths are exact; a POST redirected to add a slash would lose its body.
APPEND_SLASH = False
# Every error is JSON (the admin keeps Django's page: core.views.csrf_failure).
CSRF_FAILURE_VIEW = "core.views.csrf_failure"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve static files (admin, API docs) from the app folders without a collectstatic step.
WHITENOISE_USE_FINDERS = True

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind https (PUBLIC_BASE_URL says what clients see, whoever terminates TLS): HSTS on every response
# (core.middleware), and cookies (the admin's session and CSRF cookies) never sent over plain http.
PUBLIC_HTTPS = PUBLIC_BASE_URL.startswith("https://")
HSTS_SECONDS = 31_536_000
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PUBLIC_HTTPS
X_FRAME_OPTIONS = "DENY"

# Cross-origin use of the API (django-cors-headers). Empty, the default: same origin only; no response carries
# Access-Control-Allow-Origin, so a browser refuses a page of another origin both the preflight and the answer.
# Listed origins (scheme://host[:port], no path) may call the API endpoints from the browser with a bearer token;
# cookies are never allowed cross-origin (the admin's session stays same-origin).
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
for _origin in CORS_ALLOWED_ORIGINS:
    if not re.fullmatch(r"https?://[^/\s*,]+", _origin):
        _fail("CORS_ALLOWED_ORIGINS", _origin, "comma-separated origins like https://app.example.com (scheme, host "
              "and port only; no path, no *)")
CORS_ALLOW_CREDENTIALS = False
CORS_URLS_REGEX = r"^/(register|login|verify-otp|profile|token/refresh|logout)/$"
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024

# --- Data -------------------------------------------------------------------------------------

_database_url = env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
if not re.match(r"^(postgres|postgresql|pgsql|sqlite)://", _database_url):
    _fail("DATABASE_URL", _database_url.split("@")[-1], "a URL like postgres://user@host:5432/name (unset for SQLite)")
DATABASES = {"default": environ.Env.db_url_config(_database_url)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and sqlite3.sqlite_version_info < (3, 35):
    # A delivery is claimed with UPDATE ... RETURNING (otp.services._delivery_claim).
    _fail("DATABASE_URL", _database_url, f"PostgreSQL, or SQLite 3.35 or later (this Python has {sqlite3.sqlite_version})")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite has one writer at a time. A deferred transaction (its default) takes the write lock at its first write
    # and, when another holds it, fails at once ("database is locked": a 503) instead of waiting the busy timeout,
    # since waiting could deadlock two readers that both want to write (sqlite.org/lang_transaction.html). IMMEDIATE
    # takes the lock at BEGIN, so a transaction waits its turn (Python's default timeout, 5 s); WAL lets reads run
    # beside the writer (sqlite.org/wal.html).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("transaction_mode", "IMMEDIATE")
    DATABASES["default"]["OPTIONS"].setdefault("init_command", "PRAGMA journal_mode=WAL;")
# libpq's TCP parameters for PostgreSQL's connections, below (postgresql.org/docs/current/libpq-connect.html).
DATABASE_NETWORK_OPTIONS = {"tcp_user_timeout": 5000, "keepalives": 1, "keepalives_idle": 4, "keepalives_interval": 1,
                            "keepalives_count": 1}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # An outage must answer fast (503), not hang a request: bounded connect, bounded statements.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
    # A network that goes silent (packets dropped by a firewall, a host gone) answers nothing, not even an error. A
    # statement sent into it waited as long as the kernel retransmits (about 15 minutes), which statement_timeout,
    # enforced by the server, cannot end; and the server kept the session of a client gone, with its locks, until
    # its kernel's keepalive time (2 hours). On both ends, a connection is ended when what it sent goes
    # unacknowledged for 5 s (tcp_user_timeout, in milliseconds: RFC 793's user timeout, Linux's TCP_USER_TIMEOUT),
    # or when it has been idle 4 s and a keepalive probe gets no answer within 1 s: a statement waits at most about
    # what statement_timeout allows, and the pool's check sees an idle connection dead (core/database.py).
    for _name in DATABASE_NETWORK_OPTIONS:
        if _name in DATABASES["default"]["OPTIONS"]:
            _fail("DATABASE_URL", _database_url.split("@")[-1],
                  f"no {_name} parameter: the service sets it, so a silent network ends a statement within 5 s")
    DATABASES["default"]["OPTIONS"].update(DATABASE_NETWORK_OPTIONS)
    # The server's end: the same values, first in the options startup parameter. An operator's own options in
    # DATABASE_URL (a search_path, a longer statement_timeout: the last -c of a name wins) come after them, but
    # may not set these (a review found `?options=...` replaced them without a word).
    _server_network = {f"tcp_{_name}" if _name.startswith("keepalives_") else _name: _value
                       for _name, _value in DATABASE_NETWORK_OPTIONS.items() if _name != "keepalives"}
    _operator_options = str(DATABASES["default"]["OPTIONS"].get("options", ""))
    for _name in _server_network:
        if _name in _operator_options:
            _fail("DATABASE_URL", _database_url.split("@")[-1],
                  f"no {_name} in its options parameter: the service sets it, so a silent network ends a session")
    DATABASES["default"]["OPTIONS"]["options"] = " ".join(
        ["-c statement_timeout=5000", *(f"-c {_name}={_value}" for _name, _value in _server_network.items()),
         _operator_options]).strip()
    # The hot statements of a login are prepared on each connection (core.postgresql's prepared_cursor): psycopg does
    # so once a statement has run 5 times. Django turns preparing off by default, for poolers; its own cursors bind
    # client-side and never prepare, so this reaches only those statements. PgBouncer: docs/operations.md.
    DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5)


REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    _fail("REDIS_URL", REDIS_URL.split("@")[-1], "a redis:// URL")


# --- Redis password given apart (docker-compose.yml) --------------------------------------------
# Compose cannot percent-encode: it passes REDIS_PASSWORD on its own, and it goes into REDIS_URL here (and into a
# CELERY_BROKER_URL on the same Redis, below), percent-encoded (RFC 3986 section 3.2.1), so `/`, `@`, `#` or `:`
# in it cannot break the URL. Only a URL without a password of its own takes it. Not stripped: spaces count.
_NAMES_READ.add("REDIS_PASSWORD")
REDIS_PASSWORD = os.environ.get("REDIS_PASSWORD", "")


def _url_with_password(url: str, password: str) -> str:
    """`url` (redis:// or rediss://) with `password` percent-encoded into it, unless it has one already."""
    parts = urlsplit(url)
    if not password or parts.scheme not in ("redis", "rediss") or parts.password is not None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


REDIS_URL = _url_with_password(REDIS_URL, REDIS_PASSWORD)
# ------------------------------------------------------------------------------------------------

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "otp",
            # An outage must answer fast, not hang a request.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2, "retry": failover_retry()},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "KEY_PREFIX": "otp"}}


def _redis_location(url: str) -> tuple[str, int, int] | None:
    """(host, port, database) of a redis:// or rediss:// URL as redis-py reads it (a `db` query wins over the
    path), or None for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    database = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
    return (parts.hostname or "localhost").lower(), parts.port or 6379, int(database) if database.isdigit() else -1


def _redis_url_next_database(url: str) -> str:
    """`url` with the next database number: the broker's default, so a flush of the cache never reaches it."""
    parts = urlsplit(url)
    query = urlencode([(name, value) for name, value in parse_qsl(parts.query) if name != "db"])
    return parts._replace(path=f"/{_redis_location(url)[2] + 1}", query=query).geturl()

# --- Mail and SMS -----------------------------------------------------------------------------

# Django's mail backend for each EMAIL_BACKEND name; the provider class for each name is in the registry.
_DJANGO_MAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
}
_email_backend = env_str("EMAIL_BACKEND", "console").strip()
if _email_backend.lower() in EMAIL_PROVIDERS:
    # The registry name of the email provider (otp.providers.registry), recorded on each delivery.
    EMAIL_PROVIDER = _email_backend.lower()
    EMAIL_BACKEND = _DJANGO_MAIL_BACKENDS[EMAIL_PROVIDER]
else:
    # A Django mail backend's dotted path, sent through the SMTP provider's code.
    EMAIL_PROVIDER = "smtp"
    EMAIL_BACKEND = _email_backend
if "." not in EMAIL_BACKEND or importlib.util.find_spec(EMAIL_BACKEND.rsplit(".", 1)[0]) is None:
    _fail("EMAIL_BACKEND", _email_backend, "one of " + ", ".join(sorted(EMAIL_PROVIDERS)) + " or an importable Django mail backend path")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
# A worker's kept SMTP connection idle longer than this is closed rather than reused: a relay or a
# NAT may have dropped it without a word, and finding that out would cost a whole send timeout.
EMAIL_CONNECTION_MAX_IDLE_SECONDS = 60
# SMTP sessions one worker process keeps open to the mail relay at most (otp.providers.smtp): relays cap a client's
# concurrent sessions (Postfix's smtpd_client_connection_count_limit is 50) and hosted ones meter them. Sending
# capacity is this divided by the relay's latency per message (50 / 0.3 s = about 166 emails a second); an email
# worker's threads default to it (config.celery), so each thread has a connection and none waits for one.
EMAIL_MAX_CONNECTIONS = env_int("EMAIL_MAX_CONNECTIONS", 50, minimum=1)
# How long a worker waits for the server's reply once the whole message is sent (after the end of DATA). RFC
# 5321 section 4.5.3.2.6 allows 10 minutes; ours must keep the delivery lease inside the broker's visibility
# timeout (checked at start-up, otp.apps). No reply in time: the delivery is recorded `unknown`, not resent.
EMAIL_FINAL_REPLY_TIMEOUT_SECONDS = env_float("EMAIL_FINAL_REPLY_TIMEOUT_SECONDS", 15.0, minimum=1.0)
if EMAIL_FINAL_REPLY_TIMEOUT_SECONDS > 600:
    _fail("EMAIL_FINAL_REPLY_TIMEOUT_SECONDS", EMAIL_FINAL_REPLY_TIMEOUT_SECONDS, "at most 600 (RFC 5321's 10 minutes)")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "no-reply@localhost")
try:  # every email's From and Message-ID are built from it: a value mail readers cannot parse never starts
    sender_parse(DEFAULT_FROM_EMAIL)
except ValueError as _exc:
    _fail("DEFAULT_FROM_EMAIL", DEFAULT_FROM_EMAIL,
          f"one mailbox such as no-reply@example.com or OTP Login <no-reply@example.com> ({_exc})")
# Non-ASCII local parts (jörg@example.com) need SMTPUTF8 (RFC 6531) at every relay on the way; off, they are refused.
EMAIL_ALLOW_SMTPUTF8 = env_bool("EMAIL_ALLOW_SMTPUTF8", False)

SMS_BACKEND = env_choice("SMS_BACKEND", "console", set(SMS_PROVIDERS))
# HTTPS connections one worker process keeps to the SMS provider at most (otp.providers.twilio); Twilio meters an
# account's concurrent API requests. Capacity: this divided by the provider's latency per message.
SMS_MAX_CONNECTIONS = env_int("SMS_MAX_CONNECTIONS", 50, minimum=1)
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env_str("TWILIO_FROM_NUMBER")
TWILIO_MESSAGING_SERVICE_SID = env_str("TWILIO_MESSAGING_SERVICE_SID")
TWILIO_API_BASE_URL = env_str("TWILIO_API_BASE_URL", "https://api.twilio.com").rstrip("/")
if SMS_BACKEND == "twilio":
    for _name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        if not globals()[_name]:
            _fail(_name, "", "a value when SMS_BACKEND=twilio")
    if not (TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID):
        _fail("TWILIO_FROM_NUMBER", "", "it or TWILIO_MESSAGING_SERVICE_SID when SMS_BACKEND=twilio")

# --- Codes and throttles ----------------------------------------------------------------------

OTP_LENGTH = env_int("OTP_LENGTH", 6, minimum=6, maximum=10)
OTP_TTL_SECONDS = env_int("OTP_TTL_SECONDS", 120, minimum=10, maximum=86400)
OTP_HMAC_KEY = env_str("OTP_HMAC_KEY")
# Former OTP_HMAC_KEYs, still accepted for codes already sent and jobs already queued (core.keys). Without
# OTP_HMAC_KEY, the keys derive from SECRET_KEY and SECRET_KEY_FALLBACKS instead.
OTP_HMAC_KEY_FALLBACKS = env_list("OTP_HMAC_KEY_FALLBACKS")
if OTP_HMAC_KEY_FALLBACKS and not OTP_HMAC_KEY:
    _fail("OTP_HMAC_KEY_FALLBACKS", "<hidden>", "empty while OTP_HMAC_KEY is unset (the keys then derive from "
          "SECRET_KEY and SECRET_KEY_FALLBACKS)")
if any(len(_key) < 32 for _key in OTP_HMAC_KEY_FALLBACKS):
    _fail("OTP_HMAC_KEY_FALLBACKS", "<hidden>", "comma-separated keys of at least 32 characters each")
# Key of the throttles' Redis keys (HMAC of each address and client IP, so a Redis dump does not give addresses
# back). It has no fallbacks: rotating it starts every throttle afresh. Unset: derived from the current
# OTP_HMAC_KEY (or SECRET_KEY), so rotating that one resets the throttles too.
OTP_THROTTLE_KEY = env_str("OTP_THROTTLE_KEY")
if OTP_THROTTLE_KEY and len(OTP_THROTTLE_KEY) < 32:
    _fail("OTP_THROTTLE_KEY", "<hidden>", "at least 32 characters, or unset to derive it from OTP_HMAC_KEY")
OTP_MAX_ATTEMPTS = env_int("OTP_MAX_ATTEMPTS", 5, minimum=1)
OTP_MAX_FAILURES_PER_HOUR = env_int("OTP_MAX_FAILURES_PER_HOUR", 20, minimum=1)
# The failure budget's long-term rate: at 27 a day, at most 9,882 wrong guesses compared a year for one address,
# under the 1 % of a 6-digit code space the contract allows (checked at start-up: otp.apps).
OTP_MAX_FAILURES_PER_DAY = env_int("OTP_MAX_FAILURES_PER_DAY", 27, minimum=1)
OTP_RESEND_COOLDOWN_SECONDS = env_int("OTP_RESEND_COOLDOWN_SECONDS", 30, minimum=1)
OTP_SENDS_PER_HOUR = env_int("OTP_SENDS_PER_HOUR", 10, minimum=1)
OTP_IP_SEND_RATE = env_rate("OTP_IP_SEND_RATE", "30/min")
OTP_IP_VERIFY_RATE = env_rate("OTP_IP_VERIFY_RATE", "60/min")
OTP_DEFAULT_REGION = env_str("OTP_DEFAULT_REGION", "US").strip().upper()
# Where codes may be texted (ISO 3166 codes; `*` for every country), and which number types besides mobile.
OTP_SMS_ALLOWED_REGIONS = [region.upper() for region in env_list("OTP_SMS_ALLOWED_REGIONS", OTP_DEFAULT_REGION)]
OTP_SMS_ALLOW_VOIP = env_bool("OTP_SMS_ALLOW_VOIP", True)
OTP_SMS_ALLOW_FIXED_LINE = env_bool("OTP_SMS_ALLOW_FIXED_LINE", False)
# Android's SMS Retriever: the 11-character hash of the app (computed from its package name and signing
# certificate), written on its own line before the WebOTP line so the app reads the code without the SMS
# permission. Unset: no such line. Checked here for its form, and once the apps are ready for the one-segment SMS
# it makes (otp.apps.sms_segment_check).
OTP_SMS_APP_HASH = env_str("OTP_SMS_APP_HASH")
if OTP_SMS_APP_HASH and not re.fullmatch(r"[A-Za-z0-9+/]{11}", OTP_SMS_APP_HASH):
    _fail("OTP_SMS_APP_HASH", OTP_SMS_APP_HASH, "the 11 characters (letters, digits, + and /) of the app's SMS "
          "Retriever hash")
# SMS volume budgets (contract: One-time codes), counted on messages handed to the provider: per destination prefix
# (the country calling code and OTP_SMS_PREFIX_DIGITS digits) and for all SMS; 0 for OTP_SMS_PER_HOUR turns SMS
# off. OTP_SMS_DEVICE_SHARE percent of each is kept for requests with a valid device token (otp.throttles).
OTP_SMS_PER_HOUR = env_int("OTP_SMS_PER_HOUR", 1000)
OTP_SMS_PREFIX_DIGITS = env_int("OTP_SMS_PREFIX_DIGITS", 3, maximum=12)
OTP_SMS_PER_PREFIX_PER_HOUR = env_int("OTP_SMS_PER_PREFIX_PER_HOUR", 50, minimum=1)
OTP_SMS_DEVICE_SHARE = env_int("OTP_SMS_DEVICE_SHARE", 20, maximum=100)
# Share of a budget spent (percent) past which /metrics says so (otp_send_budget_soft_exceeded), before the hard stop.
OTP_SEND_BUDGET_SOFT_PERCENT = env_int("OTP_SEND_BUDGET_SOFT_PERCENT", 80, minimum=1, maximum=100)
# Email volume budgets, against mail bombing of random or role addresses from many clients: all code emails, and
# per recipient domain, an hour; 0 for OTP_EMAIL_PER_HOUR turns email off. OTP_EMAIL_DEVICE_SHARE percent of each
# is kept for requests with a valid device token, as for SMS.
OTP_EMAIL_PER_HOUR = env_int("OTP_EMAIL_PER_HOUR", 5000)
OTP_EMAIL_PER_DOMAIN_PER_HOUR = env_int("OTP_EMAIL_PER_DOMAIN_PER_HOUR", 500, minimum=1)
OTP_EMAIL_DEVICE_SHARE = env_int("OTP_EMAIL_DEVICE_SHARE", 20, maximum=100)
# How long an address whose server refused it permanently (5xx at RCPT) gets no email (requests still answer 202).
OTP_EMAIL_SUPPRESSION_SECONDS = env_int("OTP_EMAIL_SUPPRESSION_SECONDS", 86400, minimum=1)
# The console backends print every message, code included, into the worker's log. That is a development choice:
# with DEBUG off (every real deployment) it must be made by name, OTP_CONSOLE_CODES=on, or start-up stops, so a
# production .env that forgot to choose smtp or twilio never writes codes into its logs (docs/decisions.md). A
# channel turned off (OTP_SMS_PER_HOUR=0, OTP_EMAIL_PER_HOUR=0) sends nothing, so its backend is not asked about:
# an email-only service keeps the contract's default SMS_BACKEND=console without printing anything.
OTP_CONSOLE_CODES = env_bool("OTP_CONSOLE_CODES", False)
_CONSOLE_CHOSEN = {
    "EMAIL_BACKEND": EMAIL_BACKEND == _DJANGO_MAIL_BACKENDS["console"] and OTP_EMAIL_PER_HOUR > 0,
    "SMS_BACKEND": SMS_BACKEND == "console" and OTP_SMS_PER_HOUR > 0,
}
for _name, _chosen in _CONSOLE_CHOSEN.items():
    if _chosen and not DEBUG and not OTP_CONSOLE_CODES:
        _fail(_name, env_str(_name, "console"), ("smtp" if _name == "EMAIL_BACKEND" else "twilio") + " with DEBUG "
              "off (the console backend prints every code into the logs), OTP_" + _name.split("_")[0] + "_PER_HOUR=0 "
              "to turn the channel off, or OTP_CONSOLE_CODES=on to print them anyway on a development stack")
OTP_PURGE_INTERVAL_SECONDS = env_int("OTP_PURGE_INTERVAL_SECONDS", 300, minimum=1)
# Each batch is one short transaction; smaller batches rescan more of the index entries the previous batches
# left dead (figures in docs/performance.md).
OTP_PURGE_BATCH_SIZE = 50_000
# How long a delivery record (with its address) is kept; beat deletes older ones (otp.services.housekeeping).
OTP_DELIVERY_RETENTION_DAYS = env_int("OTP_DELIVERY_RETENTION_DAYS", 30, minimum=1, maximum=3650)
# Lifetime of a device token (users.models.DeviceToken), from the successful verify that issued it; beat deletes
# expired ones.
OTP_DEVICE_TOKEN_TTL_DAYS = env_int("OTP_DEVICE_TOKEN_TTL_DAYS", 90, minimum=1, maximum=3650)
OTP_SEND_MAX_RETRIES = env_int("OTP_SEND_MAX_RETRIES", 5, maximum=50)
OTP_SEND_RETRY_BACKOFF_SECONDS = env_float("OTP_SEND_RETRY_BACKOFF_SECONDS", 1.0)
# Unset, it may be lowered below (with CELERY_VISIBILITY_TIMEOUT_SECONDS) to fit a short OTP_TTL_SECONDS.
OTP_SEND_RETRY_BACKOFF_DERIVED = not env_str("OTP_SEND_RETRY_BACKOFF_SECONDS")


def _check_regions(name: str, regions: list[str], *, wildcard: bool) -> None:
    import phonenumbers

    known = set(phonenumbers.SUPPORTED_REGIONS) | ({"*"} if wildcard else set())
    if not regions or not set(regions) <= known:
        _fail(name, ",".join(regions), "two-letter region codes such as US or GB" + (", or *" if wildcard else ""))


_check_regions("OTP_DEFAULT_REGION", [OTP_DEFAULT_REGION], wildcard=False)
_check_regions("OTP_SMS_ALLOWED_REGIONS", OTP_SMS_ALLOWED_REGIONS, wildcard=True)

# --- Tokens -----------------------------------------------------------------------------------

# The clock difference between hosts that a token check tolerates (docs/operations.md, "Clocks"). Not a setting: a
# deployment whose clocks differ by more is broken in other ways, and a larger value only widens replay of a token.
CLOCK_SKEW_TOLERANCE_SECONDS = 5

JWT_SIGNING_KEY = env_str("JWT_SIGNING_KEY") or SECRET_KEY
# Old JWT keys, still accepted (users.tokens); while JWT_SIGNING_KEY is SECRET_KEY, SECRET_KEY_FALLBACKS are too.
JWT_SIGNING_KEY_FALLBACKS = env_list("JWT_SIGNING_KEY_FALLBACKS")
ACCESS_TOKEN_LIFETIME_SECONDS = env_int("ACCESS_TOKEN_LIFETIME_SECONDS", 300, minimum=1)
REFRESH_TOKEN_LIFETIME_SECONDS = env_int("REFRESH_TOKEN_LIFETIME_SECONDS", 86400, minimum=1)
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=ACCESS_TOKEN_LIFETIME_SECONDS),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=REFRESH_TOKEN_LIFETIME_SECONDS),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": JWT_SIGNING_KEY,
    # A token minted by a host whose clock runs a few seconds ahead carries an `iat` in the future, which PyJWT
    # refuses with no leeway: tolerate the skew NTP leaves between hosts (RFC 7519 section 4.1.4 allows "some small
    # leeway ... to account for clock skew"). docs/operations.md states the skew the deployment must stay within.
    "LEEWAY": timedelta(seconds=CLOCK_SKEW_TOLERANCE_SECONDS),
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Verified with the current key, then the old ones (users.tokens).
    "AUTH_TOKEN_CLASSES": ("users.tokens.AccessToken",),
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["users.authentication.JWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exception_handler.exception_handler",
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": f"{SERVICE_NAME} API",
    "DESCRIPTION": "One-time-code login by email or SMS, traded for a JWT.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Processes and Celery ---------------------------------------------------------------------

API_PORT = env_int("API_PORT", 8000, minimum=1, maximum=65535)
HTTP_PORT = env_int("HTTP_PORT", 8080, minimum=1, maximum=65535)
# nginx's flood guard on /register/ and /login/ (see nginx/templates/default.conf.template).
# Checked as nginx reads them (compose hands the raw values to nginx's image, not these): ASCII digits only
# (Python's int() and \d take other scripts' digits, "+5" and "5_0", which nginx refuses), no spaces, and bounds
# nginx takes; anything else stopped nginx at start-up (found by a review).
EDGE_SEND_RATE = env_str("EDGE_SEND_RATE", "10r/s")
if not re.fullmatch(r"[1-9][0-9]{0,5}r/[sm]", EDGE_SEND_RATE):
    _fail("EDGE_SEND_RATE", EDGE_SEND_RATE, "an nginx rate like 10r/s or 600r/m (at most 999999)")
_edge_burst = env_str("EDGE_SEND_BURST", "20")
if not re.fullmatch(r"[1-9][0-9]{0,5}", _edge_burst):  # nginx refuses burst=0
    _fail("EDGE_SEND_BURST", _edge_burst, "an integer from 1 to 999999")
EDGE_SEND_BURST = int(_edge_burst)
CELERY_WORKER_POOL = env_choice("CELERY_WORKER_POOL", "threads", {"threads", "prefork", "solo", "gevent", "eventlet"})
# Unset: a worker's threads follow the connections it may open to its provider (EMAIL_MAX_CONNECTIONS for a worker
# of the email queue, SMS_MAX_CONNECTIONS for the sms queue), else 8 (config.celery). Set, it applies to every worker.
CELERY_WORKER_CONCURRENCY = env_int_or_none("CELERY_WORKER_CONCURRENCY", minimum=1)
CELERY_WORKER_DEFAULT_CONCURRENCY = 8
# gunicorn's own variable (config/gunicorn.conf.py): unset, 2 x cores + 1, at most 8. 0 started an API that took
# connections and answered none; a word was a traceback.
WEB_CONCURRENCY = env_int_or_none("WEB_CONCURRENCY", minimum=1)
# Unset: half a code's life, at most 60 s (the defaults' ratio), so setting OTP_TTL_SECONDS alone is enough (a
# newcomer's pass: OTP_TTL_SECONDS=30 stopped start-up on this setting, then on two more, one after the other). Half,
# not just under the whole: a dead worker's jobs come back between this and a fifth more (the sweep below), and
# must still find their code valid long enough to be read and typed (docs/decisions.md, late acknowledgement).
CELERY_VISIBILITY_TIMEOUT_SECONDS = env_int_or_none("CELERY_VISIBILITY_TIMEOUT_SECONDS", minimum=1)
CELERY_VISIBILITY_TIMEOUT_DERIVED = CELERY_VISIBILITY_TIMEOUT_SECONDS is None
if CELERY_VISIBILITY_TIMEOUT_DERIVED:
    CELERY_VISIBILITY_TIMEOUT_SECONDS = max(1, min(60, OTP_TTL_SECONDS // 2))
# Unset, the retry backoff likewise fits the visibility timeout: its longest delay 1 s under it. Not below 0.1 s: a
# retry count so high that it would need less fails the check below instead, naming OTP_SEND_MAX_RETRIES.
if OTP_SEND_RETRY_BACKOFF_DERIVED and (_fitting := (CELERY_VISIBILITY_TIMEOUT_SECONDS - 1) / 2 ** OTP_SEND_MAX_RETRIES) >= 0.1:
    OTP_SEND_RETRY_BACKOFF_SECONDS = min(OTP_SEND_RETRY_BACKOFF_SECONDS, _fitting)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A connection pool per process: Celery's Django fixup closes the database connection around every task,
    # which without a pool meant a new PostgreSQL connection for each delivery (cost in docs/performance.md).
    DATABASES["default"]["OPTIONS"].setdefault("pool", {
        "min_size": 1,
        # A worker's threads hold a connection only for their statements, not through a provider's answer
        # (otp.services.delivering._database_connection_release), so a few connections serve many threads.
        "max_size": min(CELERY_WORKER_CONCURRENCY or 8, 8),
        "timeout": 5,
    })
    # Each connection is checked as it leaves the pool, so one broken by an outage is replaced, not used; when one
    # is dead, every idle one is checked at once (core/database.py), through Django's backend with that check.
    DATABASES["default"]["ENGINE"] = "core.postgresql"

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
CELERY_BROKER_URL_FROM_REDIS_URL = False
_broker_location, _cache_location = _redis_location(CELERY_BROKER_URL), _redis_location(REDIS_URL)
if _broker_location and _cache_location and _broker_location[:2] == _cache_location[:2]:
    CELERY_BROKER_URL = _url_with_password(CELERY_BROKER_URL, REDIS_PASSWORD)  # the same Redis: its password
if REDIS_URL and not CELERY_BROKER_URL:
    if _redis_location(REDIS_URL) is None:
        _fail("CELERY_BROKER_URL", "", "a broker URL of its own when REDIS_URL is not a redis:// or rediss:// URL")
    if _redis_location(REDIS_URL)[2] < 0:
        _fail("REDIS_URL", REDIS_URL.split("@")[-1], "a database number after the host, like redis://host:6379/0")
    # Never the cache's database: Django's cache.clear() is FLUSHDB, which would delete every queued job.
    CELERY_BROKER_URL = _redis_url_next_database(REDIS_URL)
    CELERY_BROKER_URL_FROM_REDIS_URL = True  # so a failure to reach it says where it came from
elif REDIS_URL and _redis_location(CELERY_BROKER_URL) == _redis_location(REDIS_URL):
    _fail("CELERY_BROKER_URL", CELERY_BROKER_URL.split("@")[-1],
          "a Redis database apart from REDIS_URL's (a cache flush would delete the queued jobs); unset, it is the next one")
# kombu's in-memory transport, named with a host: Celery acquires a producer even for a job it runs in-process,
# and kombu warns "No hostname was supplied" on every job when the URL has none.
_IN_PROCESS_BROKER_URL = "memory://localhost/"
CELERY_BROKER_URL = CELERY_BROKER_URL or _IN_PROCESS_BROKER_URL
# With no broker configured (quick local run), jobs run in-process right after the request commits.
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL == _IN_PROCESS_BROKER_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = queues.MAINTENANCE
# The queues /metrics reports the depth of.
OTP_QUEUE_NAMES = queues.ALL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker tries to reconnect to its broker for as long as the broker is away. Celery's default, 100 tries (about
# 47 minutes of its backoff), then stopped the worker, and natively nothing starts it again.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_SECONDS,
    # Sweep for jobs a dead worker left unacknowledged every fifth of the timeout (kombu's default is
    # every 100 s, longer than a code lives).
    "unacked_restore_interval": max(1, CELERY_VISIBILITY_TIMEOUT_SECONDS // 5),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# A request that cannot reach the broker must answer quickly (503), not wait out long retries.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_BEAT_SCHEDULE = {
    # By name (otp.tasks.MAINTENANCE_RUN): the schedule must not import the tasks.
    "otp-maintenance": {"task": "otp.maintenance_run", "schedule": float(OTP_PURGE_INTERVAL_SECONDS)},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Promises the settings must keep (contract: Delivery, One-time codes, Tokens) -----------------
# Each is checked here, at start-up, so a deployment that would break one never runs. The chain that involves
# the providers' own waits (provider wait < delivery lease < visibility timeout) needs the provider registry
# and is checked when the apps are ready (otp.apps).

# A job redelivered after the visibility timeout must still find its code valid.
if CELERY_VISIBILITY_TIMEOUT_SECONDS >= OTP_TTL_SECONDS:
    _fail("CELERY_VISIBILITY_TIMEOUT_SECONDS", CELERY_VISIBILITY_TIMEOUT_SECONDS, "a value below OTP_TTL_SECONDS")
# A retried job waits in the broker as an unacknowledged message with an ETA; a visibility timeout shorter
# than its delay makes the broker hand it out again before it is due, so it would run more than once.
# Retries never wait past the code's expiry (otp.services.delivering), which bounds the longest delay.
OTP_SEND_RETRY_DELAY_MAX_SECONDS = min(OTP_SEND_RETRY_BACKOFF_SECONDS * 2 ** OTP_SEND_MAX_RETRIES, OTP_TTL_SECONDS)
if OTP_SEND_RETRY_DELAY_MAX_SECONDS >= CELERY_VISIBILITY_TIMEOUT_SECONDS and OTP_SEND_RETRY_BACKOFF_DERIVED:
    # The most retries a backoff chosen for the operator fits, by the rule above (at least 0.1 s).
    _fitting_retries = 0
    while (CELERY_VISIBILITY_TIMEOUT_SECONDS - 1) / 2 ** (_fitting_retries + 1) >= 0.1:
        _fitting_retries += 1
    _fail("OTP_SEND_MAX_RETRIES", OTP_SEND_MAX_RETRIES,
          f"at most {_fitting_retries} here: the longest retry delay, 0.1 s (the least OTP_SEND_RETRY_BACKOFF_SECONDS "
          f"chosen for you) x 2^OTP_SEND_MAX_RETRIES, must stay below "
          f"CELERY_VISIBILITY_TIMEOUT_SECONDS={CELERY_VISIBILITY_TIMEOUT_SECONDS} (or set OTP_SEND_RETRY_BACKOFF_SECONDS "
          f"yourself)")
if OTP_SEND_RETRY_DELAY_MAX_SECONDS >= CELERY_VISIBILITY_TIMEOUT_SECONDS:
    _fail("OTP_SEND_RETRY_BACKOFF_SECONDS", OTP_SEND_RETRY_BACKOFF_SECONDS,
          f"a value whose longest retry delay (x 2^OTP_SEND_MAX_RETRIES={2 ** OTP_SEND_MAX_RETRIES}, at most "
          f"OTP_TTL_SECONDS) stays below CELERY_VISIBILITY_TIMEOUT_SECONDS={CELERY_VISIBILITY_TIMEOUT_SECONDS}")
# No run of OTP_LENGTH digits other than the code may appear in a message: the values messages show must not
# hold one (a mail client's code detector, or a reader, would take it for the code).
_DIGIT_RUN = re.compile(rf"\d{{{OTP_LENGTH},}}")
for _name in ("SERVICE_NAME", "DEFAULT_FROM_EMAIL", "PUBLIC_BASE_URL", "OTP_SMS_APP_HASH"):
    if _DIGIT_RUN.search(globals()[_name]):
        _fail(_name, globals()[_name], f"no run of {OTP_LENGTH} or more digits (OTP_LENGTH): messages show it beside the code")
# HMAC keys shorter than the hash's output weaken it (RFC 2104 section 3; RFC 7518 section 3.2 requires at
# least 256 bits for HS256 JWTs).
for _name in ("JWT_SIGNING_KEY", "OTP_HMAC_KEY"):
    if env_str(_name) and len(env_str(_name)) < 32:
        _fail(_name, "<hidden>", "at least 32 characters, or unset to derive it from SECRET_KEY")
# Old keys are checked like current ones: a short one is as weak as a short current key.
for _name in ("SECRET_KEY_FALLBACKS", "JWT_SIGNING_KEY_FALLBACKS"):
    if any(len(_key) < 32 for _key in globals()[_name]):
        _fail(_name, "<hidden>", "comma-separated keys of at least 32 characters each")
# A refresh token that dies before the access token it renews is of no use to a client.
if REFRESH_TOKEN_LIFETIME_SECONDS <= ACCESS_TOKEN_LIFETIME_SECONDS:
    _fail("REFRESH_TOKEN_LIFETIME_SECONDS", REFRESH_TOKEN_LIFETIME_SECONDS,
          f"a value above ACCESS_TOKEN_LIFETIME_SECONDS={ACCESS_TOKEN_LIFETIME_SECONDS}")

LOG_LEVEL = env_choice("LOG_LEVEL", "info", {"debug", "info", "warning", "error"}).upper()
# JSON lines in every real deployment; plain text for a developer's console (DEBUG on).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.observability.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "core.observability.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": sys.stderr, "filters": ["request_id"],
                             "formatter": "plain" if DEBUG else "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Our access line (core.observability) replaces Django's: one line per request.
        "django.request": {"level": "ERROR"}, "django.server": {"level": "WARNING"},
        # A delivery's one INFO line is otp.services' "sent"; Celery's "received"/"succeeded" lines repeat it and
        # twilio's client dumps every request, at a real cost in a worker's CPU (docs/performance.md). Their
        # warnings and errors still show.
        "celery.app.trace": {"level": "WARNING"}, "celery.worker.strategy": {"level": "WARNING"},
        "twilio.http_client": {"level": "WARNING"},
        # Python's warnings (core.observability.logging_configure), through the root's handler: at WARNING whatever
        # LOG_LEVEL is, as they were when Python printed them itself.
        "py.warnings": {"level": "WARNING"},
    },
}
LOGGING_CONFIG = "core.observability.logging_configure"

# --- The names `.env` sets ----------------------------------------------------------------------
# A name in `.env` that looks like one of this service's settings but is none is a typo (`OTP_TTL=300`,
# `otp_sends_per_hour=3`), or a variable read from the environment alone: passed over in silence, it left the
# default in force. Other names (libpq's PG*, HTTPS_PROXY, TZ) go into the environment for the libraries, as before.
# Only the native stack's `.env` is checked here: Compose reads its own (docs/operations.md).
_OWN_PREFIXES = ("OTP_", "EMAIL_", "SMS_", "TWILIO_", "JWT_", "CELERY_", "STACK_", "EDGE_", "TRUSTED_PROXY_",
                 "ACCESS_TOKEN_", "REFRESH_TOKEN_", "CORS_")
_ENVIRONMENT_ONLY = {"STACK_DIR": "make up and make down", "STACK_READY_TIMEOUT": "make up", "ENV_FILE": "the settings",
                     "QUICK_RUN_DB": "make run"}
_NAMES_READ_FOLDED = {known.lower(): known for known in _NAMES_READ}
for _name, _line in _ENV_FILE_NAMES.items():
    if _name in _NAMES_READ:
        continue
    if _name in _ENVIRONMENT_ONLY:
        raise SystemExit(f"Invalid setting {_name} on line {_line} of {_env_file}: {_ENVIRONMENT_ONLY[_name]} read "
                         f"it from the environment only (`{_name}=... make ...`), not from this file.")
    _known = _NAMES_READ_FOLDED.get(_name.lower())
    if _known or _name.upper().startswith(_OWN_PREFIXES):
        raise SystemExit(f"Invalid setting {_name} on line {_line} of {_env_file}: no setting has this name"
                         + (f" (did you mean {_known}?)" if _known else " (a typo? .env.example lists them all)") + ".")
