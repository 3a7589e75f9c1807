"""The exceptions of Bento's capabilities, and the one place that makes them.

Every capability import fails with a `host-error` record (runtime/wit/world.wit):
a kind and a message. `call` turns it into the kind's exception class; nothing
else in the runtime looks at a host error, and no message is ever parsed.

The classes also derive from the builtins code written for ordinary Python
catches (PermissionError, TimeoutError, ValueError, ConnectionError, OSError),
so `except TimeoutError` (`socket.timeout`) or `except OSError` keep working.
"""

from componentize_py_types import Err
from wit_world.imports.types import ErrorKind, HostError


class BentoError(Exception):
    """Base class of errors from Bento capabilities.

    `kind` names the host's error kind (e.g. "refused"), or is None for
    errors the runtime raises itself (see RemoteError).
    """

    kind = None


class PolicyRefused(BentoError, PermissionError):
    """The box's rules refused what the function asked for. Left uncaught,
    it ends the session with the `policy_refused` error code."""


class NotGranted(PolicyRefused):
    """The function was not granted the capability (its manifest did not
    declare it, or the box's policy did not allow it)."""

    kind = "not-granted"


class DestinationRefused(PolicyRefused):
    """The box's rules do not let this function reach that destination."""

    kind = "refused"


class LimitReached(BentoError, OSError):
    """A limit of the instance's grant was reached (e.g. HTTP redirects)."""

    kind = "limit-reached"


class ChannelLimit(LimitReached):
    """The instance already has as many channels, connections (or onion
    services) as it may."""

    kind = "channel-limit"


class QuotaExceeded(LimitReached):
    """The instance's storage quota would be exceeded."""

    kind = "quota-exceeded"


class Timeout(BentoError, TimeoutError):
    """The call's timeout passed (also a TimeoutError, i.e. socket.timeout)."""

    kind = "timeout"


class InvalidArgument(BentoError, ValueError):
    """An argument is out of range or malformed; nothing was done."""

    kind = "invalid-argument"


class StreamClosed(BentoError, ConnectionError):
    """The stream or channel is closed."""

    kind = "closed"


class BoxIOError(BentoError, OSError):
    """A capability failed for a reason outside the function (network, TLS, tor, disk)."""

    kind = "io"


class Stopped(BentoError):
    """The instance is being stopped (a limit or a kill). A function never
    sees it in practice: the stop ends the instance first."""

    kind = "stopped"


# One class per host error kind (tests/all/capabilities.rs checks that every
# kind of the WIT enum has its own).
CLASSES = {
    ErrorKind.NOT_GRANTED: NotGranted,
    ErrorKind.REFUSED: DestinationRefused,
    ErrorKind.CHANNEL_LIMIT: ChannelLimit,
    ErrorKind.QUOTA_EXCEEDED: QuotaExceeded,
    ErrorKind.LIMIT_REACHED: LimitReached,
    ErrorKind.TIMEOUT: Timeout,
    ErrorKind.INVALID_ARGUMENT: InvalidArgument,
    ErrorKind.CLOSED: StreamClosed,
    ErrorKind.IO: BoxIOError,
    ErrorKind.STOPPED: Stopped,
}

# What a function can name as `api.<Class>`.
PUBLIC = (
    BentoError, PolicyRefused, NotGranted, DestinationRefused, LimitReached, ChannelLimit,
    QuotaExceeded, Timeout, InvalidArgument, StreamClosed, BoxIOError,
)

# Tracebacks name the classes as functions do: `api.DestinationRefused: …`.
for _cls in PUBLIC:
    _cls.__module__ = "api"


def from_host(error):
    """The exception for a `host-error` record."""
    return CLASSES.get(error.kind, BentoError)(error.message)


def call(function, *args):
    """Call a capability import, raising its error as the kind's exception."""
    try:
        return function(*args)
    except Err as err:
        raise from_host(err.value) from None


_KINDS = {cls.kind: kind for kind, cls in CLASSES.items()}


def host_error_kind(exc):
    """The host error kind (WIT enum) behind an exception that ends a
    function: its own, or that of the exception it was raised from
    (`raise … from error`, as the requests shim does for a refusal), so a
    shim's own class still reports a refusal as one; the raw bindings' `Err`
    counts as the class it stands for. None for any other."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BentoError) and exc.kind in _KINDS:
            return _KINDS[exc.kind]
        if isinstance(exc, Err) and isinstance(exc.value, HostError):
            return exc.value.kind  # from the raw bindings, unconverted
        exc = exc.__cause__
    return None
