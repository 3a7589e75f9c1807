"""Bento's Python runner, built into the runtime component by componentize-py.

The box passes a function's source at run time; `run` executes it in a fresh
namespace holding `api` and calls the requested entry point. Everything a
function may import must be imported here, at build time: componentize-py
snapshots the interpreter after this module loads, and nothing else can be
imported later.
"""

# Standard-library modules functions may import (see docs/python-api.md).
# Keep this list and the docs in step; tests/all/sandbox.rs imports each one.
import abc  # noqa: F401
import array  # noqa: F401
import base64  # noqa: F401
import binascii  # noqa: F401
import bisect  # noqa: F401
import builtins
import calendar  # noqa: F401
import codecs  # noqa: F401
import collections  # noqa: F401
import collections.abc  # noqa: F401
import contextlib  # noqa: F401
import copy  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import gzip  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import hmac  # noqa: F401
import html  # noqa: F401
import html.parser  # noqa: F401
import io
import ipaddress  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator  # noqa: F401
import os
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import secrets  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import sys
import textwrap  # noqa: F401
import time  # noqa: F401
import traceback
import typing  # noqa: F401
import unicodedata  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

import wit_world
from componentize_py_types import Err
from wit_world.imports import capabilities, session

_STDIN = 0
_STDOUT = 1
# Set once the function has raised, before its frames (and streams) are
# released; see Stream.__del__.
_FAILING = [False]

# Larger stream sends are split so the box never stages more than this.
_SEND_CHUNK = 1024 * 1024


class BentoError(Exception):
    """Base class of errors from Bento capabilities."""


class DestinationRefused(BentoError, PermissionError):
    """The box's rules do not let this function reach that destination."""


class QuotaExceeded(BentoError, OSError):
    """The instance's storage quota would be exceeded."""


class ChannelLimit(BentoError):
    """The instance already has as many channels and connections as granted."""


class StreamClosed(BentoError, ConnectionError):
    """The stream or channel is closed."""


class BoxIOError(BentoError, OSError):
    """A capability failed for a reason outside the function (network, TLS, disk)."""


_ERRORS = {
    "refused": DestinationRefused,
    "quota": QuotaExceeded,
    "channels": ChannelLimit,
    "closed": StreamClosed,
    "timeout": TimeoutError,
    "invalid": ValueError,
    "not-granted": PermissionError,
    "io": BoxIOError,
}


def _host(call, *args):
    """Call a capability import, turning its error text into an exception."""
    try:
        return call(*args)
    except Err as err:
        text = str(err.value)
        kind, _, message = text.partition(": ")
        raise _ERRORS.get(kind, BentoError)(message or text) from None


def _write_all(data):
    view = memoryview(data).cast("B")
    while view:
        written = os.write(_STDOUT, view)
        view = view[written:]


def _bytes(data, what):
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError(f"{what} takes bytes or str, not {type(data).__name__}")


def _stage(data):
    """Hand `data` to the box for the next capability call."""
    sys.stdout.flush()  # print() output stays on the session, in order
    length = len(memoryview(data).cast("B"))
    _host(capabilities.stage, length)
    _write_all(data)


