"""Closed-world website-fingerprinting accuracy per condition, with
overheads, as one Markdown table and one plot (docs/anonymity.md).

    .cache/eval-venv/bin/python -m bento_eval.evaluate DIR \
        [--baseline direct] [--folds 10] [--seed 1] [--df-epochs 30] [--jobs 1]

DIR is what bento_eval.collect wrote (DIR/CONDITION/visits.jsonl and the
traces). Writes DIR/results.md, DIR/results.json and DIR/results.png.

Accuracy is 10-fold stratified cross-validation (fewer folds only if some
site has fewer successful visits, and then the table says so): each fold
trains a fresh k-FP random forest and a fresh DF network on nine tenths of
the visits and tests on the rest. The table gives the mean and standard
deviation over folds. Overheads compare each condition with the baseline
condition site by site: bandwidth is the extra bytes on the client's
connection to its guard (both directions), latency the extra time until
the visit's page is in hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold

from . import df, features, traces

# k-FP's forest; the paper uses 1000 trees, which changes little over 250
# in closed world and costs four times the CPU here.
TREES = 250
# A site with fewer successful visits than this fraction of the median
# site's is left out of its condition (see usable()).
KEEP_FRACTION = 2 / 3


class EvalError(Exception):
    """Traces that cannot be evaluated (too few visits, no baseline …)."""


@dataclass
class Result:
    condition: str
    sites: int
    visits: int
    folds: int
    kfp_mean: float
    kfp_std: float
    df_mean: float
    df_std: float
    mean_bytes: float
    mean_seconds: float
    bandwidth_overhead: float | None = None
    latency_overhead: float | None = None
    failed: int = 0  # visits logged as failed (not in the accuracy)

    @property
    def chance(self) -> float:
        return 1.0 / self.sites


def cross_validate(
    trace_list: list[np.ndarray],
    labels: np.ndarray,
    folds: int = 10,
    seed: int = 1,
    df_epochs: int = 30,
    df_length: int = df.LENGTH,
    trees: int = TREES,
) -> tuple[int, list[float], list[float]]:
    """(folds used, k-FP accuracy per fold, DF accuracy per fold)."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise EvalError("need at least two sites")
    folds = min(folds, int(counts.min()))
    if folds < 2:
        raise EvalError(f"every site needs at least two visits (one has {counts.min()})")
    y = np.searchsorted(classes, labels)
    xk = features.matrix(trace_list)
    xd = df.inputs(trace_list, df_length)
    kfp_acc, df_acc = [], []
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (train, test) in enumerate(split.split(xk, y)):
        rf = RandomForestClassifier(n_estimators=trees, random_state=seed + i, n_jobs=1)
        rf.fit(xk[train], y[train])
        kfp_acc.append(float((rf.predict(xk[test]) == y[test]).mean()))
        pred = df.fit_predict(xd[train], y[train], xd[test], len(classes), epochs=df_epochs, seed=seed + i)
        df_acc.append(float((pred == y[test]).mean()))
    return folds, kfp_acc, df_acc


def usable(visits: list[traces.Visit], folds: int) -> tuple[list[traces.Visit], int]:
    """The visits to cross-validate and the folds to use. A site with
    fewer than KEEP_FRACTION of the median site's visits (most of its visits
    failed) is left out rather than cutting every site's folds down to its
    count; the folds are `folds` or, if fewer, the fewest visits of a site
    kept (a site with one failed visit costs one fold, not its place)."""
    counts: dict[int, int] = {}
    for v in visits:
        counts[v.site] = counts.get(v.site, 0) + 1
    if not counts:
        return [], folds
    floor = KEEP_FRACTION * float(np.median(list(counts.values())))
    kept = {site for site, n in counts.items() if n >= floor}
    folds = min(folds, min(counts[site] for site in kept))
    return [v for v in visits if v.site in kept], folds


def _cross_validate_visits(visits: list[traces.Visit], cv: dict) -> tuple[int, list[float], list[float]]:
    return cross_validate([v.trace for v in visits], np.array([v.site for v in visits]), **cv)


