"""Bad inputs a user or a hostile tester can give (issue 33): each is refused in one line that names the input and
what it accepts, or falls back as documented, before any work or write. The expected ranges and messages are
written out here, not taken from the code."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from nnunet_dale.config import SHIPPED, DALEConfig, DALEConfigError, load_config, resolve_patch_size
from nnunet_dale.trainer import nnUNetTrainerDALE

from conftest import build


def _refusal(environ: dict[str, str], defaults=SHIPPED) -> str:
    with pytest.raises(DALEConfigError) as error:
        load_config(defaults, environ=environ)
    message = str(error.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------- hyper-parameter bounds
@pytest.mark.parametrize(
    "variable,value,accepted",
    [
        ("LOOKAHEAD_STEPS", "1" + "0" * 30, "an integer in 1..10"),
        ("ENTROPY_BINS", str(10**12), "an integer in 2..1024"),
        ("ALPHA", "1e300", "a number in [0, 10]"),
        ("OMEGA_LR", "5", "a number in (0, 1]"),
        ("SPLIT_PATCHES", "100000", "an integer in 0..64"),
        ("COV_PERTURBATION", "1e9", "a number in [0, 1]"),
        ("RIDGE", "1e9", "a number in (0, 1]"),
        ("CLEAN_THRESHOLD", "2", "a number in [0, 1)"),
        ("PATCH_SIZE", "1,1", "integers >= 1, one of them >= 2"),
    ],
)
def test_values_beyond_the_bounds_are_refused_with_the_accepted_range(variable, value, accepted):
    message = _refusal({f"NNUNET_DALE_{variable}": value})
    assert f"{variable.lower()} must be {accepted}" in message


@pytest.mark.parametrize(
    "variable,value,field,expected",
    [
        ("LOOKAHEAD_STEPS", "10", "lookahead_steps", 10),
        ("ENTROPY_BINS", "1024", "entropy_bins", 1024),
        ("ALPHA", "10", "alpha", 10.0),
        ("OMEGA_LR", "1", "omega_lr", 1.0),
        ("SPLIT_PATCHES", "64", "split_patches", 64),
        ("PATCH_SIZE", "1,2", "patch_size", (1, 2)),
    ],
)
def test_the_bounds_themselves_are_accepted(variable, value, field, expected):
    assert getattr(load_config(SHIPPED, environ={f"NNUNET_DALE_{variable}": value}), field) == expected


def test_split_patches_that_leave_one_voxel_per_patch_are_refused_for_the_plan():
    """64 patches per side of a 64 x 64 network patch are 1 x 1 voxels (entropy always 0): refused, naming 1..63;
    63 gives 2 x 2. A thin 3D network patch with the shipped 16 per side keeps working (1 x 10 x 10)."""
    with pytest.raises(DALEConfigError, match=r"split_patches=64 .* 1-voxel split patches.*use 1\.\.63 for this plan"):
        resolve_patch_size(DALEConfig(split_patches=64), (64, 64), (1.0, 1.0))
    assert resolve_patch_size(DALEConfig(split_patches=63), (64, 64), (1.0, 1.0)) == (2, 2)
    assert resolve_patch_size(DALEConfig(split_patches=16), (8, 160, 160), (3.0, 1.0, 1.0)) == (1, 10, 10)


# ------------------------------------------------------------------------------------------- empty and huge values
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_variable_is_refused_instead_of_switching_the_split(value):
    """An empty NNUNET_DALE_PATCH_SIZE used to mean "no patch size" and set split_patches to 0 (16 x 16 patches
    instead of the shipped 4 x 4) without a word; an empty variable of any field is now refused."""
    assert "NNUNET_DALE_PATCH_SIZE is set but empty" in _refusal({"NNUNET_DALE_PATCH_SIZE": value})
    assert "NNUNET_DALE_TAU is set but empty" in _refusal({"NNUNET_DALE_TAU": value})
    cfg = load_config(SHIPPED, environ={"NNUNET_DALE_PATCH_SIZE": "none"})  # the explicit way stays
    assert cfg.patch_size is None and cfg.split_patches == 0


def _config_file(tmp_path: Path, content: bytes) -> dict[str, str]:
    path = tmp_path / "dale.json"
    path.write_bytes(content)
    return {"NNUNET_DALE_CONFIG": str(path)}


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    environ = _config_file(tmp_path, b'{"tau": 0.8, "name": "caf\xe9"}')
    message = _refusal(environ)
    assert message.startswith(f"NNUNET_DALE_CONFIG={tmp_path / 'dale.json'}: not UTF-8 text")


def test_a_json_integer_of_5000_digits_is_a_config_error(tmp_path):
    message = _refusal(_config_file(tmp_path, b'{"lookahead_steps": ' + b"9" * 5000 + b"}"))
    assert str(tmp_path / "dale.json") in message and "integer too long" in message and len(message) < 300


@pytest.mark.parametrize(
    "environ",
    [
        {"NNUNET_DALE_LOOKAHEAD_STEPS": "9" * 4000},  # read, then out of range
        {"NNUNET_DALE_LOOKAHEAD_STEPS": "9" * 5000},  # beyond what Python reads as an integer
        {"NNUNET_DALE_ALPHA": "9" * 5000},
        {"NNUNET_DALE_FEATURE_SITE": "x" * 5000},
    ],
)
def test_a_huge_value_is_not_echoed_back_in_full(environ):
    message = _refusal(environ)
    assert len(message) < 300 and "characters)" in message


def test_a_huge_json_key_or_value_is_not_echoed_back_in_full(tmp_path):
    message = _refusal(_config_file(tmp_path, json.dumps({"k" * 5000: 1}).encode()))
    assert message.startswith("unknown DALE hyper-parameter 'kkk") and "(5002 characters)" in message
    assert "k" * 100 not in message
    assert len(_refusal(_config_file(tmp_path, b'{"lookahead_steps": ' + b"9" * 4000 + b"}"))) < 300


def test_a_python_integer_too_long_to_print_is_described_not_printed():
    with pytest.raises(DALEConfigError, match=r"lookahead_steps=an integer of about 5001 digits$"):
        DALEConfig(lookahead_steps=10**5000)


# ------------------------------------------------------------------------------------------- the trainer's refusals
def _logs(trainer_folder: Path) -> set[Path]:
    return set(trainer_folder.glob("fold_*/training_log_*.txt"))


def _next_second() -> None:
    """Wait for the next wall-clock second: nnU-Net names its log file by the second it starts."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_a_split_patch_the_plan_cannot_hold_is_refused_before_nnunet_writes_anything(dataset_2d, nnunet_dirs):
    folder = nnunet_dirs["nnUNet_results"] / "Dataset990_DALEBench" / "nnUNetTrainerDALE__nnUNetPlans__2d"
    before = _logs(folder)
    _next_second()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NNUNET_DALE_SPLIT_PATCHES", "64")  # the network patch is 64 x 64
        with pytest.raises(DALEConfigError, match=r"use 1\.\.63 for this plan"):
            build(nnUNetTrainerDALE, dataset_2d, initialize=False)
    assert _logs(folder) == before


