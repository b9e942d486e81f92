"""Every error nginx answers itself is JSON with `detail` and `code`, with the security headers (and Retry-After
where it applies), and untrusted input through nginx gets the API's 4xx, never a 500 (contract: HTTP API)."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest
import requests

from tests.support.processes import BACKEND_DIR, LOG_DIR, ManagedProcess
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# The API's answers carry Cache-Control from Django; nginx's own answers set it themselves (contract: HTTP API).
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin",
                    "cache-control": "no-store"}


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> RawAnswer | None:
    """Send `data` as it is (nginx must see it malformed) and read until nginx closes; None if it sent nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return raw_answer_parse(received) if received else None


def raw_answer_parse(received: bytes) -> RawAnswer:
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers.get("content-length", ["-1"])[0])
    return RawAnswer(int(lines[0].split()[1]), headers, body[:length] if length >= 0 else body)


def assert_nginx_json_error(answer: RawAnswer | None, status: int, code: str, retry_after: str | None = None):
    assert answer is not None, "nginx closed the connection without an answer"
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"] == ["application/json"], answer.headers
    body = answer.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"], body
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == [value], (name, answer.headers)  # present, and once
    assert answer.headers.get("retry-after") == ([retry_after] if retry_after else None), answer.headers
    assert len(answer.headers.get("x-request-id", [])) == 1, answer.headers  # as on the API's answers
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"][0]), answer.headers


