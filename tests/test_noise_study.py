"""benchmarks.noise_study without training: records from planted evaluation folders, the JSON merge that makes the
study resumable, the plan, the table and the figure from a planted JSON, and the noisy datasets it makes and reuses."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from benchmarks import noise_study
from benchmarks.noise_study import Cell, Level, PlannedRun
from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.demo import DemoError


def evaluation(folder: Path, dice: list[float], hd95: list[float]) -> Path:
    """A summary.json in evaluate_folders' layout (label 1), one case per value."""
    cases = []
    for i, (d, h) in enumerate(zip(dice, hd95)):
        metrics = {"Dice": d, "IoU": d / (2 - d), "HD95": h, "ASD": h, "Dice_fuzzy": d}
        cases.append({"prediction_file": f"p/c{i}.png", "reference_file": f"r/c{i}.png", "metrics": {"1": metrics}})
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": cases, "foreground_mean": {}, "mean": {}}))
    return folder


def record(dataset, kind, alpha, role, run, dice, hd95, wall_s=600.0, label_dice=0.8) -> dict:
    return {"dataset": dataset, "kind": kind, "alpha": alpha, "role": role, "trainer": noise_study.ROLES[role],
            "run": run, "dice": dice, "hd95": hd95, "wall_s": wall_s, "label_dice": label_dice}  # fmt: skip


def planted_records() -> list[dict]:
    """Three runs of default and DALE on isic2017 at alpha 0, 0.5 mixed, 0.5 biased; one GCE run; two benchmark runs."""
    records = []
    for level, base in ((Level("mixed", 0.0), 0.80), (Level("mixed", 0.5), 0.75), (Level("biased", 0.5), 0.70)):
        for run in range(3):
            records.append(record("isic2017", level.kind, level.alpha, "default", run, base + run / 100, 10.0 + run))
            records.append(record("isic2017", level.kind, level.alpha, "dale", run, base + 0.02 + run / 100, 9.0 + run))
    records.append(record("isic2017", "mixed", 0.5, "gce", 0, 0.74, 12.0))
    for noise, run in ((0.0, 0), (2.0, 0)):
        records.append(record("benchmark", "annotator", noise, "default", run, 0.6, float("nan")))
    return records


def test_a_record_holds_the_means_over_the_test_cases_of_a_planted_evaluation(tmp_path):
    folder = evaluation(tmp_path / "eval", [0.9, 0.7, 1.0], [4.0, 6.0, float("nan")])  # an empty case: no HD95
    run = PlannedRun(Cell("busi", Level("biased", 0.5)), "dale", 2)
    built = noise_study.run_record(run, folder, wall_s=754.25, label_dice=0.83)
    assert set(built) == set(noise_study.FIELDS)
    assert built["dice"] == pytest.approx(0.8667, abs=1e-4) and built["hd95"] == pytest.approx(5.0)
    assert (built["dataset"], built["kind"], built["alpha"], built["role"], built["run"]) == ("busi", "biased", 0.5,
                                                                                              "dale", 2)  # fmt: skip
    assert built["trainer"] == "nnUNetTrainerDALE_bench" and built["wall_s"] == 754.2 and built["label_dice"] == 0.83


def test_merging_replaces_a_rerun_keeps_the_rest_and_survives_a_round_trip(tmp_path):
    old = planted_records()
    rerun = record("isic2017", "mixed", 0.5, "dale", 1, 0.99, 1.0)
    new = record("busi", "mixed", 0.0, "default", 0, 0.7, 8.0)
    merged = noise_study.merge_records(old, [rerun, new])
    assert len(merged) == len(old) + 1
    assert [r for r in merged if noise_study.record_key(r) == noise_study.record_key(rerun)] == [rerun]
    assert [r["dataset"] for r in merged] == sorted([r["dataset"] for r in merged], key=noise_study.DATASETS.index)
    path = tmp_path / "data" / "noise_study.json"
    assert noise_study.load_records(path) == []  # a new study
    noise_study.save_records(path, merged)
    loaded = noise_study.load_records(path)
    assert len(loaded) == len(merged) and all(r["hd95"] is None for r in loaded if r["dataset"] == "benchmark")
    assert noise_study.merge_records(loaded, [rerun]) == loaded  # idempotent
    path.write_text('[{"dataset": "isic2017"}]')
    with pytest.raises(ValueError, match="fields"):
        noise_study.load_records(path)


