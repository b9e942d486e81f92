"""Requests gunicorn refuses before the app sees them are answered in JSON (contract: every error is JSON).

nginx passes these on as they are and relays gunicorn's answer untouched (proxy_intercept_errors is off), so
what gunicorn writes is what the client gets through nginx; they are sent here to gunicorn's port directly.
"""
import json
import socket

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b'{"email": "a@example.com"}'
REFUSED = [
    ("a second Content-Type", b"POST /register/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY),
    ("a control character in a header value", b"GET /profile/ HTTP/1.1\r\nHost: localhost\r\n"
     b"Authorization: Bearer a\x01b\r\n\r\n"),
    ("a raw non-ASCII byte in the path", b"GET /h\xc3\xa9/ HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    ("a raw non-ASCII byte in the query", b"GET /healthz?q=\xff HTTP/1.1\r\nHost: localhost\r\n\r\n"),
]


def raw_answer(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("name, data", REFUSED, ids=[case[0] for case in REFUSED])
def test_requests_gunicorn_refuses_get_a_json_400(base_env, stacks, private_redis, name, data):
    api = stacks({**base_env, "REDIS_URL": private_redis.url}, api_workers=1).start_api()
    status, headers, body = raw_answer(api.api_port, data)
    assert status == 400, (status, body[:300])
    assert headers["content-type"] == "application/json", (headers, body[:300])
    answer = json.loads(body)
    assert answer["code"] == "bad_request" and isinstance(answer["detail"], str) and answer["detail"], answer
    assert headers["cache-control"] == "no-store"


def test_head_answers_carry_no_body_and_leave_no_warning_in_the_log(base_env, stacks, private_redis):
    # Django writes GET's body for HEAD; gunicorn dropped it with a warning line per request ("WSGI app sent body
    # bytes on a no-body response", request id "-"): a balancer checking health with HEAD filled the log (found by
    # a new-user pass). RFC 9110 section 9.3.2: no content, the GET's headers, Content-Length among them.
    api = stacks({**base_env, "REDIS_URL": private_redis.url}, api_workers=1).start_api()
    for path in ("/healthz", "/home/", "/api/docs/", "/api/schema/", "/nowhere/"):
        status, headers, body = raw_answer(api.api_port, f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\n"
                                                         "Connection: close\r\n\r\n".encode())
        got = raw_answer(api.api_port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        assert (status, body) == (got[0], b""), (path, status, body[:100])
        assert headers.get("content-length") == str(len(got[2])), (path, headers)
    assert "no-body response" not in api.api.log(), api.api.log()[-2000:]
