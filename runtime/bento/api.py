"""The `api` object every function sees as a global: the session channel
(send, recv, poll) always, and each granted capability's members."""

import sys

from wit_world.imports import capabilities, session

from bento import errors, http, remote, streams
from bento.storage import Storage
from bento.streams import as_bytes, read_exact, write_all


def _sleep(seconds):
    """time: block for `seconds` without using CPU."""
    errors.call(capabilities.sleep, float(seconds))


def _time():
    """time: seconds since the Unix epoch, as a float."""
    return capabilities.now()


# Which capability makes which `api` attribute exist.
_CAPABILITY_ATTRIBUTES = {
    "connect": {"connect": streams.connect, "wait": streams.wait},
    "http": {"http_get": http.http_get, "http_request": http.http_request},
    "storage": {"storage": Storage()},
    "time": {"sleep": _sleep, "time": _time},
    "service": {"accept": streams.accept, "wait": streams.wait},
    "tor_connect": {"tor_connect": streams.tor_connect, "bento_box": remote.bento_box, "wait": streams.wait},
    "onion_service": {"onion_service": streams.onion_service, "accept": streams.accept, "wait": streams.wait},
}


class Api:
    """The `api` object every function sees as a global."""

    __slots__ = ("_granted",)

    RemoteError = remote.RemoteError
    NEW_CHANNEL = streams.NEW_CHANNEL

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
        data = as_bytes(data, "api.send()")
        # print() output goes to the client too; keep it in order with sends.
        sys.stdout.flush()
        total = len(memoryview(data).cast("B"))
        session.begin_message(total)
        write_all(data)
        return total

    def recv(self):
        """Block until the client sends a message and return it as bytes.

        Returns b"" once the client has closed its input.
        """
        length = session.next_message()
        if length is None:
            return b""
        return read_exact(length)

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
