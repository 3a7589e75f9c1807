"""A Bento client over Tor (`api.bento_box`, capability tor_connect).

The wire protocol of docs/protocol.md, so a function can store, invoke and
talk to functions on other boxes (Shard's Dropboxes, LoadBalancer's
replicas). Each request opens its own Tor stream; one instance's streams
share its isolated circuits, so only the first one pays for building them.
The constants come from bento/protocol.py, generated from the Rust
bento-protocol crate.
"""

import json
import struct
import time

from bento import protocol
from bento.errors import BentoError, StreamClosed
from bento.streams import as_bytes, tor_connect

# The protocol version this client speaks: version 1 (version 2 only adds
# padding, which a function's own client has no use for).
SPEAKS = 1
_T = protocol.TOKEN_BYTES


class RemoteError(BentoError):
    """Another box answered with an error; `.code` names it (docs/protocol.md)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


RemoteError.__module__ = "api"  # as functions name it: api.RemoteError


def _remote_str(text):
    data = str(text).encode("utf-8")
    return struct.pack(">I", len(data)) + data


def _remote_token(token, what):
    try:
        raw = bytes.fromhex(str(token))
    except ValueError:
        raw = b""
    if len(raw) != protocol.TOKEN_BYTES:
        raise ValueError(f"{what} must be {2 * protocol.TOKEN_BYTES} hex digits")
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
        if not 1 <= length <= protocol.MAX_FRAME_LEN:
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
    if frame_type == protocol.ERROR and len(payload) >= 6:
        (code,) = struct.unpack_from(">H", payload)
        (length,) = struct.unpack_from(">I", payload, 2)
        message = payload[6:6 + length].decode("utf-8", "replace")
        return RemoteError(protocol.ERROR_NAMES.get(code, f"error {code}"), message)
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
        frames = _Frames(tor_connect(self._host, self._port, self.timeout))
        try:
            frames.write(protocol.HELLO, protocol.HELLO_MAGIC + struct.pack(">HH", SPEAKS, SPEAKS))
            frame_type, payload = frames.read(self.timeout)
            if frame_type != protocol.WELCOME:
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
        body = self._request(protocol.STORE, _remote_str(filename) + _remote_str(source) + _remote_str(manifest),
                             protocol.STORED, "Stored")
        # function id, then the invoke token
        return body[_T:2 * _T].hex()

    def invoke(self, invoke_token, *args, entry="main"):
        """Start an instance; returns (session token, service token or None), in hex."""
        payload = _remote_token(invoke_token, "invoke token") + _remote_str(entry) + _remote_str(json.dumps(list(args)))
        body = self._request(protocol.INVOKE, payload, protocol.INVOKED, "Invoked")
        return body[:_T].hex(), (body[_T:2 * _T].hex() if len(body) >= 2 * _T else None)

    def attach(self, session_token):
        """Attach to a session: a RemoteSession (its own Tor stream)."""
        frames = self._open()
        try:
            body = self._exchange(frames, protocol.ATTACH, _remote_token(session_token, "session token") + b"\0" + bytes(8),
                                  protocol.ATTACHED, "Attached")
        except BaseException:
            frames.close()
            raise
        return RemoteSession(frames, struct.unpack(">Q", body)[0])

    def connect(self, service_token):
        """Open a channel to a running function's service: a RemoteChannel."""
        frames = self._open()
        try:
            self._exchange(frames, protocol.CONNECT, _remote_token(service_token, "service token"), protocol.CONNECTED, "Connected")
        except BaseException:
            frames.close()
            raise
        return RemoteChannel(frames)

    def kill(self, session_token):
        """Stop a session's instance."""
        self._request(protocol.KILL, _remote_token(session_token, "session token"), protocol.KILLED, "Killed")

    def status(self):
        """The box's public status, as a dict."""
        body = self._request(protocol.STATUS_REQUEST, b"", protocol.STATUS, "Status")
        return json.loads(body[4:].decode("utf-8"))

    def __repr__(self):
        return f"<bento box {self.address}>"


def _send_input(frames, data):
    view = memoryview(as_bytes(data, "send()")).cast("B")
    total = len(view)
    if not total:
        return 0
    while view:
        frames.write(protocol.INPUT, bytes(view[:protocol.MAX_DATA_LEN]))
        view = view[protocol.MAX_DATA_LEN:]
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
        self._frames.write(protocol.INPUT_END)

    def recv(self, timeout=None):
        """Next output bytes; b"" once the function returned; RemoteError if it failed."""
        if self._done:
            return b""
        frame_type, payload = self._frames.read(timeout)
        if frame_type == protocol.OUTPUT:
            self.offset += len(payload)
            self._frames.write(protocol.ACK, struct.pack(">Q", self.offset))
            return payload
        self._done = True
        self._frames.write(protocol.ACK, struct.pack(">Q", self.offset))
        if frame_type == protocol.END:
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

    def _wait_target(self):
        """For api.wait: the Tor stream, and whether a recv would return
        without reading it (ended, or a whole frame buffered)."""
        return self._frames._stream, self._done or self._frames.has_frame()

    def detach(self):
        """Leave the session running; returns once the box recorded our acks."""
        if not self._done:
            self._frames.write(protocol.DETACH)
            while True:
                frame_type, payload = self._frames.read(60.0)
                if frame_type == protocol.DETACHED:
                    break
                if frame_type not in (protocol.OUTPUT, protocol.END):
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
        self._frames.write(protocol.INPUT_END)

    def recv(self, max_bytes=65536, timeout=None):
        """Up to `max_bytes` as soon as any arrive; b"" once the function closed it."""
        if not self._pending and not self._ended:
            frame_type, payload = self._frames.read(timeout)
            if frame_type == protocol.OUTPUT:
                self._pending = payload
            elif frame_type == protocol.END:
                self._ended = True
            else:
                self._ended = True
                raise _remote_failure(frame_type, payload, "Output or End")
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def _wait_target(self):
        """For api.wait: as RemoteSession._wait_target."""
        return self._frames._stream, bool(self._pending) or self._ended or self._frames.has_frame()

    def close(self):
        self._frames.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


def bento_box(address, timeout=60.0):
    """tor_connect: another Bento box, "xyz.onion:PORT" (see RemoteBox)."""
    return RemoteBox(address, timeout)
