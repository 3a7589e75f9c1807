"""Bento's Python runner, built into the runtime component by componentize-py.

The box passes a function's source at run time; `run` executes it in a fresh
namespace holding `api` and calls the requested entry point. Everything a
function may import must be imported here, at build time: componentize-py
snapshots the interpreter after this module loads, and nothing else can be
imported later.
"""

# Standard-library modules functions may import (see docs/python-api.md).
# Keep this list and the docs in step; tests/all/sessions.rs imports each one.
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
import time
import traceback
import typing  # noqa: F401
import unicodedata  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

# Prototype-compatible modules, in this directory (see docs/python-api.md).
import bento_socket
import requests  # noqa: F401
import requests.exceptions  # noqa: F401

# `import socket` in a function gives TCP client sockets over api.connect:
# the sandbox has no sockets of its own (the WASI build has no `_socket`, so
# no module above imported the standard `socket`).
sys.modules["socket"] = bento_socket

import wit_world
from bento import errors
from bento.errors import BentoError, StreamClosed
from componentize_py_types import Err
from wit_world.imports import capabilities, session
from wit_world.imports.types import FunctionError

_STDIN = 0
_STDOUT = 1
# Set once the function has raised, before its frames (and streams) are
# released; see Stream.__del__.
_FAILING = [False]

# The sandbox has no CPU clock of its own: wasi-libc would count
# process_time from when this runtime was snapshotted at build time (it came
# out negative). The box reports the instance's own CPU time instead, the
# clock its CPU limit counts; an instance runs on one thread, so the two
# Python clocks agree.
def _cpu_time():
    return capabilities.cpu_time()


def _cpu_time_ns():
    return int(capabilities.cpu_time() * 1e9)


time.process_time = time.thread_time = _cpu_time
time.process_time_ns = time.thread_time_ns = _cpu_time_ns

# Larger stream sends are split so the box never stages more than this.
_SEND_CHUNK = 1024 * 1024


_host = errors.call


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


class _NewChannel:
    """What api.wait(..., accept=True) lists when a new channel waits."""

    __slots__ = ()

    def __repr__(self):
        return "api.NEW_CHANNEL"


NEW_CHANNEL = _NewChannel()


def _wait_target(item):
    """The Stream under `item`, and whether `item` can be read at once from
    what it has buffered already."""
    if isinstance(item, Stream):
        stream, buffered = item, False
    elif isinstance(item, (RemoteSession, RemoteChannel)):
        stream, buffered = item._frames._stream, item._readable()
    else:
        raise TypeError("wait() takes streams (api.connect/accept/tor_connect) and remote sessions "
                        f"and channels (api.bento_box), not {type(item).__name__}")
    if stream._closed:
        raise StreamClosed("wait() on a closed stream")
    return stream, buffered


def _wait(streams, timeout=None, accept=False):
    """Block until one of `streams` can be read without blocking (data or its
    end is there) or, with `accept=True`, a new channel waits for
    api.accept(); returns those streams (and api.NEW_CHANNEL), in the order
    given. An empty list when `timeout` seconds pass first.

    Remote sessions and channels (api.bento_box) may be waited on too: they
    are ready when bytes or the end of their Tor stream arrived, or a whole
    message is buffered; a recv(timeout=0) then raises TimeoutError if only
    part of a message is there so far.
    """
    items = list(streams)
    targets = [_wait_target(item) for item in items]
    if timeout is not None:
        timeout = float(timeout)
    if any(buffered for _, buffered in targets):
        timeout = 0.0  # something is ready already: only look at the rest
    _stage(struct.pack(">%dI" % len(targets), *(stream._id for stream, _ in targets)))
    count, can_accept = _host(capabilities.wait, timeout, bool(accept))
    ready_ids = set(struct.unpack(">%dI" % count, _read_exact(4 * count))) if count else set()
    ready = [item for item, (stream, buffered) in zip(items, targets) if buffered or stream._id in ready_ids]
    if can_accept:
        ready.append(NEW_CHANNEL)
    return ready


def _tor_connect(host, port, timeout=None):
    """tor_connect: a stream to host:port over Tor (names resolved by the exit; .onion works).

    TimeoutError if Tor has not connected within `timeout` seconds (at most
    120, the default).
    """
    return Stream(_host(capabilities.tor_connect, str(host), int(port),
                        None if timeout is None else float(timeout)))


def _onion_service(port, key=None):
    """onion_service: publish an onion service on virtual `port`; returns "xyz.onion".

    Streams to it arrive as channels from api.accept(). It is removed when
    the instance ends, however it ends.
    """
    return _host(capabilities.onion_service, int(port), None if key is None else str(key))


