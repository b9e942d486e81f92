"""Slow clients against the native stack's nginx, with its default sizing (docs/reliability.md, "Slow clients"):
a slowloris from one address does not starve other clients, a body that stops arriving is cut off, one address
holds a bounded number of requests, and behind a trusted proxy every limit keys on the client."""
import asyncio
import http.client
import resource
import select
import socket
import threading
import time

import pytest

from tests.e2e.test_nginx_errors import assert_nginx_json_error, raw_answer_parse
from tests.support.edge import LoneNginx, register_from, sockets_answered
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SLOWLORIS_CONNECTIONS = 1_100
SLOWLORIS_LINE_EVERY_SECONDS = 3.0
MEASURE_SECONDS = 20.0
CLIENT_BODY_TIMEOUT_SECONDS = 10  # nginx/templates/default.conf.template
PER_CLIENT_REQUESTS = 100  # its limit_conn


def _nofile_at_least(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard) if hard != resource.RLIM_INFINITY else count,
                                                    hard))


class Slowloris:
    """`count` connections from `source`, each sending a request's header one line every few seconds and never
    its end; a connection nginx cuts is opened again at once, so `count` stay held."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.port, self.source, self.count = port, source, count
        self.held = 0
        self.opened = self.refused = self.cut = self.answered = 0
        self.held_peak = 0
        self.lifetimes: list[float] = []
        self.stopping = False

    async def _hold_one(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(index * 0.002)  # about 2 s to open them all
        while not self.stopping:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port, local_addr=(self.source, 0)), 5)
            except (OSError, asyncio.TimeoutError):
                self.refused += 1
                await asyncio.sleep(0.5)
                continue
            self.opened += 1
            self.held += 1
            self.held_peak = max(self.held_peak, self.held)
            started = loop.time()
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
                while not self.stopping:
                    try:
                        data = await asyncio.wait_for(reader.read(4096), SLOWLORIS_LINE_EVERY_SECONDS)
                    except asyncio.TimeoutError:
                        writer.write(b"X-Slow: 1\r\n")  # one more header line, never the blank one
                        continue
                    if data:
                        self.answered += 1  # nginx's JSON 408, if it sends one
                    else:
                        self.cut += 1
                    self.lifetimes.append(loop.time() - started)
                    break
            except (ConnectionResetError, BrokenPipeError):
                self.cut += 1  # reset_timedout_connection: an RST
                self.lifetimes.append(loop.time() - started)
            finally:
                self.held -= 1
                writer.close()

    async def run(self, until: threading.Event) -> None:
        tasks = [asyncio.create_task(self._hold_one(index)) for index in range(self.count)]
        while not until.is_set():
            await asyncio.sleep(0.1)
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _healthz_latency(port: int, source: str) -> float:
    """Seconds for a GET /healthz on a new connection from `source`; infinite when it fails."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        return time.monotonic() - started if response.status == 200 else float("inf")
    except OSError:
        return float("inf")
    finally:
        connection.close()


