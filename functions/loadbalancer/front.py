"""LoadBalancer front: one onion service whose streams are served by replicas on other boxes.

`bento lb start` runs this on one box. It starts a replica (replica.py) on
the first box of its list that takes one, over Tor (api.bento_box), then
publishes the public onion service: clients see one address. Every stream
to it is forwarded, byte for byte both ways, to the replica with the fewest
streams in progress, over a Tor stream to that replica's own onion service.

Scaling: when the streams in progress exceed `high` per replica, the next
unused box gets another replica; when they stay below `low` per replica for
`grace` seconds, a replica with no stream in progress is told to stop (never
one with a stream in progress, never the last). A replica that cannot be
reached is dropped and its waiting streams go to another; a box that
refuses a replica is not asked again.

The front stays attached to each replica's session on its box (one channel
each): when the box goes away or the replica ends, that stream ends, and
the front drops the replica at once, streams or no streams.

Without threads, one loop does everything: api.wait() sleeps (no CPU) until
a stream has data or a client connects, or a tick passes. Starting or
stopping a replica talks to its box over Tor in between, and opening a
stream to a replica waits for Tor: both pause forwarding for their length,
so each is bounded (a dead replica's onion service can keep Tor trying for
minutes).

Session input: a JSON header message
    {"boxes": ["xyz.onion:7878", ...], "size": bytes of content,
     "content_type": "text/html", "replica": {"source": ..., "manifest": ...},
     "high": 2, "low": 1, "grace": 10, "lifetime": 270}
then the content (`size` bytes, at most 1 MiB) in one or more messages;
later b"stop" ends it: new streams get 503, streams in progress finish,
the replicas are stopped and the front returns (so it does at `lifetime`).
Session output: one JSON object per line, each with "event", "t" (seconds
since the start) and "replicas" (replicas serving): "replica_started",
"replica_failed" (with "error" and whether the box will be asked "again"),
"replica_lost", "replica_retired", "serving" (with "onion"), "status"
(streams in progress, per replica, and counts, when they change),
"draining", and last "stopped".
"""

import json
import time

MAX_CONTENT = 1024 * 1024
# Bytes moved per recv; also the most a stream's request may be while it
# can still be retried on another replica.
PIECE = 64 * 1024
# The longest api.wait() while nothing happens: how soon a replica's
# address, the watermarks and the session's "stop" are looked at.
TICK = 0.25
# Waiting for another box's replies, and for a replica to publish.
REMOTE_TIMEOUT = 60
START_TIMEOUT = 90
# Opening a stream to a serving replica (its circuit is usually built
# already), and reaching a new one the first time (a descriptor lookup).
CONNECT_TIMEOUT = 10
FIRST_CONNECT_TIMEOUT = 30
STATUS_EVERY = 2.0
# How often one stream is tried on another replica after its replica failed.
RETRIES = 2
# A freshly published onion service is not always found at once (its
# descriptor is still reaching the directories), and a private or busy Tor
# network drops a circuit now and then: a replica that cannot be reached is
# avoided for a while and dropped only after this many failures in a row;
# a box that could not be reached is asked again, up to BOX_TRIES times.
LOSE_AFTER = 4
BOX_TRIES = 3
BOX_RETRY_AFTER = 10

BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nunavailable\n"


class LoadBalancerError(Exception):
    pass


class Replica:
    __slots__ = ("box", "remote", "session", "onion", "streams", "attached", "line", "since",
                 "used", "failures", "avoid_until")

    def __init__(self, box, remote, session, attached, now):
        # `attached`: the replica's session, attached from its first line
        # on; its end is the replica's (or its box's).
        self.box, self.remote, self.session, self.attached = box, remote, session, attached
        self.onion, self.streams, self.line, self.since, self.used = None, 0, b"", now, 0
        self.failures, self.avoid_until = 0, 0.0

    def unreachable(self, now):
        """One more failed stream; True once the replica counts as lost."""
        self.failures += 1
        self.avoid_until = now + min(2 ** self.failures, 10)
        return self.failures >= LOSE_AFTER


