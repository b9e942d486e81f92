"""The compose file, checked without a Docker engine: it parses, and it runs what the native stack runs."""
import io
import re
import shlex
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
# Variables only the compose file needs: the containers' own passwords and nginx's upstream address.
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "POSTGRES_DB", "REDIS_PASSWORD", "REDISCLI_AUTH", "API_UPSTREAM",
                "NGINX_ACCESS_LOG"}


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


def test_scalable_workers_have_no_fixed_name_or_port(services):
    for name in ("worker-email", "worker-sms"):
        assert "container_name" not in services[name] and "ports" not in services[name]


def test_redis_persists_and_needs_a_password(services):
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--requirepass" in command
    assert services["redis"]["volumes"] == ["redisdata:/data"]
    assert "${REDIS_PASSWORD" in services["api"]["environment"]["REDIS_URL"]


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
    pid_file = re.search(r"^pid (\S+);", (tmp_path / "nginx" / "nginx.conf").read_text(), re.MULTILINE)[1]
    assert Path(pid_file).parent == tmp_path / "nginx"


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
