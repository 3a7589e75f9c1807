"""Traces: pcap parsing, storage, and typed errors for bad input."""

import json
import struct

import numpy as np
import pytest

from bento_eval import traces


def _packet(src_port, dst_port, payload, snap=96):
    """An Ethernet/IPv4/TCP frame with `payload` bytes, cut to `snap`."""
    tcp = struct.pack(">HHIIBBHHH", src_port, dst_port, 0, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 0, 0, 64, 6, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    frame = b"\0" * 12 + b"\x08\x00" + ip + tcp + b"x" * payload
    return frame[:snap], len(frame)


def _pcap(path, packets):
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
    for t, (data, orig) in packets:
        out += struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(data), orig) + data
    path.write_bytes(out)


def test_a_capture_becomes_the_trace_of_the_clients_guard_connections_only(tmp_path):
    client, guard, other = 40000, 5001, 6000
    _pcap(tmp_path / "c.pcap", [
        (100.0, _packet(client, guard, 543)),
        (100.5, _packet(guard, client, 5000)),
        (100.6, _packet(other, guard, 999)),  # a relay's own traffic
        (100.7, _packet(client, 9050, 77)),  # the SocksPort, not the guard
        (100.8, _packet(guard, client, 0)),  # a bare ACK
        (101.0, _packet(client, guard, 1086)),
    ])
    tr = traces.trace_from_pcap(tmp_path / "c.pcap", {client}, {guard})
    assert np.allclose(tr, [[0.0, 1, 543], [0.5, -1, 5000], [1.0, 1, 1086]])


@pytest.mark.parametrize("content", [b"", b"not a capture at all, definitely", b"\xd4\xc3\xb2\xa1" + b"\0" * 16 + b"\x99\0\0\0"])
def test_a_file_that_is_not_a_readable_capture_gives_a_typed_error(tmp_path, content):
    (tmp_path / "bad.pcap").write_bytes(content)
    with pytest.raises(traces.TraceError):
        traces.read_pcap(tmp_path / "bad.pcap")


def test_a_truncated_capture_keeps_the_whole_packets_before_the_cut(tmp_path):
    _pcap(tmp_path / "c.pcap", [(1.0, _packet(1, 2, 100)), (2.0, _packet(2, 1, 200))])
    data = (tmp_path / "c.pcap").read_bytes()
    (tmp_path / "c.pcap").write_bytes(data[:-30])
    assert [p[5] for p in traces.read_pcap(tmp_path / "c.pcap")] == [100]


def test_traces_round_trip_through_their_files_and_malformed_files_are_typed_errors(tmp_path):
    tr = np.array([[0.0, 1, 543], [0.25, -1, 1086]])
    traces.save(tmp_path / "t.tsv", tr)
    assert traces.load(tmp_path / "t.tsv").tolist() == tr.tolist()
    (tmp_path / "bad.tsv").write_text("0.1\tx\t3\n")
    with pytest.raises(traces.TraceError):
        traces.load(tmp_path / "bad.tsv")
    (tmp_path / "two.tsv").write_text("0.1\t1\n")
    with pytest.raises(traces.TraceError):
        traces.load(tmp_path / "two.tsv")
    with pytest.raises(traces.TraceError):
        traces.load(tmp_path / "missing.tsv")


def test_a_condition_keeps_its_successful_visits_and_a_missing_log_is_a_typed_error(tmp_path):
    traces.save(tmp_path / "a.tsv", np.array([[0.0, 1, 543]]))
    (tmp_path / "visits.jsonl").write_text(
        json.dumps({"site": 0, "visit": 0, "trace": "a.tsv", "ok": True, "duration": 1.5}) + "\n"
        + json.dumps({"site": 1, "visit": 0, "trace": "b.tsv", "ok": False, "duration": 9, "error": "x"}) + "\n"
    )
    visits = traces.load_condition(tmp_path)
    assert [(v.site, v.duration) for v in visits] == [(0, 1.5)]
    with pytest.raises(traces.TraceError):
        traces.load_condition(tmp_path / "nothing")


def test_each_packet_counts_as_its_share_of_cells():
    tr = np.array([[0, 1, 100], [0.1, -1, 514 * 3 + 40], [0.2, 1, 514]])
    assert traces.cells(tr).tolist() == [1, -1, -1, -1, 1]
    assert len(traces.cells(np.zeros((0, 3)))) == 0
