"""The label-noise study's readings (benchmarks.noise_readings) on planted records at the rules' margins, the goal
line, and the results page's section equal to what the committed data give."""

from __future__ import annotations

import pytest

from benchmarks import noise_readings, noise_study
from nnunet_dale import demo


def record(role, run, dice, hd95, alpha=0.5, kind="mixed", dataset="isic2017") -> dict:
    return {"dataset": dataset, "kind": kind, "alpha": alpha, "role": role, "trainer": noise_study.ROLES[role],
            "run": run, "dice": dice, "hd95": hd95, "wall_s": 60.0, "label_dice": 0.9}  # fmt: skip


def cell(dale=(0.51, 10.0), same_time=(0.50, 10.0), default=(0.50, 10.0), gce=(0.50, 10.0), runs=3, **where):
    """Every role with `runs` runs of the same (Dice, HD95), at one dataset and level."""
    roles = {"default": default, "dale": dale, "default_same_time": same_time, "gce": gce}
    return [record(role, run, *values, **where) for role, values in roles.items() for run in range(runs)]


def read(records) -> str:
    (key, one), *_ = noise_readings.cells(records).items()
    return noise_readings.reading(key, one)


def test_dale_helps_at_one_point_with_hd95_not_worse_and_not_below_or_with_worse_hd95():
    assert "helps at equal time: yes" in read(cell(dale=(0.51, 10.0)))
    assert "helps at equal time: no" in read(cell(dale=(0.509, 10.0)))  # 0.9 points
    assert "helps at equal time: no" in read(cell(dale=(0.51, 10.01)))  # HD95 +0.1 %
    assert "at equal iterations: no" in read(cell(dale=(0.51, 10.0), default=(0.51, 10.0)))


def test_safe_on_clean_labels_down_to_half_a_point_and_only_at_alpha_zero():
    assert "safe on clean labels: yes" in read(cell(dale=(0.495, 9.0), alpha=0.0))
    assert "safe on clean labels: no" in read(cell(dale=(0.494, 9.0), alpha=0.0))
    assert "safe" not in read(cell(dale=(0.494, 9.0)))


@pytest.mark.parametrize("gce, word", [((0.50, 9.0), "beats"), ((0.509, 9.0), "level"), ((0.52, 9.0), "behind")])
def test_against_gce_one_point_either_way(gce, word):
    assert f"vs GCE: {word}" in read(cell(gce=gce))


def test_a_reading_needs_three_runs_and_pairs_only_the_runs_both_roles_have():
    assert read(cell(runs=2)) == "2 of 3 runs: no reading yet"
    records = cell()
    records = [r for r in records if not (r["role"] == "default_same_time" and r["run"] == 2)]
    records.append(record("default_same_time", 3, 0.0, 99.0))  # a run DALE does not have: not paired
    pair = noise_readings.pair(noise_readings.cells(records)[("isic2017", "mixed", 0.5)], "dale", "default_same_time")
    assert pair.runs == 2 and pair.dice_points == pytest.approx(1.0) and pair.hd95_change == pytest.approx(0.0)
    assert "helps at equal time" not in read(records)  # two paired runs: no reading of that pair


def test_the_goal_is_met_only_when_every_cell_has_its_runs_and_passes():
    clean = cell(dale=(0.50, 10.0), alpha=0.0)
    noisy = cell(dale=(0.52, 9.0))
    text = noise_readings.goal(noise_readings.cells(clean + noisy))
    assert text.startswith("Goal (issue 31): met.") and "helps at equal time in 1 of 1 noisy cells" in text
    waits = noise_readings.goal(noise_readings.cells(clean + noisy + cell(runs=1, kind="biased")))
    assert waits.startswith("Goal (issue 31): open.") and "1 of 3 cells wait" in waits
    missed = noise_readings.goal(noise_readings.cells(clean + cell(dale=(0.52, 9.0), same_time=(0.52, 8.0))))
    assert missed.startswith("Goal (issue 31): not met.") and "helps at equal time in 0 of 1 noisy cells" in missed


def test_the_results_page_and_the_readme_hold_what_the_data_give():
    assert noise_readings.differences(noise_study.load_records(noise_readings.DATA)) == []


def test_the_demo_verdict_ends_with_what_the_data_give():
    """nnunet_dale.demo cannot read the study's data (not shipped): its constant is checked against them here."""
    assert demo.NOISE_STUDY_READING == noise_readings.demo_reading(noise_study.load_records(noise_readings.DATA))
    planted = cell(dale=(0.52, 9.0)) + cell(dale=(0.50, 9.0), kind="biased") + cell(alpha=0.0)
    text = noise_readings.demo_reading(planted)
    assert "helped at equal time in 1 of 2 noisy cells (Dice +0.0 to +2.0 points" in text
    assert "in 0 of 1 noisy cells (Dice −1.0 points against" in noise_readings.demo_reading(cell(dale=(0.49, 9.0)))