class Pair:
    """A client's stream and the replica stream it is forwarded to."""

    __slots__ = ("client", "upstream", "replica", "request", "client_done", "tries",
                 "answered", "head", "expected", "head_only")

    def __init__(self, client):
        self.client, self.upstream, self.replica = client, None, None
        # What the client sent, kept until the replica answers so the stream
        # can go to another replica if this one fails first (None after).
        self.request = bytearray()
        self.client_done = False
        self.tries = 0
        # The answer: bytes forwarded, its head so far, its whole length
        # once the head has been read.
        self.answered, self.head, self.expected, self.head_only = 0, b"", None, False


def answer_length(pair, data):
    """The answer's whole length, once its head has arrived (else None)."""
    if len(pair.head) > 8192:
        return None  # not the replica's HTTP: never counted as whole
    pair.head += bytes(data[:8192])
    end = pair.head.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in pair.head[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value)
    pair.head = b""
    return end + 4 + (0 if pair.head_only else length)


def read_config():
    header = json.loads(api.recv())
    boxes = [str(b) for b in header["boxes"]]
    size = int(header["size"])
    high, low = float(header.get("high", 2)), float(header.get("low", 1))
    if not boxes:
        raise LoadBalancerError("no replica boxes were given")
    if not 0 <= size <= MAX_CONTENT:
        raise LoadBalancerError("the content must be at most %d bytes, not %d" % (MAX_CONTENT, size))
    if not 0 <= low < high:
        raise LoadBalancerError("the watermarks need 0 <= low < high (low %s, high %s)" % (low, high))
    content = bytearray()
    while len(content) < size:
        data = api.recv()
        if not data:
            raise LoadBalancerError("the input ended after %d of %d content bytes" % (len(content), size))
        content += data
    header["content"] = bytes(content[:size])
    header["boxes"], header["high"], header["low"] = boxes, high, low
    return header


