"""Caching Proxy: an HTTP proxy at the box with a bounded in-memory cache, so
repeated fetches (of onion sites too) are answered by the box without
reaching the origin again. Client: `bento proxy --listen 127.0.0.1:PORT`
gives a local HTTP proxy any browser or curl can use; see
docs/functions/proxy.md.

    main(max_bytes, max_entries, max_object, max_response, lifetime)

A service: each request arrives on its own service channel (the client of
`bento proxy` opens one per request) and the channel is closed after the
answer. What a channel carries:

    client -> function   one line of JSON, then the end of input:
                         {"op": "fetch", "method": "GET" | "HEAD",
                          "url": "http://..." | "https://...",
                          "headers": [[name, value], ...]}
                         or {"op": "stats"}
    function -> client   one line of JSON, then exactly `length` bytes:
                         {"status": 200, "reason": "OK",
                          "headers": [[name, value], ...], "length": N}

Answers carry `x-bento-cache: hit` (served from the cache) or `miss`
(fetched from the origin); answers the proxy makes itself (errors) carry
neither. Hosts ending in `.onion` are fetched over Tor with `api.tor_connect`
and a small HTTP/1.1 client here (no TLS in the sandbox: http:// only);
every other host with `api.http_request` (http and https).

The cache: keyed by URL, GET responses only, least recently used entries
evicted first; at most `max_entries` entries and `max_bytes` bytes (bodies
plus headers plus 256 bytes each), no entry over `max_object` bytes. Only
status 200 without `Cache-Control: no-store | no-cache | private`,
`Set-Cookie`, `Vary` or `max-age=0` is stored, for `max-age` (or
`s-maxage`) seconds if given, else until the instance ends. Requests with
`Cookie` or `Authorization` are neither answered from nor stored in the
cache; `Cache-Control: no-cache` or `Pragma: no-cache` in the request (a
browser's reload) fetches again and stores the fresh copy.

The session (the invoker's) gets one line when the proxy is ready and one
when it ends, with counts only: never a URL.
"""

import collections
import json
import time
import urllib.parse

MIB = 1024 * 1024
# The box's own cap on an `api.http_request` response body.
MAX_RESPONSE = 16 * MIB
MAX_REQUEST_LINE = 64 * 1024
# Seconds a channel's client has to send its request: the proxy serves one
# request at a time, so a silent client must not hold up the others long.
REQUEST_TIMEOUT = 10
# Seconds an onion site may stay silent before its fetch is given up.
ONION_TIMEOUT = 60
ENTRY_OVERHEAD = 256
# Request headers passed on to the origin. Everything else (User-Agent,
# Referer, Accept-Encoding, conditionals, Range, ...) is dropped: fewer
# bits about the user's browser, and a whole 200 response every time, which
# is what the cache wants.
FORWARDED = ("accept", "accept-language", "cookie", "authorization")
# Hop-by-hop and framing headers: the client frames the answer itself.
NOT_RELAYED = frozenset([
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
    "trailer", "upgrade", "proxy-authenticate", "content-length",
])


