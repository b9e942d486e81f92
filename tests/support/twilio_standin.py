"""A local HTTP stand-in for Twilio's Messages API, reached by the real `twilio` client through TWILIO_API_BASE_URL.

It creates messages (POST) and lists them (GET, filtered by `To`), in the shapes of Twilio's Message resource
and its list pages, and it can be scripted to fail the way a real provider or gateway does: an error status, an
answer that comes after the client gave up, a connection dropped with or without the message taken, and no
Messages list at all (a Twilio-compatible gateway that only sends).
"""
import json
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.support.waiting import free_port, wait_for

MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")

# What `script` entries other than a status number do to the next POST:
LATE = "late"  # take the message, answer only after `late_seconds` (the client has given up by then)
TAKEN_THEN_DROPPED = "taken-then-dropped"  # take the message, close the connection without an answer
DROPPED = "dropped"  # read the request, close the connection without taking the message
TAKEN_THEN_504 = "taken-then-504"  # take the message, then answer 504 as a gateway that gave up waiting would


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections when a worker's threads all connect at once

    def handle_error(self, request, client_address):
        pass  # a late answer to a client that has gone is expected here, not a failure of the stand-in


def _rfc2822(moment: float) -> str:
    # Twilio's dates: RFC 2822, in GMT, e.g. "Tue, 27 Nov 2018 16:14:39 +0000".
    return format_datetime(datetime.fromtimestamp(int(moment), tz=timezone.utc))


class TwilioStandIn:
    def __init__(self, *, latency_seconds: float = 0.0, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.latency_seconds = latency_seconds
        self.script: list[int | str] = []  # what to do with the next POSTs (statuses, or the modes above)
        self.late_seconds = 12.0  # the input: the answer came 12 s after the request, past the 10 s timeout
        self.messages_list = True  # False: GET on Messages answers `messages_list_status`, as a send-only gateway
        self.messages_list_status = 404
        self.requests: list[dict] = []  # every POST, accepted or not
        self.accepted: list[dict] = []  # every message taken, as Twilio's Message resource
        self.list_requests: list[dict] = []  # every GET on Messages, with its query
        self.connections = 0  # TCP connections clients opened
        self.port = free_port()
        self.server = _Server((host, self.port), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _message(self, account_sid: str, form: dict) -> dict:
        now = time.time()
        sid = f"SM{uuid.uuid4().hex}"
        base = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
        return {
            "account_sid": account_sid, "api_version": "2010-04-01", "body": form.get("Body"),
            "date_created": _rfc2822(now), "date_sent": None, "date_updated": _rfc2822(now),
            "direction": "outbound-api", "error_code": None, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0", "num_segments": "1",
            "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"}, "to": form.get("To"), "uri": f"{base}.json",
            "received_at": now,  # the stand-in's own field, for tests
        }

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections open, as api.twilio.com does

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with standin.lock:
                    standin.connections += 1

            def _answer(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self):
                url = urlsplit(self.path)
                match = MESSAGES_PATH.match(url.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with standin.lock:
                    standin.list_requests.append(query)
                    if not match or not standin.messages_list:
                        status = 404 if not match else standin.messages_list_status
                        return self._answer(status, {"code": 20404, "message": "Not found", "status": status})
                    size = int(query.get("PageSize", 50))
                    # Newest first; a message still queued has no date_sent, so the order is by creation here.
                    listed = [m for m in reversed(standin.accepted)
                              if m["account_sid"] == match["sid"] and ("To" not in query or m["to"] == query["To"])]
                page = [{k: v for k, v in m.items() if k != "received_at"} for m in listed[:size]]
                uri = f"{url.path}?{url.query}" if url.query else url.path
                self._answer(200, {"messages": page, "uri": uri, "first_page_uri": uri, "next_page_uri": None,
                                   "previous_page_uri": None, "page": 0, "page_size": size, "start": 0,
                                   "end": max(len(page) - 1, 0)})

            def do_POST(self):
                match = MESSAGES_PATH.match(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if standin.latency_seconds:
                    time.sleep(standin.latency_seconds)  # the provider's reply time, which is what is simulated
                with standin.lock:
                    standin.requests.append({**form, "authorization": self.headers.get("Authorization", "")})
                    action = standin.script.pop(0) if standin.script else 201
                    late_seconds = standin.late_seconds
                    body = None
                    if not match:
                        action, body = 404, {"code": 20404, "message": "Not found", "status": 404}
                    elif action in (201, LATE, TAKEN_THEN_DROPPED, TAKEN_THEN_504):
                        body = standin._message(match["sid"], form)
                        standin.accepted.append(body)
                        body = {k: v for k, v in body.items() if k != "received_at"}
                if action == DROPPED or action == TAKEN_THEN_DROPPED:
                    return self._drop()
                if action == LATE:
                    time.sleep(late_seconds)  # the answer the client no longer waits for
                    return self._answer(201, body)
                if action == TAKEN_THEN_504:
                    return self._answer(504, {"code": 20504, "message": "Gateway timeout", "status": 504})
                if body is None:
                    code = 21211 if action == 400 else (20429 if action == 429 else 20500)
                    body = {"code": code, "message": f"stand-in answered {action}", "status": action}
                self._answer(201 if action == LATE else action, body)

        return Handler

    def start(self) -> "TwilioStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.script.clear()
            self.requests.clear()
            self.accepted.clear()
            self.list_requests.clear()
            self.latency_seconds = 0.0
            self.late_seconds = 12.0
            self.messages_list = True
            self.messages_list_status = 404
            self.connections = 0

    def to(self, number: str) -> list[dict]:
        with self.lock:
            return [m for m in self.accepted if m["to"] == number]

    def wait_for_message(self, number: str, *, count: int = 1, timeout: float = 20.0) -> dict:
        return wait_for(lambda: (self.to(number) if len(self.to(number)) >= count else None),
                        timeout=timeout, message=f"{count} SMS to {number}")[count - 1]


def code_from_sms(message: dict, length: int = 6) -> str:
    runs = set(re.findall(rf"\b\d{{{length}}}\b", message["body"]))
    assert len(runs) == 1, f"expected one code in the SMS, found {runs}"
    return runs.pop()
