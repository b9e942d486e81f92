"""The broker transport: kombu's Redis channel, keeping one redis-py client where kombu made one per message."""
from config.celery import app
from core.broker import Transport


def test_the_app_publishes_through_the_transport_that_keeps_its_client():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first  # kombu's own builds a new client each time
        with channel.conn_or_acquire() as client:
            assert client is first and client.ping()


def test_a_new_pool_gets_a_new_client():
    # After a fork, or a reconnect, kombu drops the channel's pool; the kept client must not outlive it.
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        channel._disconnect_pools()
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool and second.ping()


def test_a_tls_broker_url_keeps_kombus_tls_default():
    # Registered under the scheme's own name, the transport leaves kombu reading TLS off `rediss://` as before.
    with app.connection_for_write("rediss://127.0.0.1:6380/0") as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.ssl
