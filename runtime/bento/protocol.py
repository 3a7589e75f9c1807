"""The native protocol's constants (docs/protocol.md), for the runtime's
remote-box client (bento/remote.py).

Generated from the bento-protocol crate: do not edit. Its test
(`cargo test -p bento-protocol python_constants`) fails when this file is
stale; `BENTO_BLESS=1` on that command rewrites it.
"""

HELLO_MAGIC = b"BENTO"
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 1
MAX_FRAME_LEN = 4194304
MAX_DATA_LEN = 1048576
TOKEN_BYTES = 32

# Frame types (the byte after a frame's length).
HELLO = 0x01
WELCOME = 0x02
STORE = 0x10
STORED = 0x11
INVOKE = 0x12
INVOKED = 0x13
ATTACH = 0x14
ATTACHED = 0x15
KILL = 0x16
KILLED = 0x17
STATUS_REQUEST = 0x18
STATUS = 0x19
CONNECT = 0x1a
CONNECTED = 0x1b
RENEW = 0x1c
RENEWED = 0x1d
DELETE = 0x1e
DELETED = 0x1f
OUTPUT = 0x20
INPUT = 0x21
INPUT_END = 0x22
ACK = 0x23
DETACH = 0x24
END = 0x25
DETACHED = 0x26
ATTEST = 0x27
ATTESTED = 0x28
PADDING = 0x29
SEALED_STORE = 0x2a
SEALED_INVOKE = 0x2b
RUN = 0x30
ERROR = 0x7f

# Error codes (an Error frame's u16) and their names.
ERROR_NAMES = {
    1: "malformed_frame",
    2: "frame_too_large",
    3: "unsupported_version",
    4: "unexpected_frame",
    5: "timeout",
    6: "invalid_function",
    7: "invalid_arguments",
    8: "manifest_rejected",
    9: "invalid_lifetime",
    10: "sealed_rejected",
    15: "defense_refused",
    16: "unknown_invoke_token",
    17: "unknown_session",
    18: "session_attached",
    19: "unknown_service",
    32: "limit.memory",
    33: "limit.cpu",
    34: "limit.wall_time",
    35: "limit.stack",
    48: "function_exception",
    49: "killed",
    50: "worker_crashed",
    51: "function_trapped",
    52: "policy_refused",
    64: "too_many_instances",
    65: "buffer_cap_reached",
    66: "storage_full",
    67: "channel_limit",
    68: "instance_storage_full",
    69: "too_many_connections",
    70: "overloaded",
    96: "internal",
}
