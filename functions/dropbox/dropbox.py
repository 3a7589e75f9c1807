"""Dropbox: anonymous drop-off and pick-up.

The invoker sends a file on the primary channel and closes its input. The
function keeps it in api.storage -- encrypted at rest with a key that exists
only in the box's memory for the life of this instance -- and hands it to
every client that opens a channel with the instance's service token, until
`max_gets` pick-ups, `max_bytes` bytes served (0: no budget) or `expires`
seconds, whichever comes first. Then it deletes the file and ends; its
storage directory goes with it.

Output to the invoker, one line each: "stored N bytes", "picked up (K of
M)", and the reason it ended.
"""

import time

CHUNK = 1024 * 1024


def _store(index, data):
    api.storage.put("chunk-%d" % index, data)


def main(max_gets=1, expires=300, max_bytes=0):
    if max_gets < 1 or expires <= 0 or max_bytes < 0:
        raise ValueError("max_gets must be >= 1, expires > 0 and max_bytes >= 0")
    pending = bytearray()
    chunks = 0
    size = 0
    while True:
        data = api.recv()
        if not data:
            break
        size += len(data)
        pending += data
        while len(pending) >= CHUNK:
            _store(chunks, bytes(pending[:CHUNK]))
            del pending[:CHUNK]
            chunks += 1
    if pending:
        _store(chunks, bytes(pending))
        chunks += 1
    api.send("stored %d bytes\n" % size)

    deadline = time.monotonic() + expires
    gets = 0
    served = 0
    reason = "expired"
    while True:
        if gets >= max_gets:
            reason = "picked up %d times" % gets
            break
        if max_bytes and served >= max_bytes:
            reason = "byte budget of %d used" % max_bytes
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        channel = api.accept(timeout=remaining)
        if channel is None:
            break
        try:
            for index in range(chunks):
                channel.send(api.storage.get("chunk-%d" % index))
        except api.StreamClosed:
            channel.close()
            continue  # the picker left early: not a pick-up
        channel.close()
        gets += 1
        served += size
        api.send("picked up (%d of %d)\n" % (gets, max_gets))
    for key in api.storage.keys():
        api.storage.delete(key)
    api.send("deleted: %s\n" % reason)
