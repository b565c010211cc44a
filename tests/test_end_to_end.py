"""End to end through nnU-Net's real command lines with a short DALE variant (slow).

The planning, training (nnUNetv2_train -tr nnUNetTrainerDALE_quick) and prediction (nnUNetv2_predict) are the session's
quick demo's (conftest.quick_demo: the same commands, run once for all slow tests); checked here are their results,
`nnunet-dale make-benchmark` and `nnunet-dale evaluate` as commands, and resuming that training with `--c` (on a copy).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import cli_env, tree_state
from conftest import run_cli as run

pytestmark = pytest.mark.slow
TRAINER = "nnUNetTrainerDALE_quick"


def test_make_benchmark_command_writes_the_dataset_the_demo_trained_on(quick_demo, tmp_path):
    env = cli_env(tmp_path)
    run("nnunet-dale", "make-benchmark", "--id", "990", "--train", "10", "--test", "4", "--size", "64", env=env)
    written = Path(env["nnUNet_raw"]) / quick_demo.dataset
    demo = Path(quick_demo.folders["nnUNet_raw"]) / quick_demo.dataset
    files = sorted(f.relative_to(demo) for f in demo.rglob("*") if f.is_file())
    assert sorted(f.relative_to(written) for f in written.rglob("*") if f.is_file()) == files
    assert len([f for f in files if f.parts[0] == "imagesTr"]) == 10 and (demo / "labelsTs").is_dir()
    assert all((written / f).read_bytes() == (demo / f).read_bytes() for f in files)


def test_plan_train_predict_evaluate_resume(quick_demo, tmp_path):
    folders = quick_demo.folders
    raw, results = Path(folders["nnUNet_raw"]), Path(folders["nnUNet_results"])
    dataset = raw / quick_demo.dataset
    assert (Path(folders["nnUNet_preprocessed"]) / quick_demo.dataset / "nnUNetPlans_2d").is_dir()

    trained = (quick_demo.out / "logs" / f"train_{TRAINER}_fold0.log").read_text()  # nnUNetv2_train's output
    out = quick_demo.model(TRAINER) / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert math.isfinite(summary["foreground_mean"]["Dice"])
    log = next(out.glob("training_log_*.txt")).read_text()
    assert log.count("DALE fuzzy fraction") == 2  # one line of DALE statistics per epoch
    assert f"Using trainer '{TRAINER}'" in trained

    pred = quick_demo.out / "predictions" / f"{TRAINER}_fold0"  # nnUNetv2_predict -f 0 -tr nnUNetTrainerDALE_quick
    assert len(list(pred.glob("*.png"))) == 4
    env = cli_env(tmp_path)
    run("nnunet-dale", "evaluate", str(pred), str(dataset / "labelsTs"), "-o", str(tmp_path / "eval"), env=env)
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(evaluated["metric_per_case"]) == 4 and evaluated["mean"]["1"]["Dice"] is not None

    # resume: same configuration continues; a changed one is refused with a clear message. On a copy of the training
    # (the demo's data and plans are only read: nothing in its folders changes)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=folders["nnUNet_preprocessed"])
    copy = Path(env["nnUNet_results"]) / quick_demo.dataset / quick_demo.model(TRAINER).name
    shutil.copytree(quick_demo.model(TRAINER), copy)
    before = tree_state(quick_demo.out / "nnUNet_preprocessed"), tree_state(results)
    run("nnUNetv2_train", "990", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c", env=env)
    refused = run(
        "nnUNetv2_train", "990", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
        env={**env, "NNUNET_DALE_TAU": "0.7"}, ok=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "different DALE configuration (changed: tau)" in refused.stdout + refused.stderr
    assert (copy / "fold_0" / "validation" / "summary.json").stat().st_mtime_ns > (
        out / "validation" / "summary.json"
    ).stat().st_mtime_ns  # the continued run ran (its final validation), in the copy
    assert (tree_state(quick_demo.out / "nnUNet_preprocessed"), tree_state(results)) == before
