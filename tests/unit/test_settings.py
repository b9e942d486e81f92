"""A bad setting stops start-up with one line naming it; good ones start."""
import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import BACKEND_DIR, REPO_DIR


def start(**overrides):
    env = {**os.environ, **overrides}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=BACKEND_DIR, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, value", [
    ("OTP_LENGTH", "six"),
    ("OTP_LENGTH", "3"),
    ("OTP_TTL_SECONDS", "-5"),
    ("OTP_DEVICE_TOKEN_TTL_DAYS", "0"),
    ("OTP_DEVICE_TOKEN_TTL_DAYS", "ninety"),
    ("OTP_SEND_RETRY_BACKOFF_SECONDS", "fast"),
    ("OTP_IP_SEND_RATE", "lots"),
    ("OTP_DEFAULT_REGION", "XX"),
    ("DEBUG", "maybe"),
    ("SMS_BACKEND", "pigeon"),
    ("EMAIL_BACKEND", "nope.Backend"),
    ("API_PORT", "99999"),
    ("CELERY_VISIBILITY_TIMEOUT_SECONDS", "600"),
    ("DATABASE_URL", "not a url"),
    ("REDIS_URL", "http://127.0.0.1"),
    ("OTP_SMS_PER_HOUR", "-1"),
    ("OTP_SMS_PER_PREFIX_PER_HOUR", "0"),
    ("OTP_SMS_DEVICE_SHARE", "120"),
    ("OTP_EMAIL_DEVICE_SHARE", "101"),
    ("OTP_SMS_PREFIX_DIGITS", "three"),
    ("OTP_EMAIL_PER_DOMAIN_PER_HOUR", "many"),
    ("OTP_EMAIL_SUPPRESSION_SECONDS", "0"),
    ("OTP_SEND_BUDGET_SOFT_PERCENT", "0"),
    # Values nginx's template takes and nginx then refuses, so it would not start: burst=0, and a quote, a $ (a
    # variable) or a backslash in the quoted public URL.
    ("EDGE_SEND_BURST", "0"),
    ("EDGE_SEND_BURST", "+5"),
    ("EDGE_SEND_BURST", "5_0"),
    ("EDGE_SEND_BURST", "\u0665"),  # an Arabic-Indic 5: int() takes it, nginx does not
    ("EDGE_SEND_BURST", "99999999999999999999"),
    ("EDGE_SEND_RATE", "1\u0660r/s"),
    ("EDGE_SEND_RATE", "10 r/s"),
    ("EDGE_SEND_RATE", "99999999999999999999r/s"),
    ("PUBLIC_BASE_URL", 'https://login.example.com/"x'),
    ("PUBLIC_BASE_URL", "https://login.example.com/$x"),
    ("PUBLIC_BASE_URL", "https://login.example.com\\"),
    ("PUBLIC_BASE_URL", "https://login.example.com/a b"),
])
def test_bad_value_stops_start_up_with_one_line_naming_it(name, value):
    result = start(**{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


@pytest.mark.parametrize("parameter", ["tcp_user_timeout=0", "keepalives=0", "keepalives_idle=7200"])
def test_a_database_url_that_sets_a_tcp_parameter_of_the_services_stops_start_up(parameter):
    # These bound a statement on a network gone silent (config/settings.py): turned off, one waited 15 minutes.
    url = f"postgres://postgres@127.0.0.1:5432/otp_service?{parameter}"
    result = start(DATABASE_URL=url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Invalid setting DATABASE_URL=") and parameter.split("=")[0] in lines[0], lines[0]
    assert start(DATABASE_URL="postgres://postgres@127.0.0.1:5432/otp_service?sslmode=disable").returncode == 0


def test_a_database_url_with_options_keeps_the_servers_tcp_settings_and_may_not_set_them():
    # `?options=` replaced the service's options without a word, and with them the server's end of the bound
    # (an attack pass: a session idle in a transaction kept its lock 40 s and more after its client went silent).
    base = "postgres://postgres@127.0.0.1:5432/otp_service?options="
    options = settings_of(["DATABASES"], DATABASE_URL=base + "-c%20search_path%3Dpublic")["DATABASES"]["default"][
        "OPTIONS"]["options"]
    assert "-c tcp_user_timeout=5000" in options and "-c tcp_keepalives_idle=4" in options
    assert options.endswith("-c search_path=public")
    result = start(DATABASE_URL=base + "-c%20tcp_user_timeout%3D0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "DATABASE_URL" in lines[0], result.stderr
    assert "tcp_user_timeout" in lines[0]


@pytest.mark.parametrize("overrides, name", [
    # The input: the job would run three times (contract: the visibility timeout outlasts any retry delay).
    ({"OTP_TTL_SECONDS": "600", "CELERY_VISIBILITY_TIMEOUT_SECONDS": "10", "OTP_SEND_RETRY_BACKOFF_SECONDS": "30"},
     "OTP_SEND_RETRY_BACKOFF_SECONDS"),
    # A visibility timeout inside the delivery lease: the broker hands a job still being sent to a second worker.
    ({"CELERY_VISIBILITY_TIMEOUT_SECONDS": "15", "OTP_SEND_RETRY_BACKOFF_SECONDS": "0.1"},
     "CELERY_VISIBILITY_TIMEOUT_SECONDS"),
    # The whole chain (contract: Delivery): the SMTP final reply's wait, plus the time to record the outcome,
    # must keep the lease below the visibility timeout; past it a second worker sends the code again.
    ({"EMAIL_BACKEND": "smtp", "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS": "100"}, "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS"),
    ({"EMAIL_BACKEND": "smtp", "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS": "601"}, "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS"),
    # Twilio's whole wait (the send, then asking whether it took a message whose answer was lost) is fixed:
    # the visibility timeout is what must grow.
    ({"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t",
      "TWILIO_FROM_NUMBER": "+14155550100", "CELERY_VISIBILITY_TIMEOUT_SECONDS": "45"},
     "CELERY_VISIBILITY_TIMEOUT_SECONDS"),
    ({"SERVICE_NAME": "Acme 1234567"}, "SERVICE_NAME"),
    ({"DEFAULT_FROM_EMAIL": "codes@123456.example.com"}, "DEFAULT_FROM_EMAIL"),
    ({"PUBLIC_BASE_URL": "https://login-000000.example.com"}, "PUBLIC_BASE_URL"),
    ({"JWT_SIGNING_KEY": "too-short"}, "JWT_SIGNING_KEY"),
    ({"OTP_HMAC_KEY": "too-short"}, "OTP_HMAC_KEY"),
    ({"REFRESH_TOKEN_LIFETIME_SECONDS": "300"}, "REFRESH_TOKEN_LIFETIME_SECONDS"),
    # Every email's From and Message-ID are built from it; each must parse under the strict email policy.
    ({"DEFAULT_FROM_EMAIL": "OTP Login no-reply@example.com"}, "DEFAULT_FROM_EMAIL"),
    ({"DEFAULT_FROM_EMAIL": "a@example.com, b@example.com"}, "DEFAULT_FROM_EMAIL"),
    ({"DEFAULT_FROM_EMAIL": "OTP <no-reply@example.com>>"}, "DEFAULT_FROM_EMAIL"),
    ({"DEFAULT_FROM_EMAIL": "no-reply@example.com\r\nBcc: victim@example.com"}, "DEFAULT_FROM_EMAIL"),
    ({"DEFAULT_FROM_EMAIL": "jörg@example.com"}, "DEFAULT_FROM_EMAIL"),
    ({"SERVICE_NAME": "OTP\nBcc: victim@example.com"}, "SERVICE_NAME"),
])
def test_settings_that_break_a_promise_of_the_contract_stop_start_up(overrides, name):
    result = start(**overrides)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Invalid setting {name}=" in lines[0], result.stderr


def settings_of(names, **overrides) -> dict:
    """The values of the settings `names` as a process started with `overrides` sees them."""
    script = f"from django.conf import settings; print(repr({{n: getattr(settings, n) for n in {names!r}}}))"
    env = {**os.environ, **overrides}
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=BACKEND_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr of numbers)


# The chain OTP_TTL_SECONDS > visibility timeout > delivery lease + 1, and the longest retry delay below the
# visibility timeout: with the two unset, setting OTP_TTL_SECONDS alone is enough (a newcomer's pass:
# OTP_TTL_SECONDS=30 stopped start-up three times, each time naming another setting never set).
UNSET_CHAIN = {"CELERY_VISIBILITY_TIMEOUT_SECONDS": "", "OTP_SEND_RETRY_BACKOFF_SECONDS": "", "OTP_SEND_MAX_RETRIES": "",
               "EMAIL_BACKEND": "console", "SMS_BACKEND": "console"}


@pytest.mark.parametrize("ttl, visibility, backoff", [("46", 23, 22 / 32), ("61", 30, 29 / 32), ("90", 45, 1.0),
                                                      ("120", 60, 1.0), ("600", 60, 1.0)])
def test_a_short_code_life_alone_starts_with_the_chain_fitted_to_it(ttl, visibility, backoff):
    assert start(**UNSET_CHAIN, OTP_TTL_SECONDS=ttl).returncode == 0
    assert settings_of(["CELERY_VISIBILITY_TIMEOUT_SECONDS", "OTP_SEND_RETRY_BACKOFF_SECONDS"], **UNSET_CHAIN,
                       OTP_TTL_SECONDS=ttl) == {"CELERY_VISIBILITY_TIMEOUT_SECONDS": visibility,
                                                "OTP_SEND_RETRY_BACKOFF_SECONDS": backoff}


@pytest.mark.parametrize("ttl, backends, least", [
    ("10", {}, 46), ("45", {}, 46),  # the console backends' lease: 21 s (16 s to record the outcome, 5 s margin)
    ("30", {"EMAIL_BACKEND": "smtp"}, 96),  # the SMTP provider waits 10 s for its commands and 15 s for the reply
    ("95", {"EMAIL_BACKEND": "smtp"}, 96),
    ("101", {"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t",
             "TWILIO_FROM_NUMBER": "+14155550100"}, 102),
])
def test_a_code_life_too_short_for_the_providers_names_it_and_the_least_that_works(ttl, backends, least):
    result = start(**{**UNSET_CHAIN, **backends}, OTP_TTL_SECONDS=ttl)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert f"Invalid setting OTP_TTL_SECONDS={ttl}: expected at least {least} " in lines[0], lines[0]
    assert start(**{**UNSET_CHAIN, **backends}, OTP_TTL_SECONDS=str(least)).returncode == 0


@pytest.mark.parametrize("overrides, name", [
    # No code life alone helps a lease of 71 s (the unset visibility timeout stops at 60), nor does a shorter final
    # reply alone with this code life: the line says what the unset value is and what each way out needs.
    ({"OTP_TTL_SECONDS": "60", "EMAIL_BACKEND": "smtp", "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS": "40"},
     "CELERY_VISIBILITY_TIMEOUT_SECONDS=30 (unset: half of OTP_TTL_SECONDS=60, at most 60)"),
    # At the default code life, a shorter final reply is enough: it is named, with the value that fits.
    ({"EMAIL_BACKEND": "smtp", "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS": "40"}, "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS=40.0: "
                                                                           "expected a value below 28"),
    # A backoff chosen for the operator would have to be under 0.1 s: the retry count is what to change.
    ({"OTP_SEND_MAX_RETRIES": "10"}, "OTP_SEND_MAX_RETRIES=10"),
])
def test_a_chain_no_code_life_repairs_names_the_setting_that_does(overrides, name):
    result = start(**{**UNSET_CHAIN, **overrides})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and f"Invalid setting {name}" in lines[0], result.stderr


@pytest.mark.parametrize("ttl, fitting", [("", 9), ("60", 8)])  # visibility timeouts of 60 s and 30 s
def test_too_many_retries_for_the_visibility_timeout_names_the_count_that_fits(ttl, fitting):
    # An attack pass: OTP_SEND_MAX_RETRIES=10 with a short code life was refused with no count that works.
    result = start(**{**UNSET_CHAIN, "OTP_TTL_SECONDS": ttl, "OTP_SEND_MAX_RETRIES": "10"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Invalid setting OTP_SEND_MAX_RETRIES=10: expected at most {fitting} here"), lines[0]
    assert start(**{**UNSET_CHAIN, "OTP_TTL_SECONDS": ttl, "OTP_SEND_MAX_RETRIES": str(fitting)}).returncode == 0
    assert start(**{**UNSET_CHAIN, "OTP_TTL_SECONDS": ttl, "OTP_SEND_MAX_RETRIES": str(fitting + 1)}).returncode != 0


def test_default_secret_key_with_debug_off_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=BACKEND_DIR, env={**env, "DEBUG": "false"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_twilio_backend_without_credentials_is_refused():
    result = start(SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="")
    assert result.returncode != 0 and "TWILIO_ACCOUNT_SID" in result.stderr


def test_process_environment_wins_and_good_values_start():
    result = start(OTP_LENGTH="8", SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID="AC1", TWILIO_AUTH_TOKEN="t",
                   TWILIO_FROM_NUMBER="+14155550100")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value", ["XX", "US,ZZ", ","])
def test_sms_allowed_regions_must_be_region_codes(value):
    result = start(OTP_SMS_ALLOWED_REGIONS=value)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "OTP_SMS_ALLOWED_REGIONS" in lines[0], result.stderr


def test_a_failure_budget_above_one_percent_of_the_code_space_a_year_stops_start_up():
    result = start(OTP_MAX_FAILURES_PER_DAY="28")  # 28 + 365 x 28 = 10,248 > 10,000
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "OTP_MAX_FAILURES_PER_DAY=28" in lines[0], result.stderr
    assert start(OTP_MAX_FAILURES_PER_DAY="28", OTP_LENGTH="7").returncode == 0

def setting_value(name: str, **overrides) -> str:
    result = subprocess.run([sys.executable, "-c", f"from django.conf import settings; print(settings.{name})"],
                            cwd=BACKEND_DIR, env={**os.environ, **overrides}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("redis_url, broker_url", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
    ("redis://:secret@cache.internal", "redis://:secret@cache.internal/1"),
    ("rediss://cache.internal:6380/4?ssl_cert_reqs=required", "rediss://cache.internal:6380/5?ssl_cert_reqs=required"),
    ("redis://cache.internal?db=2", "redis://cache.internal/3"),  # redis-py reads a `db` query before the path
])
def test_the_broker_defaults_to_the_next_database_of_redis_url(redis_url, broker_url):
    # Contract (Configuration): never the cache's database, whose routine flush would delete the queued jobs.
    assert setting_value("CELERY_BROKER_URL", REDIS_URL=redis_url, CELERY_BROKER_URL="") == broker_url


@pytest.mark.parametrize("redis_url, broker_url", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://127.0.0.1:6379/0", "redis://:password@127.0.0.1"),  # port and database left at their defaults
    ("redis://cache.internal?db=3", "redis://Cache.Internal:6379/3"),
])
def test_a_broker_on_the_cache_database_stops_start_up(redis_url, broker_url):
    result = start(REDIS_URL=redis_url, CELERY_BROKER_URL=broker_url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Invalid setting CELERY_BROKER_URL=" in lines[0], result.stderr
    assert "password" not in result.stderr


def test_a_socket_redis_url_needs_a_broker_url_of_its_own():
    result = start(REDIS_URL="unix:///run/redis/redis.sock?db=0", CELERY_BROKER_URL="")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "CELERY_BROKER_URL" in lines[0], result.stderr
    assert start(REDIS_URL="unix:///run/redis/redis.sock?db=0",
                 CELERY_BROKER_URL="redis://127.0.0.1:6379/1").returncode == 0


@pytest.mark.parametrize("overrides, name", [
    ({"OTP_HMAC_KEY": "k" * 40, "OTP_HMAC_KEY_FALLBACKS": "o" * 40 + ",too-short"}, "OTP_HMAC_KEY_FALLBACKS"),
    # Without OTP_HMAC_KEY the keys derive from SECRET_KEY: these fallbacks would be silently ignored.
    ({"OTP_HMAC_KEY": "", "OTP_HMAC_KEY_FALLBACKS": "o" * 40}, "OTP_HMAC_KEY_FALLBACKS"),
    ({"OTP_THROTTLE_KEY": "too-short"}, "OTP_THROTTLE_KEY"),
])
def test_bad_rotation_keys_stop_start_up_with_one_line_that_shows_no_key(overrides, name):
    result = start(**overrides)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and f"Invalid setting {name}=" in lines[0], result.stderr
    assert "o" * 40 not in result.stderr and "too-short" not in result.stderr


def test_good_rotation_keys_start():
    assert start(OTP_HMAC_KEY="k" * 40, OTP_HMAC_KEY_FALLBACKS="o" * 40 + ", " + "p" * 32,
                 OTP_THROTTLE_KEY="t" * 32).returncode == 0


def test_every_variable_the_settings_read_is_in_env_example_and_the_readme():
    # Contract (Configuration): `.env.example` lists every one; the README's settings table does too.
    repo = BACKEND_DIR.parent
    read = set(re.findall(r'env(?:_str|_int_or_none|_int|_float|_bool|_list|_choice|_rate|\.str)\(\s*"([A-Z][A-Z0-9_]*)"',
                          (BACKEND_DIR / "config" / "settings.py").read_text()))
    # Listed as a setting, or as a commented-out example (WEB_CONCURRENCY: gunicorn reads it too, and refuses it empty).
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", (repo / ".env.example").read_text(), flags=re.MULTILINE))
    readme = (repo / "README.md").read_text()
    assert {"OTP_DELIVERY_RETENTION_DAYS", "OTP_HMAC_KEY_FALLBACKS", "OTP_THROTTLE_KEY"} <= read
    assert read - listed == set()
    assert {name for name in read if f"`{name}`" not in readme} == set()
@pytest.mark.parametrize("value", ["OTP Login <no-reply@example.com>", '"Login, Inc." <no-reply@example.com>',
                                   "Ünïcode <no-reply@bücher.example>", "no-reply@localhost"])
def test_each_shape_of_sender_starts(value):
    result = start(DEFAULT_FROM_EMAIL=value)
    assert result.returncode == 0, result.stderr


# --- Console backends: a development choice, made by name when DEBUG is off (issue 18, item 7) ---

TWILIO = {"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t",
          "TWILIO_FROM_NUMBER": "+14155550100"}


@pytest.mark.parametrize("overrides, name", [
    ({"EMAIL_BACKEND": "console", **TWILIO}, "EMAIL_BACKEND"),
    ({"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend", **TWILIO}, "EMAIL_BACKEND"),
    ({"EMAIL_BACKEND": "smtp", "SMS_BACKEND": "console"}, "SMS_BACKEND"),
    # The contract's default SMS backend is the console: left unset with DEBUG off, it is refused too.
    ({"EMAIL_BACKEND": "smtp", "SMS_BACKEND": ""}, "SMS_BACKEND"),
])
def test_a_console_backend_with_debug_off_stops_start_up_unless_chosen_by_name(overrides, name):
    result = start(DEBUG="false", OTP_CONSOLE_CODES="", **overrides)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and f"Invalid setting {name}=" in lines[0], result.stderr
    assert "OTP_CONSOLE_CODES=on" in lines[0]
    assert start(DEBUG="false", OTP_CONSOLE_CODES="on", **overrides).returncode == 0
    assert start(DEBUG="true", OTP_CONSOLE_CODES="", **overrides).returncode == 0


def test_production_backends_need_no_console_choice():
    result = start(DEBUG="false", OTP_CONSOLE_CODES="off", EMAIL_BACKEND="smtp", **TWILIO)
    assert result.returncode == 0, result.stderr


def test_a_channel_turned_off_keeps_its_console_backend_without_a_choice():
    # An email-only service: the contract's default SMS backend stays, and prints nothing, since no SMS is sent.
    assert start(DEBUG="false", OTP_CONSOLE_CODES="", EMAIL_BACKEND="smtp", SMS_BACKEND="",
                 OTP_SMS_PER_HOUR="0").returncode == 0
    assert start(DEBUG="false", OTP_CONSOLE_CODES="", EMAIL_BACKEND="console", OTP_EMAIL_PER_HOUR="0",
                 **TWILIO).returncode == 0


def test_env_example_does_not_ship_console_backends_silently(tmp_path):
    """`.env.example` copied as it is (with the required secrets filled in) does not start with DEBUG off and a
    console backend: its one line says how to choose."""
    from tests.support.processes import REPO_DIR

    example = (REPO_DIR / ".env.example").read_text()
    dotenv = tmp_path / ".env"
    dotenv.write_text(example)
    env = {key: value for key, value in os.environ.items()
           if key not in ("DEBUG", "EMAIL_BACKEND", "SMS_BACKEND", "OTP_CONSOLE_CODES")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=BACKEND_DIR, capture_output=True, text=True,
                            env={**env, "ENV_FILE": str(dotenv)}, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "OTP_CONSOLE_CODES=on" in lines[0], result.stderr


def test_an_env_file_that_names_no_file_stops_start_up():
    # Passed over in silence, start-up then stopped on an unrelated setting the file would have set (an attack pass).
    result = start(ENV_FILE="no-such.env")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Invalid setting ENV_FILE='no-such.env': expected a file;"), lines[0]


def test_a_relative_env_file_is_read_from_the_checkouts_root_whatever_the_working_directory(tmp_path):
    # `make up` runs the settings from backend/, `make run` from the root: one relative ENV_FILE named two files.
    from tests.support.processes import REPO_DIR

    dotenv = tmp_path / "operator.env"
    dotenv.write_text("OTP_LENGTH=six\n")  # refused: proof that the file was read
    relative = os.path.relpath(dotenv, REPO_DIR)
    result = start(ENV_FILE=relative)  # from backend/
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "OTP_LENGTH" in lines[0], result.stderr


# --- Android's SMS Retriever hash, and the cross-origin list ---

@pytest.mark.parametrize("value", ["FA+9qCX9VS", "FA+9qCX9VSu!", "FA-9qCX9VSu", "FA123456VSu"])
def test_sms_app_hash_must_be_eleven_base64_characters_without_a_code_length_digit_run(value):
    result = start(OTP_SMS_APP_HASH=value)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Invalid setting OTP_SMS_APP_HASH=" in lines[0], result.stderr


def test_sms_app_hash_keeps_the_sms_in_one_segment():
    assert start(OTP_SMS_APP_HASH="FA12345+VSu").returncode == 0
    # 160 GSM-7 characters do not hold this name; 70 UCS-2 ones do not hold a Japanese name of 20 characters.
    for name in ("Acme " + "x" * 80, "ログインサービスのとても長い名前ですよね本当に"):
        result = start(OTP_SMS_APP_HASH="FA+9qCX9VSu", SERVICE_NAME=name)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert "Invalid setting OTP_SMS_APP_HASH=" in lines[0] and "SERVICE_NAME" in lines[0], lines[0]
        assert start(SERVICE_NAME=name).returncode == 0  # without the hash, a longer SMS is the operator's call


@pytest.mark.parametrize("value", ["*", "https://app.example.com/", "app.example.com", "https://a.example.com/login"])
def test_cors_allowed_origins_must_be_origins(value):
    result = start(CORS_ALLOWED_ORIGINS=value)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "CORS_ALLOWED_ORIGINS" in lines[0], result.stderr
    assert start(CORS_ALLOWED_ORIGINS="https://app.example.com, http://localhost:3000").returncode == 0
# The input: passwords with the characters that end a URL's userinfo or path (`/`, `@`, `#`, `:`, `%`).
AWKWARD_PASSWORD = "p/ss@wo#rd:%20 x"


def test_redis_password_given_apart_goes_into_both_urls_percent_encoded():
    # docker-compose.yml passes REDIS_PASSWORD apart from REDIS_URL: compose cannot percent-encode it.
    encoded = "p%2Fss%40wo%23rd%3A%2520%20x"
    env = {"REDIS_URL": "redis://redis:6379/0", "CELERY_BROKER_URL": "", "REDIS_PASSWORD": AWKWARD_PASSWORD}
    assert setting_value("REDIS_URL", **env) == f"redis://:{encoded}@redis:6379/0"
    assert setting_value("CELERY_BROKER_URL", **env) == f"redis://:{encoded}@redis:6379/1"
    # What redis-py and kombu read back out of those URLs is the password itself.
    import redis
    from kombu.utils.url import parse_url

    assert redis.ConnectionPool.from_url(f"redis://:{encoded}@redis:6379/0").connection_kwargs["password"] \
        == AWKWARD_PASSWORD
    assert parse_url(f"redis://:{encoded}@redis:6379/1")["password"] == AWKWARD_PASSWORD


def test_redis_password_given_apart_leaves_urls_with_their_own_password_and_other_redis_servers_alone():
    env = {"REDIS_PASSWORD": AWKWARD_PASSWORD}
    assert setting_value("REDIS_URL", REDIS_URL="redis://:own@redis:6379/0", **env) == "redis://:own@redis:6379/0"
    assert setting_value("CELERY_BROKER_URL", REDIS_URL="redis://redis:6379/0",
                         CELERY_BROKER_URL="redis://broker.internal:6379/0", **env) == "redis://broker.internal:6379/0"


def test_gunicorn_workers_are_bounded_whatever_the_host_cpu_count():
    # The input: on a 24-core host 2 x cores + 1 = 49 workers, each with a PostgreSQL connection: the API
    # alone would pass PostgreSQL's default max_connections (100) once scaled to two containers.
    code = ("import multiprocessing, runpy; multiprocessing.cpu_count = lambda: 24; "
            "print(runpy.run_path('config/gunicorn.conf.py')['workers'])")
    env = {**os.environ, "WEB_CONCURRENCY": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=BACKEND_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == 8
    env["WEB_CONCURRENCY"] = "3"
    result = subprocess.run([sys.executable, "-c", code], cwd=BACKEND_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert int(result.stdout.strip()) == 3


# --- `.env` itself (a careless-operator pass: each of these was read silently, or skipped with a plain warning) ---

KEY = "k" * 50


@pytest.mark.parametrize("content, name, words", [
    ("OTP_TTL_SECONDS = 300\n", "OTP_TTL_SECONDS", "Invalid line 1"),  # skipped: the default 120 was used
    ("DEBUG=false\nOTP_LENGTH=6\nDEBUG=true\n", "DEBUG", "set twice"),  # the last won, silently
    ("OTP_TTL=300\n", "OTP_TTL", "no setting has this name"),  # a typo, ignored
    ("SERVICE_NAME=Acme Login # our brand\n", "SERVICE_NAME", "a comment"),  # in every Subject (a new-user pass)
    ('SERVICE_NAME="Acme" # brand\n', "SERVICE_NAME", "a comment or text after the value"),  # quotes included
    ("OTP_MAX_ATTEMPTS=5  # five tries\n", "OTP_MAX_ATTEMPTS", "a comment"),  # named the value, not the comment
    ("otp_sends_per_hour=3\n", "otp_sends_per_hour", "did you mean OTP_SENDS_PER_HOUR"),
    ("STACK_DIR=/srv/stack\n", "STACK_DIR", "from the environment only"),  # bin/stack never read it there
    (f"SECRET_KEY={KEY} # rotated on 1 December\n", "SECRET_KEY", "a comment"),  # it was part of the key
    (f"SECRET_KEY_FALLBACKS={'a' * 40} {'b' * 40}\n", "SECRET_KEY_FALLBACKS", "without spaces"),  # one key
    ("ALLOWED_HOSTS=localhost 127.0.0.1\n", "ALLOWED_HOSTS", "without spaces"),  # one host: every request 400
    ("WEB_CONCURRENCY=0\n", "WEB_CONCURRENCY", ">= 1"),  # gunicorn took connections and answered none
    ("WEB_CONCURRENCY=four\n", "WEB_CONCURRENCY", "an integer"),  # gunicorn's traceback
    # django-environ read `$NAME` as the value of NAME: refused rather than quietly taken as text (a review).
    ("CELERY_BROKER_URL=$REDIS_URL\n", "CELERY_BROKER_URL", "the value itself"),
    (f"JWT_SIGNING_KEY=${KEY}!\n", "JWT_SIGNING_KEY", "does not start with $"),  # it ran on SECRET_KEY's
])
def test_an_env_file_line_the_service_cannot_use_stops_start_up_with_one_line(tmp_path, content, name, words):
    env_file = tmp_path / ".env"
    env_file.write_text(content)
    overrides = {key: value for key, value in os.environ.items() if key not in
                 {"OTP_TTL_SECONDS", "DEBUG", "SECRET_KEY", "SECRET_KEY_FALLBACKS", "ALLOWED_HOSTS", "WEB_CONCURRENCY",
                  "CELERY_BROKER_URL", "JWT_SIGNING_KEY", "SERVICE_NAME", "OTP_MAX_ATTEMPTS"}}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=BACKEND_DIR, capture_output=True, text=True,
                            timeout=60, env={**overrides, "ENV_FILE": str(env_file), "DEBUG": "true"}
                            if name != "DEBUG" else {**overrides, "ENV_FILE": str(env_file)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert name in lines[0] and words in lines[0], lines[0]
    assert KEY not in lines[0] and "a" * 40 not in lines[0]  # never the value of a key


def test_an_env_file_with_a_byte_order_mark_and_a_key_starting_with_a_dollar_is_read_as_written(tmp_path):
    # The mark made the first line unreadable; django-environ took `$...` for the name of another variable, and
    # Django's generated keys may start with `$`: both ended in "SECRET_KEY='<default>'".
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"\xef\xbb\xbfSECRET_KEY=$" + KEY.encode() + b"!^(\nexport OTP_LENGTH=8\n"  # as Django makes them
                         b"SERVICE_NAME='Acme #1 Login'\nDEFAULT_FROM_EMAIL=\"Acme <no-reply@acme.example>\"\n")
    overrides = {key: value for key, value in os.environ.items()
                 if key not in {"SECRET_KEY", "OTP_LENGTH", "SERVICE_NAME", "DEFAULT_FROM_EMAIL"}}
    script = ("from django.conf import settings; print(settings.SECRET_KEY == '$' + 'k' * 50 + '!^(', settings.OTP_LENGTH, "
              "settings.SERVICE_NAME == 'Acme #1 Login', settings.DEFAULT_FROM_EMAIL == 'Acme <no-reply@acme.example>')")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=BACKEND_DIR, capture_output=True,
                            text=True, timeout=60, env={**overrides, "ENV_FILE": str(env_file), "DEBUG": "false",
                                                        "OTP_CONSOLE_CODES": "on"})
    assert result.stdout.strip().splitlines()[-1:] == ["True 8 True True"], result.stderr


def test_every_setting_env_example_names_and_the_libraries_variables_are_accepted_in_env(tmp_path):
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", (REPO_DIR / ".env.example").read_text(), flags=re.MULTILINE)
    env_file = tmp_path / ".env"
    # And the libraries' own variables, which `.env` passes into the environment as before (a review).
    others = "PGSSLMODE=require\nTZ=UTC\nHTTPS_PROXY=http://proxy.example:3128\nREQUESTS_CA_BUNDLE=/etc/ssl/ca.pem\n"
    env_file.write_text("".join(f"{name}=\n" for name in dict.fromkeys(names)) + others)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=BACKEND_DIR, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "ENV_FILE": str(env_file), "DEBUG": "true"})
    assert result.returncode == 0 and len(names) > 60, result.stderr