def evaluate(
    conditions: dict[str, list[traces.Visit]],
    baseline: str | None = None,
    jobs: int = 1,
    **cv,
) -> list[Result]:
    """Accuracy and overheads per condition; `jobs` conditions at a time
    (each in its own process, since training is single-threaded)."""
    conditions = dict(conditions)
    for name, visits in conditions.items():
        conditions[name], _ = usable(visits, cv.get("folds", 10))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            scores = dict(zip(conditions, pool.map(_cross_validate_visits, conditions.values(),
                                                   [cv] * len(conditions))))
    else:
        scores = {name: _cross_validate_visits(visits, cv) for name, visits in conditions.items()}
    results = []
    base_bytes, base_time = {}, {}
    if baseline is not None:
        if baseline not in conditions:
            raise EvalError(f"baseline condition {baseline!r} has no traces")
        for v in conditions[baseline]:
            base_bytes.setdefault(v.site, []).append(v.trace[:, 2].sum())
            base_time.setdefault(v.site, []).append(v.duration)
    for name, visits in conditions.items():
        folds, kfp, dfa = scores[name]
        by_bytes, by_time = {}, {}
        for v in visits:
            by_bytes.setdefault(v.site, []).append(v.trace[:, 2].sum())
            by_time.setdefault(v.site, []).append(v.duration)
        r = Result(
            condition=name,
            sites=len(by_bytes),
            visits=len(visits),
            folds=folds,
            kfp_mean=float(np.mean(kfp)),
            kfp_std=float(np.std(kfp)),
            df_mean=float(np.mean(dfa)),
            df_std=float(np.std(dfa)),
            mean_bytes=float(np.mean([np.mean(b) for b in by_bytes.values()])),
            mean_seconds=float(np.mean([np.mean(t) for t in by_time.values()])),
        )
        common = sorted(set(by_bytes) & set(base_bytes))
        if common:
            # Ratio of the sums over sites of per-site means: heavy sites
            # weigh as much as they cost.
            cb = sum(np.mean(by_bytes[s]) for s in common)
            bb = sum(np.mean(base_bytes[s]) for s in common)
            ct = sum(np.mean(by_time[s]) for s in common)
            bt = sum(np.mean(base_time[s]) for s in common)
            r.bandwidth_overhead = cb / bb - 1
            r.latency_overhead = ct / bt - 1
        results.append(r)
    return results


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.0f}%"


def table(results: list[Result], baseline: str | None) -> str:
    head = (
        "| condition | sites × visits (failed) | k-FP accuracy | DF accuracy | chance | MB per visit | s per visit | "
        f"bandwidth overhead{f' vs {baseline}' if baseline else ''} | latency overhead |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        folds = "" if r.folds == 10 else f" ({r.folds}-fold)"
        rows.append(
            f"| {r.condition} | {r.sites} × {r.visits / r.sites:.1f}{folds} ({r.failed}) | "
            f"{r.kfp_mean * 100:.1f} ± {r.kfp_std * 100:.1f}% | {r.df_mean * 100:.1f} ± {r.df_std * 100:.1f}% | "
            f"{r.chance * 100:.1f}% | {r.mean_bytes / 1e6:.2f} | {r.mean_seconds:.1f} | "
            f"{_pct(r.bandwidth_overhead)} | {_pct(r.latency_overhead)} |"
        )
    return head + "\n".join(rows) + "\n"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(results))
    ax1.bar(x - 0.2, [r.kfp_mean * 100 for r in results], 0.4, yerr=[r.kfp_std * 100 for r in results], label="k-FP")
    ax1.bar(x + 0.2, [r.df_mean * 100 for r in results], 0.4, yerr=[r.df_std * 100 for r in results], label="DF")
    ax1.plot(x, [r.chance * 100 for r in results], "k--", label="chance")
    ax1.set_xticks(x, [r.condition for r in results], rotation=30, ha="right")
    ax1.set_ylabel("closed-world accuracy (%)")
    ax1.set_ylim(0, 105)
    ax1.legend()
    ax1.set_title("Accuracy (mean ± sd over folds)")
    for r in results:
        if r.bandwidth_overhead is None:
            continue
        acc = max(r.kfp_mean, r.df_mean) * 100
        ax2.scatter(r.bandwidth_overhead * 100, acc)
        ax2.annotate(r.condition, (r.bandwidth_overhead * 100, acc), fontsize=8)
    ax2.set_xlabel("bandwidth overhead (%)")
    ax2.set_ylabel("best attack accuracy (%)")
    ax2.set_ylim(0, 105)
    ax2.set_title("Cost vs protection")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bento_eval.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--baseline", default="direct")
    p.add_argument("--condition", action="append", help="repeatable; default: every condition in DIR/meta.json")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--df-epochs", type=int, default=30)
    p.add_argument("--df-length", type=int, default=df.LENGTH)
    p.add_argument("--jobs", type=int, default=1, help="conditions evaluated at once (processes)")
    a = p.parse_args(argv)
    try:
        meta = json.loads((a.dir / "meta.json").read_text())
    except (OSError, ValueError) as e:
        print(f"{a.dir}/meta.json: {e}", file=sys.stderr)
        return 2
    names = a.condition or list(meta["conditions"])
    try:
        conditions = {n: traces.load_condition(a.dir / n) for n in names}
        results = evaluate(
            conditions,
            baseline=a.baseline if a.baseline in conditions else None,
            folds=a.folds,
            seed=a.seed,
            df_epochs=a.df_epochs,
            df_length=a.df_length,
            jobs=max(1, a.jobs),
        )
    except (traces.TraceError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        r.failed = traces.failures(a.dir / r.condition)
    md = table(results, a.baseline if a.baseline in conditions else None)
    (a.dir / "results.md").write_text(md)
    (a.dir / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    plot(results, a.dir / "results.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