class Front:
    def __init__(self, config):
        self.config = config
        self.content = config["content"]
        self.content_type = str(config.get("content_type", "application/octet-stream"))
        self.high, self.low = config["high"], config["low"]
        self.grace = float(config.get("grace", 10))
        self.began = time.monotonic()
        self.deadline = self.began + float(config.get("lifetime", 270))
        self.unused = list(config["boxes"])  # boxes without a replica, in order
        self.box_failures = {}
        self.box_retry_at = {}
        self.replicas = []  # serving
        self.starting = None  # a replica that has not published yet
        self.pairs = []
        self.low_since = None
        self.draining = False
        # Streams answered in full; refused with 503; whose client left
        # before the answer was through; cut because a replica failed
        # mid-answer; moved to another replica before any answer.
        self.counts = {"served": 0, "refused": 0, "abandoned": 0, "cut": 0, "retried": 0}
        self.last_status = None
        self.last_status_at = 0.0

    # -- reporting ---------------------------------------------------------

    def report(self, event, **fields):
        fields = dict(event=event, t=round(time.monotonic() - self.began, 2),
                      replicas=len(self.replicas), **fields)
        api.send(json.dumps(fields) + "\n")

    def report_status(self, now):
        status = (len(self.replicas), len(self.pairs), tuple(sorted(self.counts.items())))
        if status != self.last_status and now - self.last_status_at >= STATUS_EVERY:
            self.last_status, self.last_status_at = status, now
            self.report("status", streams=len(self.pairs),
                        per_replica=[r.streams for r in self.replicas], **self.counts)

    # -- replicas ----------------------------------------------------------

    def next_box(self, now):
        for box in self.unused:
            if self.box_retry_at.get(box, 0) <= now:
                self.unused.remove(box)
                return box
        return None

    def box_failed(self, box, error, now):
        """Report a box that gave no replica; ask it again later unless it refused."""
        failures = self.box_failures[box] = self.box_failures.get(box, 0) + 1
        # A refusal (its policy, its limits) is the box's answer; a Tor
        # failure may pass.
        again = not isinstance(error, (api.RemoteError, ValueError)) and failures < BOX_TRIES
        if again:
            self.unused.append(box)
            self.box_retry_at[box] = now + BOX_RETRY_AFTER
        self.report("replica_failed", box=box, error=describe(error), again=again)

    def begin_start(self, now):
        """Store and invoke a replica on the next unused box; it publishes meanwhile."""
        box = self.next_box(now)
        if box is None:
            return
        remote = api.bento_box(box, timeout=REMOTE_TIMEOUT)
        try:
            token = remote.store(self.config["replica"]["source"],
                                 self.config["replica"]["manifest"], "replica.py")
            session, _ = remote.invoke(token, len(self.content), self.content_type)
        except api.ChannelLimit:
            self.unused.insert(0, box)  # our own streams are all in use: later
            return
        except (api.BentoError, OSError, ValueError) as e:
            self.box_failed(box, e, time.monotonic())
            return
        try:
            attached = remote.attach(session)
            attached.send(self.content)
        except (api.BentoError, OSError, ValueError) as e:
            self.stop_quietly(remote, session)
            self.box_failed(box, e, time.monotonic())
            return
        self.starting = Replica(box, remote, session, attached, now)

    def poll_start(self, now):
        """Move the starting replica on: take its address, then reach it once."""
        replica = self.starting
        error = None
        try:
            if replica.onion is None:
                self.read_address(replica)
            if replica.onion is not None and now >= replica.avoid_until:
                # Reaching it once proves the address works and builds the
                # circuit every later stream to it shares.
                api.tor_connect(replica.onion, 80, timeout=FIRST_CONNECT_TIMEOUT).close()
                self.starting = None
                replica.avoid_until = 0.0
                self.replicas.append(replica)
                self.report("replica_started", box=replica.box,
                            took=round(time.monotonic() - replica.since, 2))
                return
        except api.ChannelLimit:
            pass  # every channel is in use: try again later
        except TimeoutError as e:
            if replica.onion is not None:
                replica.unreachable(now)
            error = e  # (no address yet, or Tor took too long)
        except (api.BentoError, OSError, LoadBalancerError) as e:
            if replica.onion is None:
                return self.abandon_start(e)  # it failed or ended
            replica.unreachable(now)  # not found yet: again after a pause
            error = e
        if now - replica.since > START_TIMEOUT:
            self.abandon_start(LoadBalancerError("the replica was not reachable in %d s (last: %s)"
                                                 % (START_TIMEOUT, describe(error))))

    def read_address(self, replica):
        """The replica's first line: its onion address (TimeoutError until it has come)."""
        data = replica.attached.recv(timeout=0)
        if not data:
            raise LoadBalancerError("the replica ended before publishing its service")
        replica.line += data
        if b"\n" in replica.line:
            replica.onion = replica.line.split(b"\n")[0].decode()

    def abandon_start(self, error):
        replica, self.starting = self.starting, None
        if replica.attached is not None:
            replica.attached.close()
        self.stop_quietly(replica.remote, replica.session)
        self.box_failed(replica.box, error, time.monotonic())

    def retire(self, replica, event="replica_retired"):
        """Tell an idle replica to stop and wait until it has (kill it if that fails)."""
        self.replicas.remove(replica)
        try:
            with replica.attached or replica.remote.attach(replica.session) as session:
                replica.attached = None
                session.send(b"stop")
                session.read_all(timeout=REMOTE_TIMEOUT)
        except (api.BentoError, OSError):
            self.stop_quietly(replica.remote, replica.session)
        if event == "replica_retired":
            self.unused.append(replica.box)
        self.report(event, box=replica.box)

    def lose(self, replica, error):
        """A replica that cannot be reached: drop it, and its box."""
        if replica in self.replicas:
            self.replicas.remove(replica)
            if replica.attached is not None:
                replica.attached.close()
                replica.attached = None
            self.report("replica_lost", box=replica.box, error=describe(error))
            # Its box is most likely out of reach too: one short try, as
            # the streams of the other replicas wait meanwhile.
            self.stop_quietly(api.bento_box(replica.box, timeout=CONNECT_TIMEOUT), replica.session)

    def session_news(self, replica):
        """The replica's session has something: its end, its box's, or output."""
        try:
            data = replica.attached.recv(timeout=0)
        except TimeoutError:
            return  # part of a message so far
        except api.StreamClosed as e:
            # The stream to its box ended: the box went away, or Tor lost
            # the circuit while the box is fine. Attaching again tells.
            return self.reattach(replica, e)
        except (api.BentoError, OSError) as e:
            return self.lose(replica, e)  # the replica failed
        if not data:
            self.lose(replica, LoadBalancerError("the replica's session ended"))
        # Any other output (the replica sends none after its address) is
        # acknowledged and dropped.

    def reattach(self, replica, error):
        replica.attached.close()
        replica.attached = None
        try:
            replica.attached = api.bento_box(replica.box, timeout=CONNECT_TIMEOUT).attach(replica.session)
        except (api.BentoError, OSError) as e:
            self.lose(replica, LoadBalancerError("%s, and attaching again failed: %s"
                                                 % (describe(error), describe(e))))

    @staticmethod
    def stop_quietly(remote, session):
        try:
            remote.kill(session)
        except (api.BentoError, OSError):
            pass  # it ends at its own wall-clock limit

    def scale(self, now):
        load = len(self.pairs)
        serving = len(self.replicas)
        if self.starting is None and not self.draining and (
                serving == 0 or load > self.high * serving):
            self.begin_start(now)
            return
        if serving > 1 and load < self.low * serving:
            if self.low_since is None:
                self.low_since = now
            idle = [r for r in self.replicas if r.streams == 0]
            if idle and now - self.low_since >= self.grace:
                # The newest idle one: the first replica is the one kept.
                self.retire(idle[-1])
                self.low_since = time.monotonic()
        else:
            self.low_since = None

    # -- streams -----------------------------------------------------------

    def connect(self, pair):
        """Open the pair's replica stream; False while none can be opened."""
        while True:
            now = time.monotonic()
            usable = [r for r in self.replicas if r.avoid_until <= now]
            if not usable:
                return False
            replica = min(usable, key=lambda r: (r.streams, r.used))
            try:
                upstream = api.tor_connect(replica.onion, 80, timeout=CONNECT_TIMEOUT)
                if pair.request:
                    upstream.send(pair.request)
            except api.ChannelLimit:
                return False
            except (api.BentoError, OSError) as e:
                if replica.unreachable(time.monotonic()):
                    self.lose(replica, e)
                continue
            replica.failures = 0
            replica.streams += 1
            replica.used = time.monotonic()
            pair.upstream, pair.replica = upstream, replica
            return True

    def finish(self, pair, outcome):
        self.pairs.remove(pair)
        if pair.replica is not None:
            pair.replica.streams -= 1
        if pair.upstream is not None:
            pair.upstream.close()
        pair.client.close()
        self.counts[outcome] += 1

    def refuse(self, client):
        try:
            client.send(BUSY)
        except api.StreamClosed:
            pass
        client.close()
        self.counts["refused"] += 1

    def retry(self, pair, error):
        """The replica failed before answering: try another, or give up."""
        if pair.replica is not None:
            pair.replica.streams -= 1
            pair.upstream.close()
            pair.upstream, pair.replica = None, None
        pair.tries += 1
        if pair.tries > RETRIES:
            self.pairs.remove(pair)
            self.refuse(pair.client)
        else:
            self.counts["retried"] += 1

    def from_client(self, pair):
        try:
            data = pair.client.recv(PIECE, timeout=0)
        except TimeoutError:
            return
        except api.StreamClosed:
            data = b""
        if not data:
            # These streams cannot be half-closed: the request is complete
            # (HTTP/1.0 says where it ends) or the client has left; either
            # way the answer is forwarded until the replica closes.
            pair.client_done = True
            return
        if pair.request is not None:
            if len(pair.request) + len(data) > PIECE:
                pair.request = None  # too long to keep for a retry
            else:
                pair.request += data
        try:
            pair.upstream.send(data)
        except api.StreamClosed as e:
            self.fail_upstream(pair, e)

    def from_replica(self, pair):
        try:
            data = pair.upstream.recv(PIECE, timeout=0)
        except TimeoutError:
            return
        except api.StreamClosed:
            data = b""
        if not data:
            if pair.request is not None:
                self.fail_upstream(pair, LoadBalancerError("the replica closed the stream unanswered"))
            else:
                # A replica's answer ends with its stream; only its
                # Content-Length tells a whole answer from a cut one.
                whole = pair.expected is not None and pair.answered >= pair.expected
                self.finish(pair, "served" if whole else "cut")
            return
        if pair.request is not None:
            pair.head_only = pair.request.startswith(b"HEAD ")
            pair.request = None  # answered: it stays with this replica
        pair.answered += len(data)
        if pair.expected is None:
            pair.expected = answer_length(pair, data)
        try:
            pair.client.send(data)
        except api.StreamClosed:
            self.finish(pair, "abandoned")

    def fail_upstream(self, pair, error):
        if pair.request is not None:
            self.retry(pair, error)
        else:
            self.finish(pair, "cut")

    def accept(self):
        client = api.accept(timeout=0)
        if client is None:
            return
        if self.draining:
            self.refuse(client)
            return
        self.pairs.append(Pair(client))

    # -- the loop ----------------------------------------------------------

    def run(self):
        self.begin_first()
        self.report("serving", onion=api.onion_service(80))
        while True:
            now = time.monotonic()
            if not self.draining and (now >= self.deadline or (api.poll() and api.recv() == b"stop")):
                self.draining = True
                self.report("draining", streams=len(self.pairs))
            if self.draining and not self.pairs:
                break
            if self.starting is not None:
                self.poll_start(now)
            self.scale(now)
            self.connect_waiting()
            self.report_status(now)
            # A client is read only once its replica stream is open, so
            # what it sends goes straight through.
            watched = [p.client for p in self.pairs if p.upstream is not None and not p.client_done]
            watched += [p.upstream for p in self.pairs if p.upstream is not None]
            sessions = {id(r.attached): r for r in self.replicas if r.attached is not None}
            watched += [r.attached for r in sessions.values()]
            for ready in api.wait(watched, timeout=TICK, accept=True):
                if ready is api.NEW_CHANNEL:
                    self.accept()
                    continue
                replica = sessions.get(id(ready))
                if replica is not None:
                    if replica.attached is ready:  # (not lost or retired meanwhile)
                        self.session_news(replica)
                    continue
                pair = self.owner(ready)
                if pair is None:
                    continue  # finished earlier in this round
                if ready is pair.client:
                    self.from_client(pair)
                else:
                    self.from_replica(pair)
        for replica in list(self.replicas):
            self.retire(replica)
        self.report("stopped", **self.counts)

    def owner(self, stream):
        for pair in self.pairs:
            if pair.client is stream or pair.upstream is stream:
                return pair
        return None

    def connect_waiting(self):
        waiting = [p for p in self.pairs if p.upstream is None]
        for pair in waiting:
            if not self.connect(pair):
                break
        else:
            return
        # Streams wait and no replica stream can be opened now.
        in_progress = any(p.upstream is not None for p in self.pairs)
        coming = self.starting is not None or (self.unused and not self.draining)
        avoided = any(r.avoid_until > time.monotonic() for r in self.replicas)
        if self.replicas and not in_progress and not avoided:
            # Waiting clients hold every channel, and nothing in progress
            # will free one: refuse the newest so the others can go on.
            self.pairs.remove(waiting[-1])
            self.refuse(waiting[-1].client)
        elif not self.replicas and not coming:
            for pair in waiting:
                self.pairs.remove(pair)
                self.refuse(pair.client)

    def begin_first(self):
        """Start the first replica before publishing, trying box after box."""
        while not self.replicas:
            if self.starting is None:
                if not self.unused:
                    raise LoadBalancerError("no box started a replica (see the replica_failed lines)")
                self.begin_start(time.monotonic())
            api.wait([], timeout=TICK)
            if self.starting is not None:
                self.poll_start(time.monotonic())

    def stop_all(self):
        """After a failure: end every replica, as far as that still works."""
        for replica in self.replicas + ([self.starting] if self.starting else []):
            self.stop_quietly(replica.remote, replica.session)


def describe(error):
    return "%s: %s" % (type(error).__name__, error)


def main():
    front = Front(read_config())
    try:
        front.run()
    except BaseException:
        front.stop_all()
        raise
