"""Cover: constant-rate cover traffic. Once the client's first cell arrives,
the function sends exactly `round(rate * duration)` cells of exactly `cell`
bytes, one every 1/rate seconds, and the client sends as many back on the
same schedule, so an observer of the session sees the same flow whether or
not anything real is carried. Real data replaces padding inside the cells.
Client: `bento cover` and `bento browse --cover-rate`; see
docs/functions/cover.md.

    main(rate, cell, duration)     echo: the client's data comes back in
                                   the box's cells (a measuring tool)
    browse(rate, cell, duration)   the Browser inside the flow: needs
                                   functions/browser/browser.py stored in
                                   front of this file; the client's first
                                   message is the JSON list
                                   [url, pad, max_resources, max_bytes],
                                   the box's is the Browser's padded blob

A cell, both ways (integers big-endian):

    flags     u8    0 = padding; 1 = DATA; 3 = DATA + END (the last piece
                    of a message; it may be empty)
    length    u16   payload bytes (0 for padding, at most cell - 3)
    payload   length bytes of the message
    zeros     up to exactly `cell` bytes (a padding cell is all zeros)

Each client cell is one Input frame (one api.recv()). The schedule is
absolute (first cell + i / rate), so drift never accumulates; if the box
falls behind (a slow fetch, a full output buffer) the cells that are due
are sent at once when it can, so the count per second evens out again.
The flow never grows or shrinks: data that does not fit in the cells left
is an error once the flow has ended, never a longer flow.
"""

import collections
import json
import math
import struct
import time

COVER_HEADER = 3
COVER_DATA = 1
COVER_END = 2
COVER_MIN_CELL = 64
COVER_MAX_CELL = 65536
COVER_MAX_RATE = 1000
COVER_MAX_CELLS = 1000000
COVER_MAX_REQUEST = 65536
# How long the box waits for the client's first cell, and after its own
# last cell for the client's last ones.
COVER_FIRST_WAIT = 60.0
COVER_DRAIN_WAIT = 30.0


class CoverError(Exception):
    """The flow cannot start, or the client broke the cell format."""


