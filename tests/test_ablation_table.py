"""benchmarks.ablation's table row against numbers worked out by hand from two tiny evaluation folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import ablation
from nnunet_dale.compare import compare


def evaluation(folder: Path, dice: list[float], hd95: list[float]) -> Path:
    """A summary.json in evaluate_folders' layout with two cases and the five study metrics."""
    cases = []
    for i, (d, h) in enumerate(zip(dice, hd95)):
        metrics = {"Dice": d, "IoU": d / (2 - d), "HD95": h, "ASD": h / 2, "Dice_fuzzy": d}
        cases.append(
            {"prediction_file": f"p/case{i}.png", "reference_file": f"r/case{i}.png", "metrics": {"1": metrics}}
        )
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": cases, "foreground_mean": {}, "mean": {}}))
    return folder


def test_row_reports_means_over_runs_the_change_in_points_and_significant_losses(tmp_path):
    base = [evaluation(tmp_path / f"b{k}", [0.80 + k / 100, 0.70 + k / 100], [4.0, 6.0]) for k in range(3)]
    # the variant: +2 Dice points in every run on both cases, HD95 worse by 1 px in every run
    ours = [evaluation(tmp_path / f"v{k}", [0.82 + k / 100, 0.72 + k / 100], [5.0 + k / 10, 7.0]) for k in range(3)]
    comparison = compare({"base": base, "ours": ours}, tmp_path / "cmp", num_examples=0)
    row = ablation.table_row("ours", [0, 1, 2], comparison, [10.0, 12.0, 11.0], "base").split(" | ")
    assert row[2] == "0.780 ± 0.010"  # run means 0.77, 0.78, 0.79 (baseline 0.75, 0.76, 0.77)
    assert row[7] == "+2.0"
    assert row[9] == "+21 %"  # HD95 mean 5.0 -> 6.05
    assert "HD95" in row[10] and "Dice" not in row[10]  # worse in HD95 (p over runs < 0.05), better in Dice
    assert row[11].rstrip(" |") == "11.0"  # median minutes
    baseline_row = ablation.table_row("base", [0, 1, 2], comparison, [3.0, 3.0, 3.0], "base").split(" | ")
    assert baseline_row[2] == "0.760 ± 0.010" and baseline_row[7] == "—"
    with pytest.raises(SystemExit):
        ablation.parse_args(["--trainers", "nnUNetTrainer_bench"])  # a baseline alone is no study


def test_more_test_cases_get_their_own_section_and_only_on_the_benchmark():
    args = ablation.parse_args(["--dataset", "benchmark", "--seed", "4", "--trainers", "a", "b", "--test-cases", "200"])
    assert args.key == "ablation-benchmark-seed4-test200"
    for bad in (["--test-cases", "20"], ["--test-cases", "200", "--postprocessed"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(["--dataset", "benchmark", "--trainers", "a", "b", *bad])
    with pytest.raises(SystemExit):  # a real dataset's hold-out is fixed
        ablation.parse_args(["--dataset", "isic2017", "--trainers", "a", "b", "--test-cases", "200"])


def test_size_shift_options_get_their_own_sections():
    args = ablation.parse_args(
        ["--dataset", "benchmark", "--seed", "4", "--trainers", "a", "b", "--test-cases", "200",
         "--test-lesion-scale", "2"]
    )  # fmt: skip
    assert args.key == "ablation-benchmark-seed4-test200-scale2"
    args = ablation.parse_args(["--dataset", "isic2017", "--hold-out-by", "largest", "--trainers", "a", "b"])
    assert args.key == "ablation-isic2017-64px-seed0-largest"
    for bad in (
        ["--dataset", "isic2017", "--test-lesion-scale", "2"],
        ["--dataset", "benchmark", "--hold-out-by", "largest"],
        ["--dataset", "benchmark", "--test-lesion-scale", "2", "--postprocessed"],
    ):
        with pytest.raises(SystemExit):
            ablation.parse_args([*bad, "--trainers", "a", "b"])


def test_a_section_written_by_another_study_is_not_overwritten(tmp_path):
    from benchmarks.report import write_section

    results, data = tmp_path / "log.md", tmp_path / "data"
    argv = ["--dataset", "benchmark", "--seed", "4", "--trainers", "a", "b", "--results", str(results)]
    args = ablation.parse_args([*argv, "--data", str(data), "-o", str(tmp_path / "work")])
    ablation.check_section_is_this_studys(args)  # no section yet
    write_section(results, args.key, "an earlier study's table")
    with pytest.raises(SystemExit, match="--tag"):  # a section without a data file: an earlier study's
        ablation.check_section_is_this_studys(args)
    data.mkdir()
    (data / f"{args.key}.json").write_text(json.dumps({"output": "work"}))
    ablation.check_section_is_this_studys(args)  # this study's own section: a resumed run rewrites it
    (data / f"{args.key}.json").write_text(json.dumps({"output": "elsewhere"}))
    with pytest.raises(SystemExit, match="from elsewhere"):
        ablation.check_section_is_this_studys(args)
    tagged = ablation.parse_args([*argv, "--data", str(data), "--tag", "new"])
    ablation.check_section_is_this_studys(tagged)
