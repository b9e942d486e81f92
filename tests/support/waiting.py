"""Polling with a deadline, and free ports: the only way these tests wait."""
import socket
import time


def wait_for(condition, *, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Call `condition` until it returns something truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    # Asked on every address, as nginx and `make up`'s check bind it: a port free on 127.0.0.1 alone was often
    # held elsewhere on a busy machine (thousands of TIME-WAIT sockets), and `make up` refused it as in use.
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def timed(call):
    """Call `call` and return (its result, the seconds it took)."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started
