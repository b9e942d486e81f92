"""The README's commands work as written, from a fresh shell in the checkout (no virtualenv activated).

Every `make` target the README names exists; no command needs an activated virtualenv (`python backend/manage.py`
failed with "No module named django"); and the support commands in its code blocks are run exactly as written,
against the test database, with their output checked.
"""
import os
import re
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.env import database_url
from tests.support.processes import REPO_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

README = (REPO_DIR / "README.md").read_text()
# Commands the README shows that change nothing outside the test database; the others (make run, make up,
# make test, curl) are run by their own tests.
RUNNABLE = ("make createsuperuser", "make user-create", "make address-status", "make manage",
            ".venv/bin/python backend/manage.py")


def code_block_commands(markdown: str) -> list[str]:
    """Every command line of the fenced code blocks, continuation lines joined, comment-only lines dropped."""
    commands = []
    for block in re.findall(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", markdown, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def inline_code(markdown: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", markdown)


def shell_env() -> dict:
    # A fresh shell's PATH: nothing of the project's virtualenv, which a newcomer has not activated.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": path, "ENV_FILE": "", "DATABASE_URL": database_url()}


def run_in_terminal(command: str, answers: list[tuple[str, str]], *, env: dict, timeout: float = 60) -> str:
    """Run `command` in a shell on a pseudo-terminal (so getpass and TTY checks behave as for a person), typing
    each answer once its prompt (a regex) appears. Returns everything the terminal showed."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, with the terminal as its controlling one
        os.chdir(REPO_DIR)
        os.execvpe("sh", ["sh", "-c", command], env)
    shown, pending, deadline = b"", list(answers), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the terminal closed: the command is done
                    break
                if not chunk:
                    break
                shown += chunk
            if pending and re.search(pending[0][0], shown.decode(errors="replace").rsplit("\n", 1)[-1]):
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
        else:
            raise AssertionError(f"{command!r} still running after {timeout}s:\n{shown.decode(errors='replace')}")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace")


def test_no_command_in_the_readme_needs_an_activated_virtualenv():
    bare = [text for text in [*code_block_commands(README), *inline_code(README)]
            if re.search(r"(?<![\w/.])python3?\s+(backend/)?manage\.py", text)]
    assert not bare, f"these fail with 'No module named django' unless a virtualenv is active: {bare}"


def test_every_make_target_the_readme_names_exists():
    named = sorted({match for text in [*code_block_commands(README), *inline_code(README)]
                    for match in re.findall(r"(?:^|[;&|]\s*|\s)make\s+([a-z][a-z-]*)", text)})
    assert {"run", "up", "down", "test", "createsuperuser", "user-create", "address-status", "manage"} <= set(named)
    for target in named:
        # A dry run: make knows the target (QUICK_RUN and the like change nothing here).
        result = subprocess.run(["make", "-n", target, "ARGS=help", "EMAIL=a@example.com", "ADDRESS=a@example.com"],
                                cwd=REPO_DIR, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


@pytest.mark.django_db(transaction=True)
def test_the_support_commands_work_as_written():
    commands = [line for line in code_block_commands(README) if line.startswith(RUNNABLE)]
    assert any(line.startswith("make createsuperuser") for line in commands)
    env = shell_env()
    outputs = {}
    for command in commands:
        if command.startswith("make createsuperuser"):
            outputs[command] = run_in_terminal(command, [(r"[Ee]mail.*: ?$", "admin@example.com"),
                                                         (r"^Password: ?$", "a long admin password 42"),
                                                         (r"^Password \(again\): ?$", "a long admin password 42")],
                                               env=env)
            continue
        result = subprocess.run(command, shell=True, cwd=REPO_DIR, env=env, capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[command] = result.stdout

    from users.models import User

    admin = User.objects.get(email="admin@example.com")
    assert admin.is_superuser and admin.check_password("a long admin password 42")
    user_create = next(out for cmd, out in outputs.items() if cmd.startswith("make user-create"))
    assert re.search(r"Created user \d+: alice@example.com", user_create)
    status = next(out for cmd, out in outputs.items() if cmd.startswith("make address-status"))
    assert "Address: alice@example.com (email)" in status and "Account: user" in status
    assert "Available subcommands" in next(out for cmd, out in outputs.items() if cmd.startswith('make manage ARGS="help"'))


@pytest.mark.django_db(transaction=True)
def test_the_spelled_out_form_the_readme_gives_works_too():
    spelled = [text for text in inline_code(README) if text.startswith(".venv/bin/python backend/manage.py")]
    assert spelled, "the README gives the virtualenv's python spelled out"
    for text in spelled:
        # The address has no account in this test: the command still answers, from the database.
        result = subprocess.run(shlex.split(text), cwd=REPO_DIR, env=shell_env(), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "Address: alice@example.com" in result.stdout, result.stderr
