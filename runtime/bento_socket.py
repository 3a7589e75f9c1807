"""The `socket` module Bento functions import: TCP client sockets on top of
`api.connect`.

The research prototype's functions open connections the `socket` way
(`socket.create_connection((host, port))`, or `socket.socket(AF_INET,
SOCK_STREAM)` then `connect`). The sandbox has no sockets of its own, so
`import socket` gives this module instead: every connection goes through
`api.connect`, so the box resolves the name and checks each address
against the function's manifest and the box's policy, exactly as for
`api.connect`, and it counts towards the instance's `channels` grant.

Provided: `create_connection`, `socket(AF_INET | AF_INET6, SOCK_STREAM)`
with `connect`, `connect_ex`, `send`, `sendall`, `recv`, `recv_into`,
`settimeout`, `gettimeout`, `setblocking`, `getblocking`, `makefile`,
`shutdown(SHUT_RDWR)`, `close`, `detach`-free context manager use,
`getpeername`, `setsockopt(IPPROTO_TCP, TCP_NODELAY, …)` (always on), and
the constants and exceptions (`error`, `timeout`, `gaierror`, `herror`)
such code names. Anything else (listening, UDP, raw sockets, name
resolution, file descriptors, other socket options) raises
`socket.Unsupported` naming what is missing, instead of doing something
else.
"""

import errno as _errno
import io as _io

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
# Linux flag bits that may be or-ed into a type; harmless here.
SOCK_NONBLOCK = 0o4000
SOCK_CLOEXEC = 0o2000000
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_KEEPALIVE = 9
TCP_NODELAY = 1
SHUT_RD = 0
SHUT_WR = 1
SHUT_RDWR = 2

error = OSError
timeout = TimeoutError


class herror(OSError):
    """A host-lookup error (never raised here: the box resolves names)."""


class gaierror(OSError):
    """An address-lookup error (never raised here: the box resolves names)."""


class Unsupported(OSError):
    """What a Bento function's `socket` does not provide."""

    def __init__(self, what, instead=None):
        message = f"socket: {what} is not supported in a Bento function"
        if instead:
            message += f" ({instead})"
        super().__init__(_errno.EOPNOTSUPP, message)


# The marker `create_connection` takes for "the default timeout".
_GLOBAL_DEFAULT_TIMEOUT = object()
_default_timeout = [None]

_PROVIDED = (
    "create_connection, socket(AF_INET or AF_INET6, SOCK_STREAM), "
    "getdefaulttimeout, setdefaulttimeout"
)


def getdefaulttimeout():
    """The timeout new sockets start with (None: block)."""
    return _default_timeout[0]


def setdefaulttimeout(value):
    """Set the timeout new sockets start with."""
    _default_timeout[0] = _check_timeout(value)


def _check_timeout(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"socket: a timeout must be a number or None, not {value!r}")
    if value < 0:
        raise ValueError("socket: a timeout must be 0 or more")
    return float(value)


def _api_connect():
    from bento.api import api  # loaded by the runtime first, so this never cycles

    try:
        return api.connect
    except AttributeError:
        raise PermissionError(
            "socket connections need the `connect` capability: declare it in the function's "
            'manifest (capabilities = ["connect"], with destinations) and use a box whose '
            "policy grants it"
        ) from None


