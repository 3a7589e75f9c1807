"""LoadBalancer replica: serve one page on an onion service until told to stop.

The LoadBalancer's front function (front.py) starts this on another box
over Tor. It publishes an onion service whose address only the front
learns, and answers every stream to it with a minimal HTTP/1.0 server:
GET (any path) gets the content, HEAD its headers, anything else 405, and a
request that is not HTTP, or has no end of headers within 8 KiB, 400. Each
stream is answered and closed; several are served at once, the answers
interleaved in 32 KiB pieces so a long one does not hold up the others.

Session input: the content (`size` bytes, in one or more messages), then
later the message b"stop": the replica takes no new work from then on and
returns once every stream in progress has been answered.
Session output: the onion address ("xyz.onion\\n") as soon as it is
published, and "stopped SERVED\\n" (streams answered) when it ends.
"""

# A request line and headers larger than this are not a page request.
REQUEST_LIMIT = 8192
# One turn of a stream's answer, so concurrent answers take turns.
PIECE = 32 * 1024
# How often, at most, the session is checked for "stop" while idle.
IDLE_TICK = 0.5


class Exchange:
    """One stream: the request read so far, then the answer left to send
    (a list of memoryviews)."""

    __slots__ = ("request", "answer")

    def __init__(self):
        self.request = bytearray()
        self.answer = None


def answer_for(request, content, content_type):
    """The whole answer (head and body) to one request's head."""
    line = bytes(request).split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return status(400, "Bad Request")
    if parts[0] not in (b"GET", b"HEAD"):
        return status(405, "Method Not Allowed")
    head = ("HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % (content_type, len(content))).encode()
    # The content is shared by every answer, never copied.
    return [memoryview(head)] + ([] if parts[0] == b"HEAD" else [memoryview(content)])


def status(code, reason):
    body = ("%d %s\n" % (code, reason)).encode()
    return [memoryview(("HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        "Connection: close\r\n\r\n" % (code, reason, len(body))).encode() + body)]


def read_content(size):
    content = bytearray()
    while len(content) < size:
        data = api.recv()
        if not data:
            raise ValueError("the input ended after %d of the content's %d bytes" % (len(content), size))
        content += data
    if len(content) != size:
        raise ValueError("the content is %d bytes, not %d" % (len(content), size))
    return bytes(content)


def main(size, content_type="application/octet-stream"):
    if "\r" in content_type or "\n" in content_type:
        raise ValueError("the content type must be one header line")
    address = api.onion_service(80)
    api.send(address + "\n")
    content = read_content(size)
    exchanges = {}
    stopping = False
    served = 0
    while not (stopping and not exchanges):
        if not stopping and api.poll():
            stopping = api.recv() == b"stop"
        sending = [s for s, e in exchanges.items() if e.answer is not None]
        reading = [s for s, e in exchanges.items() if e.answer is None]
        # Never block while an answer is waiting to be sent; otherwise sleep
        # (no CPU) until a request arrives, but look at the session now and then.
        for stream in api.wait(reading, timeout=0 if sending else IDLE_TICK, accept=True):
            if stream is api.NEW_CHANNEL:
                channel = api.accept(timeout=0)
                if channel is not None:
                    exchanges[channel] = Exchange()
                continue
            exchange = exchanges[stream]
            try:
                data = stream.recv(REQUEST_LIMIT, timeout=0)
            except TimeoutError:
                continue
            except api.StreamClosed:
                data = b""
            exchange.request += data
            if b"\r\n\r\n" in exchange.request:
                exchange.answer = answer_for(exchange.request, content, content_type)
            elif not data or len(exchange.request) > REQUEST_LIMIT:
                exchange.answer = status(400, "Bad Request")
        for stream in sending:
            exchange = exchanges[stream]
            answer = exchange.answer
            try:
                if answer:
                    stream.send(answer[0][:PIECE])
                    answer[0] = answer[0][PIECE:]
                    if not answer[0]:
                        answer.pop(0)
            except api.StreamClosed:
                answer.clear()  # the front gave up on this stream
            if not answer:
                stream.close()
                del exchanges[stream]
                served += 1
    api.send("stopped %d\n" % served)
