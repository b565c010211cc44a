"""End to end through nnU-Net's real command lines with a short DALE variant (slow: about two minutes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(*cmd: str, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if ok and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NNUNET_DALE_")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        environ[name] = str(root / name)
    trainers = run("nnunet-dale", "trainers-path", env=environ).stdout.strip()
    environ.update(nnUNet_extTrainer=trainers, nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", nnUNet_compile="false")
    return environ


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
