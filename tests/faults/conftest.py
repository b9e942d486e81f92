"""Fault tests: each gets its own API and worker processes, and its own Redis or PostgreSQL path to break."""
import pytest

from tests.support.env import delivery_env
from tests.support.mini_stack import MiniStack
from tests.support.redis_state import RedisServer
from tests.support.silent_link import SilentLink
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def base_env(django_db_blocker, smtp_server, twilio_standin, inbox, sms):
    with django_db_blocker.unblock():
        return delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def stacks():
    """Start MiniStacks through this; they are all stopped after the test."""
    started = []

    def make(env: dict, **kwargs) -> MiniStack:
        stack = MiniStack(env, **kwargs)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stack.stop()


@pytest.fixture
def pg_proxy():
    proxy = TcpProxy(5432).start()
    yield proxy
    proxy.cut()


@pytest.fixture
def silent_pg():
    """A path to PostgreSQL that the test can make drop every packet (tests/support/silent_link.py)."""
    if reason := SilentLink.unavailable():
        pytest.skip(reason)
    link = SilentLink(5432).start()
    yield link
    link.stop()
