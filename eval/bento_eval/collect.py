"""Collect real traces over the private Tor network (docs/anonymity.md).

    .cache/eval-venv/bin/python -m bento_eval.collect --out DIR \
        [--sites 50] [--visits 20] [--seed 1] [--condition NAME ...] \
        [--define NAME='BROWSE ARGS'] [--bento target/debug/bento]

Starts a private Tor network with one Bento box (`bento testnet up`),
serves the corpus on 127.0.0.1, and visits every site `--visits` times per
condition, round-robin (visit v of every site under every condition before
visit v+1), so slow drift of the network hits every condition alike. The
trace is a packet capture on loopback (tcpdump) of the client tor's
connections to its relays: the adversary at the guard. The client tor's
connections are found by its PID (`ss -tnp`), so the boxes' and relays'
own traffic on the same interface is left out.

Conditions are names for `bento browse` arguments (CONDITIONS), plus
`direct`, a fetch of the page and its resources through Tor's SocksPort
without Bento. `--define NAME='ARGS'` adds a condition (for example a
shaping defense with a pad: --define front-pad1MB='--pad 1MB --defense
front'); its traces go to DIR/NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import corpus, traces

ROOT = Path(__file__).resolve().parents[2]

# Condition name -> `bento browse` arguments (None: a direct fetch through
# Tor). The Browser's pad is at most 4 MiB (its blob limit), so the paper's
# 7 MB pad is measured as 4 MiB, the largest it allows; pad 1 is "no pad".
CONDITIONS: dict[str, list[str] | None] = {
    "direct": None,
    "browser-pad1": ["--pad", "1"],
    "browser-pad1MB": ["--pad", "1MB"],
    "browser-pad4MiB": ["--pad", "4MiB"],
    # The box paces a cover flow with its `constant` defense, which carries
    # 49 300 B/s of the flow's cells (docs/functions/cover.md): 100 cells of
    # 493 B per second fill it exactly, and 90 s carry 4.4 MB, the largest
    # 1 MB-padded bundle the Browser sends (4 MiB) and its request.
    "browser-cover": [
        "--pad", "1MB",
        "--cover-rate", "100",
        "--cover-cell-size", "493",
        "--cover-duration", "90s",
    ],
    # The box's shaping defenses (docs/policy.md#shaping) around the
    # unpadded Browser: `bento browse --defense` shapes the page's way at
    # the box and pads the request's way at the client.
    "front": ["--pad", "1", "--defense", "front"],
    "regulator": ["--pad", "1", "--defense", "regulator"],
    "tamaraw": ["--pad", "1", "--defense", "tamaraw"],
    "constant": ["--pad", "1", "--defense", "constant"],
}
DEFAULT_CONDITIONS = list(CONDITIONS)

# The Browser's own limits, raised to the largest it allows so that real
# pages (up to 250 resources, see corpus.py) are fetched whole.
BROWSE_LIMITS = ["--max-resources", "256", "--max-bytes", "16MiB"]
# One visit may take at most this long (a stuck visit is recorded as failed).
VISIT_TIMEOUT_S = 180
# A site that fails this often under a condition is not visited again
# under it (its failures stay in the log, and the table counts its visits).
FAILURES_BEFORE_SKIP = 2
# Failures that will repeat on every visit (a limit of the function or of
# the flow, not the network): one is enough to stop trying.
DETERMINISTIC = ("[limit.cpu]", "[limit.memory]", "make the flow longer")
# Longest wait for tcpdump to catch up at the end of a visit.
CAPTURE_SETTLE_S = 15
# Parallel connections of the direct fetch (what browsers open per host).
DIRECT_CONNECTIONS = 6


def policy(port: int) -> str:
    """A box policy granting `http` to the corpus server only, with room
    for the Browser's and Cover's limits."""
    return f"""version = 1
capabilities = ["http", "time"]
destinations = ["accept 127.0.0.1:{port}", "reject *:*"]
[instance]
memory_mib = 256
cpu_ms = 60000
wall_ms = 180000
output_buffer_kib = 8192
storage_kib = 0
bandwidth_kib_per_s = 100000
channels = 0
[box]
max_instances = 16
max_buffered_mib = 256
max_upload_kib = 1024
max_stored_mib = 64
max_storage_mib = 0
bandwidth_kib_per_s = 1000000
"""


def _socks_connect(socks: tuple[str, int], host: str, port: int, timeout: float) -> socket.socket:
    s = socket.create_connection(socks, timeout=timeout)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        s.close()
        raise OSError("SOCKS5: no acceptable method")
    addr = socket.inet_aton(host)
    s.sendall(b"\x05\x01\x00\x01" + addr + port.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            break
        reply += chunk
    if len(reply) < 2 or reply[1] != 0:
        s.close()
        raise OSError(f"SOCKS5: connect failed ({reply[1:2].hex() or 'closed'})")
    return s


def _get(socks: tuple[str, int], port: int, path: str, timeout: float) -> bytes:
    with _socks_connect(socks, "127.0.0.1", port, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        raise OSError(f"GET {path}: {status[:60]!r}")
    return body


_REF = re.compile(rb"""(?:src|href)="([^"]+)"|url\(([^)]+)\)""")


