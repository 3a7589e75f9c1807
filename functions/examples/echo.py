def main():
    """Echo every message back until the client closes its input."""
    while True:
        message = api.recv()
        if not message:
            return
        api.send(message)
