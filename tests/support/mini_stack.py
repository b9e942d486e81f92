"""The API (gunicorn) and a Celery worker as child processes on private services, for fault tests.

Everything a fault test breaks (a Redis server, a proxy in front of PostgreSQL) belongs to that test, so the
shared PostgreSQL and Redis stay up for the rest of the suite.
"""
import signal
import subprocess
import uuid

import requests

from tests.support import http
from tests.support.processes import BACKEND_DIR, LOG_DIR, ManagedProcess, celery_worker
from tests.support.waiting import free_port, wait_for


class MiniStack:
    def __init__(self, env: dict, *, api_workers: int = 2) -> None:
        self.api_port = free_port()
        self.env = {**env, "API_PORT": str(self.api_port), "WEB_CONCURRENCY": str(api_workers),
                    "TRUSTED_PROXY_COUNT": "0"}
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.api: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []

    def start_api(self) -> "MiniStack":
        self.api = ManagedProcess(f"api-{self.api_port}", [str(BACKEND_DIR / "start-api.sh")], env=self.env,
                                  log_dir=LOG_DIR).start()
        wait_for(self._healthy, timeout=30, message="the API to answer /healthz")
        return self

    def _healthy(self) -> bool:
        if self.api.process.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.api.log()[-3000:]}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, *, pool: str = "threads", concurrency: int = 4, **env) -> ManagedProcess:
        # Through the settings: Celery takes `-P prefork` for its default and lets the configured pool win.
        worker = celery_worker(f"worker-{uuid.uuid4().hex[:8]}", {**self.env, **env}, pool=pool,
                               concurrency=concurrency).start()
        worker.wait_for_log("ready.")
        self.workers.append(worker)
        return worker

    def pool_children(self, worker: ManagedProcess) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_worker(self, worker: ManagedProcess) -> None:
        worker.kill(signal.SIGKILL)
        worker.process.wait(timeout=10)

    def post(self, path: str, body: dict, **kwargs) -> requests.Response:
        return http.post(self.url, path, body, **kwargs)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.api:
            self.api.stop()
