"""Held-out test splits (nnunet_dale.holdout, `convert --hold-out`) on the real ISIC 2017 and BUSI subsets."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_dale import holdout
from nnunet_dale.cli import main
from nnunet_dale.converters import ConversionError, convert
from nnunet_dale.holdout import choose_test_cases, hold_out_test_set

from conftest import SHARED_DATA

ISIC = SHARED_DATA / "ISIC2017_val_subset"
BUSI = SHARED_DATA / "BUSI_subset"
needs_isic = pytest.mark.skipif(not ISIC.is_dir(), reason=f"real ISIC 2017 subset not available at {ISIC}")
needs_busi = pytest.mark.skipif(not BUSI.is_dir(), reason=f"real BUSI subset not available at {BUSI}")


@pytest.fixture(autouse=True)
def no_nnunet_folders(monkeypatch):
    """The converters and the hold-out look at nnUNet_preprocessed/_results: keep other tests' folders out."""
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def isic_raw(tmp_path_factory) -> Path:
    """The real ISIC 2017 subset converted at 32 px, without a hold-out (tests hold out on copies of it)."""
    if not ISIC.is_dir():
        pytest.skip(f"real ISIC 2017 subset not available at {ISIC}")
    return convert("isic2017", ISIC, 511, raw_root=tmp_path_factory.mktemp("isic") / "raw", max_size=32, verbose=False)


@pytest.fixture(scope="module")
def busi_raw(tmp_path_factory) -> Path:
    if not BUSI.is_dir():
        pytest.skip(f"real BUSI subset not available at {BUSI}")
    return convert("busi", BUSI, 512, raw_root=tmp_path_factory.mktemp("busi") / "raw", max_size=32, verbose=False)


def copy_dataset(folder: Path, root: Path) -> Path:
    target = root / "raw" / folder.name
    shutil.copytree(folder, target)
    return target


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (relative path -> sha256, or 'dir'): byte-identity before and after."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def ids(folder: Path, image: bool) -> set[str]:
    return {p.name[: -len("_0000.png")] if image else p.name[: -len(".png")] for p in folder.glob("*.png")}


def empty_labels(folder: Path) -> set[str]:
    return {p.name[: -len(".png")] for p in folder.glob("*.png") if not np.asarray(Image.open(p)).any()}


def check_split(pristine: Path, folder: Path, n_test: int) -> tuple[set[str], set[str]]:
    """Independent checks of a hold-out in `folder` against `pristine`, the same dataset without it: every case in
    exactly one part with its image and label, moved byte for byte, the counts, dataset.json, nnU-Net's own
    integrity check. Returns (training, test) case identifiers."""
    tr_images, tr_labels = ids(folder / "imagesTr", True), ids(folder / "labelsTr", False)
    ts_images, ts_labels = ids(folder / "imagesTs", True), ids(folder / "labelsTs", False)
    assert tr_images == tr_labels and ts_images == ts_labels  # every image has its label, in the same part
    assert not tr_labels & ts_labels
    assert tr_labels | ts_labels == ids(pristine / "labelsTr", False)
    assert len(ts_labels) == n_test and len(tr_labels) == len(ids(pristine / "labelsTr", False)) - n_test
    before, after = snapshot(pristine), snapshot(folder)
    for case in ts_labels:
        assert after[f"imagesTs/{case}_0000.png"] == before[f"imagesTr/{case}_0000.png"]
        assert after[f"labelsTs/{case}.png"] == before[f"labelsTr/{case}.png"]
    for case in tr_labels:
        assert after[f"imagesTr/{case}_0000.png"] == before[f"imagesTr/{case}_0000.png"]
    old_json, new_json = (json.loads((f / "dataset.json").read_text()) for f in (pristine, folder))
    assert new_json["numTraining"] == len(tr_labels) and new_json["test_sets"] == {"imagesTs": n_test}
    changed = {"numTraining", "test_sets", "hold_out"}
    assert {k: v for k, v in new_json.items() if k not in changed} == {
        k: v for k, v in old_json.items() if k not in changed
    }
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging folder left

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)
    return tr_labels, ts_labels


