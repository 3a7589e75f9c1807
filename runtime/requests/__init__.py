"""A subset of the `requests` library for Bento functions.

The research prototype's functions fetch pages the `requests` way, e.g.
`requests.get(url, timeout=1).content`. This module lets such functions run
unchanged on a Bento box whose policy grants them the `http` capability: every
request goes through `api.http_request`, so the box checks each destination
(and each redirect hop) against the function's manifest and the box's policy,
exactly as for `api.http_get`.

Provided: `get`, `post`, `put`, `patch`, `delete`, `head`, `options`,
`request`, `Session`, `Response` (`status_code`, `ok`, `reason`, `headers`,
`content`, `text`, `encoding`, `json()`, `raise_for_status()`,
`iter_content()`, `iter_lines()`, `url`, `history`, `elapsed`), keyword
arguments `params`, `data`, `json`, `headers`, `auth` (user, password),
`timeout` (seconds, or a (connect, read) pair), `allow_redirects=True`,
`stream`, `verify=True`, and `requests.exceptions`. Anything else (cookies,
files, proxies, hooks, client certificates, `verify=False`,
`allow_redirects=False`) raises `requests.exceptions.Unsupported` naming
what is missing, instead of being silently ignored.
"""

import base64
import datetime
import json as _json
import time
import urllib.parse
from collections.abc import Mapping, MutableMapping
from http import HTTPStatus

from bento import errors as bento_errors

from . import exceptions
from .exceptions import (
    ConnectionError,  # noqa: A004 - the name `requests` uses
    ConnectTimeout,
    HTTPError,
    InvalidURL,
    JSONDecodeError,
    ReadTimeout,
    RequestException,
    Timeout,
    TooManyRedirects,
    Unsupported,
    URLRequired,
)

__all__ = [
    "ConnectTimeout", "ConnectionError", "HTTPError", "InvalidURL", "JSONDecodeError",
    "ReadTimeout", "RequestException", "Response", "Session", "Timeout", "TooManyRedirects",
    "Unsupported", "URLRequired", "codes", "delete", "exceptions", "get", "head", "options",
    "patch", "post", "put", "request", "session",
]

__version__ = "2.32.3+bento"


class CaseInsensitiveDict(MutableMapping):
    """Header names compare without case, as in HTTP (and in `requests`)."""

    def __init__(self, data=None, **kwargs):
        self._store = {}
        self.update(data or {}, **kwargs)

    def __setitem__(self, key, value):
        self._store[key.lower()] = (key, value)

    def __getitem__(self, key):
        return self._store[key.lower()][1]

    def __delitem__(self, key):
        del self._store[key.lower()]

    def __iter__(self):
        return (key for key, _ in self._store.values())

    def __len__(self):
        return len(self._store)

    def copy(self):
        return CaseInsensitiveDict(self._store.values())

    def __repr__(self):
        return repr(dict(self.items()))


class _Codes:
    """`requests.codes.ok == 200`, `requests.codes.not_found == 404`, …"""

    def __getattr__(self, name):
        try:
            return HTTPStatus[name.upper()].value
        except KeyError:
            aliases = {"ok": 200, "not_found": 404, "server_error": 500, "teapot": 418}
            if name in aliases:
                return aliases[name]
            raise AttributeError(f"requests.codes has no {name!r}") from None

    def __getitem__(self, name):
        return getattr(self, name)


codes = _Codes()


