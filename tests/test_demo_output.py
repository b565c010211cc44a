"""What the demo shows a person (fast, no training): one line per stage, nnU-Net's output only in the step's log, the
end of the log when a step fails, the one-line verdict, and the figure's fuzzy map in the trainer's split patch."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from nnunet_dale.compare import compare
from nnunet_dale.compare.figure import _fuzzy_map
from nnunet_dale.demo import (
    NOISE_STUDY_READING,
    PREDICTION,
    RUN_NOISE_POINTS,
    SAME_TIME,
    TRAINING,
    Demo,
    DemoError,
    DemoSettings,
    Stage,
    verdict,
)

NNUNET_LIKE = """
import sys
print("There are 3 cases that I would like to predict")
for i in range(1000):
    print(f"2026-12-05 10:00:00.000000: nnU-Net chatter {i}")
    if i % 100 == 0:
        print(f"2026-12-05 10:00:00.000000: Epoch {i // 100}")
        print("2026-12-05 10:00:00.000000: Epoch time: 1.0 s")
sys.exit(int(sys.argv[1]))
"""


def test_a_step_is_one_line_and_its_output_goes_to_the_log(tmp_path, capsys):
    demo = Demo(tmp_path / "demo")
    demo.logs.mkdir(parents=True)
    demo._call("train_x", [sys.executable, "-c", NNUNET_LIKE, "0"], "3/6 training x (fold 0)", TRAINING)
    shown = capsys.readouterr().out.splitlines()
    assert shown == ["[nnunet-dale demo] 3/6 training x (fold 0)"]  # not a terminal: the stage line only
    log = (demo.logs / "train_x.log").read_text().splitlines()
    assert len(log) == 1021 and log[-1].endswith("nnU-Net chatter 999")


def test_a_failed_step_shows_the_end_of_its_log_and_names_it(tmp_path, capsys):
    demo = Demo(tmp_path / "demo")
    demo.logs.mkdir(parents=True)
    with pytest.raises(DemoError, match=r"step 'plan' failed \(exit code 3\); its whole output is in .*plan\.log"):
        demo._call("plan", [sys.executable, "-c", NNUNET_LIKE, "3"], "2/6 planning")
    shown = capsys.readouterr().out
    assert "2/6 planning failed; the last lines of" in shown and "plan.log" in shown
    assert "nnU-Net chatter 999" in shown and "nnU-Net chatter 979" not in shown  # the last 20 lines


def test_on_a_terminal_the_stage_is_a_progress_bar_of_epochs_or_cases():
    with Stage("training", replace(TRAINING, total=10), live=True) as stage:
        for line in ["a: Epoch 0", "a: Epoch time: 1 s", "a: Epoch 1", "a: Epoch time: 1 s", "noise"]:
            stage.read(line)
        assert (stage.bar.n, stage.bar.total) == (2, 10)
    with Stage("resumed", TRAINING, live=True) as stage:
        stage.read("2026-12-05 10:00:00.1: Epoch 7")
        stage.read("2026-12-05 10:00:00.1: Epoch time: 1 s")
        assert stage.bar.n == 8
    with Stage("predicting", PREDICTION, live=True) as stage:
        for line in ["There are 4 cases that I would like to predict", "", "Predicting case_1:", "done"]:
            stage.read(line)
        assert (stage.bar.n, stage.bar.total) == (1, 4)


MINE = """
from nnunet_dale.variants import nnUNetTrainerDALE_quick


class nnUNetTrainerDALE_mine(nnUNetTrainerDALE_quick):
    epochs = 7
"""


def test_a_training_stage_counts_the_epochs_of_trainers_nnunet_finds_on_the_demos_ext_trainer(tmp_path, monkeypatch):
    """The bar's total is the trainer's schedule for the package's classes and for those nnU-Net finds in the folders
    of the demo's nnUNet_extTrainer: the study's (benchmarks/trainers/) and a user's own; None for nnU-Net's own."""
    from benchmarks.trainers import add_study_trainers, study_trainers

    demo = Demo(tmp_path / "demo")
    demo.dataset = demo.raw / "Dataset990_DALEBench"
    add_study_trainers(demo.env)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_trainers.py").write_text(MINE)
    demo.env["nnUNet_extTrainer"] += os.pathsep + str(tmp_path / "mine")
    totals = {}
    monkeypatch.setattr(demo, "_call", lambda name, cmd, stage, progress: totals.update({cmd[5]: progress.total}))
    expected = {
        "nnUNetTrainerDALE_quick": 2,
        "nnUNetTrainer_demoSameTime": 62,  # 2.5 x the demo's 25 epochs: about DALE's wall time
        "nnUNetTrainer_quickSameTime": 5,
        "nnUNetTrainerDALE_bench": study_trainers.nnUNetTrainerDALE_bench.epochs,
        "nnUNetTrainer_benchShippedTime": study_trainers.nnUNetTrainer_benchShippedTime.epochs,
        "nnUNetTrainerDALE_mine": 7,
        "nnUNetTrainer": None,
        "nnUNetTrainerDALE_nowhere": None,
    }
    for trainer in expected:
        demo._train(trainer, 0)
    assert totals == expected
    assert isinstance(expected["nnUNetTrainerDALE_bench"], int) and isinstance(
        expected["nnUNetTrainer_benchShippedTime"], int
    )


def comparison(
    dice_default: float, dice_dale: float, hd95_change: float, p: float, same_time: tuple[float, float] | None = None
) -> dict:
    """A comparison's numbers as the verdict reads them; DALE's mean HD95 is 10. `same_time`: (Dice, HD95) means of a
    third method, default nnU-Net given DALE's time."""
    means = [("nnU-Net", dice_default, 10 / (1 + hd95_change)), ("DALE", dice_dale, 10.0)]
    if same_time is not None:
        means.append((SAME_TIME, *same_time))
    stats = {m: {"Dice": {"mean": d}, "HD95": {"mean": h}} for m, d, h in means}
    tests = {m: {"HD95": {"rel_change": hd95_change if m == "DALE" else 0.0, "p_cases": p}} for m in list(stats)[1:]}
    return {"labels": ["1"], "cases": [f"c{i}" for i in range(20)], "stats": {"1": stats}, "comparisons": {"1": tests}}


