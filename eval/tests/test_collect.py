"""The collector's command line and resume logic (the Tor run itself is
exercised by the documented command, not in CI: it takes hours)."""

import json

import pytest

from bento_eval import collect


def test_a_condition_must_be_known_or_defined_as_name_and_arguments(tmp_path):
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--condition", "no-such-defense"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--define", "no equals sign"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--define", "bad/name=--pad 1"])
    assert e.value.code == 2


def test_a_resumed_run_skips_logged_visits_and_sites_that_fail_for_good(tmp_path):
    d = tmp_path / "browser-pad1"
    d.mkdir()
    rows = [
        {"site": 0, "visit": 0, "ok": True},
        {"site": 1, "visit": 0, "ok": False, "error": "error [limit.cpu]: CPU time limit exceeded"},
        {"site": 2, "visit": 0, "ok": False, "error": "connection reset"},
        {"site": 3, "visit": 0, "ok": False, "error": "error [limit.wall_time]: wall-clock time limit exceeded"},
    ]
    (d / "visits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done, failed = collect._previous(tmp_path, ["browser-pad1", "direct"])
    assert done == {("browser-pad1", s, 0) for s in (0, 1, 2, 3)}
    # The function's CPU limit is hit on every visit: no more tries. A
    # network error, or a wall-clock limit (a slow network), may not: one more.
    assert failed[("browser-pad1", 1)] >= collect.FAILURES_BEFORE_SKIP
    assert failed[("browser-pad1", 2)] < collect.FAILURES_BEFORE_SKIP
    assert failed[("browser-pad1", 3)] < collect.FAILURES_BEFORE_SKIP


def test_the_box_policy_opens_only_the_corpus_server():
    p = collect.policy(8123)
    assert 'destinations = ["accept 127.0.0.1:8123", "reject *:*"]' in p


def test_resuming_into_a_directory_of_another_closed_world_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"seed": 1, "sites": 50}))
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--seed", "2", "--sites", "50", "--bento", "/nonexistent"])
    assert e.value.code == 2


def test_a_missing_capture_tool_or_binary_is_named_before_the_network_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(collect.shutil, "which", lambda tool: None if tool == "tcpdump" else "/usr/bin/" + tool)
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--sites", "2"])
    assert e.value.code == 2
    assert "tcpdump is not installed: run scripts/setup-eval.sh --pcap" in capsys.readouterr().err
    monkeypatch.setattr(collect.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(collect.os, "geteuid", lambda: 0)
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--sites", "2", "--bento", str(tmp_path / "no-bento")])
    assert e.value.code == 2
    assert "no-bento does not exist" in capsys.readouterr().err
    assert not (tmp_path / "corpus").exists(), "nothing written before the checks"


class _Socks5:
    """A minimal SOCKS5 proxy on 127.0.0.1 (CONNECT, no auth) standing in
    for tor's SocksPort; `stall` makes it accept and then never answer."""

    def __init__(self, stall=False):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self.stall = stall
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import socket
        import threading

        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.stall:
                self.held.append(c)
                continue
            threading.Thread(target=self._relay, args=(c, socket), daemon=True).start()

    def _relay(self, c, socket):
        import threading

        c.recv(3)
        c.sendall(b"\x05\x00")
        req = c.recv(10)
        host = socket.inet_ntoa(req[4:8])
        port = int.from_bytes(req[8:10], "big")
        up = socket.create_connection((host, port))
        c.sendall(b"\x05\x00\x00\x01" + bytes(6))

        def pump(a, b):
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(up, c), daemon=True).start()
        pump(c, up)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_direct_fetch_gets_the_page_and_every_resource_and_a_stalled_proxy_times_out(tmp_path):
    from bento_eval import corpus

    sites = corpus.write(4, 2, tmp_path)
    server = corpus.Server(tmp_path)
    good, stalled = _Socks5(), _Socks5(stall=True)
    try:
        with pytest.raises(OSError):
            collect.direct_fetch(stalled.addr, server.port, sites[0].path, timeout=1)
        # The next visit is served in full.
        for site in sites:
            files = [tmp_path / site.path.strip("/") / "index.html"] + [
                tmp_path / site.path.strip("/") / r.name for r in site.resources]
            assert collect.direct_fetch(good.addr, server.port, site.path, timeout=30) == sum(
                f.stat().st_size for f in files)
    finally:
        good.close()
        stalled.close()
        server.close()
