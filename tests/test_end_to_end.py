"""End to end through nnU-Net's real command lines with a short DALE variant (slow: about two minutes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import cli_env
from conftest import run_cli as run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return cli_env(tmp_path_factory.mktemp("e2e"))


def test_plan_train_predict_evaluate_resume(env):
    raw = Path(env["nnUNet_raw"])
    run("nnunet-dale", "make-benchmark", "--id", "991", "--train", "10", "--test", "3", "--size", "64", env=env)
    run("nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "2d", "-np", "1", "-npfp", "1", env=env)

    trained = run("nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerDALE_quick", "-device", "cpu", env=env)
    out = Path(env["nnUNet_results"]) / "Dataset991_DALEBench" / "nnUNetTrainerDALE_quick__nnUNetPlans__2d" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert math.isfinite(summary["foreground_mean"]["Dice"])
    log = next(out.glob("training_log_*.txt")).read_text()
    assert log.count("DALE fuzzy fraction") == 2  # one line of DALE statistics per epoch
    assert "Using trainer 'nnUNetTrainerDALE_quick'" in trained.stdout

    pred = raw.parent / "pred"
    dataset = raw / "Dataset991_DALEBench"
    predict = ["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(pred), "-d", "991", "-c", "2d"]
    run(*predict, "-f", "0", "-tr", "nnUNetTrainerDALE_quick", "-device", "cpu", "-npp", "1", "-nps", "1", env=env)
    assert len(list(pred.glob("*.png"))) == 3
    run("nnunet-dale", "evaluate", str(pred), str(dataset / "labelsTs"), "-o", str(raw.parent / "eval"), env=env)
    evaluated = json.loads((raw.parent / "eval" / "summary.json").read_text())
    assert len(evaluated["metric_per_case"]) == 3 and evaluated["mean"]["1"]["Dice"] is not None

    # resume: same configuration continues; a changed one is refused with a clear message
    run("nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerDALE_quick", "-device", "cpu", "--c", env=env)
    refused = run(
        "nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerDALE_quick", "-device", "cpu", "--c",
        env={**env, "NNUNET_DALE_TAU": "0.7"}, ok=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "different DALE configuration (changed: tau)" in refused.stdout + refused.stderr
