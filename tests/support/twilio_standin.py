"""A local HTTP stand-in for Twilio's Messages API, reached by the real `twilio` client through TWILIO_API_BASE_URL."""
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from tests.support.waiting import free_port, wait_for

MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections when a worker's threads all connect at once


class TwilioStandIn:
    def __init__(self, *, latency_seconds: float = 0.0, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.latency_seconds = latency_seconds
        self.script: list[int] = []  # statuses to answer before the default 201
        self.requests: list[dict] = []  # every request, accepted or not
        self.accepted: list[dict] = []
        self.connections = 0  # TCP connections clients opened
        self.port = free_port()
        self.server = _Server((host, self.port), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

            def do_POST(self):
                match = MESSAGES_PATH.match(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if standin.latency_seconds:
                    time.sleep(standin.latency_seconds)  # the provider's reply time, which is what is simulated
                with standin.lock:
                    standin.requests.append({**form, "authorization": self.headers.get("Authorization", "")})
                    status = standin.script.pop(0) if standin.script else 201
                    if match and status == 201:
                        body = {"sid": f"SM{uuid.uuid4().hex}", "account_sid": match["sid"], "to": form.get("To"),
                                "from": form.get("From"), "body": form.get("Body"), "status": "queued",
                                "received_at": time.time()}
                        standin.accepted.append(body)
                    elif not match:
                        status = 404
                        body = {"code": 20404, "message": "Not found", "status": 404}
                    else:
                        code = 21211 if status == 400 else (20429 if status == 429 else 20500)
                        body = {"code": code, "message": f"stand-in answered {status}", "status": status}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

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
            self.latency_seconds = 0.0
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
