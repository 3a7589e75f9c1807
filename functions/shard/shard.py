"""Shard: leave the shards of an erasure-coded file in Dropboxes on other boxes.

`bento shard put` splits a file with a Reed-Solomon code into n shards, any k
of which rebuild it, and hands them to this function. For each shard, in
order, it takes the next box from its list, stores the Dropbox function
there over Tor (api.bento_box), starts it, gives it the shard and detaches:
the Dropbox keeps the shard encrypted until it expires or has been picked up
as often as allowed. A box that refuses or cannot be reached is skipped and
the next one is tried (after a second try if Tor could not reach it), so
extra boxes in the list are spares.

Input: a JSON header message
    {"boxes": ["xyz.onion:7878", ...], "sizes": [bytes of each shard],
     "dropbox": {"source": ..., "manifest": ...}, "dropbox_args": [...]}
then the shards' bytes, in order.
Output: a JSON line per attempt,
    {"shard": i, "box": ..., "service": ..., "session": ...} or
    {"shard": i, "box": ..., "error": ...},
a {"shard": i, "error": "no box left"} line for a shard nobody took, and
finally {"placed": count}.
"""

import json

# Waiting for a Dropbox on another box to confirm its shard.
CONFIRM_TIMEOUT = 120
# Tries per box when Tor cannot reach it, and the pause between them.
TOR_TRIES = 2
RETRY_AFTER = 2


def read_shard(size, pending):
    while len(pending) < size:
        data = api.recv()
        if not data:
            raise ValueError("the input ended before every shard arrived")
        pending += data
    shard = bytes(pending[:size])
    del pending[:size]
    return shard


def leave(address, shard, dropbox, dropbox_args):
    """Start a Dropbox holding `shard` at `address`; its (session, service) tokens."""
    box = api.bento_box(address)
    token = box.store(dropbox["source"], dropbox["manifest"], "dropbox.py")
    session, service = box.invoke(token, *dropbox_args)
    if service is None:
        raise api.BentoError("the box gave the Dropbox no service token")
    with box.attach(session) as held:
        held.send(shard)
        held.end_input()
        reply = b""
        while not reply.endswith(b"\n"):
            data = held.recv(timeout=CONFIRM_TIMEOUT)
            if not data:
                raise api.BentoError("the Dropbox ended without confirming the shard")
            reply += data
        if not reply.startswith(b"stored %d bytes" % len(shard)):
            raise api.BentoError("the Dropbox confirmed something else: %r" % reply)
        held.detach()
    return session, service


def leave_retrying(address, shard, dropbox, dropbox_args):
    """leave(), tried again once when Tor could not reach the box: a circuit
    dropped or an onion descriptor not found yet is often gone a moment
    later. A box that answered with an error is not asked again."""
    for attempt in range(TOR_TRIES):
        try:
            return leave(address, shard, dropbox, dropbox_args)
        except api.BoxIOError:
            if attempt + 1 == TOR_TRIES:
                raise
            api.sleep(RETRY_AFTER)


def report(**fields):
    api.send(json.dumps(fields) + "\n")


def main():
    header = json.loads(api.recv())
    boxes = list(header["boxes"])
    pending = bytearray()
    placed = 0
    for index, size in enumerate(header["sizes"]):
        shard = read_shard(size, pending)
        while boxes:
            address = boxes.pop(0)
            try:
                session, service = leave_retrying(address, shard, header["dropbox"], header["dropbox_args"])
            except (api.BentoError, OSError, ValueError) as e:
                # OSError covers TimeoutError and Tor failures (BoxIOError).
                report(shard=index, box=address, error="%s: %s" % (type(e).__name__, e))
                continue
            report(shard=index, box=address, service=service, session=session)
            placed += 1
            break
        else:
            report(shard=index, error="no box left")
    report(placed=placed)