def direct_fetch(socks: tuple[str, int], port: int, path: str, timeout: float) -> int:
    """Fetch a page and everything it references (and what its style
    sheets reference) through Tor, as a browser would: the page first,
    then the resources over parallel connections. Returns the bytes."""
    page = _get(socks, port, path, timeout)
    refs = [(a or b).decode() for a, b in _REF.findall(page)]
    total = len(page)
    with ThreadPoolExecutor(DIRECT_CONNECTIONS) as pool:
        bodies = list(pool.map(lambda r: _get(socks, port, path + r, timeout), refs))
        total += sum(len(b) for b in bodies)
        nested = [
            (a or b).decode()
            for r, body in zip(refs, bodies)
            if r.endswith(".css")
            for a, b in _REF.findall(body)
        ]
        total += sum(len(b) for b in pool.map(lambda r: _get(socks, port, path + r, timeout), nested))
    return total


def client_ports(pid: int, skip: set[int]) -> set[int]:
    """Local ports of the client tor's TCP connections (`ss -tnp`), except
    its own listeners' (SocksPort, ControlPort)."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        fields = line.split()
        local = fields[3]
        port = int(local.rsplit(":", 1)[1])
        if port not in skip:
            ports.add(port)
    return ports


class Capture:
    """tcpdump on loopback for the time of one visit (headers only)."""

    def __init__(self, path: Path):
        self.path = path
        self.proc = subprocess.Popen(
            # A large kernel buffer (-B, KiB): loopback bursts are fast.
            ["tcpdump", "-i", "lo", "-n", "-s", "96", "-B", "16384", "-U", "-w", str(path), "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # tcpdump says "listening on lo" once the capture runs.
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")

    def stop(self) -> None:
        """Stop the capture once tcpdump has written what it received."""
        # tcpdump may lag behind the interface on a loaded machine, and on
        # SIGINT it drops what it has not read yet: wait until the file
        # stops growing (at most CAPTURE_SETTLE_S).
        last, deadline = -1, time.monotonic() + CAPTURE_SETTLE_S
        while time.monotonic() < deadline:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size == last:
                break
            last = size
            time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def _bento(bento: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(bento), *args], capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bento_eval.collect", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="where traces go (DIR/CONDITION/); a run into a DIR that has a log resumes it")
    p.add_argument("--sites", type=int, default=50)
    p.add_argument("--visits", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--condition", action="append", help=f"repeatable; default: {' '.join(DEFAULT_CONDITIONS)}")
    p.add_argument("--define", action="append", default=[], metavar="NAME=ARGS",
                   help="add a condition: NAME='bento browse arguments'")
    p.add_argument("--bento", type=Path, default=ROOT / "target/debug/bento")
    p.add_argument("--runtime", type=Path, default=Path(os.environ.get("BENTO_RUNTIME", ROOT / ".cache/runtime/bento-python.cwasm")))
    a = p.parse_args(argv)

    conditions = dict(CONDITIONS)
    for d in a.define:
        name, sep, args = d.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            p.error(f"--define {d!r}: expected NAME=ARGS")
        conditions[name] = shlex.split(args)
    chosen = a.condition or DEFAULT_CONDITIONS + [d.partition("=")[0] for d in a.define]
    for c in chosen:
        if c not in conditions:
            p.error(f"unknown condition {c!r} (known: {', '.join(conditions)})")

    a.out.mkdir(parents=True, exist_ok=True)
    if (a.out / "meta.json").exists():
        # Resuming: the same closed world, or the traces would mix two.
        old = json.loads((a.out / "meta.json").read_text())
        if (old.get("seed"), old.get("sites")) != (a.seed, a.sites):
            p.error(f"{a.out} holds a run of --seed {old.get('seed')} --sites {old.get('sites')}; "
                    "resume it with those, or use another --out")
    # Checked before the network starts: each visit captures on loopback.
    for tool in ("tcpdump", "ss"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed: run scripts/setup-eval.sh --pcap")
    if os.geteuid() != 0:
        p.error("capturing on loopback needs root (tcpdump -i lo)")
    for path, what in ((a.bento, "--bento"), (a.runtime, "--runtime")):
        if not path.is_file():
            p.error(f"{what} {path} does not exist (scripts/setup.sh builds both)")

    sites = corpus.write(a.seed, a.sites, a.out / "corpus")
    server = corpus.Server(a.out / "corpus")
    work = Path(tempfile.mkdtemp(prefix="bento-eval-"))
    (work / "policy.toml").write_text(policy(server.port))
    net = work / "testnet"
    print(f"[collect] corpus of {len(sites)} sites on 127.0.0.1:{server.port}; starting the test network", file=sys.stderr)
    up = _bento(a.bento, "testnet", "up", "--dir", str(net), "--boxes", "1",
                "--policy", str(work / "policy.toml"), "--runtime", str(a.runtime),
                "--owner-pid", str(os.getpid()))
    if up.returncode != 0:
        print(up.stderr, file=sys.stderr)
        return 1
    try:
        state = json.loads(_bento(a.bento, "testnet", "status", "--dir", str(net), "--json").stdout)
        onion = state["boxes"][0]["onion"]
        socks_addr = state["socks"]
        host, _, port = socks_addr.rpartition(":")
        socks = (host, int(port))
        client = next(n for n in state["nodes"] if n["role"] == "client")
        skip = {client["socks_port"], client["control_port"]} - {None}
        relay_ports = {n["or_port"] for n in state["nodes"] if n.get("or_port")}
        meta = {
            "seed": a.seed, "sites": a.sites, "visits": a.visits,
            "conditions": {c: conditions[c] for c in chosen},
            "site_bytes": [s.total_bytes for s in sites],
            "site_resources": [len(s.resources) for s in sites],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (a.out / "meta.json").write_text(json.dumps(meta, indent=1))
        for c in chosen:
            (a.out / c).mkdir(exist_ok=True)
        done, failed = _previous(a.out, chosen)
        for v in range(a.visits):
            for c in chosen:
                for s in sites:
                    if (c, s.index, v) in done:
                        continue  # resumed: this visit is in the log already
                    if failed.get((c, s.index), 0) >= FAILURES_BEFORE_SKIP:
                        continue
                    rec = visit(a, conditions[c], c, s, v, server, onion, socks, client["pid"], skip, relay_ports)
                    if not rec["ok"]:
                        deterministic = any(m in rec.get("error", "") for m in DETERMINISTIC)
                        failed[(c, s.index)] = failed.get((c, s.index), 0) + (
                            FAILURES_BEFORE_SKIP if deterministic else 1)
                    with open(a.out / c / "visits.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"[collect] {c} site {s.index} visit {v}: {'ok' if rec['ok'] else 'FAILED ' + rec['error']} "
                          f"{rec['duration']:.1f}s {rec.get('packets', 0)} packets", file=sys.stderr)
    finally:
        _bento(a.bento, "testnet", "down", "--dir", str(net))
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _previous(out: Path, chosen: list[str]) -> tuple[set, dict]:
    """What an earlier run into the same directory logged: the visits
    done (condition, site, visit) and the failures per (condition, site),
    so a run can be resumed (same --seed and --sites) without repeating
    work."""
    done, failed = set(), {}
    for c in chosen:
        log = out / c / "visits.jsonl"
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            done.add((c, rec["site"], rec["visit"]))
            if not rec["ok"]:
                deterministic = any(m in rec.get("error", "") for m in DETERMINISTIC)
                key = (c, rec["site"])
                failed[key] = failed.get(key, 0) + (FAILURES_BEFORE_SKIP if deterministic else 1)
    return done, failed


def visit(a, args, name, site, v, server, onion, socks, client_pid, skip, relay_ports) -> dict:
    rec = {"site": site.index, "visit": v, "trace": f"site{site.index:03d}-{v:02d}.tsv", "ok": False}
    pcap = a.out / name / f"site{site.index:03d}-{v:02d}.pcap"
    ports = client_ports(client_pid, skip)
    cap = Capture(pcap)
    start = time.monotonic()
    try:
        if args is None:
            rec["bytes"] = direct_fetch(socks, server.port, site.path, VISIT_TIMEOUT_S)
            ok, err = True, ""
        else:
            with tempfile.TemporaryDirectory() as out:
                r = _bento(a.bento, "--server", onion, "--socks", f"{socks[0]}:{socks[1]}", "browse",
                           server.url(site), "--out", f"{out}/page", "--destination", f"accept 127.0.0.1:{server.port}",
                           *BROWSE_LIMITS, *args, timeout=VISIT_TIMEOUT_S)
                # bento's last line of stderr says why it failed.
                ok, err = r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, err = False, str(e)
    rec["duration"] = time.monotonic() - start
    cap.stop()
    ports |= client_ports(client_pid, skip)
    try:
        trace = traces.trace_from_pcap(pcap, ports, relay_ports)
    except traces.TraceError as e:
        ok, err = False, str(e)
        trace = None
    pcap.unlink(missing_ok=True)
    rec["ok"] = ok and trace is not None and len(trace) > 0
    if not ok:
        rec["error"] = err
    elif trace is not None:
        traces.save(a.out / name / rec["trace"], trace)
        rec["packets"] = len(trace)
        rec["wire_bytes"] = int(trace[:, 2].sum())
    return rec


if __name__ == "__main__":
    sys.exit(main())