# ----------------------------------------------------------------------------------------------------------------------
# the split on real data
# ----------------------------------------------------------------------------------------------------------------------


def test_isic2017_hold_out_counts_parts_and_integrity(isic_raw, tmp_path):
    folder = copy_dataset(isic_raw, tmp_path)
    assert hold_out_test_set(folder, 0.3, seed=0, verbose=False) == folder.resolve()
    train, test = check_split(isic_raw, folder, n_test=29)  # round(0.3 * 98) = 29
    record = json.loads((folder / "dataset.json").read_text())["hold_out"]
    assert record["fraction"] == 0.3 and record["seed"] == 0
    assert (record["num_training"], record["num_test"]) == (69, 29)
    assert record["num_test_empty"] == record["num_training_empty"] == 0 == len(empty_labels(isic_raw / "labelsTr"))


def test_isic2017_hold_out_is_deterministic_by_seed(isic_raw, tmp_path):
    test_sets = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = copy_dataset(isic_raw, tmp_path / name)
        hold_out_test_set(folder, 0.3, seed=seed, verbose=False)
        test_sets[name] = ids(folder / "labelsTs", False)
        assert len(test_sets[name]) == 29
    assert test_sets["a"] == test_sets["b"]
    assert test_sets["a"] != test_sets["c"]


@needs_busi
def test_busi_convert_with_hold_out_is_stratified(busi_raw, tmp_path):
    out = convert("busi", BUSI, 512, raw_root=tmp_path / "raw", max_size=32, hold_out=0.3, verbose=False)
    train, test = check_split(busi_raw, out, n_test=45)  # round(0.3 * 149) = 45
    empty = empty_labels(busi_raw / "labelsTr")
    assert len(empty) == 50 and empty == {c for c in train | test if c.startswith("normal_")}
    # both parts get their share of each stratum: 0.3 * 50 = 15 empty, 0.3 * 99 = 29.7 -> 30 non-empty
    assert (len(test & empty), len(test - empty)) == (15, 30)
    assert (len(train & empty), len(train - empty)) == (35, 69)
    assert empty_labels(out / "labelsTs") == test & empty
    record = json.loads((out / "dataset.json").read_text())["hold_out"]
    assert (record["num_test_empty"], record["num_training_empty"]) == (15, 35)

    # the same split as holding out on the plain conversion afterwards
    later = copy_dataset(busi_raw, tmp_path / "later")
    hold_out_test_set(later, 0.3, seed=0, verbose=False)
    assert ids(later / "labelsTs", False) == test
    assert snapshot(later) == snapshot(out)


@pytest.mark.parametrize("n_cases, n_empty, fraction", [(10, 3, 0.3), (7, 1, 0.5), (149, 50, 0.2), (5, 0, 0.25)])
def test_choose_test_cases_proportions(n_cases, n_empty, fraction):
    cases = [f"c{i:03d}" for i in range(n_cases)]
    empty = set(cases[:n_empty])
    test = choose_test_cases(cases, empty, fraction, seed=3)
    assert len(test) == math.floor(fraction * n_cases + 0.5) and len(set(test)) == len(test) and set(test) <= set(cases)
    for stratum in (empty, set(cases) - empty):
        assert abs(len(set(test) & stratum) - fraction * len(stratum)) < 1
    assert choose_test_cases(list(reversed(cases)), empty, fraction, seed=3) == test  # the order given does not matter


