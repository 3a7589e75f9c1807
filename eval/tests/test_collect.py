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
    ]
    (d / "visits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done, failed = collect._previous(tmp_path, ["browser-pad1", "direct"])
    assert done == {("browser-pad1", s, 0) for s in (0, 1, 2)}
    # A limit of the function repeats on every visit: no more tries. A
    # network error may not: one more.
    assert failed[("browser-pad1", 1)] >= collect.FAILURES_BEFORE_SKIP
    assert failed[("browser-pad1", 2)] < collect.FAILURES_BEFORE_SKIP


def test_the_box_policy_opens_only_the_corpus_server():
    p = collect.policy(8123)
    assert 'destinations = ["accept 127.0.0.1:8123", "reject *:*"]' in p


def test_resuming_into_a_directory_of_another_closed_world_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"seed": 1, "sites": 50}))
    with pytest.raises(SystemExit) as e:
        collect.main(["--out", str(tmp_path), "--seed", "2", "--sites", "50", "--bento", "/nonexistent"])
    assert e.value.code == 2