def _timeout_ms(timeout, what):
    """A timeout in seconds (None: the instance's wall-time limit) as whole ms."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a number of seconds > 0 or None, not {timeout!r}")
    return max(1, min(int(timeout * 1000), 2**63))


def _http_request(method, url, headers=None, body=b"", timeout=None):
    """http: one HTTP(S) request; redirects are followed (each hop checked).

    `timeout` (seconds) bounds the whole request, redirects included."""
    header_list = list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
    timeout_ms = _timeout_ms(timeout, "http_request(timeout=)")
    _stage(_bytes(body, "http_request(body=)"))
    meta = json.loads(_host(capabilities.http_request, str(method).upper(), str(url),
                            json.dumps([[str(k), str(v)] for k, v in header_list]), timeout_ms))
    body = _read_exact(meta["body_length"])
    return HttpResponse(meta["status"], [tuple(h) for h in meta["headers"]], body, meta["url"])


def _http_get(url, headers=None, timeout=None):
    """http: GET `url`."""
    return _http_request("GET", url, headers, timeout=timeout)


def _sleep(seconds):
    """time: block for `seconds` without using CPU."""
    _host(capabilities.sleep, float(seconds))


def _time():
    """time: seconds since the Unix epoch, as a float."""
    return capabilities.now()


# --- A Bento client over Tor (`api.bento_box`, capability tor_connect) -----
#
# The wire protocol of docs/protocol.md, so a function can store, invoke and
# talk to functions on other boxes (Shard's Dropboxes, LoadBalancer's
# replicas). Each request opens its own Tor stream; one instance's streams
# share its isolated circuits, so only the first one pays for building them.

_REMOTE_ERROR_NAMES = {
    1: "malformed_frame", 2: "frame_too_large", 3: "unsupported_version",
    4: "unexpected_frame", 5: "timeout", 6: "invalid_function",
    7: "invalid_arguments", 8: "manifest_rejected", 16: "unknown_invoke_token",
    17: "unknown_session", 18: "session_attached", 19: "unknown_service",
    32: "limit.memory", 33: "limit.cpu", 34: "limit.wall_time", 35: "limit.stack",
    48: "function_exception", 49: "killed", 50: "worker_crashed",
    51: "function_trapped", 64: "too_many_instances", 65: "buffer_cap_reached",
    66: "storage_full", 67: "channel_limit", 68: "instance_storage_full",
    96: "internal",
}
_HELLO, _WELCOME, _STORE, _STORED, _INVOKE, _INVOKED = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13
_ATTACH, _ATTACHED, _KILL, _KILLED, _STATUS_REQUEST, _STATUS = 0x14, 0x15, 0x16, 0x17, 0x18, 0x19
_CONNECT, _CONNECTED = 0x1a, 0x1b
_OUTPUT, _INPUT, _INPUT_END, _ACK, _DETACH, _END, _DETACHED = 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26
_ERROR = 0x7f
_MAX_FRAME = 4 * 1024 * 1024
_MAX_DATA = 1024 * 1024


class RemoteError(BentoError):
    """Another box answered with an error; `.code` names it (docs/protocol.md)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _remote_str(text):
    data = str(text).encode("utf-8")
    return struct.pack(">I", len(data)) + data


def _remote_token(token, what):
    try:
        raw = bytes.fromhex(str(token))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{what} must be 64 hex digits")
    return raw


