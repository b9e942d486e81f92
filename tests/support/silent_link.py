"""A network path to a local service that a test can make silent: packets dropped, no reset, no refusal.

A process on this host reaches the service at `SilentLink.host:port`, an address in a network namespace of the
test's own, over a veth pair:

    client --veth--> [namespace: proxy on host:port] --veth--> proxy on the pair's host end --lo--> the service

`cut()` takes the namespace's end of the pair down, and the host end keeps a permanent neighbour entry for it:
whatever the client sends is dropped without a word, as when a firewall drops packets or the service's host
vanishes. A proxy that merely stops forwarding cannot do this: the client's kernel still acknowledges what it sends,
so the client waits for an answer and never sees a lost packet. Addresses come from 198.18.0.0/15, the block
RFC 2544 (appendix C.2.2) sets aside for tests, so they are unlikely to shadow a route in use.

Needs root and iproute2 (`ip`); `SilentLink.unavailable()` says why it cannot run, for a skip. The names carry the
test process's id, so a run killed before its clean-up leaves nothing for long: the next run deletes what a
process no longer alive left behind.
"""
import os
import random
import re
import secrets
import select
import shutil
import subprocess
import sys

from tests.support.processes import REPO_DIR
from tests.support.tcp_proxy import TcpProxy

NAMESPACE_PREFIX = "otp-silent-"
PROXY_START_SECONDS = 15


class SilentLink:
    def __init__(self, target_port: int) -> None:
        suffix = secrets.token_hex(3)
        self.namespace = f"{NAMESPACE_PREFIX}{os.getpid()}-{suffix}"
        self.host_end, self.namespace_end = f"osl{suffix}h", f"osl{suffix}n"  # at most 15 characters (IFNAMSIZ)
        subnet = (198 << 24) | (18 << 16) | (random.randrange(2 ** 15) << 2)  # a /30 in 198.18.0.0/15
        self.host_address, self.host = _dotted(subnet + 1), _dotted(subnet + 2)
        self.port = target_port  # the namespace's proxy listens on the service's own port
        self._made: list[str] = []  # what stop() has to undo: only what this link made
        self._host_proxy: TcpProxy | None = None
        self._namespace_proxy: subprocess.Popen | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why a SilentLink cannot be made here (a sentence), or None when it can."""
        if os.geteuid() != 0:
            return "a network namespace needs root"
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        return None

    def start(self) -> "SilentLink":
        _leftovers_delete()
        try:
            _ip("netns", "add", self.namespace)
            self._made.append("namespace")
            _ip("link", "add", self.host_end, "type", "veth", "peer", "name", self.namespace_end)
            self._made.append("link")
            _ip("link", "set", self.namespace_end, "netns", self.namespace)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_end)
            _ip("link", "set", self.host_end, "up")
            self._in_namespace("ip", "addr", "add", f"{self.host}/30", "dev", self.namespace_end)
            self._in_namespace("ip", "link", "set", self.namespace_end, "up")
            self._in_namespace("ip", "link", "set", "lo", "up")
            mac = self._in_namespace("cat", f"/sys/class/net/{self.namespace_end}/address").strip()
            # Without it, the host would stop resolving the namespace's address a few seconds into a cut and
            # answer its own sockets "no route to host": an error, where a silent network gives none.
            _ip("neigh", "replace", self.host, "lladdr", mac, "dev", self.host_end, "nud", "permanent")
            self._host_proxy = TcpProxy(self.port, listen_host=self.host_address).start()
            self._namespace_proxy = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "tests.support.tcp_proxy",
                 self.host, str(self.port), self.host_address, str(self._host_proxy.port)],
                cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            ready, _, _ = select.select([self._namespace_proxy.stdout], [], [], PROXY_START_SECONDS)
            if not ready or self._namespace_proxy.stdout.readline().strip() != "listening":
                raise RuntimeError(f"the namespace's proxy did not start within {PROXY_START_SECONDS} s")
        except BaseException:
            self.stop()
            raise
        return self

    def cut(self) -> None:
        """From now on, every packet either way is dropped in silence; open connections stay open."""
        self._in_namespace("ip", "link", "set", self.namespace_end, "down")

    def restore(self) -> None:
        """Carry packets again; connections the clients have not given up on go on where they were."""
        self._in_namespace("ip", "link", "set", self.namespace_end, "up")

    def stop(self) -> None:
        try:
            if self._namespace_proxy is not None:
                self._namespace_proxy.kill()
                self._namespace_proxy.wait(timeout=10)
            if self._host_proxy is not None:
                self._host_proxy.stop()
        finally:
            # Deleting the namespace deletes its end of the pair, and with it the host's end.
            if "namespace" in self._made:
                subprocess.run(["ip", "netns", "delete", self.namespace], capture_output=True)
            if "link" in self._made:
                subprocess.run(["ip", "link", "delete", self.host_end], capture_output=True)
            self._made.clear()

    def _in_namespace(self, *command: str) -> str:
        return _ip("netns", "exec", self.namespace, *command)


def _leftovers_delete() -> None:
    """Delete the namespaces of links whose test process is no longer alive (killed before its clean-up)."""
    for name in _ip("netns", "list").split():
        if (match := re.fullmatch(rf"{NAMESPACE_PREFIX}(\d+)-[0-9a-f]+", name)) and not _alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)  # its veth pair goes with it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*arguments: str) -> str:
    done = subprocess.run(["ip", *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {done.stderr.strip()}")
    return done.stdout


def _dotted(address: int) -> str:
    return ".".join(str((address >> shift) & 255) for shift in (24, 16, 8, 0))