def test_the_plan_runs_fold_by_fold_and_the_dry_run_marks_what_is_recorded(tmp_path, capsys):
    args = noise_study.parse_args(["--datasets", "isic2017", "benchmark", "--levels", "mixed0", "annotator2",
                                   "--roles", "default", "gce", "--folds", "0", "1"])  # fmt: skip
    runs = args.runs
    assert [(r.fold, r.cell.dataset, r.cell.level.name, r.role) for r in runs[:4]] == [
        (0, "isic2017", "mixed0", "default"), (0, "isic2017", "mixed0", "gce"),
        (0, "benchmark", "annotator2", "default"), (0, "benchmark", "annotator2", "gce"),
    ]  # fmt: skip
    assert len(runs) == 8 and {r.cell.dataset_id for r in runs} == {830, 852}
    full = noise_study.parse_args([])
    assert len(full.runs) == (4 + 4 + 3) * 4 * 3  # datasets x levels, roles, runs
    with pytest.raises(SystemExit):
        noise_study.parse_args(["--datasets", "benchmark", "--levels", "mixed0.5"])  # no such level there
    data = tmp_path / "noise_study.json"
    noise_study.save_records(data, planted_records())
    assert noise_study.main(["--dry-run", "--data", str(data), "--datasets", "benchmark", "--roles", "default"]) == 0
    out = capsys.readouterr().out
    assert "annotator0  (dataset 850) default" in out and "fold 0: recorded" in out
    assert "9 runs, 7 not recorded yet" in out


def test_table_and_figure_come_from_the_json_alone(tmp_path):
    data, figure, log = tmp_path / "data.json", tmp_path / "figures" / "noise-study.png", tmp_path / "study-log.md"
    noise_study.save_records(data, planted_records())
    log.write_text("# Study log\n\nkept\n")
    assert noise_study.main(["--report-only", "--data", str(data), "--figure", str(figure), "--log", str(log)]) == 0
    text = log.read_text()
    assert (
        text.startswith("# Study log\n\nkept\n") and "<!-- noise-study -->" in text and "<!-- /noise-study -->" in text
    )
    assert "![Dice and HD95 against the noise level, per role](figures/noise-study.png)" in text
    rows = {tuple(c.strip() for c in line.split("|")[1:5]): line.split("|") for line in text.splitlines()
            if line.startswith("| isic2017") or line.startswith("| benchmark")}  # fmt: skip
    dale = [c.strip() for c in rows[("isic2017", "mixed 0.5", "0.800", "dale")]]
    assert dale[6] == "0, 1, 2" and dale[7] == "0.780 ± 0.010" and dale[8] == "+2.0"  # 0.77 0.78 0.79 vs 0.75 ...
    assert dale[9] == "10.00 ± 1.00" and dale[10] == "-9 %" and dale[11] == "10.0"  # HD95 11 -> 10
    gce = [c.strip() for c in rows[("isic2017", "mixed 0.5", "0.800", "gce")]]
    assert gce[7] == "0.740" and gce[8] == "-1.0" and gce[10] == "+20 %"  # paired with default's run 0 only
    default = [c.strip() for c in rows[("isic2017", "mixed 0", "0.800", "default")]]
    assert default[8] == "—" and default[10] == "—"
    bench = [c.strip() for c in rows[("benchmark", "annotator 2", "0.800", "default")]]
    assert bench[9] == "—"  # no finite HD95
    image = plt.imread(figure)
    assert image.shape[0] == 640 and image.shape[1] == 840  # 2 rows x 2 datasets at 100 dpi: 8.4 x 6.4 in
    before = figure.read_bytes()
    figure.unlink()
    noise_study.write_report(data, figure, log)  # the same JSON gives the same figure and section
    assert figure.read_bytes() == before and log.read_text() == text


def test_the_noisy_datasets_are_made_once_and_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    source = make_benchmark(tmp_path / "src", 993, name="ISIC2017", num_train=6, num_test=2, noise=0.0)
    shutil.rmtree(source / "labelsTr_clean")
    monkeypatch.setattr(noise_study.NoiseStudy, "source", lambda self, dataset: source)
    monkeypatch.setattr(noise_study.RawDatasetDemo, "prepare", lambda self: None)  # no nnU-Net planning here
    args = argparse.Namespace(output=tmp_path / "study", noise_seed=0, benchmark_seed=0)
    cell = Cell("isic2017", Level("biased", 0.5))
    made = noise_study.NoiseStudy(args)._make_pipeline(cell)
    assert made.source == tmp_path / "study" / "isic2017" / "biased0.5" / "nnUNet_raw" / "Dataset832_ISIC2017_biased50"
    summary = json.loads((made.source / "dataset.json").read_text())["label_noise"]
    assert (summary["alpha"], summary["kind"], summary["seed"]) == (0.5, "biased", 0)
    assert noise_study.label_dice(made.source) == summary["mean_dice"]
    again = noise_study.NoiseStudy(args)._make_pipeline(cell)  # reused
    assert again.source == made.source
    with pytest.raises(DemoError, match="other label-noise settings"):
        noise_study.NoiseStudy(argparse.Namespace(**{**vars(args), "noise_seed": 1}))._make_pipeline(cell)
    bench = noise_study.NoiseStudy(args)._make_pipeline(Cell("benchmark", Level("annotator", 2.0)))
    assert (bench.s.noise, bench.s.dataset_id, bench.s.num_train) == (2.0, 852, 50)