# ----------------------------------------------------------------------------------------------------------------------
# errors leave everything byte-identical
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 0}, "between 0 and 1"),
        ({"fraction": 1}, "between 0 and 1"),
        ({"fraction": -0.2}, "between 0 and 1"),
        ({"fraction": 1.5}, "between 0 and 1"),
        ({"fraction": float("nan")}, "between 0 and 1"),
        ({"fraction": "0.3"}, "between 0 and 1"),
        ({"fraction": True}, "between 0 and 1"),
        ({"fraction": 0.3, "seed": -1}, "seed must be a non-negative integer"),
        ({"fraction": 0.004}, r"would leave 98 for training and 0 for testing"),  # round(0.39) = 0
        ({"fraction": 0.99}, r"would leave 1 for training and 97 for testing"),
    ],
)
def test_bad_fraction_leaves_the_dataset_unchanged(isic_raw, tmp_path, kwargs, message):
    folder = copy_dataset(isic_raw, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConversionError, match=message):
        hold_out_test_set(folder, verbose=False, **kwargs)
    assert snapshot(tmp_path) == before


def test_existing_test_split_missing_dataset_and_preprocessed(isic_raw, tmp_path, monkeypatch):
    folder = copy_dataset(isic_raw, tmp_path)
    hold_out_test_set(folder, 0.3, verbose=False)
    cases = [
        ((folder, 0.3), "already has a test split"),  # imagesTs now present
        ((tmp_path / "raw" / "Dataset599_Nothing", 0.3), "does not exist"),
        ((599, 0.3), r"expected one dataset with id 599 .* found none"),
        ((tmp_path / "raw", 0.3), r"no nnU-Net raw dataset at .*raw \(no dataset.json\)"),
    ]
    before = snapshot(tmp_path)
    for args, message in cases:
        with pytest.raises(ConversionError, match=message):
            hold_out_test_set(*args, raw_root=tmp_path / "raw", verbose=False)
        assert snapshot(tmp_path) == before

    other = copy_dataset(isic_raw, tmp_path / "other")
    (tmp_path / "pre" / other.name).mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    before = snapshot(tmp_path)
    with pytest.raises(ConversionError, match="already preprocessed"):
        hold_out_test_set(other, 0.3, verbose=False)
    assert snapshot(tmp_path) == before


def test_failure_while_writing_leaves_the_dataset_unchanged(isic_raw, tmp_path, monkeypatch):
    folder = copy_dataset(isic_raw, tmp_path)
    before = snapshot(tmp_path)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(holdout, "_write_json", disk_full)  # after the files were moved in the staged copy
    with pytest.raises(ConversionError, match="could not hold out test cases .* No space left"):
        hold_out_test_set(folder, 0.3, verbose=False)
    assert snapshot(tmp_path) == before


def test_a_failed_swap_that_cannot_put_the_original_back_keeps_it_and_says_where(isic_raw, tmp_path, monkeypatch):
    folder = copy_dataset(isic_raw, tmp_path)
    before = snapshot(folder)
    real_rename = Path.rename

    def rename(self, target):  # moving the original aside works; the new folder's rename and the way back fail
        if Path(self).name.startswith("replaced_") or Path(target) == folder and "replaced_" not in str(self):
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ConversionError, match="could not be put back after a failed write; it is in (.*)") as error:
        hold_out_test_set(folder, 0.3, verbose=False)
    monkeypatch.undo()
    kept = Path(str(error.value).rsplit("it is in ", 1)[1])
    assert kept.name == "replaced_0" and snapshot(kept) == before  # every byte of the original survives there
    assert not folder.exists() and [p.name for p in kept.parent.iterdir()] == ["replaced_0"]  # the rest is cleaned


def test_inconsistent_dataset_is_named(isic_raw, tmp_path):
    folder = copy_dataset(isic_raw, tmp_path)
    label = next((folder / "labelsTr").glob("*.png"))
    label.unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ConversionError, match=r"image without label: .*" + label.stem):
        hold_out_test_set(folder, 0.3, verbose=False)
    assert snapshot(tmp_path) == before