def _read_exact(length):
    """Read a result body of `length` bytes the box made available on stdin."""
    parts = []
    remaining = length
    while remaining:
        chunk = os.read(_STDIN, remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Stream:
    """A TCP connection (`api.connect`) or a service channel (`api.accept`)."""

    __slots__ = ("_id", "_closed", "__weakref__")

    def __init__(self, stream_id):
        self._id = stream_id
        self._closed = False

    def send(self, data):
        """Send bytes (or str as UTF-8); blocks under backpressure and bandwidth limits."""
        data = _bytes(data, "send()")
        if self._closed:
            raise StreamClosed("the stream is closed")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            chunk = view[:_SEND_CHUNK]
            _stage(chunk)
            _host(capabilities.conn_send, self._id)
            view = view[len(chunk):]
        return total

    def sendall(self, data):
        """Same as send(): it always sends everything."""
        return self.send(data)

    def recv(self, max_bytes=65536, timeout=None):
        """Up to `max_bytes` bytes as soon as any arrive; b"" at end of stream.

        Raises TimeoutError when `timeout` seconds pass without data.
        """
        if self._closed:
            raise StreamClosed("the stream is closed")
        max_bytes = max(1, min(int(max_bytes), _SEND_CHUNK))
        length = _host(capabilities.conn_recv, self._id, max_bytes,
                       None if timeout is None else float(timeout))
        if length is None:
            return b""
        return _read_exact(length)

    def recv_exactly(self, length):
        """Exactly `length` bytes; raises StreamClosed if the stream ends first."""
        parts = []
        while length > 0:
            chunk = self.recv(min(length, _SEND_CHUNK))
            if not chunk:
                raise StreamClosed("the stream ended early")
            parts.append(chunk)
            length -= len(chunk)
        return b"".join(parts)

    def close(self):
        """Close both directions. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            capabilities.conn_close(self._id)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # On an exception the close is left to __del__: if the exception
        # ends the function, its channel client then learns of the failure
        # instead of seeing an ordinary end; if it is caught, the stream is
        # closed as soon as it is collected.
        if exc_type is None:
            self.close()

    def __del__(self):
        # A stream dropped while the function fails must not look closed on
        # purpose: its channel client then learns of the failure instead.
        if _FAILING[0]:
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    def __repr__(self):
        return f"<bento stream {self._id}{' closed' if self._closed else ''}>"


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


class Storage:
    """Instance-scoped key-value storage, encrypted at rest, gone when the instance ends."""

    __slots__ = ()

    def put(self, key, value):
        """Store bytes (or str as UTF-8) under a str key; raises QuotaExceeded."""
        if not isinstance(key, str):
            raise TypeError("storage keys are str")
        _stage(_bytes(value, "storage.put()"))
        _host(capabilities.storage_put, key)

    def get(self, key, default=None):
        """The value stored under `key` as bytes, or `default`."""
        if not isinstance(key, str):
            raise TypeError("storage keys are str")
        length = _host(capabilities.storage_get, key)
        return default if length is None else _read_exact(length)

    def delete(self, key):
        """Remove `key`; returns whether it existed."""
        return _host(capabilities.storage_delete, key)

    def keys(self):
        """All keys, sorted."""
        return list(_host(capabilities.storage_keys))

    def usage(self):
        """(bytes used, quota in bytes)."""
        return tuple(_host(capabilities.storage_usage))

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self.put(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key):
        return self.get(key) is not None

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def __repr__(self):
        used, quota = self.usage()
        return f"<bento storage: {used} of {quota} bytes used>"


def _connect(host, port):
    """connect: a TCP stream to host:port, if the box's rules allow it."""
    return Stream(_host(capabilities.connect, str(host), int(port)))


def _accept(timeout=None):
    """service: the next client channel; None if `timeout` seconds pass first."""
    stream_id = _host(capabilities.accept, None if timeout is None else float(timeout))
    return None if stream_id is None else Stream(stream_id)


def _tor_connect(host, port):
    """tor_connect: a stream to host:port over Tor (names resolved by the exit; .onion works)."""
    return Stream(_host(capabilities.tor_connect, str(host), int(port)))


def _onion_service(port, key=None):
    """onion_service: publish an onion service on virtual `port`; returns "xyz.onion".

    Streams to it arrive as channels from api.accept(). It is removed when
    the instance ends, however it ends.
    """
    return _host(capabilities.onion_service, int(port), None if key is None else str(key))


def _http_request(method, url, headers=None, body=b""):
    """http: one HTTP(S) request; redirects are followed (each hop checked)."""
    header_list = list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
    _stage(_bytes(body, "http_request(body=)"))
    meta = json.loads(_host(capabilities.http_request, str(method).upper(), str(url),
                            json.dumps([[str(k), str(v)] for k, v in header_list])))
    body = _read_exact(meta["body_length"])
    return HttpResponse(meta["status"], [tuple(h) for h in meta["headers"]], body, meta["url"])


def _http_get(url, headers=None):
    """http: GET `url`."""
    return _http_request("GET", url, headers)


def _sleep(seconds):
    """time: block for `seconds` without using CPU."""
    _host(capabilities.sleep, float(seconds))


def _time():
    """time: seconds since the Unix epoch, as a float."""
    return capabilities.now()


_STORAGE = Storage()

# Which capability makes which `api` attribute exist.
_CAPABILITY_ATTRIBUTES = {
    "connect": {"connect": _connect},
    "http": {"http_get": _http_get, "http_request": _http_request},
    "storage": {"storage": _STORAGE},
    "time": {"sleep": _sleep, "time": _time},
    "service": {"accept": _accept},
    "tor_connect": {"tor_connect": _tor_connect},
    "onion_service": {"onion_service": _onion_service, "accept": _accept},
}


class Api:
    """The `api` object every function sees as a global."""

    __slots__ = ("_granted",)

    BentoError = BentoError
    DestinationRefused = DestinationRefused
    QuotaExceeded = QuotaExceeded
    ChannelLimit = ChannelLimit
    StreamClosed = StreamClosed
    BoxIOError = BoxIOError

    def __init__(self):
        self._granted = {}

    def _grant(self, names):
        granted = {}
        for name in names:
            granted.update(_CAPABILITY_ATTRIBUTES.get(name, {}))
        self._granted = granted

    def send(self, data):
        """Send bytes (or str, encoded as UTF-8) to the client; returns the byte count.

        Blocks while the session's output buffer is full (backpressure).
        """
        data = _bytes(data, "api.send()")
        # print() output goes to the client too; keep it in order with sends.
        sys.stdout.flush()
        total = len(memoryview(data).cast("B"))
        session.begin_message(total)
        _write_all(data)
        return total

    def recv(self):
        """Block until the client sends a message and return it as bytes.

        Returns b"" once the client has closed its input.
        """
        length = session.next_message()
        if length is None:
            return b""
        return _read_exact(length)

    def poll(self):
        """True when a client message is waiting (recv would not block)."""
        return session.poll()

    def __getattr__(self, name):
        granted = object.__getattribute__(self, "_granted")
        if name in granted:
            return granted[name]
        # Capabilities beyond the session channel (network, storage, Tor)
        # exist only when a manifest declares them and the box grants them.
        needs = [cap for cap, attrs in _CAPABILITY_ATTRIBUTES.items() if name in attrs]
        hint = f" (it needs the `{needs[0]}` capability)" if needs else ""
        raise AttributeError(
            f"api.{name} is not available to this function{hint}: capabilities beyond "
            "send/recv/poll must be declared in the function's manifest and "
            "granted by the box's policy"
        )

    def __dir__(self):
        return ["send", "recv", "poll", *sorted(self._granted)]

    def __repr__(self):
        return f"<bento api: {', '.join(self.__dir__())}>"


api = Api()


def _format_failure(exc):
    """The traceback of a user function, without the runner's own frames
    (neither the call into the function nor the api's internals below it)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _compile(source, filename):
    return compile(source, filename, "exec", dont_inherit=True)


def _load(source, filename):
    """Execute the function module in a fresh namespace holding `api`."""
    namespace = {
        "__name__": "__bento__",
        "__file__": filename,
        "__builtins__": builtins,
        "api": api,
    }
    exec(_compile(source, filename), namespace)
    return namespace


def _guarded(action):
    """Run `action`, turning any failure into `Err(traceback)`."""
    try:
        action()
    except Err:
        raise
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. SystemExit
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return
        _FAILING[0] = True
        raise Err(_format_failure(exc))
    finally:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the session may already be gone
            pass


class WitWorld(wit_world.WitWorld):
    def run(self, source, filename, entry, args_json):
        api._grant(capabilities.granted())

        def action():
            args = json.loads(args_json)
            if not isinstance(args, list):
                raise Err("arguments must be a JSON array")
            namespace = _load(source, filename)
            function = namespace.get(entry)
            if function is None:
                raise Err(f"{filename} defines no function named {entry!r}")
            if not callable(function):
                raise Err(f"{entry!r} in {filename} is not callable")
            function(*args)

        _guarded(action)

    def evaluate(self, source, filename, call):
        api._grant(capabilities.granted())

        def action():
            namespace = _load(source, filename)
            result = eval(compile(call, "<call>", "eval", dont_inherit=True), namespace)
            if result is not None:
                if not isinstance(result, (bytes, bytearray, memoryview)):
                    result = str(result)
                api.send(result)

        _guarded(action)

    def check(self, source, filename):
        try:
            _compile(source, filename)
        except (SyntaxError, ValueError) as exc:
            raise Err(_format_failure(exc))