class Response:
    """The answer to a request, with the attributes `requests` users read."""

    def __init__(self, status_code, headers, content, url, elapsed):
        self.status_code = status_code
        self.headers = CaseInsensitiveDict(headers)
        self.content = content
        self.url = url
        self.history = []
        self.elapsed = elapsed
        self.encoding = _charset(self.headers.get("content-type", ""))
        self.request = None

    @property
    def reason(self):
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def ok(self):
        return self.status_code < 400

    def __bool__(self):
        return self.ok

    @property
    def text(self):
        return self.content.decode(self.encoding or "utf-8", "replace")

    @property
    def apparent_encoding(self):
        return "utf-8"

    def json(self, **kwargs):
        try:
            return _json.loads(self.content, **kwargs)
        except ValueError as e:
            raise JSONDecodeError(f"the response body is not JSON: {e}", response=self) from None

    def raise_for_status(self):
        if 400 <= self.status_code < 600:
            side = "Client" if self.status_code < 500 else "Server"
            raise HTTPError(
                f"{self.status_code} {side} Error: {self.reason} for url: {self.url}", response=self
            )

    def iter_content(self, chunk_size=1, decode_unicode=False):
        size = (len(self.content) or 1) if chunk_size is None else chunk_size
        for start in range(0, len(self.content), size):
            chunk = self.content[start:start + size]
            yield chunk.decode(self.encoding or "utf-8", "replace") if decode_unicode else chunk

    def iter_lines(self, chunk_size=512, decode_unicode=False, delimiter=None):
        lines = self.content.split(delimiter) if delimiter else self.content.splitlines()
        for line in lines:
            yield line.decode(self.encoding or "utf-8", "replace") if decode_unicode else line

    @property
    def links(self):
        return {}

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<Response [{self.status_code}]>"


def _charset(content_type):
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return None


def _unsupported(what, instead=None):
    more = f"; {instead}" if instead else ""
    return Unsupported(f"requests: {what} is not supported in Bento's requests subset{more}")


def _with_params(url, params):
    if not params:
        return url
    if isinstance(params, (str, bytes)):
        query = params.decode() if isinstance(params, bytes) else params
    else:
        items = params.items() if isinstance(params, Mapping) else params
        pairs = []
        for key, value in items:
            values = value if isinstance(value, (list, tuple)) else [value]
            pairs += [(key, v) for v in values if v is not None]
        query = urllib.parse.urlencode(pairs)
    scheme, netloc, path, old_query, fragment = urllib.parse.urlsplit(url)
    query = f"{old_query}&{query}" if old_query else query
    return urllib.parse.urlunsplit((scheme, netloc, path, query, fragment))


def _body(data, json_body, headers):
    if json_body is not None:
        if data:
            raise ValueError("requests: pass either data= or json=, not both")
        headers.setdefault("Content-Type", "application/json")
        return _json.dumps(json_body).encode()
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        chunk = data.read()
        return chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
    if isinstance(data, Mapping) or isinstance(data, (list, tuple)):
        items = data.items() if isinstance(data, Mapping) else data
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return urllib.parse.urlencode(list(items), doseq=True).encode()
    raise TypeError(f"requests: cannot send data of type {type(data).__name__}")


