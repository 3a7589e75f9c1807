"""Publish an onion service and answer every stream to it (in upper case).

The address is the function's first output; streams arrive through
api.accept(). The service disappears when the function ends or is killed.
"""


def main():
    api.send(api.onion_service(80))
    while True:
        channel = api.accept()
        data = channel.recv()
        channel.send(data.upper())
        channel.close()
