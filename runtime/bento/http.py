"""`api.http_get` and `api.http_request` (capability http): one request
through the box, which checks every destination and redirect hop."""

import json

from wit_world.imports import capabilities

from bento import errors
from bento.streams import as_bytes, read_exact, stage


class HttpResponse:
    """The answer to `api.http_get` / `api.http_request`."""

    __slots__ = ("status", "headers", "header_list", "body", "url")

    def __init__(self, status, header_list, body, url):
        self.status = status
        self.header_list = header_list
        self.headers = {name.lower(): value for name, value in header_list}
        self.body = body
        self.url = url

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<HttpResponse {self.status} {len(self.body)} bytes from {self.url}>"


def _timeout_ms(timeout, what):
    """A timeout in seconds (None: the instance's wall-time limit) as whole ms."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a number of seconds > 0 or None, not {timeout!r}")
    return max(1, min(int(timeout * 1000), 2**63))


def http_request(method, url, headers=None, body=b"", timeout=None):
    """http: one HTTP(S) request; redirects are followed (each hop checked).

    `timeout` (seconds) bounds the whole request, redirects included."""
    header_list = list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
    timeout_ms = _timeout_ms(timeout, "http_request(timeout=)")
    stage(as_bytes(body, "http_request(body=)"))
    meta = json.loads(errors.call(capabilities.http_request, str(method).upper(), str(url),
                            json.dumps([[str(k), str(v)] for k, v in header_list]), timeout_ms))
    body = read_exact(meta["body_length"])
    return HttpResponse(meta["status"], [tuple(h) for h in meta["headers"]], body, meta["url"])


def http_get(url, headers=None, timeout=None):
    """http: GET `url`."""
    return http_request("GET", url, headers, timeout=timeout)
