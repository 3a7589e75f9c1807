"""k-FP and DF on simulated traces: they tell undefended sites apart, and a
defense that makes every trace the same fools them both. Small on purpose
(6 sites x 10 visits, DF on the first 500 cells, 5 folds) so CI stays fast; the real
runs use the defaults (10 folds, 5000 cells, 30 epochs)."""

import json

import numpy as np
import pytest

from bento_eval import corpus, evaluate, features, sim, traces

SITES, VISITS = 6, 10
FAST = dict(folds=5, seed=1, df_epochs=30, df_length=500, trees=60)


@pytest.fixture(scope="module")
def simulated():
    sites = corpus.corpus(11, SITES)
    return sim.corpus_traces(sites, VISITS, seed=2)


def _fits_all(trs, size=4 * 514):
    return max(int(np.ceil(t[t[:, 1] == s, 2].sum() / size)) for t in trs for s in (1.0, -1.0))


def test_both_attacks_tell_undefended_simulated_sites_apart_well_above_chance(simulated):
    trs, labels = simulated
    folds, kfp, dfa = evaluate.cross_validate(trs, labels, **FAST)
    assert folds == 5
    chance = 1 / SITES
    assert np.mean(kfp) >= 0.8, kfp
    assert np.mean(dfa) >= 3 * chance, dfa


def test_constant_rate_padding_to_a_fixed_length_drives_both_attacks_to_chance(simulated):
    trs, labels = simulated
    n = _fits_all(trs)
    defended = [sim.constant_rate(t, n) for t in trs]
    assert all(np.array_equal(defended[0], d) for d in defended)
    folds, kfp, dfa = evaluate.cross_validate(defended, labels, **FAST)
    # Identical inputs: any classifier names one site for all, right once
    # per site in every stratified fold.
    chance = 1 / SITES
    assert np.mean(kfp) <= chance + 0.05, kfp
    assert np.mean(dfa) <= chance + 0.05, dfa


def test_constant_rate_refuses_a_trace_that_does_not_fit(simulated):
    trs, _ = simulated
    with pytest.raises(ValueError):
        sim.constant_rate(trs[0], 1)


def test_every_trace_gives_a_feature_vector_of_one_length_even_an_empty_one(simulated):
    trs, _ = simulated
    for tr in [trs[0], trs[-1], np.zeros((0, 3)), np.array([[0.0, 1, 543]])]:
        f = features.features(tr)
        assert f.shape == (features.FEATURES,)
        assert np.isfinite(f).all()


def test_too_few_sites_or_visits_is_a_typed_error(simulated):
    trs, labels = simulated
    with pytest.raises(evaluate.EvalError):
        evaluate.cross_validate(trs[:VISITS], labels[:VISITS], **FAST)
    with pytest.raises(evaluate.EvalError):
        evaluate.cross_validate([trs[0], trs[VISITS]], labels[[0, VISITS]], **FAST)


def _write_condition(d, trs, labels, seconds):
    d.mkdir()
    with open(d / "visits.jsonl", "w") as f:
        for i, (tr, y) in enumerate(zip(trs, labels)):
            traces.save(d / f"{i}.tsv", tr)
            f.write(json.dumps({"site": int(y), "visit": i, "trace": f"{i}.tsv", "ok": True, "duration": seconds}) + "\n")
        f.write(json.dumps({"site": 0, "visit": 99, "trace": "x.tsv", "ok": False, "duration": 1, "error": "boom"}) + "\n")


def test_the_command_writes_one_table_and_one_plot_with_accuracy_and_overheads_per_condition(simulated, tmp_path):
    trs, labels = simulated
    n = _fits_all(trs)
    _write_condition(tmp_path / "direct", trs, labels, 2.0)
    _write_condition(tmp_path / "padded", [sim.constant_rate(t, n) for t in trs], labels, 3.0)
    (tmp_path / "meta.json").write_text(json.dumps({"conditions": {"direct": None, "padded": ["--pad", "1"]}}))
    argv = [str(tmp_path), "--folds", "5", "--df-epochs", "2", "--df-length", "300", "--jobs", "2"]
    assert evaluate.main(argv) == 0
    md = (tmp_path / "results.md").read_text()
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| direct | 6 × 10.0 (5-fold) (1) |")
    assert lines[3].startswith("| padded |")
    results = {r["condition"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert results["direct"]["bandwidth_overhead"] == pytest.approx(0)
    padded_bytes = 2 * n * 4 * 514
    direct_bytes = np.mean([t[:, 2].sum() for t in trs])
    assert results["padded"]["bandwidth_overhead"] == pytest.approx(padded_bytes / direct_bytes - 1, rel=0.05)
    assert results["padded"]["latency_overhead"] == pytest.approx(0.5)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_reports_unreadable_input_and_exits_2(tmp_path):
    assert evaluate.main([str(tmp_path)]) == 2
    (tmp_path / "meta.json").write_text(json.dumps({"conditions": {"direct": None}}))
    assert evaluate.main([str(tmp_path)]) == 2  # no visit log


def test_a_site_with_too_few_successful_visits_is_left_out_instead_of_cutting_every_sites_folds():
    def v(site, i):
        return traces.Visit(site, i, np.zeros((1, 3)), 1.0)

    visits = [v(s, i) for s in range(4) for i in range(7)] + [v(4, i) for i in range(3)]
    kept, folds = evaluate.usable(visits, 10)
    assert folds == 7
    assert {x.site for x in kept} == {0, 1, 2, 3}
    kept, folds = evaluate.usable(visits, 5)
    assert folds == 5 and len(kept) == 28
    # One failed visit costs a fold, not the site.
    kept, folds = evaluate.usable(visits[:-4], 10)
    assert folds == 6 and {x.site for x in kept} == {0, 1, 2, 3}
