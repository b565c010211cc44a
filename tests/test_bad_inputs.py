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
