"""Traces: what the adversary at the client's guard sees of one visit.

A trace is a float array of shape (n, 3): time in seconds from the first
packet, direction (+1 client to guard, -1 guard to client) and size in
bytes (the TCP payload, i.e. TLS records carrying Tor cells). Traces are
stored one per visit as text (`time<TAB>direction<TAB>size` lines), beside
a `visits.jsonl` log per condition (site, visit, duration, success), so
every number in a table can be traced back to the packets behind it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A Tor cell on the wire (514 bytes) plus its share of TLS framing. Used to
# turn TLS segment sizes into cell counts for classifiers that, like Deep
# Fingerprinting, read a sequence of cell directions.
CELL_BYTES = 514


class TraceError(Exception):
    """A capture or trace file that cannot be read."""


@dataclass
class Visit:
    """One visit of one site under one condition."""

    site: int
    visit: int
    trace: np.ndarray
    duration: float


def cells(trace: np.ndarray) -> np.ndarray:
    """The trace as a sequence of cell directions (+1/-1), each packet
    counted as round(size / CELL_BYTES) cells (at least one)."""
    if len(trace) == 0:
        return np.zeros(0, dtype=np.float32)
    counts = np.maximum(1, np.rint(trace[:, 2] / CELL_BYTES)).astype(int)
    return np.repeat(trace[:, 1], counts).astype(np.float32)


def save(path: Path, trace: np.ndarray) -> None:
    np.savetxt(path, trace, fmt=["%.6f", "%d", "%d"], delimiter="\t")


def load(path: Path) -> np.ndarray:
    try:
        t = np.loadtxt(path, delimiter="\t", ndmin=2)
    except (OSError, ValueError) as e:
        raise TraceError(f"{path}: {e}") from e
    if t.size == 0:
        return np.zeros((0, 3))
    if t.shape[1] != 3:
        raise TraceError(f"{path}: expected 3 columns, found {t.shape[1]}")
    return t


def failures(directory: Path) -> int:
    """How many visits directory/visits.jsonl logs as failed."""
    log = directory / "visits.jsonl"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.strip() and not json.loads(line).get("ok"))


def load_condition(directory: Path) -> list[Visit]:
    """Every successful visit logged in directory/visits.jsonl."""
    log = directory / "visits.jsonl"
    if not log.exists():
        raise TraceError(f"{log}: no visit log")
    out = []
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if not rec.get("ok"):
            continue
        trace = load(directory / rec["trace"])
        out.append(Visit(rec["site"], rec["visit"], trace, rec["duration"]))
    return out


# --- pcap (libpcap's classic format, as tcpdump -w writes it) -------------

_LINKTYPE_ETHERNET = 1
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_RAW = 101


def read_pcap(path: Path) -> list[tuple[float, str, int, str, int, int]]:
    """TCP/IPv4 packets with a payload: (time, src, sport, dst, dport,
    payload bytes). The payload length comes from the IP and TCP headers,
    so a short snap length suffices."""
    data = path.read_bytes()
    if len(data) < 24:
        raise TraceError(f"{path}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise TraceError(f"{path}: not a classic pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {_LINKTYPE_ETHERNET: 14, _LINKTYPE_LINUX_SLL: 16, _LINKTYPE_RAW: 0}.get(linktype)
    if link_len is None:
        raise TraceError(f"{path}: unsupported link type {linktype}")
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        if off + incl > len(data):
            break  # a record cut short (the capture stopped mid-write)
        pkt = data[off : off + incl]
        off += incl
        ip = pkt[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        if len(tcp) < 13:
            continue
        doff = (tcp[12] >> 4) * 4
        payload = total - ihl - doff
        if payload <= 0:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        t = sec + frac / (1e9 if nano else 1e6)
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        out.append((t, src, sport, dst, dport, payload))
    return out


def trace_from_pcap(path: Path, client_ports: set[int], guard_ports: set[int]) -> np.ndarray:
    """The packets between the client tor's local ports and its relays'
    ORPorts, as a trace (time from the first packet)."""
    rows = []
    for t, _src, sport, _dst, dport, size in read_pcap(path):
        if sport in client_ports and dport in guard_ports:
            rows.append((t, 1.0, size))
        elif dport in client_ports and sport in guard_ports:
            rows.append((t, -1.0, size))
    if not rows:
        return np.zeros((0, 3))
    trace = np.array(rows, dtype=float)
    trace[:, 0] -= trace[0, 0]
    return trace
