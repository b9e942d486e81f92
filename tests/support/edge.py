"""An nginx of its own in front of a running API, rendered by `manage.py nginx_config` from the same templates as
the stacks' with settings of the test's choosing (ADMIN_PUBLIC on, say), and clients that connect from a given
loopback address, so nginx sees them as different clients."""
import http.client
import os
import re
import select
import socket
import subprocess
import sys
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from tests.support.processes import BACKEND_DIR, LOG_DIR, ManagedProcess
from tests.support.waiting import free_port, wait_for


class LoneNginx:
    """nginx on a free port proxying to 127.0.0.1:`api_port`; `settings` are environment values for the render."""

    def __init__(self, stack_dir: Path, *, api_port: int, **settings: str) -> None:
        self.stack_dir = stack_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ENV_FILE": "", "HTTP_PORT": str(self.port), "API_PORT": str(api_port), **settings}
        self.process: ManagedProcess | None = None

    def start(self) -> "LoneNginx":
        # A free port can be taken between free_port() and nginx's bind (the machine runs other tests, and this
        # suite's own clients use ephemeral ports): then another port, a few times.
        for _ in range(3):
            if self._start_on_port():
                return self
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.env["HTTP_PORT"] = str(self.port)
        raise AssertionError(f"nginx could not bind a free port:\n{self.process.log()[-2000:]}")

    def _start_on_port(self) -> bool:
        subprocess.run([sys.executable, "manage.py", "nginx_config", str(self.stack_dir)], cwd=BACKEND_DIR,
                       env=self.env, check=True, capture_output=True, timeout=60)
        (self.stack_dir / "log").mkdir(exist_ok=True)
        (self.stack_dir / "nginx" / "tmp").mkdir(exist_ok=True)
        (self.stack_dir / "nginx" / "tmp").chmod(0o777)  # its workers run as nobody
        self.process = ManagedProcess(
            f"lone-nginx-{self.port}",
            ["nginx", "-c", str(self.stack_dir / "nginx" / "nginx.conf"), "-e",
             str(self.stack_dir / "log" / "nginx-error.log"), "-g", "daemon off;"],
            env=self.env, log_dir=LOG_DIR).start()

        def listening_or_exited():
            if self.process.process.poll() is not None:
                return "exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return "listening"
            except OSError:
                return None

        outcome = wait_for(listening_or_exited, timeout=15, message="nginx to listen")
        if outcome == "exited":
            assert "Address already in use" in self.process.log(), self.process.log()
            return False
        return True

    def stop(self) -> None:
        if self.process:
            self.process.stop()


class _FromAddress(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    """A requests session whose connections start from `address` (one of 127.0.0.0/8)."""
    session = requests.Session()
    session.mount("http://", _FromAddress(address))
    return session


def admin_sign_in(session: requests.Session, base_url: str, username: str, password: str) -> requests.Response:
    """The admin's sign-in form as a browser sends it: its page first (the CSRF cookie and token), then the form.
    Returns the answer to the form, redirects not followed (302 to /admin/ on success)."""
    page = session.get(f"{base_url}/admin/login/?next=/admin/", timeout=15)
    assert page.status_code == 200, page.text[:300]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    return session.post(f"{base_url}/admin/login/?next=/admin/", timeout=15, allow_redirects=False,
                        data={"csrfmiddlewaretoken": token, "username": username, "password": password,
                              "next": "/admin/"})


def register_from(nginx: LoneNginx, peer: str, forwarded_for: str, email: str) -> int:
    """The status of a /register/ for `email` sent to `nginx` from the loopback address `peer`, with
    X-Forwarded-For `forwarded_for` (as a load balancer in front would write it)."""
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(peer, 0))
    try:
        connection.request("POST", "/register/", body=f'{{"email": "{email}"}}',
                           headers={"Content-Type": "application/json", "X-Forwarded-For": forwarded_for})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def sockets_answered(held: list[socket.socket], count: int, *, message: str, timeout: float = 5) -> list[socket.socket]:
    """Wait until at least `count` of the sockets `held` (requests nginx holds open, or refuses) have an answer to
    read; return those sockets. Fails with `message` after `timeout` seconds."""
    def answered():
        readable, _, _ = select.select(held, [], [], 0.1)
        return readable if len(readable) >= count else None

    return wait_for(answered, timeout=timeout, message=message)