@needs_isic
def test_convert_errors_write_nothing(tmp_path):
    with pytest.raises(ConversionError, match="would leave 1 for training"):
        convert("isic2017", ISIC, 513, raw_root=tmp_path / "raw", max_size=32, hold_out=0.99, verbose=False)
    assert list((tmp_path / "raw").iterdir()) == []
    # a source with an official test split: four real validation pairs, and two more as Test_v2
    source = tmp_path / "with_test"
    images = sorted((ISIC / "ISIC-2017_Validation_Data").glob("ISIC_*.jpg"))
    for split, chosen in (("Validation", images[2:6]), ("Test_v2", images[:2])):
        data, gt = source / f"ISIC-2017_{split}_Data", source / f"ISIC-2017_{split}_Part1_GroundTruth"
        data.mkdir(parents=True)
        gt.mkdir()
        for image in chosen:
            (data / image.name).symlink_to(image)
            mask = f"{image.stem}_segmentation.png"
            (gt / mask).symlink_to(ISIC / "ISIC-2017_Validation_Part1_GroundTruth" / mask)
    with pytest.raises(ConversionError, match="already has a test split"):
        convert("isic2017", source, 513, raw_root=tmp_path / "raw", max_size=32, hold_out=0.3, verbose=False)
    assert list((tmp_path / "raw").iterdir()) == []


@needs_isic
def test_cli_convert_hold_out(tmp_path, capsys):
    raw = tmp_path / "raw"
    common = ["convert", "isic2017", str(ISIC), "--id", "514", "--max-size", "32", "--raw", str(raw)]
    for extra, message in (
        (["--hold-out", "1.5"], "hold-out fraction must be a number between 0 and 1"),
        (["--hold-out", "0.3", "--hold-out-seed", "-2"], "hold-out seed"),
        (["--hold-out", "0.3", "--add-test-set"], "cannot go with --add-test-set"),
    ):
        assert main(common + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not raw.exists() or list(raw.iterdir()) == []

    assert main(common + ["--hold-out", "0.3", "--hold-out-seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "imagesTs: 29 cases" in out and "held out 29 of 98 cases" in out
    folder = raw / "Dataset514_ISIC2017"
    record = json.loads((folder / "dataset.json").read_text())["hold_out"]
    assert record["seed"] == 4 and len(ids(folder / "labelsTs", False)) == 29


# ----------------------------------------------------------------------------------------------------------------------
# the size-shift split (by="largest")
# ----------------------------------------------------------------------------------------------------------------------


def label_share(path: Path) -> float:
    mask = np.asarray(Image.open(path))
    return float((mask > 0).mean())


def test_isic2017_largest_hold_out_tests_on_the_largest_lesions(isic_raw, tmp_path):
    folder = copy_dataset(isic_raw, tmp_path)
    hold_out_test_set(folder, 0.3, seed=0, verbose=False, by="largest")
    train, test = check_split(isic_raw, folder, n_test=29)
    shares = {p.name[: -len(".png")]: label_share(p) for p in (isic_raw / "labelsTr").glob("*.png")}
    ranked = sorted(shares, key=lambda c: (-shares[c], c))  # written out: the 29 largest shares
    assert test == set(ranked[:29])
    assert min(shares[c] for c in test) >= max(shares[c] for c in train)
    record = json.loads((folder / "dataset.json").read_text())["hold_out"]
    assert record["by"] == "largest" and record["stratified_by"].startswith("largest")
    assert record["min_test_share"] == pytest.approx(min(shares[c] for c in test), abs=1e-6)
    assert record["max_training_share"] == pytest.approx(max(shares[c] for c in train), abs=1e-6)
    other = copy_dataset(isic_raw, tmp_path / "seed1")
    hold_out_test_set(other, 0.3, seed=1, verbose=False, by="largest")
    assert ids(other / "labelsTs", False) == test  # the size decides, not the seed


def test_unknown_hold_out_by_is_refused(isic_raw, tmp_path):
    folder = copy_dataset(isic_raw, tmp_path)
    before = snapshot(folder)
    with pytest.raises(ConversionError, match="largest"):
        hold_out_test_set(folder, 0.3, seed=0, verbose=False, by="biggest")
    assert snapshot(folder) == before