class _Frames:
    """Frames over one Tor stream, with deadlines that survive partial reads."""

    __slots__ = ("_stream", "_buffer")

    def __init__(self, stream):
        self._stream = stream
        self._buffer = bytearray()

    def write(self, frame_type, payload=b""):
        self._stream.send(struct.pack(">IB", len(payload) + 1, frame_type) + payload)

    def _fill(self, size, deadline):
        while len(self._buffer) < size:
            timeout = None
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            chunk = self._stream.recv(max(size - len(self._buffer), 65536), timeout)
            if not chunk:
                raise StreamClosed("the box closed the connection")
            self._buffer += chunk

    def read(self, timeout=None):
        """The next (type, payload); TimeoutError if none completes in time."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        self._fill(4, deadline)
        (length,) = struct.unpack_from(">I", self._buffer)
        if not 1 <= length <= _MAX_FRAME:
            raise RemoteError("malformed_frame", f"the box sent a frame of length {length}")
        self._fill(4 + length, deadline)
        frame_type = self._buffer[4]
        payload = bytes(self._buffer[5:4 + length])
        del self._buffer[:4 + length]
        return frame_type, payload

    def has_frame(self):
        """Whether a whole frame has arrived already (read() won't block)."""
        if len(self._buffer) < 4:
            return False
        (length,) = struct.unpack_from(">I", self._buffer)
        return len(self._buffer) >= 4 + length

    def close(self):
        self._stream.close()


def _remote_failure(frame_type, payload, expected):
    if frame_type == _ERROR and len(payload) >= 6:
        (code,) = struct.unpack_from(">H", payload)
        (length,) = struct.unpack_from(">I", payload, 2)
        message = payload[6:6 + length].decode("utf-8", "replace")
        return RemoteError(_REMOTE_ERROR_NAMES.get(code, f"error {code}"), message)
    return RemoteError("unexpected_frame", f"the box sent frame type {frame_type:#04x}, expected {expected}")


class RemoteBox:
    """A Bento box reached over Tor: `api.bento_box("xyz.onion:PORT")`."""

    __slots__ = ("address", "timeout", "_host", "_port")

    def __init__(self, address, timeout=60.0):
        host, sep, port = str(address).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a box address is HOST:PORT, e.g. xyz.onion:7878, not {address!r}")
        self.address = str(address)
        self.timeout = timeout
        self._host = host
        self._port = int(port)

    def _open(self):
        frames = _Frames(_tor_connect(self._host, self._port, self.timeout))
        try:
            frames.write(_HELLO, b"BENTO" + struct.pack(">HH", 1, 1))
            frame_type, payload = frames.read(self.timeout)
            if frame_type != _WELCOME:
                raise _remote_failure(frame_type, payload, "Welcome")
        except BaseException:
            frames.close()
            raise
        return frames

    def _exchange(self, frames, request, payload, reply, reply_name):
        frames.write(request, payload)
        frame_type, body = frames.read(self.timeout)
        if frame_type != reply:
            raise _remote_failure(frame_type, body, reply_name)
        return body

    def _request(self, request, payload, reply, reply_name):
        frames = self._open()
        try:
            return self._exchange(frames, request, payload, reply, reply_name)
        finally:
            frames.close()

    def store(self, source, manifest="", filename="function.py"):
        """Store a function; returns its invoke token (hex)."""
        body = self._request(_STORE, _remote_str(filename) + _remote_str(source) + _remote_str(manifest),
                             _STORED, "Stored")
        return body[32:64].hex()

    def invoke(self, invoke_token, *args, entry="main"):
        """Start an instance; returns (session token, service token or None), in hex."""
        payload = _remote_token(invoke_token, "invoke token") + _remote_str(entry) + _remote_str(json.dumps(list(args)))
        body = self._request(_INVOKE, payload, _INVOKED, "Invoked")
        return body[:32].hex(), (body[32:64].hex() if len(body) >= 64 else None)

    def attach(self, session_token):
        """Attach to a session: a RemoteSession (its own Tor stream)."""
        frames = self._open()
        try:
            body = self._exchange(frames, _ATTACH, _remote_token(session_token, "session token") + b"\0" + bytes(8),
                                  _ATTACHED, "Attached")
        except BaseException:
            frames.close()
            raise
        return RemoteSession(frames, struct.unpack(">Q", body)[0])

    def connect(self, service_token):
        """Open a channel to a running function's service: a RemoteChannel."""
        frames = self._open()
        try:
            self._exchange(frames, _CONNECT, _remote_token(service_token, "service token"), _CONNECTED, "Connected")
        except BaseException:
            frames.close()
            raise
        return RemoteChannel(frames)

    def kill(self, session_token):
        """Stop a session's instance."""
        self._request(_KILL, _remote_token(session_token, "session token"), _KILLED, "Killed")

    def status(self):
        """The box's public status, as a dict."""
        body = self._request(_STATUS_REQUEST, b"", _STATUS, "Status")
        return json.loads(body[4:].decode("utf-8"))

    def __repr__(self):
        return f"<bento box {self.address}>"


def _send_input(frames, data):
    view = memoryview(_bytes(data, "send()")).cast("B")
    total = len(view)
    if not total:
        return 0
    while view:
        frames.write(_INPUT, bytes(view[:_MAX_DATA]))
        view = view[_MAX_DATA:]
    return total


class RemoteSession:
    """A session on another box, attached; reads acknowledge what they return."""

    __slots__ = ("_frames", "offset", "_done")

    def __init__(self, frames, offset):
        self._frames = frames
        self.offset = offset
        self._done = False

    def send(self, data):
        """Send one message (one api.recv() there; split above 1 MiB)."""
        return _send_input(self._frames, data)

    def end_input(self):
        """Close the function's input: its api.recv() returns b"" from then on."""
        self._frames.write(_INPUT_END)

    def recv(self, timeout=None):
        """Next output bytes; b"" once the function returned; RemoteError if it failed."""
        if self._done:
            return b""
        frame_type, payload = self._frames.read(timeout)
        if frame_type == _OUTPUT:
            self.offset += len(payload)
            self._frames.write(_ACK, struct.pack(">Q", self.offset))
            return payload
        self._done = True
        self._frames.write(_ACK, struct.pack(">Q", self.offset))
        if frame_type == _END:
            return b""
        raise _remote_failure(frame_type, payload, "Output or End")

    def read_all(self, timeout=None):
        """All output until the function returns."""
        parts = []
        while True:
            data = self.recv(timeout)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def _readable(self):
        return self._done or self._frames.has_frame()

    def detach(self):
        """Leave the session running; returns once the box recorded our acks."""
        if not self._done:
            self._frames.write(_DETACH)
            while True:
                frame_type, payload = self._frames.read(60.0)
                if frame_type == _DETACHED:
                    break
                if frame_type not in (_OUTPUT, _END):
                    raise _remote_failure(frame_type, payload, "Detached")
        self.close()

    def close(self):
        self._frames.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


class RemoteChannel:
    """A channel to a service on another box (what api.accept() returns there)."""

    __slots__ = ("_frames", "_pending", "_ended")

    def __init__(self, frames):
        self._frames = frames
        self._pending = b""
        self._ended = False

    def send(self, data):
        return _send_input(self._frames, data)

    def end_input(self):
        self._frames.write(_INPUT_END)

    def recv(self, max_bytes=65536, timeout=None):
        """Up to `max_bytes` as soon as any arrive; b"" once the function closed it."""
        if not self._pending and not self._ended:
            frame_type, payload = self._frames.read(timeout)
            if frame_type == _OUTPUT:
                self._pending = payload
            elif frame_type == _END:
                self._ended = True
            else:
                self._ended = True
                raise _remote_failure(frame_type, payload, "Output or End")
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def _readable(self):
        return bool(self._pending) or self._ended or self._frames.has_frame()

    def close(self):
        self._frames.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


def _bento_box(address, timeout=60.0):
    """tor_connect: another Bento box, "xyz.onion:PORT" (see RemoteBox)."""
    return RemoteBox(address, timeout)


_STORAGE = Storage()

# Which capability makes which `api` attribute exist.
_CAPABILITY_ATTRIBUTES = {
    "connect": {"connect": _connect, "wait": _wait},
    "http": {"http_get": _http_get, "http_request": _http_request},
    "storage": {"storage": _STORAGE},
    "time": {"sleep": _sleep, "time": _time},
    "service": {"accept": _accept, "wait": _wait},
    "tor_connect": {"tor_connect": _tor_connect, "bento_box": _bento_box, "wait": _wait},
    "onion_service": {"onion_service": _onion_service, "accept": _accept, "wait": _wait},
}


class Api:
    """The `api` object every function sees as a global."""

    __slots__ = ("_granted",)

    RemoteError = RemoteError
    NEW_CHANNEL = NEW_CHANNEL

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


# The exception classes (bento/errors.py), e.g. api.DestinationRefused.
for _cls in errors.PUBLIC:
    setattr(Api, _cls.__name__, _cls)

api = Api()


# The runtime's own files, whose frames a function's traceback leaves out.
_RUNTIME_FILES = (__file__, os.path.dirname(errors.__file__) + os.sep)


def _format_failure(exc):
    """The traceback of a user function, without the runner's own frames
    (neither the call into the function nor the api's internals below it)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != _RUNTIME_FILES[0] and not f.filename.startswith(_RUNTIME_FILES[1])]
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


class _RunnerError(Exception):
    """A call the runner cannot make (no such entry, bad arguments): its
    message is the whole failure, without a traceback."""


def _guarded(action):
    """Run `action`, turning any failure into `Err(FunctionError)`: the
    traceback and, when a capability error ended the function, its kind."""
    try:
        action()
    except _RunnerError as exc:
        raise Err(FunctionError(None, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. SystemExit
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return
        if isinstance(exc, Err):
            # A function calling the raw bindings (wit_world.imports) can
            # let a host error escape unconverted: it is reported as the
            # exception it stands for.
            raw = exc
            exc = errors.from_host(raw.value) if hasattr(raw.value, "kind") else BentoError(str(raw.value))
            exc = exc.with_traceback(raw.__traceback__)
        _FAILING[0] = True
        raise Err(FunctionError(errors.host_error_kind(exc), _format_failure(exc)))
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
                raise _RunnerError("arguments must be a JSON array")
            namespace = _load(source, filename)
            function = namespace.get(entry)
            if function is None:
                raise _RunnerError(f"{filename} defines no function named {entry!r}")
            if not callable(function):
                raise _RunnerError(f"{entry!r} in {filename} is not callable")
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