MALFORMED = [
    ("a request line that is not HTTP", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("two Host headers", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
    ("a header line without a name", b"GET /healthz HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400, "bad_request"),
    ("headers too large", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 400,
     "bad_request"),
    ("a negative Content-Length", b"POST /register/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400,
     "bad_request"),
    ("a broken chunked body", b"POST /register/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
     400, "bad_request"),
    ("a URI too long", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri_too_long"),
    ("TRACE", b"TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
    ("an unknown Transfer-Encoding", b"POST /register/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "not_implemented"),
    ("HTTP/2.0 on the HTTP/1 port", b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505, "http_version_not_supported"),
    ("a body over 64 KiB", b"POST /register/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
     b"Content-Length: 200000\r\nConnection: close\r\n\r\n", 413, "request_too_large"),
    # Both headers (RFC 9112 section 6.1: a server may refuse them together, a request-smuggling shape): nginx
    # refuses it, and its answer was its HTML 413 page, the body limit checked again in the error location (an
    # attack pass). Now its JSON 400.
    ("a Content-Length over 64 KiB beside chunked", b"POST /register/ HTTP/1.1\r\nHost: a\r\nContent-Type: "
     b"application/json\r\nContent-Length: 70100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
     400, "bad_request"),
    ("chunked beside a Content-Length over 64 KiB", b"POST /register/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
     b"chunked\r\nContent-Length: 70100\r\nConnection: close\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    # nginx resolves dot-segments to pick a location, Django does not: /admin/../x reached the admin past nginx.
    ("a dot-segment past the admin's location", b"GET /admin/../x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
     400, "bad_request"),
    ("percent-encoded dot-segments", b"GET /admin/users/user/%2e%2E/%2E./1/change/ HTTP/1.1\r\nHost: a\r\n"
     b"Connection: close\r\n\r\n", 400, "bad_request"),
    ("a single-dot segment", b"GET /admin/./ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400, "bad_request"),
    ("nginx's own error location asked for directly", b"GET /_nginx_error HTTP/1.1\r\nHost: a\r\nConnection: close"
     b"\r\n\r\n", 404, "not_found"),
]


@pytest.mark.parametrize("name, data, status, code", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_nginx_answers_malformed_requests_in_json(stack, name, data, status, code):
    assert_nginx_json_error(raw_request(stack.http_port, data), status, code)


def test_dots_that_are_not_dot_segments_pass(stack):
    def status(target: bytes) -> int:
        return raw_request(stack.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n"
                                                              b"Connection: close\r\n\r\n").status

    assert status(b"/healthz?next=/../x") == 200 and status(b"/healthz?next=/./") == 200
    assert status(b"/static/otp/..css") == 404  # a name with dots: the API's own 404


def test_nginx_edge_429_is_json_with_retry_after_and_the_security_headers(stack):
    request = (b"POST /login/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
               b"Connection: close\r\n\r\n{}")
    answers = []
    for _ in range(20):  # EDGE_SEND_RATE 2r/s with a burst of 5 in this stack
        with socket.create_connection(("127.0.0.1", stack.http_port), timeout=10,
                                      source_address=("127.0.0.6", 0)) as sock:
            sock.sendall(request)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            answers.append(raw_answer_parse(received))
    # nginx's own answers carry no `Allow` header; the API's (its per-IP limit may also answer) do.
    limited = [answer for answer in answers if answer.status == 429 and "allow" not in answer.headers]
    assert limited, [answer.status for answer in answers]
    assert_nginx_json_error(limited[0], 429, "throttled", retry_after="1")


@pytest.mark.parametrize("method, path", [("POST", "/nowhere/"), ("POST", "/register"), ("PUT", "/verify-otp"),
                                          ("DELETE", "/token/refresh"), ("POST", "/metrics/")])
def test_unknown_paths_and_missing_slashes_are_json_404_through_nginx(stack, method, path):
    response = requests.request(method, f"{stack.url}{path}", json={}, timeout=10)
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_the_issues_input_is_a_400_every_time_through_nginx(stack):
    email = "a" * 40 + "@" + "ü." * 105 + "com"
    for _ in range(3):  # the cooldown was given back after each 500, so it repeated at will
        response = requests.post(f"{stack.url}/register/", json={"email": email}, timeout=10,
                                 headers={"X-Forwarded-For": "198.51.100.77"})
        assert response.status_code == 400 and "email" in response.json(), response.text


@pytest.mark.parametrize("content_type", ["application/json; charset=rot13", "application/json; charset=zlib"])
def test_a_charset_that_is_no_text_encoding_is_415_through_nginx(stack, content_type):
    response = requests.post(f"{stack.url}/verify-otp/", data=b'{"email": "a@example.com", "code": "123456"}',
                             headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


# --- statuses that need an API that is down or slow, or a client that is: nginx alone, on the same config ----------


class _Upstream:
    """What nginx proxies to: a request for /slow is never answered; any other is closed unanswered."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            data = conn.recv(65536)
            if b" /slow" in data.split(b"\r\n", 1)[0]:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def lone_nginx(tmp_path_factory):
    """nginx from the stack's template, rendered by `manage.py nginx_config`, in front of _Upstream. Only its
    timeouts are shortened in the rendered copy, so a test waits 2 s instead of 10 or 30."""
    upstream = _Upstream()
    stack_dir = tmp_path_factory.mktemp("lone-nginx")
    http_port = free_port()
    env = {**os.environ, "ENV_FILE": "", "HTTP_PORT": str(http_port), "API_PORT": str(upstream.port)}
    subprocess.run([sys.executable, "manage.py", "nginx_config", str(stack_dir)], cwd=BACKEND_DIR, env=env,
                   check=True, capture_output=True)
    conf = stack_dir / "nginx" / "default.conf"
    text = conf.read_text()
    for directive in ("proxy_read_timeout 30s", "client_body_timeout 10s"):
        assert directive in text
        text = text.replace(directive, directive.split()[0] + " 2s")
    conf.write_text(text)
    (stack_dir / "log").mkdir()
    (stack_dir / "nginx" / "tmp").mkdir()
    (stack_dir / "nginx" / "tmp").chmod(0o777)
    nginx = ManagedProcess(f"lone-nginx-{http_port}", ["nginx", "-c", str(stack_dir / "nginx" / "nginx.conf"), "-e",
                                                        str(stack_dir / "log" / "nginx-error.log"), "-g", "daemon off;"],
                           env=env, log_dir=LOG_DIR).start()

    def listening():
        try:
            socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
            return True
        except OSError:
            assert nginx.process.poll() is None, nginx.log()
            return False

    wait_for(listening, timeout=15, message="nginx to listen")
    yield http_port
    nginx.stop()
    upstream.close()


def test_an_api_that_is_down_is_a_json_502_with_retry_after(lone_nginx):
    answer = raw_request(lone_nginx, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert_nginx_json_error(answer, 502, "bad_gateway", retry_after="5")


def test_an_api_that_does_not_answer_is_a_json_504_with_retry_after(lone_nginx):
    answer = raw_request(lone_nginx, b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert_nginx_json_error(answer, 504, "gateway_timeout", retry_after="5")


def test_a_client_too_slow_with_its_body_never_gets_an_html_page(lone_nginx):
    # nginx gives up on a body that stops arriving. Over HTTP/1.1 it closes without a word; whatever it may
    # send is the JSON 408.
    answer = raw_request(lone_nginx, b"POST /register/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 100\r\n\r\n{", timeout=10)
    if answer is not None:
        assert_nginx_json_error(answer, 408, "request_timeout")


@pytest.mark.parametrize("public_url, hsts", [("https://login.example.test", "max-age=31536000; includeSubDomains"),
                                              ("http://localhost:8080", None)])
def test_nginx_errors_carry_hsts_exactly_when_the_public_url_is_https(tmp_path, public_url, hsts):
    from tests.support.edge import LoneNginx

    nginx = LoneNginx(tmp_path, api_port=free_port(), PUBLIC_BASE_URL=public_url).start()  # no API behind it
    try:
        for request, status in ((b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404),
                                (b"GET /admin/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404),
                                (b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 502)):
            answer = raw_request(nginx.port, request)
            assert answer.status == status and answer.headers["cache-control"] == ["no-store"], answer
            assert answer.headers.get("strict-transport-security") == ([hsts] if hsts else None), answer.headers
    finally:
        nginx.stop()
