"""The one way tests send a JSON body: through DRF's test client in this process, or over HTTP to a live server."""
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