def _timeout_seconds(timeout):
    """One bound for the whole request: the box enforces a single deadline,
    so a (connect, read) pair becomes their sum."""
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(f"requests: timeout must be a number or a (connect, read) pair, not {timeout!r}")
        if None in timeout:
            return None  # one side unbounded: only the instance's wall time bounds it
        timeout = timeout[0] + timeout[1]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise ValueError(f"requests: timeout must be an int, float or None, not {timeout!r}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"requests: timeout must be more than 0, not {timeout!r}")
    return timeout


def _http_request():
    from bento.api import api  # loaded by the runtime first, so this never cycles

    try:
        return api.http_request
    except AttributeError:
        raise PermissionError(
            "requests needs the `http` capability: declare it in the function's manifest "
            '(capabilities = ["http"], with destinations) and use a box whose policy grants it'
        ) from None


def request(method, url, params=None, data=None, headers=None, cookies=None, files=None,
            auth=None, timeout=None, allow_redirects=True, proxies=None, hooks=None,
            stream=None, verify=None, cert=None, json=None):
    """Make one request through the box and return its `Response`."""
    for value, what in ((cookies, "cookies="), (files, "files= (multipart uploads)"),
                        (proxies, "proxies="), (hooks, "hooks="), (cert, "cert=")):
        if value:
            raise _unsupported(what)
    if verify not in (None, True):
        raise _unsupported("verify=" + repr(verify), "the box always verifies certificates "
                           "against its own trust roots")
    if not allow_redirects:
        raise _unsupported("allow_redirects=False", "the box follows redirects itself and "
                           "checks every hop against the manifest")
    if not url:
        raise URLRequired("requests: no URL given")
    url = _with_params(str(url), params)
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise InvalidURL(f"requests: {url!r} is not an http:// or https:// URL")
    headers = CaseInsensitiveDict(headers or {})
    if auth is not None:
        if not (isinstance(auth, tuple) and len(auth) == 2):
            raise _unsupported("auth= other than a (user, password) pair")
        user, password = (p.encode() if isinstance(p, str) else p for p in auth)
        headers["Authorization"] = "Basic " + base64.b64encode(user + b":" + password).decode()
    body = _body(data, json, headers)
    seconds = _timeout_seconds(timeout)
    http_request = _http_request()
    started = time.monotonic()
    try:
        answer = http_request(str(method).upper(), url, list(headers.items()), body, timeout=seconds)
    except TimeoutError as e:
        raise ReadTimeout(f"requests: {url} did not answer within the timeout: {e}") from None
    except ValueError as e:
        message = str(e)
        if "URL" in message or "url" in message:
            raise InvalidURL(f"requests: {message}") from None
        raise exceptions.InvalidHeader(f"requests: {message}") from None
    except bento_errors.LimitReached as e:
        # The only limit a request reaches: the box's redirect count.
        raise TooManyRedirects(f"requests: {e}") from None
    except bento_errors.PolicyRefused as e:
        # To a `requests` user a refused destination is a connection error;
        # raised from the refusal so that, left uncaught, the session still
        # ends with the `policy_refused` code.
        raise ConnectionError(f"requests: {e}") from e
    except OSError as e:
        if type(e) is PermissionError:
            raise  # a capability not granted: a configuration error, not the network
        # The network failing (BoxIOError): a connection error.
        raise ConnectionError(f"requests: {e}") from None
    elapsed = datetime.timedelta(seconds=time.monotonic() - started)
    response = Response(answer.status, answer.header_list, answer.body, answer.url, elapsed)
    if str(method).upper() == "HEAD":
        response.content = b""
    return response


def get(url, params=None, **kwargs):
    return request("GET", url, params=params, **kwargs)


def head(url, **kwargs):
    return request("HEAD", url, **kwargs)


def options(url, **kwargs):
    return request("OPTIONS", url, **kwargs)


def post(url, data=None, json=None, **kwargs):
    return request("POST", url, data=data, json=json, **kwargs)


def put(url, data=None, **kwargs):
    return request("PUT", url, data=data, **kwargs)


def patch(url, data=None, **kwargs):
    return request("PATCH", url, data=data, **kwargs)


def delete(url, **kwargs):
    return request("DELETE", url, **kwargs)


class Session:
    """`requests.Session()`: default headers, params and auth for its requests.

    Connections are not reused (each request is its own exchange at the box),
    and cookies are not kept."""

    def __init__(self):
        self.headers = CaseInsensitiveDict()
        self.params = {}
        self.auth = None

    def request(self, method, url, **kwargs):
        headers = self.headers.copy()
        headers.update(kwargs.pop("headers", None) or {})
        params = dict(self.params)
        extra = kwargs.pop("params", None)
        if isinstance(extra, Mapping):
            params.update(extra)
        elif extra:
            return request(method, _with_params(url, params), headers=headers, params=extra,
                           auth=kwargs.pop("auth", self.auth), **kwargs)
        return request(method, url, headers=headers, params=params,
                       auth=kwargs.pop("auth", self.auth), **kwargs)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def head(self, url, **kwargs):
        return self.request("HEAD", url, **kwargs)

    def options(self, url, **kwargs):
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url, data=None, json=None, **kwargs):
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url, data=None, **kwargs):
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url, data=None, **kwargs):
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)

    def mount(self, prefix, adapter):
        raise _unsupported("Session.mount (transport adapters)")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session():
    return Session()
