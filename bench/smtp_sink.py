"""The bench's SMTP server, in a process of its own: its CPU is counted with the system under test (bench/run.py
reads it from /proc), and it shares no interpreter lock with the load driver.

aiosmtpd accepts every message, after a delay when one is set (a slow relay). Usage: `python smtp_sink.py PORT`.
It prints `ready` once it listens, then one line per recipient of each accepted message, `<unix time> <address>`,
the time being when the message was accepted (before the 250 reply). It reads commands on stdin: `delay SECONDS`,
answered `delay SECONDS` once in force. It stops when stdin closes.
"""
import asyncio
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Sink:
    """aiosmtpd handler: accepts after `delay` seconds and reports each recipient on stdout."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.out_lock = threading.Lock()  # the command thread writes to stdout too

    def say(self, text: str) -> None:
        with self.out_lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.time()
        self.say("".join(f"{now:.6f} {rcpt}\n" for rcpt in envelope.rcpt_tos))
        return "250 OK"


def main() -> None:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=int(sys.argv[1]))
    controller.start()
    sink.say("ready\n")
    try:
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "delay":
                sink.delay = float(value)
                sink.say(f"delay {sink.delay}\n")
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