class socket:
    """A TCP client socket whose connection is an `api.connect` stream."""

    def __init__(self, family=AF_INET, type=SOCK_STREAM, proto=0, fileno=None):
        if fileno is not None:
            raise Unsupported("socket(fileno=…)", "there are no file descriptors")
        if family not in (AF_INET, AF_INET6):
            raise Unsupported(f"address family {family!r}", "only AF_INET and AF_INET6")
        kind = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
        if kind != SOCK_STREAM:
            raise Unsupported(f"socket type {type!r}", "only SOCK_STREAM (TCP) connections")
        if proto not in (0, IPPROTO_TCP):
            raise Unsupported(f"protocol {proto!r}", "only TCP")
        self.family = family
        self.type = kind
        self.proto = proto
        self._stream = None
        self._peer = None
        self._closed = False
        self._timeout = 0.0 if type & SOCK_NONBLOCK else getdefaulttimeout()

    # Connecting.
    def connect(self, address):
        """Connect to (host, port) through the box (`api.connect`)."""
        if self._closed:
            raise OSError(_errno.EBADF, "socket: the socket is closed")
        if self._stream is not None:
            raise OSError(_errno.EISCONN, "socket: already connected")
        if not isinstance(address, tuple) or len(address) < 2:
            raise TypeError(f"socket: connect() takes a (host, port) tuple, not {address!r}")
        host, port = address[0], address[1]
        self._stream = _api_connect()(host, port)
        self._peer = (host, port)

    def connect_ex(self, address):
        """Like connect(), but returns an errno instead of raising OSError."""
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or _errno.ECONNREFUSED
        return 0

    def _connected(self):
        if self._closed:
            raise OSError(_errno.EBADF, "socket: the socket is closed")
        if self._stream is None:
            raise OSError(_errno.ENOTCONN, "socket: not connected")
        return self._stream

    # Data.
    def send(self, data, flags=0):
        """Send bytes; returns how many (always all of them)."""
        if flags:
            raise Unsupported(f"send flags {flags!r}")
        return self._connected().send(bytes(data))

    def sendall(self, data, flags=0):
        """Send all of `data`."""
        self.send(data, flags)

    def recv(self, bufsize, flags=0):
        """Up to `bufsize` bytes; b"" at the end of the stream.

        Raises `socket.timeout` (TimeoutError) after the socket's timeout,
        BlockingIOError at once when non-blocking and nothing is there.
        """
        if flags:
            raise Unsupported(f"recv flags {flags!r}")
        stream = self._connected()
        try:
            return stream.recv(bufsize, timeout=self._timeout)
        except TimeoutError:
            if self._timeout == 0.0:
                raise BlockingIOError(_errno.EAGAIN, "socket: no data yet") from None
            raise TimeoutError("timed out") from None

    def recv_into(self, buffer, nbytes=0, flags=0):
        """Read into `buffer`; returns the byte count (0 at the end)."""
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data = self.recv(size, flags)
        view[: len(data)] = data
        return len(data)

    # Timeouts.
    def settimeout(self, value):
        """None blocks, 0 never blocks, a number bounds each recv (seconds)."""
        self._timeout = _check_timeout(value)

    def gettimeout(self):
        """The socket's timeout (None, 0.0 or seconds)."""
        return self._timeout

    def setblocking(self, flag):
        """setblocking(False) is settimeout(0); setblocking(True) settimeout(None)."""
        self._timeout = None if flag else 0.0

    def getblocking(self):
        """Whether the socket blocks (a timeout other than 0)."""
        return self._timeout != 0.0

    # Options and addresses.
    def setsockopt(self, level, option, value, optlen=None):
        """Only TCP_NODELAY, which every box connection has already."""
        if (level, option) == (IPPROTO_TCP, TCP_NODELAY):
            return
        raise Unsupported(f"setsockopt({level!r}, {option!r})", "only TCP_NODELAY, always on")

    def getsockopt(self, level, option, buflen=None):
        """Only TCP_NODELAY (1)."""
        if (level, option) == (IPPROTO_TCP, TCP_NODELAY):
            return 1
        raise Unsupported(f"getsockopt({level!r}, {option!r})")

    def getpeername(self):
        """The (host, port) this socket connected to, as given."""
        self._connected()
        return self._peer

    def getsockname(self):
        raise Unsupported("getsockname()", "the box's own address is not shown to functions")

    def fileno(self):
        raise Unsupported("fileno()", "there are no file descriptors")

    def bind(self, address):
        raise Unsupported("bind()", "functions do not listen: use api.accept (service capability)")

    def listen(self, backlog=0):
        raise Unsupported("listen()", "functions do not listen: use api.accept (service capability)")

    def accept(self):
        raise Unsupported("accept()", "functions do not listen: use api.accept (service capability)")

    def sendto(self, *args):
        raise Unsupported("sendto()", "only TCP connections")

    def recvfrom(self, *args):
        raise Unsupported("recvfrom()", "only TCP connections")

    # Ending.
    def shutdown(self, how):
        """SHUT_RDWR closes the connection; a half-close is not supported."""
        if how != SHUT_RDWR:
            raise Unsupported(f"shutdown({how!r})", "a stream closes both ways at once: SHUT_RDWR")
        self._connected().close()

    def close(self):
        """Close the connection. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            if self._stream is not None:
                self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def makefile(self, mode="r", buffering=None, *, encoding=None, errors=None, newline=None):
        """A file object reading ('r', 'rb') or writing ('w', 'wb') this socket."""
        if not set(mode) <= {"r", "w", "b"} or ("r" in mode) == ("w" in mode):
            raise Unsupported(f"makefile mode {mode!r}", "one of r, rb, w, wb")
        raw = _SocketIO(self, "r" if "r" in mode else "w")
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("socket: unbuffered streams must be binary")
            return raw
        size = _io.DEFAULT_BUFFER_SIZE if buffering in (None, -1) else buffering
        buffered = (_io.BufferedReader if "r" in mode else _io.BufferedWriter)(raw, size)
        if "b" in mode:
            return buffered
        text = _io.TextIOWrapper(buffered, encoding or "utf-8", errors, newline)
        text.mode = mode
        return text

    def __repr__(self):
        state = "closed" if self._closed else f"connected to {self._peer}" if self._peer else "new"
        return f"<bento socket {state}>"


class _SocketIO(_io.RawIOBase):
    """The raw file under `socket.makefile`."""

    def __init__(self, sock, mode):
        super().__init__()
        self._sock = sock
        self._mode = mode

    def readable(self):
        return self._mode == "r"

    def writable(self):
        return self._mode == "w"

    def readinto(self, buffer):
        return self._sock.recv_into(buffer)

    def write(self, data):
        self._sock.sendall(data)
        return len(data)


def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kwargs):
    """A connected socket to (host, port), through the box (`api.connect`)."""
    if source_address is not None:
        raise Unsupported("create_connection(source_address=…)", "the box chooses its address")
    if kwargs:
        raise Unsupported(f"create_connection({', '.join(sorted(kwargs))}=…)")
    host, port = address[0], address[1]
    sock = socket(AF_INET6 if ":" in str(host) else AF_INET, SOCK_STREAM)
    if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
        sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def __getattr__(name):
    # Module attributes not provided (getaddrinfo, gethostbyname, socketpair,
    # fromfd, …) fail naming themselves rather than as a bare AttributeError.
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"socket.{name} is not provided in a Bento function (provided: {_PROVIDED}; "
        "the box resolves names itself when you connect)"
    )