class ProxyError(Exception):
    """An answer the proxy makes itself: status and explanation."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# Reason phrases (api.http_request gives only the status code).
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
           206: "Partial Content", 301: "Moved Permanently", 302: "Found",
           303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
           308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers      # [(lower-case name, value), ...]
        self.body = body

    def header(self, name):
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None

    def size(self):
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + ENTRY_OVERHEAD


class Cache:
    """URL -> (Response, stored_at, expires_at or None), least recently used
    first; never more than max_entries entries or max_bytes bytes."""

    def __init__(self, max_bytes, max_entries, max_object):
        self.max_bytes, self.max_entries, self.max_object = max_bytes, max_entries, max_object
        self.entries = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, url):
        found = self.entries.get(url)
        if found is None:
            return None
        response, stored_at, expires_at = found
        if expires_at is not None and time.monotonic() >= expires_at:
            self.remove(url)
            return None
        self.entries.move_to_end(url)
        return response, stored_at

    def remove(self, url):
        response, _, _ = self.entries.pop(url)
        self.bytes -= response.size()

    def put(self, url, response, lifetime):
        size = response.size()
        if size > self.max_object or size > self.max_bytes or self.max_entries == 0:
            return False
        if url in self.entries:
            self.remove(url)
        while self.entries and (len(self.entries) >= self.max_entries
                                or self.bytes + size > self.max_bytes):
            self.remove(next(iter(self.entries)))
            self.evictions += 1
        now = time.monotonic()
        self.entries[url] = (response, now, None if lifetime is None else now + lifetime)
        self.bytes += size
        return True

    def stats(self):
        return {"entries": len(self.entries), "bytes": self.bytes,
                "max_entries": self.max_entries, "max_bytes": self.max_bytes,
                "max_object": self.max_object, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}


def _cache_control(value):
    """Directive -> value (or True) of a Cache-Control header."""
    directives = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = arg.strip().strip('"') or True
    return directives


def _lifetime(response):
    """None: cache until the instance ends; a number: for that many seconds;
    False: do not cache."""
    if response.status != 200:
        return False
    if response.header("set-cookie") is not None or response.header("vary") is not None:
        return False
    directives = _cache_control(response.header("cache-control"))
    if any(d in directives for d in ("no-store", "no-cache", "private")):
        return False
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                seconds = int(directives[name])
            except (TypeError, ValueError):
                return False
            return seconds if seconds > 0 else False
    return None


def _reply(channel, response, cache_state=None, head_only=False):
    headers = [[n, v] for n, v in response.headers if n not in NOT_RELAYED]
    length = str(len(response.body))
    origin_length = response.header("content-length")
    if head_only and not response.body and origin_length and origin_length.isdigit():
        length = origin_length  # a HEAD fetched as HEAD: the origin's word for it
    headers.append(["content-length", length])
    if cache_state is not None:
        headers.append(["x-bento-cache", cache_state])
    body = b"" if head_only else response.body
    head = {"status": response.status, "reason": response.reason,
            "headers": headers, "length": len(body)}
    channel.send(json.dumps(head).encode() + b"\n")
    if body:
        channel.send(body)


def _error_response(status, message):
    body = ("bento proxy: %s\n" % message).encode()
    return Response(status, REASONS.get(status, "Error"),
                    [("content-type", "text/plain; charset=utf-8")], body)


def _read_request(channel):
    data = b""
    while b"\n" not in data:
        try:
            chunk = channel.recv(65536, timeout=REQUEST_TIMEOUT)
        except TimeoutError:
            raise ProxyError(400, "no request within %d s" % REQUEST_TIMEOUT) from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_LINE:
            raise ProxyError(400, "request over %d bytes" % MAX_REQUEST_LINE)
    try:
        request = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise ProxyError(400, "the request is not one line of JSON") from None
    if not isinstance(request, dict):
        raise ProxyError(400, "the request is not a JSON object")
    return request


def _check_fetch(request):
    method = request.get("method")
    url = request.get("url")
    headers = request.get("headers", [])
    if method not in ("GET", "HEAD"):
        raise ProxyError(405, "only GET and HEAD are proxied, not %r" % (method,))
    if not isinstance(url, str):
        raise ProxyError(400, "no URL")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        # They would end up in the request line and Host header it sends.
        raise ProxyError(400, "spaces or control characters in the URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProxyError(400, "not an absolute http:// or https:// URL: %r" % url[:200])
    try:
        parts.port
    except ValueError:
        raise ProxyError(400, "bad port in %r" % url[:200]) from None
    if not isinstance(headers, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in headers):
        raise ProxyError(400, "headers must be a list of [name, value] strings")
    return method, url, parts, [(n.lower(), v) for n, v in headers]


def _fetch_http(method, url, headers, max_response):
    try:
        r = api.http_request(method, url, headers)
    except api.DestinationRefused as e:
        raise ProxyError(403, "this box will not fetch %s: %s" % (url, e)) from None
    except ValueError as e:
        raise ProxyError(400, "%s: %s" % (url, e)) from None
    except api.BoxIOError as e:
        raise ProxyError(502, "fetching %s failed: %s" % (url, e)) from None
    except TimeoutError as e:
        raise ProxyError(504, "fetching %s timed out: %s" % (url, e)) from None
    if len(r.body) > max_response:
        raise ProxyError(502, "the response from %s is %d bytes, over this proxy's limit of %d bytes"
                         % (url, len(r.body), max_response))
    return Response(r.status, REASONS.get(r.status, ""), list(r.header_list), r.body), r.url


def _recv_until(stream, data, marker, limit, what):
    while marker not in data:
        chunk = stream.recv(65536, timeout=ONION_TIMEOUT)
        if not chunk:
            raise ProxyError(502, "the onion site closed the connection in the middle of the %s" % what)
        data += chunk
        if len(data) > limit:
            raise ProxyError(502, "the onion site's %s is over %d bytes" % (what, limit))
    return data


def _read_body(stream, data, headers, max_response):
    """The body after the head: chunked, by Content-Length, or to the close."""
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        body = b""
        while True:
            data = _recv_until(stream, data, b"\r\n", max_response, "body")
            size_line, data = data.split(b"\r\n", 1)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ProxyError(502, "the onion site sent a malformed chunk") from None
            if size == 0:
                return body
            if len(body) + size > max_response:
                raise ProxyError(502, "the onion site's response is over this proxy's limit of %d bytes" % max_response)
            while len(data) < size + 2:
                chunk = stream.recv(65536, timeout=ONION_TIMEOUT)
                if not chunk:
                    raise ProxyError(502, "the onion site closed the connection in the middle of the body")
                data += chunk
            body += data[:size]
            data = data[size + 2:]
    if headers.get("content-length") is not None:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProxyError(502, "the onion site sent a bad Content-Length") from None
        if length < 0 or length > max_response:
            raise ProxyError(502, "the onion site's response is %d bytes, over this proxy's limit of %d bytes"
                             % (length, max_response))
        while len(data) < length:
            chunk = stream.recv(65536, timeout=ONION_TIMEOUT)
            if not chunk:
                raise ProxyError(502, "the onion site closed the connection in the middle of the body")
            data += chunk
        return data[:length]
    while True:
        chunk = stream.recv(65536, timeout=ONION_TIMEOUT)
        if not chunk:
            return data
        data += chunk
        if len(data) > max_response:
            raise ProxyError(502, "the onion site's response is over this proxy's limit of %d bytes" % max_response)


def _fetch_onion(method, parts, headers, max_response):
    """One HTTP/1.1 exchange with an onion site over Tor."""
    if not hasattr(api, "tor_connect"):
        raise ProxyError(502, "this proxy cannot reach onion sites: it was not granted `tor_connect` "
                         "(the box needs `bento serve --tor-control`, and the policy must list it)")
    if parts.scheme != "http":
        raise ProxyError(502, "https:// onion sites are not supported: there is no TLS in the sandbox "
                         "(an onion address already authenticates and encrypts; use http://)")
    host, port = parts.hostname, parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % parts.netloc.rpartition("@")[2],
             "Connection: close", "User-Agent: bento"]
    lines += ["%s: %s" % (n, v) for n, v in headers if "\r" not in v and "\n" not in v]
    try:
        stream = api.tor_connect(host, port)
    except api.BentoError as e:
        raise ProxyError(502, "Tor could not reach %s:%d: %s" % (host, port, e)) from None
    except TimeoutError as e:
        raise ProxyError(504, "Tor did not reach %s:%d in time: %s" % (host, port, e)) from None
    try:
        stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = _recv_until(stream, b"", b"\r\n\r\n", MAX_REQUEST_LINE, "response head")
        head, data = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProxyError(502, "the onion site did not answer with HTTP/1.x")
        status = int(code)
        header_list = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                header_list.append((name.strip().lower(), value.strip()))
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = _read_body(stream, data, dict(header_list), max_response)
        return Response(status, reason, header_list, body)
    except TimeoutError:
        raise ProxyError(504, "the onion site %s stayed silent for %d s" % (host, ONION_TIMEOUT)) from None
    except api.StreamClosed:
        raise ProxyError(502, "the onion site %s closed the connection" % host) from None
    finally:
        stream.close()


class Proxy:
    def __init__(self, cache, max_response):
        self.cache = cache
        self.max_response = max_response
        # api.http_request follows redirects; the client is sent a redirect
        # to the final URL (so relative links resolve), and the response it
        # then asks for is kept here once if it was not cacheable.
        self.stash = None

    def serve(self, channel):
        try:
            request = _read_request(channel)
            if request.get("op") == "stats":
                body = json.dumps(self.cache.stats()).encode()
                _reply(channel, Response(200, "OK", [("content-type", "application/json")], body))
                return
            if request.get("op") != "fetch":
                raise ProxyError(400, "unknown op %r" % (request.get("op"),))
            self.fetch(channel, *_check_fetch(request))
        except ProxyError as e:
            _reply(channel, _error_response(e.status, str(e)))

    def fetch(self, channel, method, url, parts, all_headers):
        headers = [(n, v) for n, v in all_headers if n in FORWARDED]
        names = {n for n, _ in headers}
        personal = "cookie" in names or "authorization" in names
        cache = self.cache
        if not personal and not _refetch(all_headers):
            found = cache.get(url)
            if found is not None:
                response, stored_at = found
                cache.hits += 1
                headers = [h for h in response.headers if h[0] != "age"]
                headers.append(("age", str(int(time.monotonic() - stored_at))))
                _reply(channel, Response(response.status, response.reason, headers, response.body),
                       "hit", head_only=method == "HEAD")
                return
        if self.stash is not None and self.stash[0] == url and method == "GET":
            response = self.stash[1]
            self.stash = None
            cache.misses += 1
            _reply(channel, response, "miss")
            return
        if parts.hostname.lower().endswith(".onion"):
            response, final = _fetch_onion(method, parts, headers, self.max_response), url
        elif not hasattr(api, "http_request"):
            raise ProxyError(502, "this proxy fetches only .onion sites: the box did not grant it `http` "
                             "(exit fetching is the box operator's choice)")
        else:
            response, final = _fetch_http(method, url, headers, self.max_response)
        cache.misses += 1
        lifetime = False if personal or method != "GET" else _lifetime(response)
        if final != url:
            # The origin redirected; the box already has the final answer.
            if method == "GET" and (lifetime is False or not cache.put(final, response, lifetime)):
                self.stash = (final, response)
            _reply(channel, Response(302, "Found", [("location", final)], b""), "miss")
            return
        if lifetime is not False:
            cache.put(url, response, lifetime)
        _reply(channel, response, "miss", head_only=method == "HEAD")


def _refetch(headers):
    """Whether the request asks for a fresh copy (a browser's reload)."""
    for name, value in headers:
        if name in ("cache-control", "pragma") and "no-cache" in value.lower():
            return True
    return False


def _whole(value, low, high, what):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError("%s must be a whole number from %d to %d, not %r" % (what, low, high, value))
    return value


def main(max_bytes=32 * MIB, max_entries=256, max_object=4 * MIB, max_response=MAX_RESPONSE,
         lifetime=270):
    max_bytes = _whole(max_bytes, 0, 48 * MIB, "max_bytes")
    max_entries = _whole(max_entries, 0, 100000, "max_entries")
    max_object = _whole(max_object, 0, MAX_RESPONSE, "max_object")
    max_response = _whole(max_response, 1, MAX_RESPONSE, "max_response")
    lifetime = _whole(lifetime, 1, 86400, "lifetime")
    proxy = Proxy(Cache(max_bytes, max_entries, max_object), max_response)
    onion = "yes" if hasattr(api, "tor_connect") else "no"
    web = "yes" if hasattr(api, "http_request") else "no"
    api.send("proxy ready: cache of %d bytes / %d entries, objects up to %d bytes; "
             "web sites: %s, onion sites: %s; serving for %d s\n"
             % (max_bytes, max_entries, max_object, web, onion, lifetime))
    deadline = time.monotonic() + lifetime
    while True:
        left = deadline - time.monotonic()
        channel = api.accept(timeout=left) if left > 0 else None
        if channel is None:
            break
        try:
            proxy.serve(channel)
        except api.StreamClosed:
            pass  # the client left before its answer; the next one may not
        except Exception as e:
            # A bug here must not end the proxy (and its cache) for every
            # later request: this request gets the error.
            try:
                _reply(channel, _error_response(500, "%s: %s" % (type(e).__name__, e)))
            except api.BentoError:
                pass
        finally:
            channel.close()
    stats = proxy.cache.stats()
    api.send("proxy ended after %d s: %d hits, %d misses, %d evictions\n"
             % (lifetime, stats["hits"], stats["misses"], stats["evictions"]))
