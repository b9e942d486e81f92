"""What the broker's Redis holds, read as an operator (or a thief with a dump) could read it."""
import base64
import json


def broker_blobs(client) -> list[bytes]:
    """Every value in the broker's Redis database (queue lists, the unacknowledged hash, sorted sets, strings),
    each also base64-decoded where it is a kombu message, whose body is base64 JSON."""
    blobs = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = client.hvals(key)
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"string":
            values = [client.get(key)]
        else:
            values = []
        for value in values:
            if value is None:
                continue
            blobs.append(value)
            blobs.extend(_message_bodies(value))
    return blobs


def _message_bodies(value: bytes) -> list[bytes]:
    try:
        message = json.loads(value)
    except ValueError:
        return []
    if isinstance(message, list):  # the unacknowledged hash holds [message, exchange, routing key]
        message = message[0] if message and isinstance(message[0], dict) else None
    if not isinstance(message, dict) or "body" not in message:
        return []
    body = message["body"].encode()
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return [body]


def delivery_jobs(client, delivery_id: int) -> list[tuple[int, dict]]:
    """(retries so far, payload) of each delivery job for `delivery_id` in the broker's Redis, queued or
    unacknowledged (a retry is a new message whose `retries` header counts the tries before it)."""
    jobs = []
    for message in _messages(client):
        try:
            body = message["body"].encode()
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _, kwargs, _ = json.loads(body)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        payload = kwargs.get("payload") if isinstance(kwargs, dict) else None
        if isinstance(payload, dict) and payload.get("delivery_id") == delivery_id:
            jobs.append((int(message.get("headers", {}).get("retries") or 0), payload))
    return jobs


def delivery_payloads(client, delivery_id: int) -> list[dict]:
    """The delivery job payloads for `delivery_id` waiting in the broker's Redis (queued or unacknowledged)."""
    return [payload for _, payload in delivery_jobs(client, delivery_id)]


def _messages(client) -> list[dict]:
    messages = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        values = (client.lrange(key, 0, -1) if kind == b"list" else client.hvals(key) if kind == b"hash" else [])
        for value in values:
            try:
                message = json.loads(value)
            except ValueError:
                continue
            if isinstance(message, list) and message and isinstance(message[0], dict):
                message = message[0]  # the unacknowledged hash holds [message, exchange, routing key]
            if isinstance(message, dict) and "body" in message:
                messages.append(message)
    return messages
