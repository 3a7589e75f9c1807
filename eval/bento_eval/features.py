"""k-FP's hand-made features (Hayes and Danezis, "k-fingerprinting: a
Robust Scalable Website Fingerprinting Technique", USENIX Security 2016).

The paper's 175 features are families of statistics over packet counts,
ordering, inter-arrival times, transmission-time quartiles, the first and
last 30 packets, outgoing-packet concentration and packets per second; this
module computes each family (the per-chunk and per-second lists cut to a
fixed 20 values, as the paper's "alternative" features do), plus bytes in
and out, since our traces carry sizes. Every feature is a float; a trace of
any length (even empty) gives the same vector length, FEATURES.
"""

from __future__ import annotations

import numpy as np

# Length of the fixed lists (chunk concentrations, packets per second).
LIST_LEN = 20
CHUNK = 20  # packets per chunk for the concentration features
EDGE = 30  # first/last packets counted


def _stats(x: np.ndarray) -> list[float]:
    if len(x) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(x.max()), float(x.mean()), float(x.std()), float(np.percentile(x, 75))]


def _quartiles(t: np.ndarray) -> list[float]:
    if len(t) == 0:
        return [0.0] * 4
    return [float(np.percentile(t, q)) for q in (25, 50, 75, 100)]


def _fixed(x: np.ndarray, n: int = LIST_LEN) -> list[float]:
    """x resampled into n bins by summing (the paper's 'alternative'
    features), so traces of any length compare."""
    if len(x) == 0:
        return [0.0] * n
    return [float(s.sum()) for s in np.array_split(x.astype(float), n)]


def _bursts(d: np.ndarray, sign: float) -> list[float]:
    """Number, longest and mean length of runs of packets in one direction."""
    runs, cur = [], 0
    for v in d:
        if v == sign:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    if not runs:
        return [0.0, 0.0, 0.0]
    return [float(len(runs)), float(max(runs)), float(np.mean(runs))]


def features(trace: np.ndarray) -> np.ndarray:
    t = trace[:, 0] if len(trace) else np.zeros(0)
    d = trace[:, 1] if len(trace) else np.zeros(0)
    s = trace[:, 2] if len(trace) else np.zeros(0)
    out, inn = d > 0, d < 0
    n = len(d)
    f: list[float] = []
    # Counts and fractions.
    f += [n, out.sum(), inn.sum(), out.mean() if n else 0.0, inn.mean() if n else 0.0]
    f += [s[out].sum(), s[inn].sum()]
    # Inter-arrival times, all/in/out.
    for sel in (np.ones(n, bool), inn, out):
        f += _stats(np.diff(t[sel]))
    # Transmission time quartiles, all/in/out.
    for sel in (np.ones(n, bool), inn, out):
        f += _quartiles(t[sel])
    # Packet ordering: where the outgoing and incoming packets sit.
    idx = np.arange(n, dtype=float)
    for sel in (out, inn):
        f += [idx[sel].mean() if sel.any() else 0.0, idx[sel].std() if sel.any() else 0.0]
    # First and last 30 packets.
    f += [out[:EDGE].sum(), inn[:EDGE].sum(), out[-EDGE:].sum(), inn[-EDGE:].sum()]
    # Concentration of outgoing packets in chunks of 20.
    conc = np.array([c.sum() for c in np.array_split(out, max(1, int(np.ceil(n / CHUNK))))]) if n else np.zeros(0)
    f += _stats(conc) + [float(np.median(conc)) if len(conc) else 0.0, float(conc.min()) if len(conc) else 0.0]
    f += _fixed(conc)
    # Packets per second.
    if n:
        pps = np.bincount(t.astype(int))
    else:
        pps = np.zeros(0)
    f += _stats(pps) + [float(np.median(pps)) if len(pps) else 0.0, float(pps.min()) if len(pps) else 0.0]
    f += _fixed(pps)
    # Bursts.
    f += _bursts(d, 1.0) + _bursts(d, -1.0)
    return np.nan_to_num(np.array(f, dtype=float))


FEATURES = len(features(np.zeros((0, 3))))


def matrix(traces: list[np.ndarray]) -> np.ndarray:
    return np.stack([features(tr) for tr in traces]) if traces else np.zeros((0, FEATURES))
