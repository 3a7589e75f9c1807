"""Simulated traces, so the classifiers are tested fast and without Tor.

A visit of a corpus site is simulated at the cell level: the client sends a
request cell per object, the guard answers with the object's cells; six
objects are in flight at once after the page (as a browser's connections
are), the cells of concurrent objects interleave, and TLS packs runs of
same-direction cells into segments. Each visit draws its own bandwidth,
latency and jitter, so visits of one site differ as repeated real visits
do. `constant_rate` is a defense that makes every trace the same.
"""

from __future__ import annotations

import numpy as np

from .corpus import Site
from .traces import CELL_BYTES

CELL_PAYLOAD = 498  # relay cell payload bytes
TLS_OVERHEAD = 29
PARALLEL = 6


def visit(site: Site, rng: np.random.Generator) -> np.ndarray:
    """One simulated visit of `site`: a trace (time, direction, size)."""
    rate = 400_000 * np.exp(rng.normal() * 0.3)  # bytes/s this visit
    rtt = 0.3 * np.exp(rng.normal() * 0.2)
    cell_time = CELL_BYTES / rate
    events: list[tuple[float, float]] = []  # (time, direction) per cell

    def fetch(start: float, size: int) -> float:
        events.append((start, 1.0))
        n = max(1, int(np.ceil(size / CELL_PAYLOAD)))
        ts = start + rtt + np.cumsum(np.full(n, cell_time) * np.exp(rng.normal(size=n) * 0.3))
        events.extend((float(x), -1.0) for x in ts)
        return float(ts[-1])

    end = fetch(0.0, site.html_size)
    slots = [end + rng.exponential(0.01) for _ in range(PARALLEL)]
    for r in site.resources:
        i = int(np.argmin(slots))
        # Several streams share the circuit: each gets a share of the rate.
        slots[i] = fetch(slots[i], r.size * PARALLEL // 2)
    events.sort()
    ev = np.array(events)
    # TLS: runs of same-direction cells leave as segments of 1-8 cells.
    rows = []
    i = 0
    while i < len(ev):
        k = 1
        limit = int(rng.integers(1, 9))
        while i + k < len(ev) and k < limit and ev[i + k, 1] == ev[i, 1]:
            k += 1
        rows.append((ev[i + k - 1, 0], ev[i, 1], k * CELL_BYTES + TLS_OVERHEAD))
        i += k
    return np.array(rows, dtype=float)


def corpus_traces(sites: list[Site], visits: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`visits` simulated visits of every site: (traces, labels)."""
    rng = np.random.default_rng(seed)
    traces, labels = [], []
    for label, site in enumerate(sites):
        for _ in range(visits):
            traces.append(visit(site, rng))
            labels.append(label)
    return traces, np.array(labels)


def constant_rate(trace: np.ndarray, packets: int, interval: float = 0.01, size: int = 4 * CELL_BYTES) -> np.ndarray:
    """Constant-rate padding to a fixed length (BuFLO with a fixed end, as
    in Cover): `packets` packets each way, alternating, one every
    `interval`, all of `size` bytes; real data rides in them and dummies
    fill the rest. The result does not depend on the trace as long as the
    trace's bytes fit each way (else the defense has failed, and it says so)."""
    for sign in (1.0, -1.0):
        if trace[trace[:, 1] == sign, 2].sum() > packets * size:
            raise ValueError("the trace does not fit in the constant-rate flow")
    t = np.arange(2 * packets) * interval
    d = np.tile([1.0, -1.0], packets)
    return np.stack([t, d, np.full(2 * packets, float(size))], axis=1)
