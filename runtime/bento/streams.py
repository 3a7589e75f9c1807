"""Streams: TCP connections, service channels and Tor streams, and the
plumbing every capability uses to move bytes (WASI stdout/stdin with
`capabilities.stage`, never `list<u8>` arguments, which componentize-py
leaks).
"""

import os
import struct
import sys

from wit_world.imports import capabilities

from bento import errors
from bento.errors import StreamClosed

_STDIN = 0
_STDOUT = 1
# Set once the function has raised, before its frames (and streams) are
# released; see Stream.__del__.
FAILING = [False]

# Larger stream sends are split so the box never stages more than this.
SEND_CHUNK = 1024 * 1024


def write_all(data):
    view = memoryview(data).cast("B")
    while view:
        written = os.write(_STDOUT, view)
        view = view[written:]


def as_bytes(data, what):
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError(f"{what} takes bytes or str, not {type(data).__name__}")


def stage(data):
    """Hand `data` to the box for the next capability call."""
    sys.stdout.flush()  # print() output stays on the session, in order
    length = len(memoryview(data).cast("B"))
    errors.call(capabilities.stage, length)
    write_all(data)


def read_exact(length):
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
        data = as_bytes(data, "send()")
        if self._closed:
            raise StreamClosed("the stream is closed")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            chunk = view[:SEND_CHUNK]
            stage(chunk)
            errors.call(capabilities.conn_send, self._id)
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
        max_bytes = max(1, min(int(max_bytes), SEND_CHUNK))
        length = errors.call(capabilities.conn_recv, self._id, max_bytes,
                       None if timeout is None else float(timeout))
        if length is None:
            return b""
        return read_exact(length)

    def recv_exactly(self, length):
        """Exactly `length` bytes; raises StreamClosed if the stream ends first."""
        parts = []
        while length > 0:
            chunk = self.recv(min(length, SEND_CHUNK))
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
        if FAILING[0]:
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    def __repr__(self):
        return f"<bento stream {self._id}{' closed' if self._closed else ''}>"


def connect(host, port):
    """connect: a TCP stream to host:port, if the box's rules allow it."""
    return Stream(errors.call(capabilities.connect, str(host), int(port)))


def accept(timeout=None):
    """service: the next client channel; None if `timeout` seconds pass first."""
    stream_id = errors.call(capabilities.accept, None if timeout is None else float(timeout))
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
    elif hasattr(item, "_wait_target"):
        # A remote session or channel (bento/remote.py): its Tor stream,
        # and whether a whole message is buffered already.
        stream, buffered = item._wait_target()
    else:
        raise TypeError("wait() takes streams (api.connect/accept/tor_connect) and remote sessions "
                        f"and channels (api.bento_box), not {type(item).__name__}")
    if stream._closed:
        raise StreamClosed("wait() on a closed stream")
    return stream, buffered


def wait(streams, timeout=None, accept=False):
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
    stage(struct.pack(">%dI" % len(targets), *(stream._id for stream, _ in targets)))
    count, can_accept = errors.call(capabilities.wait, timeout, bool(accept))
    ready_ids = set(struct.unpack(">%dI" % count, read_exact(4 * count))) if count else set()
    ready = [item for item, (stream, buffered) in zip(items, targets) if buffered or stream._id in ready_ids]
    if can_accept:
        ready.append(NEW_CHANNEL)
    return ready


def tor_connect(host, port, timeout=None):
    """tor_connect: a stream to host:port over Tor (names resolved by the exit; .onion works).

    TimeoutError if Tor has not connected within `timeout` seconds (at most
    120, the default).
    """
    return Stream(errors.call(capabilities.tor_connect, str(host), int(port),
                        None if timeout is None else float(timeout)))


def onion_service(port, key=None):
    """onion_service: publish an onion service on virtual `port`; returns "xyz.onion".

    Streams to it arrive as channels from api.accept(). It is removed when
    the instance ends, however it ends.
    """
    return errors.call(capabilities.onion_service, int(port), None if key is None else str(key))