def test_the_verdict_is_computed_from_the_numbers_with_its_thresholds():
    level = verdict(comparison(0.707, 0.708, 0.11, 0.40))
    assert level.startswith("DALE vs default nnU-Net: Dice +0.1 points, HD95 +11 % (not significant, p = 0.40 over")
    assert f"within run noise (±{RUN_NOISE_POINTS} Dice points)" in level
    worse = verdict(comparison(0.731, 0.702, 0.24, 0.04))
    assert "Dice -2.9 points" in worse and "HD95 +24 % (significant, p = 0.04" in worse
    assert "DALE behind by more than run noise (1.5 Dice points) in this one run" in worse
    assert "DALE ahead by more than run noise" in verdict(comparison(0.70, 0.72, -0.05, 0.5))


def test_with_two_trainers_the_verdict_is_the_two_trainer_line():
    """A demo without the same-time trainer (DemoSettings.same_time None): the line as before, minutes or not."""
    line = (
        "DALE vs default nnU-Net: Dice +0.1 points, HD95 +11 % (not significant, p = 0.40 over the 20 test cases) — "
        f"within run noise (±{RUN_NOISE_POINTS} Dice points); one run cannot rank the trainers (docs/results.md)."
    )
    assert verdict(comparison(0.707, 0.708, 0.11, 0.40)) == line
    assert verdict(comparison(0.707, 0.708, 0.11, 0.40), minutes={"nnU-Net": 1.0, "DALE": 2.5}) == line
    assert NOISE_STUDY_READING not in line


def test_with_three_trainers_the_verdict_adds_dale_against_default_given_its_time():
    """DALE against default at the same epochs (as with two), then against default given DALE's time (Dice points,
    HD95 change of the means), the training minutes, and the label-noise study's reading, on one line."""
    minutes = {"nnU-Net": 1.04, "DALE": 2.61, SAME_TIME: 2.47}
    behind = verdict(comparison(0.707, 0.708, 0.11, 0.40, same_time=(0.718, 8.0)), minutes=minutes)
    assert behind == (
        "DALE vs default nnU-Net: Dice +0.1 points, HD95 +11 % (not significant, p = 0.40 over the 20 test cases) — "
        f"within run noise (±{RUN_NOISE_POINTS} Dice points); vs default nnU-Net given DALE's time: Dice -1.0 points "
        "(DALE behind, within run noise), HD95 +25 %; training 1.0 / 2.6 / 2.5 min (nnU-Net / DALE / nnU-Net, DALE's "
        f"time); one run cannot rank the trainers (docs/results.md) — {NOISE_STUDY_READING}."
    )
    assert "\n" not in behind
    ahead = verdict(comparison(0.731, 0.702, 0.24, 0.04, same_time=(0.674, 12.0)))
    assert "DALE behind by more than run noise (1.5 Dice points) in this one run" in ahead  # at the same epochs
    assert "given DALE's time: Dice +2.8 points (DALE ahead by more than run noise), HD95 -17 %; one run" in ahead
    assert "training" not in ahead  # no minutes given
    level = verdict(comparison(0.70, 0.70, 0.0, 0.9, same_time=(0.7001, float("nan"))), minutes={"DALE": 2.0})
    assert "given DALE's time: Dice -0.0 points (DALE level, within run noise); training 2.0 min (DALE); " in level
    assert level.endswith(f"one run cannot rank the trainers (docs/results.md) — {NOISE_STUDY_READING}.")


