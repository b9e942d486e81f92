"""nginx's configuration as rendered for both stacks: sized alike, the trusted proxies rendered alike, and the
settings that feed it checked at start-up (docs/operations.md, "TLS" and "Admin")."""
import io
import os
import re
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.test import override_settings

from core.management.commands.nginx_config import real_ip_render
from tests.support.processes import REPO_DIR
from tests.unit.test_settings import start

NGINX_DIR = REPO_DIR / "nginx"
SIZING = re.compile(r"^\s*(worker_processes|worker_rlimit_nofile|worker_connections)\s+(\S+);", re.MULTILINE)


def test_compose_and_the_native_stack_size_nginx_alike():
    native = dict(SIZING.findall((NGINX_DIR / "native.conf.template").read_text()))
    compose = dict(SIZING.findall((NGINX_DIR / "compose.conf").read_text()))
    assert native == compose
    assert native["worker_processes"] == "auto"  # one per core
    # Every connection is a descriptor, a proxied one two: the limit leaves room for all of them.
    assert int(native["worker_rlimit_nofile"]) >= 2 * int(native["worker_connections"]) >= 2 * 4096



def test_compose_gives_nginx_exactly_the_descriptors_it_asks_for():
    import yaml

    sizing = dict(SIZING.findall((NGINX_DIR / "compose.conf").read_text()))
    service = yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text())["services"]["nginx"]
    # nginx in a container cannot raise the hard limit worker_rlimit_nofile needs; more than that would be refused
    # by an engine whose own hard limit is lower (runc: "error setting rlimit type 7", seen on the CI hosts).
    assert service["ulimits"]["nofile"] == int(sizing["worker_rlimit_nofile"])

@pytest.mark.parametrize("ranges", [[], ["10.0.0.0/8"], ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]])
def test_compose_writes_the_trusted_proxies_as_the_native_stack_does(tmp_path, ranges):
    out = tmp_path / "real-ip.conf"
    subprocess.run(["sh", str(NGINX_DIR / "trusted-proxies.sh")], check=True, timeout=10,
                   env={"PATH": os.environ["PATH"], "TRUSTED_PROXY_RANGES": ", ".join(ranges),
                        "NGINX_REAL_IP_CONF": str(out)})
    assert out.read_text() == real_ip_render(ranges)


@override_settings(TRUSTED_PROXY_RANGES=["10.0.0.0/8", "2001:db8::/32"], ADMIN_PUBLIC=False)
def test_the_trusted_ranges_and_the_admin_switch_reach_the_rendered_config(tmp_path):
    call_command("nginx_config", str(tmp_path), stdout=io.StringIO())
    real_ip = (tmp_path / "nginx" / "real-ip.conf").read_text()
    assert "set_real_ip_from 10.0.0.0/8;" in real_ip and "set_real_ip_from 2001:db8::/32;" in real_ip
    assert "real_ip_header X-Forwarded-For;" in real_ip and "real_ip_recursive on;" in real_ip
    assert "geo $realip_remote_addr $otp_from_trusted_proxy {" in real_ip and "    10.0.0.0/8 1;" in real_ip
    default = (tmp_path / "nginx" / "default.conf").read_text()
    assert "include real-ip.conf;" in default
    assert 'map "off" $otp_admin_public' in default


@pytest.mark.parametrize("overrides, name", [
    ({"TRUSTED_PROXY_RANGES": "10.0.0.0/33"}, "TRUSTED_PROXY_RANGES"),
    ({"TRUSTED_PROXY_RANGES": "balancer.internal"}, "TRUSTED_PROXY_RANGES"),
    # nginx appends the client it resolved: Django must trust exactly that one entry.
    ({"TRUSTED_PROXY_RANGES": "10.0.0.0/8", "TRUSTED_PROXY_COUNT": "2"}, "TRUSTED_PROXY_COUNT"),
    ({"TRUSTED_PROXY_RANGES": "10.0.0.0/8", "TRUSTED_PROXY_COUNT": "0"}, "TRUSTED_PROXY_COUNT"),
    # A balancer nginx does not know of: nginx would key every client's limits on the balancer's address.
    ({"TRUSTED_PROXY_COUNT": "2"}, "TRUSTED_PROXY_COUNT"),
    ({"ADMIN_PUBLIC": "perhaps"}, "ADMIN_PUBLIC"),
])
def test_an_inconsistent_proxy_setting_stops_start_up_with_one_line_naming_it(overrides, name):
    result = start(**overrides)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Invalid setting {name}=" in lines[0], result.stderr


def test_ranges_with_host_bits_start_and_are_read_as_their_networks():
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "from django.conf import settings; print(settings.TRUSTED_PROXY_RANGES)"],
        cwd=REPO_DIR / "backend", capture_output=True, text=True, timeout=60,
        env={**os.environ, "TRUSTED_PROXY_RANGES": " 10.1.2.3/8 , 192.0.2.7,2001:db8::1/32"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['10.0.0.0/8', '192.0.2.7/32', '2001:db8::/32']"

