"""Redis for the tests: a redis-server of their own, and the one way they clear state out of a Redis database."""
import os
from pathlib import Path

from tests.support.processes import LOG_DIR, ManagedProcess
from tests.support.waiting import free_port

KOMBU_BINDINGS = b"_kombu.binding."


def redis_flush(client, pattern: str = "*") -> int:
    """Delete the keys matching `pattern`; return how many went.

    Kombu's exchange bindings (`_kombu.binding.*`) stay: a publisher that declared its queues once does not
    declare them again, so deleting them would make later jobs unroutable.
    """
    stale = [key for key in client.scan_iter(pattern) if not key.startswith(KOMBU_BINDINGS)]
    if stale:
        client.delete(*stale)
    return len(stale)


class RedisServer(ManagedProcess):
    """A redis-server on a free port of 127.0.0.1, its files in `data_dir`.

    `persistent`: append-only persistence that outlives restarts (the fault tests restart it); otherwise it keeps
    everything in memory only.
    """

    def __init__(self, data_dir: Path, *, log_dir: Path = LOG_DIR, persistent: bool = False, name: str = "") -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        durability = (["--appendonly", "yes", "--appendfsync", "always"] if persistent
                      else ["--appendonly", "no"])
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *durability, "--save", "",
                "--dir", str(data_dir)]
        super().__init__(name or f"redis-{self.port}", args, env=dict(os.environ), log_dir=log_dir, cwd=data_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        super().start()
        self.wait_for_log("Ready to accept connections")
        return self

    def restart(self) -> None:
        self.stop()  # SIGTERM: Redis flushes its append-only file and exits, as in a routine restart
        self.start()
