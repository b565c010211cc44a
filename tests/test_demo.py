"""The demo's pipeline end to end at a tiny size (slow), and its reuse of finished steps."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_dale.demo import NOISE_STUDY_READING, Demo, DemoError, DemoSettings

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end_and_rerun_reuses_steps(quick_demo):
    """The session's `nnunet-dale demo --quick` (conftest.quick_demo, whose trainings the other slow tests share)."""
    first, out, cmd, env = quick_demo.first, quick_demo.out, quick_demo.cmd, quick_demo.env
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    comparison = json.loads((out / "comparison" / "comparison.json").read_text())
    assert (out / "comparison" / "comparison.png").stat().st_size > 10_000
    for name in ("nnUNetTrainer_quick_fold0", "nnUNetTrainerDALE_quick_fold0", "nnUNetTrainer_quickSameTime_fold0"):
        summary = json.loads((out / "evaluation" / name / "summary.json").read_text())
        assert len(summary["metric_per_case"]) == 4  # the test cases, evaluated against the clean labels
        assert math.isfinite(summary["mean"]["1"]["Dice"])
    assert "| Dice" in first.stdout and f"Everything is in {out}" in first.stdout
    # a person's screen: one line per stage (12: data, planning, 3 per trainer, comparison), the table (two sections
    # against the baseline: 28 lines), the figure, a verdict and the last line (43 in all); nnU-Net's output only in
    # the logs
    assert "Epoch 0" not in first.stdout and len(first.stdout.splitlines()) < 50, first.stdout
    assert f"Figure: {out / 'comparison' / 'comparison.png'}" in first.stdout
    verdict = next(line for line in first.stdout.splitlines() if line.startswith("Verdict: "))
    assert verdict.startswith("Verdict: DALE vs default nnU-Net: Dice ") and "1.5 Dice points" in verdict
    assert "vs default nnU-Net given DALE's time: Dice " in verdict and verdict.endswith(f" — {NOISE_STUDY_READING}.")
    assert " min (nnU-Net / DALE / nnU-Net, DALE's time); one run cannot rank the trainers" in verdict
    assert "Epoch 0" in (out / "logs" / "train_nnUNetTrainerDALE_quick_fold0.log").read_text()
    assert list(comparison["methods"]) == ["nnU-Net", "DALE", "nnU-Net, DALE's time"]  # the baseline first
    assert comparison["baseline"] == "nnU-Net"
    assert "Epoch 4" in (out / "logs" / "train_nnUNetTrainer_quickSameTime_fold0.log").read_text()  # 5 epochs
    # the figure's ω column: DALE's maps of exactly the example cases, in the reference labels' geometry
    assert comparison["figure"]["columns"][-1] == "ω" and not comparison["figure"]["notes"]
    assert comparison["figure"]["split_patch"] == [4, 4]  # the trainer's split: the 64 px network patch / 16
    maps = {f.stem: np.load(f) for f in (out / "omega" / "nnUNetTrainerDALE_quick_fold0").glob("*.npy")}
    assert sorted(maps) == sorted(comparison["figure"]["examples"])
    for case, omega in maps.items():
        label = np.asarray(Image.open(out / "nnUNet_raw" / "Dataset990_DALEBench" / "labelsTs" / f"{case}.png"))
        assert omega.shape[-2:] == label.shape and 0.9 - 1e-6 <= omega.min() <= omega.max() <= 1.1 + 1e-6

    # more test cases of the same seed: the standard ones first, byte for byte, and predicted alike by the same model
    demo = Demo(out, DemoSettings(num_train=10, num_test=4, baseline="nnUNetTrainer_quick"))
    demo.dataset = out / "nnUNet_raw" / "Dataset990_DALEBench"
    more = demo.more_test_cases_evaluate("nnUNetTrainer_quick", 0, 6)
    standard = json.loads((out / "evaluation" / "nnUNetTrainer_quick_fold0" / "summary.json").read_text())
    extended = json.loads((more / "summary.json").read_text())
    assert len(extended["metric_per_case"]) == 6
    by_case = {Path(c["reference_file"]).name: c["metrics"]["1"] for c in extended["metric_per_case"]}
    more_images = out / "more_test_cases" / "test6" / "Dataset990_DALEBench" / "imagesTs"
    for case in standard["metric_per_case"]:
        name = Path(case["reference_file"]).name
        image = f"{name.removesuffix('.png')}_0000.png"
        assert (demo.dataset / "imagesTs" / image).read_bytes() == (more_images / image).read_bytes()
        assert by_case[name]["Dice"] == pytest.approx(case["metrics"]["1"]["Dice"], abs=1e-6)
    with pytest.raises(DemoError, match="more than the 4"):
        demo.more_test_cases_evaluate("nnUNetTrainer_quick", 0, 4)
    with pytest.raises(DemoError, match="no finished training"):
        demo.more_test_cases_evaluate("nnUNetTrainer_quick", 3, 6)

    written = {f: f.stat().st_mtime_ns for f in (out / "omega").rglob("*.npy")}
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.stdout.count("reusing") >= 7  # planning, the three trainings and the three predictions
    assert {f: f.stat().st_mtime_ns for f in (out / "omega").rglob("*.npy")} == written  # the maps are reused too
    assert "Epoch 0" not in second.stdout
