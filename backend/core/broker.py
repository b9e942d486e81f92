"""Celery's Redis transport, with one redis-py client per channel instead of one per message.

kombu's Redis channel builds a new redis-py client for every publish and every acknowledgement, and building
one copies all of redis-py's response callbacks (its cost: docs/performance.md).
A client is only a handle on the channel's connection pool, and redis-py clients are safe to share between
threads, so the channel keeps one for as long as it keeps that pool (a fork or a reconnect makes a new pool).
config/celery.py makes it the transport of redis:// and rediss:// URLs.
"""
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _kept_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the event loop's own client, which kombu already keeps
            return super()._create_client(asynchronous=True)
        client = self._kept_client
        if client is None or client.connection_pool is not self.pool:
            client = self._kept_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