def test_a_refused_start_leaves_no_log_file_in_the_protected_fold(dataset_2d, monkeypatch):
    """The fresh start under other settings and the resume under other settings are refused; the training_log_*.txt
    nnU-Net began for them is removed again. A log that was there before (same second, same name) is kept."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)  # only DALE's check runs here
    first = build(nnUNetTrainerDALE, dataset_2d)
    fold = Path(first.output_folder)
    checkpoint = fold / "checkpoint_latest.pth"
    first.save_checkpoint(str(checkpoint))
    before = set(fold.glob("training_log_*.txt"))
    assert Path(first.log_file) in before
    monkeypatch.setenv("NNUNET_DALE_TAU", "0.8")
    _next_second()
    refused = build(nnUNetTrainerDALE, dataset_2d)
    assert Path(refused.log_file) not in before  # a new log file: the one to remove
    with pytest.raises(DALEConfigError, match="a fresh start would overwrite it"):
        refused.on_train_start()
    assert set(fold.glob("training_log_*.txt")) == before
    _next_second()
    resumed = build(nnUNetTrainerDALE, dataset_2d)
    with pytest.raises(DALEConfigError, match="written under a different DALE configuration"):
        resumed.load_checkpoint(str(checkpoint))
    assert set(fold.glob("training_log_*.txt")) == before
    other_log = build(nnUNetTrainerDALE, dataset_2d)  # started in the same second as `first`: shares its log
    other_log.log_file = first.log_file
    other_log._log_is_new = None
    other_log.print_to_log_file("appended to an older log")
    with pytest.raises(DALEConfigError):
        other_log.on_train_start()
    assert Path(first.log_file).is_file()
    torch.load(checkpoint, weights_only=False)  # the protected checkpoint is untouched and readable


# ------------------------------------------------------------------------------------------- the command line
def _fails(capsys, argv: list[str], *parts: str) -> str:
    """`nnunet-dale ARGV` exits with 2 and one line of error holding every part, and no raw [Errno ...]."""
    from nnunet_dale.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[Errno" not in err, err
    for part in parts:
        assert part in err, err
    return err


def _png(path: Path, array) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def png_pair(tmp_path) -> tuple[Path, Path]:
    """A prediction and a reference folder with one 16 x 16 case each."""
    import numpy as np

    label = np.zeros((16, 16), np.uint8)
    label[4:10, 4:10] = 1
    _png(tmp_path / "pred" / "case.png", label)
    _png(tmp_path / "ref" / "case.png", label)
    return tmp_path / "pred", tmp_path / "ref"


@pytest.mark.parametrize("processes", ["0", "-3"])
def test_evaluate_refuses_a_process_count_below_one(png_pair, tmp_path, capsys, processes):
    pred, ref = png_pair
    out = tmp_path / "out"
    _fails(capsys, ["evaluate", str(pred), str(ref), "-o", str(out), "-np", processes], "(-np)", ">= 1", processes)
    assert not out.exists()


def test_evaluate_names_a_file_given_for_a_folder(png_pair, tmp_path, capsys):
    pred, ref = png_pair
    out = tmp_path / "out"
    case = pred / "case.png"
    _fails(
        capsys, ["evaluate", str(case), str(ref), "-o", str(out)], f"prediction folder {case} is a file, not a folder"
    )
    _fails(capsys, ["evaluate", str(pred), str(ref), "-o", str(case / "out")], f"{case} is a file, not a folder")
    assert not out.exists()


def _summary(folder: Path, per_case: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": per_case}))
    return folder


def _case(name: str, dice) -> dict:
    return {"reference_file": f"/ref/{name}.png", "metrics": {"1": {"Dice": dice, "IoU": 0.5}}}


@pytest.mark.parametrize(
    "per_case,message",
    [
        ([_case("a", 0.8), 3], "metric_per_case[1] is 3, not an object"),
        ([_case("a", 0.8), _case("b", "abc")], "metric_per_case[1] label 1 Dice is 'abc': expected a number or null"),
        ([{"reference_file": "a.png", "metrics": {"1": 0.8}}], "metric_per_case[0] label 1: 0.8 is not an object"),
    ],
)
def test_compare_refuses_a_summary_entry_it_cannot_read(tmp_path, capsys, per_case, message):
    good = _summary(tmp_path / "good", [_case("a", 0.7), _case("b", 0.6)][: len(per_case)])
    bad = _summary(tmp_path / "bad", per_case)
    out = tmp_path / "out"
    _fails(capsys, ["compare", f"base={good}", f"other={bad}", "-o", str(out)], str(bad / "summary.json"), message)
    assert not out.exists()


def test_compare_still_reads_null_as_nan_and_names_a_file_given_for_a_folder(tmp_path, capsys):
    from nnunet_dale.compare import load_run

    run = load_run(_summary(tmp_path / "run", [_case("a", None)]))
    assert run["cases"]["a"]["metrics"]["1"]["Dice"] is None
    note = tmp_path / "notes.txt"
    note.write_text("not a summary")
    _fails(capsys, ["compare", f"a={note}", f"b={tmp_path / 'run'}", "-o", str(tmp_path / "out")],
           f"{note} is a file, not a folder")  # fmt: skip


def test_make_benchmark_refuses_a_huge_size_before_writing(tmp_path, capsys):
    raw = tmp_path / "raw"
    _fails(
        capsys, ["make-benchmark", "--raw", str(raw), "--size", "100000"], "size must be an integer in 32..1024 (2D)"
    )
    _fails(capsys, ["make-benchmark", "--raw", str(raw), "--size", "300", "--dims", "3"], "32..256 (3D)", "300")
    assert not raw.exists()


def test_make_benchmark_checks_the_figure_path_before_writing_the_dataset(tmp_path, capsys):
    raw, blocker = tmp_path / "raw", tmp_path / "a_file"
    blocker.write_text("")
    _fails(capsys, ["make-benchmark", "--raw", str(raw), "--figure", str(blocker / "fig.png")],
           f"{blocker} is a file, not a folder")  # fmt: skip
    _fails(capsys, ["make-benchmark", "--raw", str(raw), "--figure", str(tmp_path)], "is a folder; give the PNG")
    _fails(capsys, ["make-benchmark", "--raw", str(blocker / "raw")], f"{blocker} is a file")
    assert not raw.exists()


def test_make_benchmark_says_overwrite_as_the_command_line_spells_it(tmp_path, capsys):
    from nnunet_dale.cli import main

    raw = tmp_path / "raw"
    small = ["make-benchmark", "--raw", str(raw), "--train", "5", "--test", "0", "--size", "32"]
    assert main(small) == 0
    capsys.readouterr()
    err = _fails(capsys, [*small, "--seed", "1"], "use --overwrite")
    assert "pass overwrite=True" not in err


def test_a_path_under_a_file_is_named_in_words_not_errno_20(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    source = tmp_path / "source"
    source.mkdir()
    _fails(capsys, ["convert", "isic2016", str(source), "-d", "71", "--raw", str(blocker / "raw")],
           f"{blocker / 'raw'}: {blocker} is a file, not a folder")  # fmt: skip


# ------------------------------------------------------------------------------------------- audit
@pytest.fixture(scope="module")
def result_folder(dataset_2d, tmp_path_factory) -> Path:
    """An (untrained) DALE result folder of the session dataset: <Trainer>__nnUNetPlans__2d with fold_0."""
    from conftest import train_result_folder

    return train_result_folder(nnUNetTrainerDALE, dataset_2d, 0, tmp_path_factory.mktemp("results")).parent


@pytest.fixture
def model(result_folder, tmp_path) -> Path:
    """A copy of the result folder to spoil."""
    import shutil

    return Path(shutil.copytree(result_folder, tmp_path / result_folder.name))


def test_audit_names_a_truncated_plans_file(model, tmp_path, capsys):
    plans = model / "plans.json"
    plans.write_text(plans.read_text()[:200])
    _fails(capsys, ["audit", str(model / "fold_0"), "-o", str(tmp_path / "out")], f"{plans} is not a readable JSON")
    assert not (tmp_path / "out").exists()


def test_audit_says_in_one_line_that_plans_and_checkpoint_do_not_fit(model, tmp_path, capsys):
    """Other feature counts in plans.json than the network was trained with: torch lists every mismatched layer over
    hundreds of lines; the audit says it in one."""
    plans = json.loads((model / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]
    (model / "plans.json").write_text(json.dumps(plans))
    _fails(capsys, ["audit", str(model / "fold_0")], "checkpoint_final.pth does not fit the network",
           str(model / "plans.json"), "weights of other shapes")  # fmt: skip


def test_audit_checks_raw_before_it_runs(model, tmp_path, capsys, monkeypatch):
    import nnunet_dale.audit

    ran = []
    monkeypatch.setattr(nnunet_dale.audit, "audit", lambda *a, **k: ran.append(a))
    nope = tmp_path / "nope"
    _fails(capsys, ["audit", str(model / "fold_0"), "--raw", str(nope)], f"(--raw) {nope} does not exist")
    nope.mkdir()
    _fails(capsys, ["audit", str(model / "fold_0"), "--raw", str(nope)], "neither cases.json nor labelsTr_clean/")
    assert ran == []


def test_audit_without_the_preprocessed_dataset_leaves_no_output_folder(model, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "preprocessed"
    empty.mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(empty))
    out = tmp_path / "out"
    _fails(capsys, ["audit", str(model / "fold_0"), "-o", str(out)], "does not exist: preprocess the dataset")
    assert not out.exists()


# ------------------------------------------------------------------------------------------- datasets nnU-Net fails on
def _raw_dataset(folder: Path, labels: list) -> Path:
    """A raw 2D PNG dataset with these training labels (and grey images)."""
    import numpy as np

    for i, label in enumerate(labels):
        _png(folder / "imagesTr" / f"case_{i}_0000.png", np.full_like(label, 100))
        _png(folder / "labelsTr" / f"case_{i}.png", label)
    dataset = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".png",
               "numTraining": len(labels)}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def test_nnunet_pitfalls_name_an_all_background_dataset_and_too_few_cases_for_five_folds(tmp_path):
    import numpy as np

    from nnunet_dale.nnunet_env import nnunet_pitfalls

    empty = np.zeros((16, 16), np.uint8)
    one_pixel = empty.copy()
    one_pixel[3, 5] = 1
    assert nnunet_pitfalls(_raw_dataset(tmp_path / "fine", [empty] * 4 + [one_pixel])) == []
    background, few = (
        nnunet_pitfalls(_raw_dataset(tmp_path / "background", [empty] * 5)),
        nnunet_pitfalls(_raw_dataset(tmp_path / "one", [one_pixel])),
    )
    assert len(background) == 1 and "no training label of background holds any foreground" in background[0]
    assert len(few) == 1 and "one has 1 training case(s): nnU-Net's folds 0-4 need at least 5" in few[0]


def test_make_benchmark_warns_when_nnunet_cannot_train_folds_on_it(tmp_path, capsys):
    from nnunet_dale.benchmark_data import make_benchmark
    from nnunet_dale.cli import main
    from nnunet_dale.nnunet_env import NnUNetPitfallWarning

    with pytest.warns(NnUNetPitfallWarning, match="has 3 training case"):
        make_benchmark(tmp_path / "raw", num_train=3, num_test=0, size=32)
    assert main(["make-benchmark", "--raw", str(tmp_path / "cli"), "--train", "2", "--test", "0", "--size", "32"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [
        "nnunet-dale make-benchmark: warning: Dataset990_DALEBench has 2 training case(s): nnU-Net's folds 0-4 need "
        "at least 5 (its 5-fold split fails); train fold 'all', or write your own splits_final.json"
    ]


def test_a_hold_out_that_leaves_training_without_foreground_is_flagged(tmp_path):
    import numpy as np

    from nnunet_dale.converters import ConversionError
    from nnunet_dale.holdout import hold_out_test_set
    from nnunet_dale.nnunet_env import NnUNetPitfallWarning

    empty = np.zeros((16, 16), np.uint8)
    lesion = empty.copy()
    lesion[4:8, 4:8] = 1
    folder = _raw_dataset(tmp_path / "Dataset077_Few", [lesion] + [empty] * 5)
    with pytest.raises(ConversionError, match=r"dataset folder .*dataset.json is a file, not a folder"):
        hold_out_test_set(folder / "dataset.json", 0.2, verbose=False)
    with pytest.warns(NnUNetPitfallWarning, match="no training label of Dataset077_Few holds any foreground"):
        hold_out_test_set(folder, 0.2, by="largest", verbose=False)  # the one lesion goes to the test split
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["case_0.png"]


def test_label_noise_flags_a_copy_nnunet_cannot_train_folds_on(tmp_path):
    import numpy as np

    from nnunet_dale.label_noise import add_label_noise
    from nnunet_dale.nnunet_env import NnUNetPitfallWarning

    lesion = np.zeros((32, 32), np.uint8)
    lesion[8:20, 8:20] = 1
    source = _raw_dataset(tmp_path / "Dataset078_Src", [lesion] * 3)
    with pytest.warns(NnUNetPitfallWarning, match="Dataset079_Noisy has 3 training case"):
        add_label_noise(source, 79, alpha=0.5, name="Noisy", verbose=False)
