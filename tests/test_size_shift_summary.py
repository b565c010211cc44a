"""The size-shift summary (benchmarks.size_shift): runs read from planted data files, the fix rule at its edges, and
the results page's section equal to what the committed data give."""

from __future__ import annotations

import json

import pytest

from benchmarks import size_shift
from benchmarks.report import read_section, section_text

DEFAULT, CANDIDATE = size_shift.DEFAULT, size_shift.CANDIDATES[0]


def ablation_file(folder, key, runs, collapses):
    """An ablation data file as benchmarks.ablation writes it: records in any order, cases below 0.3 per run in
    fold order in the size bins."""
    payload = {
        "key": key,
        "runs": [{"trainer": t, "fold": f, "Dice": d, "HD95": h} for t, f, d, h in runs],
        "size_bins": {"methods": {t: {"collapses_per_run": c} for t, c in collapses.items()}},
    }
    (folder / f"{key}.json").write_text(json.dumps(payload))


@pytest.fixture
def planted(tmp_path):
    """default: Dice 0.5, HD95 10, 5 cases per run; the candidate: 0.9 points lower, HD95 x 1.029, 5 cases."""
    runs = [(DEFAULT, f, 0.5, 10.0) for f in (2, 0, 1)] + [(CANDIDATE, f, 0.491, 10.29) for f in (1, 2, 0)]
    collapses = {DEFAULT: [5, 5, 5], CANDIDATE: [4, 5, 6]}
    ablation_file(tmp_path, "main", runs, collapses)
    return tmp_path, runs, collapses


def verdict(folder, files=("main",), size_shift_test=True):
    runs, replicates = size_shift.gather(list(files), folder)
    return size_shift.verdict(CANDIDATE, runs, size_shift_test), replicates


def test_cases_follow_their_fold_not_the_record_order(planted):
    folder, _, _ = planted
    runs, _ = size_shift.gather(["main"], folder)
    assert [runs[CANDIDATE][f].collapses for f in (0, 1, 2)] == [4, 5, 6]


def test_the_rule_passes_just_inside_its_margins(planted):
    folder, _, _ = planted
    text, _ = verdict(folder)
    assert text.startswith("passes") and "Δ Dice −0.9" in text and "✗" not in text


@pytest.mark.parametrize(
    "change, failed",
    [
        (lambda r: (r[0], r[1], 0.489, r[3]), "Dice ✗"),  # 1.1 points below
        (lambda r: (r[0], r[1], r[2], 10.31), "HD95 ✗"),  # x 1.031
    ],
)
def test_the_rule_fails_just_outside_its_margins(planted, change, failed):
    folder, runs, collapses = planted
    ablation_file(folder, "main", [change(r) if r[0] == CANDIDATE else r for r in runs], collapses)
    text, _ = verdict(folder)
    assert text.startswith("fails") and failed in text


def test_one_more_collapse_fails_the_size_shift_rule_but_not_the_standard_one(planted):
    folder, runs, collapses = planted
    ablation_file(folder, "main", runs, {**collapses, CANDIDATE: [4, 5, 7]})
    assert "cases ✗" in verdict(folder)[0]
    standard, _ = verdict(folder, size_shift_test=False)  # on the standard test only Dice counts: 0.491 < 0.5
    assert standard.startswith("fails") and "Dice ✗" in standard


def test_a_replicate_and_a_transcribed_run(planted):
    """A fold in a later file is a replicate and stays out of the rule; a transcribed record's own count is used."""
    folder, runs, collapses = planted
    ablation_file(folder, "main", [r for r in runs if not (r[0] == CANDIDATE and r[1] == 2)], collapses)
    (folder / "typed.json").write_text(
        json.dumps(
            {"key": "typed", "runs": [{"trainer": CANDIDATE, "fold": 2, "Dice": 0.491, "HD95": 10.29, "below_0.3": 9}]}
        )  # fmt: skip
    )
    ablation_file(folder, "later", [(CANDIDATE, 0, 0.1, 99.0)], {CANDIDATE: [29]})
    assert verdict(folder, ("main",))[0] == "2 of 3 runs, waits"
    text, replicates = verdict(folder, ("main", "typed", "later"))
    assert "cases ✗" in text and "Dice ✓" in text  # 4 + 5 + 9 > 15
    assert [(r.trainer, r.fold, r.dice) for r in replicates] == [(CANDIDATE, 0, 0.1)]


def test_the_results_page_holds_what_the_data_give():
    assert read_section(size_shift.RESULTS, size_shift.KEY) == section_text(size_shift.table())
