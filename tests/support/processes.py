"""Child processes for tests (Celery workers, and later the whole stack), with their logs kept for failures."""
import os
import signal
import subprocess
import uuid
from pathlib import Path

from tests.support.waiting import wait_for

REPO_DIR = Path(__file__).resolve().parents[2]
BACKEND_DIR = REPO_DIR / "backend"
LOG_DIR = REPO_DIR / "var" / "test-logs"
WORKER_START = REPO_DIR / "worker" / "start-worker.sh"


class ManagedProcess:
    def __init__(self, name: str, args: list[str], *, env: dict, log_dir: Path, cwd: Path = BACKEND_DIR) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # The file keeps earlier runs' lines (same name, appended): log() reads from here on, so wait_for_log
        # never takes an old "ready." for this start's.
        self._log_start = self._log.tell()
        # Its own process group, so stopping it also stops any pool children.
        self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        """What the process wrote since its latest start."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(getattr(self, "_log_start", 0))
            return log.read().decode(errors="replace")

    def wait_for_log(self, text: str, *, timeout: float = 30.0) -> None:
        def seen():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            return text in self.log()

        try:
            wait_for(seen, timeout=timeout, message=f"{self.name} to log {text!r}")
        except AssertionError:
            raise AssertionError(f"{self.name} never logged {text!r}:\n{self.log()[-3000:]}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        if hasattr(self, "_log"):
            self._log.close()


def celery_worker(name: str, env: dict, *, queues: str = "email,sms,maintenance", pool: str = "threads",
                  concurrency: int = 4, log_dir: Path = LOG_DIR) -> ManagedProcess:
    """A Celery worker started as the stack starts one, through worker/start-worker.sh (call `start()`).

    Pool and concurrency reach it through the settings, as in the stack. Its hostname is made unique: the script's
    own, `<queues>@<host>`, would clash between two workers on the same queues, and Celery takes the last
    --hostname it is given.
    """
    args = [str(WORKER_START), queues, "--hostname", f"{name}-{uuid.uuid4().hex[:8]}@%h", "--without-heartbeat"]
    env = {**env, "CELERY_WORKER_POOL": pool, "CELERY_WORKER_CONCURRENCY": str(concurrency)}
    return ManagedProcess(name, args, env=env, log_dir=log_dir)
