"""The least bandwidth overhead any size-hiding defense needs in a closed
world, before a single trace is collected (docs/anonymity.md).

    .cache/eval-venv/bin/python -m bento_eval.bound [--seed 1] [--sites 50 100] [--accuracy 0.15]

An adversary who only counts the bytes of a visit already names the site
whenever two sites' visits differ in size. A defense that pads each site's
visit to a fixed size puts the sites in classes of equal size; with equally
likely sites, the best guess is right (classes / sites) of the time. So an
accuracy of at most `a` needs at most floor(a x sites) classes, and the
cheapest way to get them is to split the sites, sorted by size, into that
many runs and pad each to its largest. This computes that least cost
exactly (dynamic programming over the sorted sizes) for the corpus's
pages. It ignores timing and assumes padding is the only cost, so a real
defense costs at least this much, usually more.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from . import corpus


@dataclass(frozen=True)
class Bound:
    sites: int
    classes: int
    mean_bytes: float
    overhead: float  # least extra bytes over the unpadded pages, as a fraction
    largest: list[int]  # the size every class is padded to, smallest first


def least_overhead(sizes: list[int], accuracy: float) -> Bound:
    """The cheapest split of `sizes` into at most floor(accuracy x n) classes,
    each padded to its largest member."""
    if not sizes:
        raise ValueError("no sites")
    if not 0 < accuracy <= 1:
        raise ValueError(f"accuracy must be in (0, 1], not {accuracy}")
    s = sorted(sizes)
    n = len(s)
    # A tolerance so that 0.15 x 100 counts as 15 classes, not 14.
    k = max(1, min(n, math.floor(accuracy * n + 1e-9)))
    inf = float("inf")
    # cost[c][i]: least padded total of the i smallest sites in c classes.
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0
    for c in range(1, k + 1):
        for i in range(1, n + 1):
            for j in range(c - 1, i):
                value = cost[c - 1][j] + (i - j) * s[i - 1]
                if value < cost[c][i]:
                    cost[c][i], cut[c][i] = value, j
    best = min(range(1, k + 1), key=lambda c: cost[c][n])
    largest, i = [], n
    for c in range(best, 0, -1):
        largest.append(s[i - 1])
        i = cut[c][i]
    total = sum(s)
    return Bound(n, best, total / n, cost[best][n] / total - 1, sorted(largest))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bento_eval.bound", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--accuracy", type=float, default=0.15, help="the most accuracy allowed (default 0.15)")
    a = p.parse_args(argv)
    print(f"| sites (seed {a.seed}) | mean page | classes for accuracy <= {a.accuracy:.0%} "
          "| least bandwidth overhead | class sizes (MB) |")
    print("|---|---|---|---|---|")
    for n in a.sites:
        b = least_overhead([site.total_bytes for site in corpus.corpus(a.seed, n)], a.accuracy)
        classes = ", ".join(f"{x / 1e6:.2f}" for x in b.largest)
        print(f"| {n} | {b.mean_bytes / 1e6:.2f} MB | {b.classes} | +{b.overhead:.0%} | {classes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
