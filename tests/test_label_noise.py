"""nnunet_dale.label_noise (`nnunet-dale label-noise`) on planted masks, checked against scipy's morphology computed
here, independently of the module: which cases, which operation, which radius, what the files hold."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import ball, disk

from nnunet_dale import label_noise
from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.cli import main
from nnunet_dale.label_noise import CaseDraws, add_label_noise, corrupt_label
from nnunet_dale.raw_datasets import ConversionError

SIZE = 64
FULL = np.ones((3, 3), dtype=bool)  # 8-connectivity: the module's lesions are full-connectivity components


@pytest.fixture(autouse=True)
def no_nnunet_folders(monkeypatch):
    """The tool looks at nnUNet_preprocessed/_results for id clashes: keep other tests' folders out."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)


def disk_at(centre: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def planted_masks() -> dict[str, np.ndarray]:
    """12 training masks: one lesion of varied size and place (one touching the image border), two and three lesions
    of different sizes, and an empty mask."""
    masks = {
        "case_empty": np.zeros((SIZE, SIZE), bool),
        "case_border": disk_at((32, 0), 14),  # a half disk on the left border
        "case_two": disk_at((20, 20), 12) | disk_at((48, 48), 4),
        "case_three": disk_at((14, 14), 9) | disk_at((48, 16), 5) | disk_at((40, 46), 11),
    }
    for i, (radius, centre) in enumerate([(3, (32, 32)), (6, (20, 40)), (9, (40, 22)), (12, (32, 32)), (16, (30, 34)),
                                          (20, (32, 32)), (5, (10, 50)), (25, (32, 30))]):  # fmt: skip
        masks[f"case_one{i}"] = disk_at(centre, radius)
    return masks


def write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def write_raw_dataset(folder: Path, masks: dict[str, np.ndarray], test_cases: int = 2) -> Path:
    """A 2D nnU-Net raw dataset (grey PNGs, labels 0/1, imagesTs/labelsTs) with the given training masks."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for case, mask in masks.items():
        write_png(rng.integers(0, 255, (SIZE, SIZE)), folder / "imagesTr" / f"{case}_0000.png")
        write_png(mask, folder / "labelsTr" / f"{case}.png")
    for i in range(test_cases):
        write_png(rng.integers(0, 255, (SIZE, SIZE)), folder / "imagesTs" / f"test{i}_0000.png")
        write_png(disk_at((30, 30), 8 + i), folder / "labelsTs" / f"test{i}.png")
    dataset_json = {
        "channel_names": {"0": "grey"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(masks),
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_raw_dataset(tmp_path / "raw" / "Dataset500_Planted", planted_masks())


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (relative path -> sha256, or 'dir')."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def load(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def records(folder: Path) -> dict:
    return json.loads((folder / "label_noise.json").read_text())


# ------------------------------------------------------------------------------------- scipy, computed here
def components(mask: np.ndarray) -> list[np.ndarray]:
    labelled, n = ndimage.label(mask, structure=FULL)
    return [labelled == i for i in range(1, n + 1)]


def expected_radius(voxels: int, fraction: float) -> int:
    """The documented radius: max(1, round-half-up(f * sqrt(A / pi)))."""
    return max(1, int(np.floor(fraction * np.sqrt(voxels / np.pi) + 0.5)))


def expected_noisy(clean: np.ndarray, record: dict) -> np.ndarray:
    """The corrupted mask, lesion by lesion, with scipy's binary morphology and ndimage.shift."""
    out = np.zeros_like(clean, dtype=bool)
    lesions = components(clean)
    assert len(record["lesions"]) == len(lesions)
    for lesion, lesion_record in zip(lesions, record["lesions"]):
        radius = expected_radius(int(lesion.sum()), record["fraction"])
        assert lesion_record["radius"] == radius and lesion_record["voxels"] == lesion.sum()
        if record["operation"] == "dilate":
            out |= ndimage.binary_dilation(lesion, structure=disk(radius))
        elif record["operation"] == "erode":
            out |= ndimage.binary_erosion(lesion, structure=disk(radius), border_value=1)
        else:
            offset = lesion_record["offset"]
            assert abs(math.hypot(*offset) - radius) <= math.sqrt(2) / 2  # radius along a unit direction, rounded
            direction = np.array(record["direction"])
            assert np.allclose(np.array(offset), np.floor(radius * direction + 0.5))
            out |= ndimage.shift(lesion.astype(float), offset, order=0, cval=0) > 0.5
    return out


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("kind", ["mixed", "biased", "eroded"])
def test_corrupted_masks_match_scipy_morphology(planted, kind):
    new = add_label_noise(planted, 501, alpha=1.0, kind=kind, seed=3, verbose=False)
    assert new == planted.parent / f"Dataset501_Planted_{kind}100"
    meta = records(new)
    operations = set()
    for case, mask in planted_masks().items():
        record = meta["cases"][case]
        noisy, clean = load(new / "labelsTr" / f"{case}.png"), load(new / "labelsTr_clean" / f"{case}.png")
        assert np.array_equal(clean, mask.astype(np.uint8))
        assert record["selected"]
        if not mask.any():
            assert record["operation"] is None and record["left_clean"] == "empty label" and not noisy.any()
            continue
        operations.add(record["operation"])
        assert 0.1 <= record["fraction"] <= 0.3
        assert np.array_equal(noisy > 0, expected_noisy(mask, record)), (case, record["operation"])
        assert set(np.unique(noisy)) <= {0, 1}
        d = 2 * np.sum((noisy > 0) & mask) / (np.sum(noisy > 0) + mask.sum())
        assert record["dice"] == pytest.approx(d, abs=1e-6)
    assert operations == {"mixed": {"dilate", "erode", "shift"}, "biased": {"dilate"}, "eroded": {"erode"}}[kind]
    # the half disk on the image border keeps its border under erosion (outside the image counts as lesion)
    border = meta["cases"]["case_border"]
    if border["operation"] == "erode":
        assert load(new / "labelsTr" / "case_border.png")[32, 0] == 1
    summary = json.loads((new / "dataset.json").read_text())["label_noise"]
    assert summary["num_cases"] == 12 and summary["num_corrupted"] == 11 and summary["left_clean"] == {"empty label": 1}
    assert summary["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in meta["cases"].values()]), abs=1e-6)


def test_alpha_one_biased_dilates_every_non_empty_case(planted):
    new = add_label_noise(planted, 502, alpha=1.0, kind="biased", verbose=False)
    for case, mask in planted_masks().items():
        noisy = load(new / "labelsTr" / f"{case}.png") > 0
        if mask.any():
            assert (noisy >= mask).all() and noisy.sum() > mask.sum(), case
            assert records(new)["cases"][case]["operation"] == "dilate"
        else:
            assert not noisy.any()


def test_alpha_zero_gives_byte_identical_labels_and_links_the_rest(planted):
    new = add_label_noise(planted, 503, alpha=0.0, verbose=False)
    before, after = snapshot(planted), snapshot(new)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        files = {k: v for k, v in before.items() if k.startswith(sub + "/")}
        assert files and {k: after[k] for k in files} == files
    assert {k.split("/", 1)[1]: v for k, v in after.items() if k.startswith("labelsTr_clean/")} == {
        k.split("/", 1)[1]: v for k, v in before.items() if k.startswith("labelsTr/")
    }
    for name in ("imagesTr/case_two_0000.png", "labelsTs/test0.png", "labelsTr/case_two.png"):  # hard links
        assert os.stat(planted / name).st_ino == os.stat(new / name).st_ino
    assert not any(r["selected"] for r in records(new)["cases"].values())
    assert records(new)["num_corrupted"] == 0


def test_missed_drops_exactly_one_lesion_and_counts_single_lesion_cases(planted):
    new = add_label_noise(planted, 504, alpha=1.0, kind="missed", verbose=False)
    meta = records(new)
    for case, mask in planted_masks().items():
        noisy = load(new / "labelsTr" / f"{case}.png") > 0
        lesions = components(mask)
        if len(lesions) < 2:
            assert np.array_equal(noisy, mask) and meta["cases"][case]["operation"] is None
            continue
        removed = mask & ~noisy
        assert (noisy <= mask).all() and len(components(noisy)) == len(lesions) - 1
        assert sum(np.array_equal(removed, lesion) for lesion in lesions) == 1  # one whole lesion, nothing else
        assert meta["cases"][case]["dropped"]["voxels"] == removed.sum()
    assert meta["left_clean"] == {"empty label": 1, "one lesion": 9} and meta["operations"] == {"drop": 2}


def test_draws_are_deterministic_and_independent_of_order_other_cases_and_alpha(planted, tmp_path):
    a = add_label_noise(planted, 505, alpha=0.5, seed=7, verbose=False)
    b = add_label_noise(planted, 506, alpha=0.5, seed=7, verbose=False)
    strip = {k: v for k, v in snapshot(a).items() if k not in ("dataset.json", "label_noise.json")}
    assert strip == {k: v for k, v in snapshot(b).items() if k not in ("dataset.json", "label_noise.json")}
    assert records(a)["cases"] == records(b)["cases"]
    # a source with only some of the cases: those get the same draws
    subset = {k: v for k, v in planted_masks().items() if k in ("case_two", "case_one3", "case_border")}
    small = write_raw_dataset(tmp_path / "other" / "Dataset510_Small", subset)
    c = add_label_noise(small, 511, alpha=0.5, seed=7, verbose=False)
    assert records(c)["cases"] == {k: records(a)["cases"][k] for k in subset}
    # a larger alpha corrupts a superset of the cases, the shared ones alike; another seed draws differently
    d = add_label_noise(planted, 507, alpha=0.8, seed=7, verbose=False)
    at_half = {k: r for k, r in records(a)["cases"].items() if r["selected"]}
    assert at_half and all(records(d)["cases"][k] == r for k, r in at_half.items())
    e = add_label_noise(planted, 508, alpha=0.5, seed=8, verbose=False)
    assert records(e)["cases"] != records(a)["cases"]


def test_multi_label_per_label_with_the_higher_label_winning_and_the_ignore_label_kept():
    clean = np.zeros((SIZE, SIZE), np.int32)
    clean[disk_at((30, 20), 10)] = 1
    clean[disk_at((30, 40), 8)] = 2  # touching label 1: where the dilated labels overlap, 2 wins
    clean[:3, :3] = 9  # the ignore label
    draws = CaseDraws(selected=True, operation="dilate", fraction=0.3, pick=0.0, direction=(1.0, 0.0))
    noisy, record = corrupt_label(clean, draws, ignore_label=9)
    grown1 = ndimage.binary_dilation(clean == 1, structure=disk(expected_radius(int((clean == 1).sum()), 0.3)))
    grown2 = ndimage.binary_dilation(clean == 2, structure=disk(expected_radius(int((clean == 2).sum()), 0.3)))
    expected = np.where(grown2, 2, np.where(grown1, 1, 0))
    expected[:3, :3] = 9
    assert np.array_equal(noisy, expected)
    assert [lesion["label"] for lesion in record["lesions"]] == [1, 2] and set(record["dice_per_label"]) == {"1", "2"}


@pytest.mark.parametrize("product, radius", [(0.2, 1), (1.45, 1), (1.55, 2), (2.45, 2), (2.55, 3)])
def test_radius_is_the_fraction_of_the_equivalent_radius_rounded_half_up_and_at_least_one(product, radius):
    clean = disk_at((32, 32), 11).astype(np.int32)
    fraction = product / np.sqrt(clean.sum() / np.pi)  # f R = product
    draws = CaseDraws(selected=True, operation="dilate", fraction=fraction, pick=0.0, direction=(1.0, 0.0))
    noisy, record = corrupt_label(clean, draws)
    assert record["lesions"][0]["radius"] == radius
    assert np.array_equal(noisy > 0, ndimage.binary_dilation(clean > 0, structure=disk(radius)))


def test_3d_radius_is_relative_to_the_equivalent_ball():
    z, y, x = np.mgrid[:40, :40, :40]
    clean = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 12**2).astype(np.int32)
    draws = CaseDraws(selected=True, operation="erode", fraction=0.25, pick=0.0, direction=(1.0, 0.0, 0.0))
    noisy, record = corrupt_label(clean, draws)
    radius = max(1, int(np.floor(0.25 * (3 * clean.sum() / (4 * np.pi)) ** (1 / 3) + 0.5)))
    assert record["lesions"][0]["radius"] == radius == 3
    assert np.array_equal(noisy > 0, ndimage.binary_erosion(clean > 0, structure=ball(radius), border_value=1))


def bad_inputs(planted: Path) -> list[tuple[dict, str]]:
    """(arguments, message) of bad calls; each must raise one ConversionError and write nothing."""
    no_labels = planted.parent / "Dataset520_NoLabels"
    write_raw_dataset(no_labels, {}, test_cases=0)
    no_folder = planted.parent / "Dataset521_NoLabelsTr"
    write_raw_dataset(no_folder, {"a": disk_at((30, 30), 5)})
    shutil.rmtree(no_folder / "labelsTr")
    noisy = planted.parent / "Dataset522_Noisy"
    write_raw_dataset(noisy, {"a": disk_at((30, 30), 5)})
    shutil.copytree(noisy / "labelsTr", noisy / "labelsTr_clean")
    (planted.parent / "Dataset530_Taken").mkdir()
    ok = {"dataset": planted, "dataset_id": 540, "alpha": 0.5}
    return [
        ({**ok, "dataset": planted.parent / "Dataset599_Nothing"}, "does not exist"),
        ({**ok, "alpha": -0.1}, r"alpha .* in \[0, 1\]"),
        ({**ok, "alpha": 1.5}, r"alpha .* in \[0, 1\]"),
        ({**ok, "alpha": float("nan")}, r"alpha .* in \[0, 1\]"),
        ({**ok, "alpha": "0.5"}, r"alpha .* in \[0, 1\]"),
        ({**ok, "kind": "dilated"}, "kind must be one of mixed, biased, eroded, missed"),
        ({**ok, "seed": -1}, "seed must be a non-negative integer"),
        ({**ok, "radius_fraction": (0.3, 0.1)}, "radius fraction"),
        ({**ok, "radius_fraction": (0.0, 0.2)}, "radius fraction"),
        ({**ok, "dataset_id": 0}, "dataset id must be an integer from 1 to 999"),
        ({**ok, "dataset_id": 500}, "id other than its source's"),
        ({**ok, "dataset_id": 530}, "already used by .*Dataset530_Taken.*overwrite"),
        ({**ok, "name": "no spaces"}, "may contain only letters"),
        ({**ok, "dataset": no_labels}, "holds no labelled training case"),
        ({**ok, "dataset": no_folder}, "no labelsTr folder"),
        ({**ok, "dataset": noisy}, "already has noisy labels"),
        ({**ok, "dataset": 500}, "nnUNet_raw environment variable is not set"),
        ({**ok, "raw_root": planted.parent / "new_raw", "name": "a b"}, "may contain only letters"),  # no folder made
        ({**ok, "raw_root": planted / "dataset.json"}, "is not a folder"),
    ]


def test_bad_inputs_raise_one_clear_error_and_write_nothing(planted):
    cases = bad_inputs(planted)
    before = snapshot(planted.parent.parent)
    for kwargs, message in cases:
        with pytest.raises(ConversionError, match=message):
            add_label_noise(**kwargs, verbose=False)
        assert snapshot(planted.parent.parent) == before, kwargs


def test_an_error_while_writing_leaves_nothing_and_overwrite_replaces(planted, monkeypatch):
    before = snapshot(planted.parent)
    calls = []

    def failing(label_map, draws, ignore_label=None):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("planted failure")
        return corrupt_label(label_map, draws, ignore_label)

    monkeypatch.setattr(label_noise, "corrupt_label", failing)
    with pytest.raises(RuntimeError, match="planted failure"):
        add_label_noise(planted, 541, alpha=1.0, verbose=False)
    assert snapshot(planted.parent) == before  # no staging folder, no half-written dataset
    monkeypatch.undo()

    first = add_label_noise(planted, 541, alpha=0.0, name="Noisy", verbose=False)
    second = add_label_noise(planted, 541, alpha=1.0, name="Noisy", overwrite=True, verbose=False)
    assert first == second and records(second)["num_corrupted"] == 11
    assert sorted(p.name for p in planted.parent.iterdir()) == ["Dataset500_Planted", "Dataset541_Noisy"]


def test_cli_end_to_end_on_a_generated_benchmark(tmp_path, capsys, monkeypatch):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_labels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    raw = tmp_path / "raw"
    source = make_benchmark(raw, 990, num_train=6, num_test=2, size=64, seed=0, noise=0.0)
    shutil.rmtree(source / "labelsTr_clean")  # noise 0: labelsTr are the clean labels
    args = ["label-noise", "990", "--raw", str(raw), "-d", "991", "--alpha", "1", "--kind", "biased"]
    assert main(args) == 0
    new = raw / "Dataset991_DALEBench_biased100"
    assert str(new) in capsys.readouterr().out
    for label in (new / "labelsTr").iterdir():  # nnU-Net's own label check (its worker pool would take 20 s)
        assert verify_labels(str(label), NaturalImage2DIO, [0, 1])
    assert sorted(p.name for p in new.iterdir()) == sorted(
        ["dataset.json", "cases.json", "label_noise.json", "imagesTr", "labelsTr", "labelsTr_clean", "imagesTs",
         "labelsTs"]
    )  # fmt: skip
    meta = records(new)
    assert (
        meta["kind"] == "biased" and meta["alpha"] == 1.0 and set(meta["cases"]) == {f"train_{i:03d}" for i in range(6)}
    )
    for case, record in meta["cases"].items():
        clean, noisy = load(source / "labelsTr" / f"{case}.png") > 0, load(new / "labelsTr" / f"{case}.png") > 0
        assert (noisy >= clean).all() and (record["operation"] == "dilate") == clean.any()
    assert main(args) == 2  # the id is taken now
    assert "already used" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["label-noise", str(source), "-d", "992", "--alpha", "0.5", "--name", "Half", "--seed", "2"]) == 0
    assert records(raw / "Dataset992_Half")["seed"] == 2
    assert main(["label-noise", str(source), "-d", "993", "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err and not list(raw.glob("Dataset993_*"))
