"""Reach an onion service over Tor from inside a box and relay its answer."""


def main(onion):
    stream = api.tor_connect(onion, 80)
    stream.send(b"hello from another box, over Tor")
    api.send(stream.recv())
    stream.close()