def test_a_slowloris_of_1100_connections_from_one_address_does_not_starve_another_client(stack):
    _nofile_at_least(SLOWLORIS_CONNECTIONS * 2 + 256)
    attack = Slowloris(stack.http_port, "127.0.0.50", SLOWLORIS_CONNECTIONS)
    done = threading.Event()
    attacker = threading.Thread(target=lambda: asyncio.run(attack.run(done)), daemon=True)
    attacker.start()
    try:
        try:
            wait_for(lambda: attack.held >= SLOWLORIS_CONNECTIONS, timeout=20, interval=0.1,
                     message=f"{SLOWLORIS_CONNECTIONS} slow connections to be held")
        except AssertionError:
            # Before nginx was sized, it held about 1,020 and cut the rest at once ("worker_connections are not
            # enough, reusing connections"), and other clients' requests failed.
            raise AssertionError(f"nginx held at most {attack.held_peak} ({attack.opened} opened, {attack.cut} cut, "
                                 f"{attack.refused} refused)") from None
        latencies = []
        deadline = time.monotonic() + MEASURE_SECONDS
        held_while_measuring = []
        while time.monotonic() < deadline:
            latencies.append(_healthz_latency(stack.http_port, "127.0.0.51"))
            held_while_measuring.append(attack.held)
            time.sleep(0.05)
    finally:
        done.set()
        attacker.join(timeout=30)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    failed = sum(latency == float("inf") for latency in latencies)
    held_while_measuring.sort()
    held_median = held_while_measuring[len(held_while_measuring) // 2]
    print(f"\nslowloris: {SLOWLORIS_CONNECTIONS} connections from one address, {held_median} held (median; least "
          f"{held_while_measuring[0]}, peak {attack.held_peak}) while another client made {len(latencies)} "
          f"GET /healthz: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms, "
          f"{failed} failed; the attacker opened {attack.opened}, refused {attack.refused}, cut by nginx {attack.cut} "
          f"(after {min(attack.lifetimes, default=0):.1f}-{max(attack.lifetimes, default=0):.1f} s), "
          f"answered {attack.answered}")
    # nginx cuts them every 10 s and they come back at once: a moment's dip, the rest of the time all held.
    assert held_median == SLOWLORIS_CONNECTIONS, held_median
    assert failed == 0 and p99 < 1.0, (p99, failed)
    # Each half-sent header is cut once client_header_timeout (10 s) has passed, however often it sends a line.
    assert attack.cut > 0 and max(attack.lifetimes) < 10 + SLOWLORIS_LINE_EVERY_SECONDS + 2, max(attack.lifetimes)
    assert "worker_connections are not enough" not in stack.log("nginx-error")


def _slow_body(port: int, source: str) -> socket.socket:
    """A POST whose header is whole and whose body stops after its first byte (to a path without an edge rate)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(b"POST /verify-otp/ HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{")
    return sock


def _wait_closed(sock: socket.socket) -> tuple[float, bytes]:
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return time.monotonic() - started, received


def test_a_body_that_stops_arriving_is_cut_off_within_the_body_timeout(stack):
    sock = _slow_body(stack.http_port, "127.0.0.52")
    with sock:
        waited, received = _wait_closed(sock)
    print(f"\nslow body cut off after {waited:.1f} s")
    assert CLIENT_BODY_TIMEOUT_SECONDS - 1 <= waited <= CLIENT_BODY_TIMEOUT_SECONDS + 3, waited
    if received:  # reset_timedout_connection: usually an RST and nothing; anything sent is the JSON 408
        assert_nginx_json_error(raw_answer_parse(received), 408, "request_timeout")


def test_one_address_holds_at_most_its_share_of_requests_in_progress(stack):
    # Ten more slow bodies than the cap, all from one address: whatever order nginx takes them in, the cap admits
    # PER_CLIENT_REQUESTS and answers the rest at once, while the admitted wait for their bodies (10 s).
    extra = 10
    held = [_slow_body(stack.http_port, "127.0.0.53") for _ in range(PER_CLIENT_REQUESTS + extra)]
    try:
        refused = sockets_answered(held, extra, message=f"{extra} of the address's requests to be refused")
        assert len(refused) == extra
        for sock in refused:
            received = b""
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            assert_nginx_json_error(raw_answer_parse(received), 429, "throttled", retry_after="1")
        # Another client, meanwhile, is served; and the cap admitted exactly its share of this one.
        assert _healthz_latency(stack.http_port, "127.0.0.54") < 1.0
        assert select.select([sock for sock in held if sock not in refused], [], [], 0)[0] == []
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, the address is served again.
    wait_for(lambda: _healthz_latency(stack.http_port, "127.0.0.53") < 1.0, timeout=10,
             message="the address to be served again")


@pytest.fixture
def behind_a_balancer(stack, tmp_path):
    """nginx trusting a load balancer at 127.0.0.30 (TRUSTED_PROXY_RANGES), in front of the stack's API."""
    nginx = LoneNginx(tmp_path, api_port=stack.api_port, TRUSTED_PROXY_RANGES="127.0.0.30/32").start()
    yield nginx
    nginx.stop()


def test_behind_a_trusted_balancer_every_limit_keys_on_the_client(behind_a_balancer):
    # OTP_IP_SEND_RATE is 5/min in this stack. Six clients through the balancer are six clients, not one.
    assert [register_from(behind_a_balancer, "127.0.0.30", f"203.0.113.{n}", f"lb{n}@example.com")
            for n in range(6)] == [202] * 6
    # One client through the balancer is still one, whatever it writes into the header the balancer extends.
    statuses = [register_from(behind_a_balancer, "127.0.0.30", f"198.51.100.{n}, 203.0.113.99",
                               f"one{n}@example.com") for n in range(6)]
    assert statuses == [202] * 5 + [429]
    # A peer that is not the balancer cannot name its client: it is the client.
    assert register_from(behind_a_balancer, "127.0.0.31", "203.0.113.77", "direct@example.com") == 202

    def clients_logged():  # nginx writes a request's access line just after its answer
        log = (behind_a_balancer.stack_dir / "log" / "nginx-access.log").read_text()
        clients = [line.split()[0] for line in log.splitlines() if '"POST /register/ ' in line]
        return clients if len(clients) >= 13 else None

    clients = wait_for(clients_logged, timeout=5, message="nginx's access lines")
    assert clients == [f"203.0.113.{n}" for n in range(6)] + ["203.0.113.99"] * 6 + ["127.0.0.31"], clients
