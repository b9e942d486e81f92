"""The one way tests send a JSON body: through DRF's test client in this process, or over HTTP to a live server
(from another loopback address with post_from)."""
import http.client
import json

import requests


def post(target, path: str, body, **extra):
    """POST `body` as JSON to `path` on `target`.

    `target` is a DRF or Django test client (`extra` are WSGI environ keys, e.g. HTTP_AUTHORIZATION=...), or a
    live server: its base URL, or anything with a `url` (a stack); then `extra` are keyword arguments of
    `requests.post` (headers=...), with a 15 s timeout unless one is given.
    """
    if isinstance(target, str) or hasattr(target, "url"):
        base_url = target if isinstance(target, str) else target.url
        extra.setdefault("timeout", 15)
        return requests.post(f"{base_url}{path}", json=body, **extra)
    return target.post(path, data=json.dumps(body), content_type="application/json", **extra)


def post_from(stack, source_ip: str, path: str, body, headers: dict | None = None, *, timeout: float = 10):
    """POST `body` as JSON to `path` on a stack's nginx (`stack.http_port`) from the loopback address `source_ip`
    (any of 127.0.0.0/8), so nginx sees a different client; returns (status, headers as a dict, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=timeout,
                                            source_address=(source_ip, 0))
    try:
        connection.request("POST", path, body=json.dumps(body),
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()