def test_the_demo_trains_default_dale_and_default_given_dales_time_unless_same_time_is_none(tmp_path, monkeypatch):
    """`run_folds` trains the settings' trainers, fold by fold, the baseline first (the comparison's baseline); with
    `same_time` None only the baseline and DALE, as the studies that name their own pair ask for."""
    trained = []

    def record(trainer: str, fold: int) -> str:
        trained.append((trainer, fold))
        return f"{trainer}{fold}"

    for settings, methods in [
        (DemoSettings(), {"nnU-Net": "nnUNetTrainer_demo", "DALE": "nnUNetTrainerDALE_demo",
                          SAME_TIME: "nnUNetTrainer_demoSameTime"}),
        (DemoSettings(baseline="A", dale="B", same_time=None), {"nnU-Net": "A", "DALE": "B"}),
    ]:  # fmt: skip
        demo = Demo(tmp_path / "demo", settings)
        monkeypatch.setattr(demo, "train_predict_evaluate", record)
        assert demo.methods == methods and demo.trainers == tuple(methods.values())
        trained.clear()
        runs = demo.run_folds([0, 1])
        assert list(runs) == list(methods) and trained == [(tr, f) for f in (0, 1) for tr in methods.values()]
        assert runs == {m: [f"{tr}0", f"{tr}1"] for m, tr in methods.items()}


def test_the_quick_demo_trains_the_quick_same_time_trainer(monkeypatch):
    from nnunet_dale import cli

    ran = []
    monkeypatch.setattr("nnunet_dale.demo.run_demo", lambda out, settings: ran.append(settings))
    assert cli.main(["demo", "--quick", "-o", "x"]) == 0 and cli.main(["demo", "-o", "x"]) == 0
    assert [(s.baseline, s.dale, s.same_time) for s in ran] == [
        ("nnUNetTrainer_quick", "nnUNetTrainerDALE_quick", "nnUNetTrainer_quickSameTime"),
        ("nnUNetTrainer_demo", "nnUNetTrainerDALE_demo", "nnUNetTrainer_demoSameTime"),
    ]


def test_the_training_minutes_come_from_the_checkpoints_log(tmp_path):
    """Each method's measured training time (first epoch start to last epoch end, as the studies measure it); a
    method without a readable checkpoint is left out."""
    import torch

    demo = Demo(tmp_path / "demo")
    demo.dataset = demo.raw / "Dataset990_DALEBench"
    for trainer, seconds in (("nnUNetTrainer_demo", 60.0), ("nnUNetTrainerDALE_demo", 150.0)):
        folder = demo._result_folder(trainer, 0)
        folder.mkdir(parents=True)
        log = {"epoch_start_timestamps": [1000.0, 1000.0 + seconds / 2], "epoch_end_timestamps": [0.0, 1000 + seconds]}
        torch.save({"logging": log}, folder / "checkpoint_final.pth")
    assert demo.training_minutes(0) == {"nnU-Net": pytest.approx(1.0), "DALE": pytest.approx(2.5)}


def test_the_figure_shows_the_split_patch_it_used():
    rng = np.random.default_rng(0)
    ref = np.zeros((64, 64), np.uint8)
    ref[20:40, 24:44] = 1
    image = 100 * ref + rng.normal(0, 20, ref.shape)
    trainer, title = _fuzzy_map(ref, image, (1.0, 1.0), None, split_patch=(4, 4))
    evaluation, default_title = _fuzzy_map(ref, image, (1.0, 1.0), None)
    assert title == "AE&ER fuzziness m\n4×4 px, the trainer's split"
    assert default_title == "AE&ER fuzziness m\n16×16 px, evaluation patches"
    assert trainer.shape == evaluation.shape == ref.shape and not np.allclose(trainer, evaluation)
    # m is constant on each split patch: 4 x 4 blocks here, 16 x 16 in the evaluation's map
    assert all(np.ptp(trainer[i : i + 4, j : j + 4]) == 0 for i in range(0, 64, 4) for j in range(0, 64, 4))
    assert np.ptp(evaluation[16:32, 16:32]) == 0


def test_compare_passes_the_split_patch_to_the_figure(tmp_path):
    refs, images = tmp_path / "labelsTs", tmp_path / "imagesTs"
    refs.mkdir()
    images.mkdir()
    runs = {}
    for method in ("nnU-Net", "DALE"):
        folder = tmp_path / method
        folder.mkdir()
        records = []
        for i in range(3):
            ref = np.zeros((32, 32), np.uint8)
            ref[8 + i : 20, 8:20] = 1
            Image.fromarray(ref).save(refs / f"c{i}.png")
            Image.fromarray((60 + 120 * ref).astype(np.uint8)).save(images / f"c{i}_0000.png")
            Image.fromarray(ref).save(folder / f"c{i}.png")
            metrics = {"Dice": 0.8 + 0.01 * i + (0.02 if method == "DALE" else 0), "HD95": 2.0 + i}
            records.append({"prediction_file": str(folder / f"c{i}.png"), "reference_file": str(refs / f"c{i}.png"),
                            "metrics": {"1": metrics}})  # fmt: skip
        (folder / "summary.json").write_text(json.dumps({"metric_per_case": records}))
        runs[method] = [folder]
    result = compare(
        runs, tmp_path / "out", images_dir=images, num_examples=1, metrics=("Dice", "HD95"), split_patch=[2, 2]
    )
    assert result["figure"]["split_patch"] == [2, 2] and "fuzzy map" in result["figure"]["columns"]
    assert (
        compare(runs, tmp_path / "out2", images_dir=images, metrics=("Dice", "HD95"))["figure"]["split_patch"] is None
    )
