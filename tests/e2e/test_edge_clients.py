"""Who nginx's limits count as one client (nginx/templates/default.conf.template, $otp_client): an IPv4 address,
the /64 network of an IPv6 address, and an IPv4-mapped IPv6 address as its IPv4 one; as the API's throttles do
(core.throttling.client_key). The clients are named through a trusted balancer's X-Forwarded-For, as real IPv6
clients reach most deployments; no API runs behind this nginx, so a request it lets through is its JSON 502."""
import select
import socket

import pytest

from tests.e2e.test_nginx_errors import assert_nginx_json_error, raw_answer_parse
from tests.support.edge import LoneNginx, register_from, sockets_answered
from tests.support.waiting import free_port

BALANCER = "127.0.0.40"
PER_CLIENT_REQUESTS = 100  # the template's limit_conn


@pytest.fixture
def edge(tmp_path):
    """nginx trusting a balancer at BALANCER, allowing a send a minute and a burst of one, and no API behind it."""
    nginx = LoneNginx(tmp_path, api_port=free_port(), TRUSTED_PROXY_RANGES=f"{BALANCER}/32",
                      EDGE_SEND_RATE="1r/m", EDGE_SEND_BURST="1").start()
    yield nginx
    nginx.stop()


def _send_status(nginx: LoneNginx, client: str) -> int:
    return register_from(nginx, BALANCER, client, "a@example.com")


def test_the_send_flood_guard_counts_an_ipv6_client_by_its_64(edge):
    # Keyed by the whole address, a client holding a /64 took a fresh address for each request and was never
    # limited: each of these was let through.
    # Two sends a client (the rate's one and the burst's one), then 429.
    assert [_send_status(edge, f"2001:db8:1:2::{n:x}") for n in (1, 0xa, 0xffff)] == [502, 502, 429]
    assert _send_status(edge, "2001:db8:1:2:aaaa:bbbb:cccc:dddd") == 429
    assert [_send_status(edge, "2001:db8:1:3::1") for _ in range(2)] == [502, 502]  # the next /64: another client
    # IPv4 clients stay one each, and a mapped one is its IPv4 address (not the ::/64 every mapped one shares).
    assert [_send_status(edge, "198.51.100.1") for _ in range(2)] == [502, 502]
    assert [_send_status(edge, "198.51.100.2") for _ in range(2)] == [502, 502]
    assert [_send_status(edge, address) for address in ("::ffff:198.51.100.3", "198.51.100.3", "198.51.100.3")] \
        == [502, 502, 429]
    assert [_send_status(edge, "::ffff:198.51.100.4") for _ in range(2)] == [502, 502]


def _slow_body(nginx: LoneNginx, client: str) -> socket.socket:
    """A request whose header is whole and whose body never comes: it holds one of the client's requests in
    progress until nginx's body timeout."""
    sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=10, source_address=(BALANCER, 0))
    sock.sendall(f"POST /register/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {client}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
    return sock


def test_requests_in_progress_are_counted_per_ipv6_64(edge):
    # One more request than the cap from each of the /64's addresses: keyed by the whole address, none was refused.
    extra = 5
    held = [_slow_body(edge, f"2001:db8:7:7::{n:x}") for n in range(PER_CLIENT_REQUESTS + extra)]
    try:
        answered = sockets_answered(held, extra, message=f"{extra} of the /64's requests to be refused")
        assert len(answered) == extra
        received = answered[0].recv(65536)
        assert_nginx_json_error(raw_answer_parse(received), 429, "throttled", retry_after="1")
        # Another /64 is another client.
        other = _slow_body(edge, "2001:db8:7:8::1")
        held.append(other)
        assert select.select([other], [], [], 0.5)[0] == []
    finally:
        for sock in held:
            sock.close()
