"""A tiny drop box: the invoker hands over one message; whoever holds the
service token picks it up (once); then the function ends and the data is gone.

    bento invoke TOKEN --json          # -> session_token, service_token
    echo secret | bento attach SESSION # drop off (returns after the pick-up)
    bento connect SERVICE_TOKEN        # pick up, from anywhere
"""


def main():
    data = api.recv()
    api.send(f"holding {len(data)} bytes until someone picks them up\n")
    channel = api.accept()
    channel.send(data)
    channel.close()