class Cover:
    """One constant-rate flow: `pump()` sends the cells that are due."""

    def __init__(self, rate, cell, duration, on_data):
        for name, value in (("rate", rate), ("duration", duration)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not value > 0 or not math.isfinite(value)):
                raise CoverError("%s must be a finite number > 0, not %r" % (name, value))
        if rate > COVER_MAX_RATE:
            raise CoverError("rate may be at most %d cells/s, not %r" % (COVER_MAX_RATE, rate))
        if not isinstance(cell, int) or isinstance(cell, bool) or not COVER_MIN_CELL <= cell <= COVER_MAX_CELL:
            raise CoverError("cell must be a whole number of bytes from %d to %d, not %r"
                             % (COVER_MIN_CELL, COVER_MAX_CELL, cell))
        self.cells = round(rate * duration)
        if not 1 <= self.cells <= COVER_MAX_CELLS:
            raise CoverError("rate x duration must be from 1 to %d cells, not %d"
                             % (COVER_MAX_CELLS, self.cells))
        self.rate, self.cell, self.on_data = rate, cell, on_data
        self.room = cell - COVER_HEADER
        self.padding = bytes(cell)
        self.sent = self.received = 0
        self.input_ended = False
        # Outgoing messages: [bytearray, closed]; cells take from the first.
        self.outbox = collections.deque()
        self.start = None

    def left(self):
        """Payload bytes the cells not yet sent can still carry."""
        queued = sum(len(m[0]) for m in self.outbox)
        return (self.cells - self.sent) * self.room - queued

    def queue(self, data, end=True):
        """Send `data` in the next cells (part of one message until `end`)."""
        if self.outbox and not self.outbox[-1][1]:
            self.outbox[-1][0].extend(data)
            self.outbox[-1][1] = end
        else:
            self.outbox.append([bytearray(data), end])

    def _take(self, data):
        """Check one client cell and hand its payload to on_data."""
        if len(data) != self.cell:
            raise CoverError("cell %d from the client is %d bytes; this flow's cells are exactly %d bytes"
                             % (self.received + 1, len(data), self.cell))
        flags, length = struct.unpack_from(">BH", data)
        if flags not in (0, COVER_DATA, COVER_DATA | COVER_END):
            raise CoverError("cell %d from the client has invalid flags %d" % (self.received + 1, flags))
        if (length > self.room or (flags == 0 and length)
                or data.count(0, COVER_HEADER + length) != self.room - length):
            raise CoverError("cell %d from the client has a bad length or non-zero padding"
                             % (self.received + 1))
        self.received += 1
        if self.received > self.cells:
            raise CoverError("the client sent more than the flow's %d cells" % self.cells)
        if flags:
            self.on_data(data[COVER_HEADER:COVER_HEADER + length], bool(flags & COVER_END))

    def _read(self):
        """Take every client cell that is waiting, without blocking."""
        while not self.input_ended and api.poll():
            data = api.recv()
            if not data:
                self.input_ended = True
            else:
                self._take(data)

    def _next_cell(self):
        if not self.outbox:
            return self.padding
        message = self.outbox[0]
        piece = bytes(message[0][:self.room])
        del message[0][:self.room]
        flags = COVER_DATA
        if not message[0]:
            if not message[1]:
                if not piece:
                    return self.padding  # an open message with nothing yet
            else:
                flags |= COVER_END
                self.outbox.popleft()
        return struct.pack(">BH", flags, len(piece)) + piece + bytes(self.room - len(piece))

    def begin(self):
        """Wait for the client's first cell; the schedule starts then."""
        deadline = time.monotonic() + COVER_FIRST_WAIT
        while not api.poll():
            if time.monotonic() > deadline:
                raise CoverError("the client sent no cell within %d s" % COVER_FIRST_WAIT)
            api.sleep(0.005)
        self.start = time.monotonic()
        self._read()

    def pump(self):
        """Read what the client sent; send every cell that is due by now."""
        self._read()
        due = min(self.cells, int((time.monotonic() - self.start) * self.rate) + 1)
        while self.sent < due:
            api.send(self._next_cell())
            self.sent += 1

    def run(self, until=None):
        """Keep the flow going until its last cell (or `until()` is true)."""
        while self.sent < self.cells and not (until and until()):
            self.pump()
            if self.sent < self.cells:
                api.sleep(max(0.0, self.start + self.sent / self.rate - time.monotonic()))

    def finish(self):
        """The rest of the flow, then the client's last cells."""
        self.run()
        deadline = time.monotonic() + COVER_DRAIN_WAIT
        while self.received < self.cells and not self.input_ended:
            if time.monotonic() > deadline:
                raise CoverError("the client sent %d of the flow's %d cells" % (self.received, self.cells))
            self._read()
            api.sleep(0.01)


def main(rate, cell, duration):
    def echo(data, end):
        # Held until sent: never more than the rest of the flow can carry.
        if len(data) > flow.left():
            raise CoverError("the client sent more data than the rest of the flow can echo")
        flow.queue(data, end)

    flow = Cover(rate, cell, duration, echo)
    flow.begin()
    flow.finish()
    if flow.outbox:
        raise CoverError("the flow ended with %d bytes not echoed; send less or make it longer"
                         % sum(len(m[0]) for m in flow.outbox))


def browse(rate, cell, duration):
    if "bundle" not in globals():
        raise CoverError("the browse entry needs functions/browser/browser.py stored in front of cover.py")
    request = bytearray()
    done = []

    def on_data(data, end):
        if done:
            raise CoverError("the client sent more than one request")
        request.extend(data)
        if len(request) > COVER_MAX_REQUEST:
            raise CoverError("the request is more than %d bytes" % COVER_MAX_REQUEST)
        if end:
            done.append(True)

    flow = Cover(rate, cell, duration, on_data)
    flow.begin()
    flow.run(until=lambda: done)
    failure = None
    if not done:
        failure = CoverError("the request did not arrive before the flow ended")
    else:
        try:
            args = json.loads(request)
            if not isinstance(args, list) or not 2 <= len(args) <= 4:
                raise ValueError("not a list of 2 to 4 values")
            blob = bundle(*args, hook=flow.pump)
            if len(blob) > flow.left():
                failure = CoverError(
                    "the page's padded bundle is %d bytes but the %d cells left in the flow carry %d; "
                    "make the flow longer (duration), faster (rate) or its cells larger"
                    % (len(blob), flow.cells - flow.sent, flow.left()))
            else:
                flow.queue(blob)
        except BrowseError as e:
            failure = e
        except ValueError as e:
            failure = CoverError("the request is not a JSON list [url, pad, ...]: %s" % e)
    # A failure still runs the whole flow: ending early would tell an
    # observer that something went wrong.
    flow.finish()
    if failure is not None:
        raise failure
