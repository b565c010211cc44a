"""Dataset converters: real shared subsets (ISIC 2017 validation, BUSI) and small generated official layouts."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_dale.converters import (
    CONVERTERS,
    SPLITS_FILE,
    ConversionError,
    add_test_set,
    convert,
    read_mask,
    target_size,
)
from nnunet_dale.holdout import hold_out_test_set

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISIC2017_SUBSET = SHARED_DATA / "ISIC2017_val_subset"
BUSI_SUBSET = SHARED_DATA / "BUSI_subset"
needs_shared = pytest.mark.skipif(
    not (ISIC2017_SUBSET.is_dir() and BUSI_SUBSET.is_dir()),
    reason=f"real dataset subsets not available at {SHARED_DATA} (see its README.md)",
)


@pytest.fixture(autouse=True)
def no_nnunet_folders(monkeypatch):
    """The converters check nnUNet_preprocessed/_results for id clashes: keep other tests' session folders out."""
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)


# ----------------------------------------------------------------------------------------------------------------------
# helpers: tiny images and masks in official layouts
# ----------------------------------------------------------------------------------------------------------------------


def box_mask(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A boolean rectangle, different for every seed."""
    h, w = shape
    rng = np.random.default_rng(seed)
    y0, x0 = rng.integers(1, h // 3), rng.integers(1, w // 3)
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y0 + h // 2, x0 : x0 + w // 2] = True
    return mask


def write_image(path: Path, shape=(24, 32), seed=0, grey=False, rgb_grey=False) -> np.ndarray:
    """A random image (RGB, grey, or grey stored as RGB with equal channels) in the format of the suffix."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=shape if grey or rgb_grey else (*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([array] * 3, axis=-1) if rgb_grey else array).save(path)
    return array


def write_mask(path: Path, mask: np.ndarray, values=(0, 255), rgb=False) -> None:
    array = np.where(mask, values[1], values[0]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([array] * 3, axis=-1) if rgb else array).save(path)


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def case_ids(folder: Path, image=True) -> list[str]:
    return sorted(p.name[: -len("_0000.png")] if image else p.stem for p in folder.glob("*.png"))


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zips ``folder`` as the official archives do: one top-level folder inside."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent))
    return archive


def make_isic2016(root: Path, n_train=3, n_test=2, test_as_zip=False) -> dict[str, np.ndarray]:
    """ISIC 2016 part 1 layout; returns the clean mask of every case id."""
    masks = {}
    for split, n, offset in (("Training", n_train, 0), ("Test", n_test, 100)):
        for i in range(n):
            case = f"ISIC_{offset + i:07d}"
            masks[case] = box_mask((24, 32), offset + i)
            write_image(root / f"ISBI2016_ISIC_Part1_{split}_Data" / f"{case}.jpg", seed=offset + i)
            write_mask(root / f"ISBI2016_ISIC_Part1_{split}_GroundTruth" / f"{case}_Segmentation.png", masks[case])
    if test_as_zip:
        for folder in ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"):
            zip_folder(root / folder, root / f"{folder}.zip")
            for p in (root / folder).iterdir():
                p.unlink()
            (root / folder).rmdir()
    return masks


def raw_entries(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


# ----------------------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------------------


@needs_shared
def test_isic2017_validation_subset(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    out = convert("isic2017", ISIC2017_SUBSET, 501, raw_root=raw, max_size=128, verbose=False)
    assert out == raw / "Dataset501_ISIC2017"
    assert raw_entries(raw) == ["Dataset501_ISIC2017"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # Validation only: Tr

    data = ISIC2017_SUBSET / "ISIC-2017_Validation_Data"
    gt = ISIC2017_SUBSET / "ISIC-2017_Validation_Part1_GroundTruth"
    sources = sorted(p.stem for p in data.glob("ISIC_*.jpg") if not p.stem.endswith("_superpixels"))
    assert len(sources) == 98
    assert case_ids(out / "imagesTr") == sources
    assert case_ids(out / "labelsTr", image=False) == sources

    dataset_json = json.loads((out / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    assert dataset_json["numTraining"] == 98 and dataset_json["file_ending"] == ".png"

    found = set()
    for case in sources:
        image, label = read(out / "imagesTr" / f"{case}_0000.png"), read(out / "labelsTr" / f"{case}.png")
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert label.shape == image.shape[:2] and label.dtype == np.uint8
        assert max(label.shape) <= 128
        source = Image.open(gt / f"{case}_segmentation.png")
        size = target_size(*source.size, 128)
        assert (image.shape[1], image.shape[0]) == size
        if max(source.size) > 128:
            assert max(size) == 128
        # the label is this case's own mask, downsampled with nearest neighbour
        expected = np.asarray(source.resize(size, Image.Resampling.NEAREST)) > 127
        np.testing.assert_array_equal(label, expected.astype(np.uint8), err_msg=case)
        found |= set(np.unique(label).tolist())
    assert found == {0, 1}

    verify_dataset_integrity(str(out), num_processes=1)


@needs_shared
def test_busi_subset(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    out = convert("busi", BUSI_SUBSET, 502, raw_root=raw, verbose=False)
    assert out.name == "Dataset502_BUSI"
    ids = case_ids(out / "imagesTr")
    assert len(ids) == 149 and ids == case_ids(out / "labelsTr", image=False)
    assert all(re.fullmatch(r"(benign|malignant|normal)_\d{3}", i) for i in ids)
    assert sum(i.startswith("normal_") for i in ids) == 50
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "grey"}

    for case in ids:
        image, label = read(out / "imagesTr" / f"{case}_0000.png"), read(out / "labelsTr" / f"{case}.png")
        assert image.ndim == 2 and label.shape == image.shape
        assert set(np.unique(label).tolist()) == ({0} if case.startswith("normal_") else {0, 1}), case
    cls, n = "malignant", 7
    source = BUSI_SUBSET / "Dataset_BUSI_with_GT" / cls
    np.testing.assert_array_equal(
        read(out / "labelsTr" / f"{cls}_{n:03d}.png"), (read(source / f"{cls} ({n})_mask.png") > 127).astype(np.uint8)
    )
    np.testing.assert_array_equal(
        read(out / "imagesTr" / f"{cls}_{n:03d}_0000.png"), read(source / f"{cls} ({n}).png")[..., 0]
    )

    verify_dataset_integrity(str(out), num_processes=1)


# ----------------------------------------------------------------------------------------------------------------------
# generated layouts
# ----------------------------------------------------------------------------------------------------------------------


def test_isic2016_folders_and_zips_then_ph2_as_extra_test_set(tmp_path):
    src, raw = tmp_path / "isic2016", tmp_path / "raw"
    masks = make_isic2016(src, test_as_zip=True)  # training as folders, test as the official zips
    out = convert("isic2016", src, 11, raw_root=raw, verbose=False)
    assert raw_entries(raw) == ["Dataset011_ISIC2016"]
    assert case_ids(out / "imagesTr") == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert case_ids(out / "imagesTs") == case_ids(out / "labelsTs", image=False) == ["ISIC_0000100", "ISIC_0000101"]
    for split in ("Tr", "Ts"):
        for label_file in (out / f"labels{split}").glob("*.png"):
            np.testing.assert_array_equal(read(label_file), masks[label_file.stem].astype(np.uint8))
            assert read(out / f"images{split}" / f"{label_file.stem}_0000.png").shape == (24, 32, 3)
    dataset_json = json.loads((out / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 3 and dataset_json["test_sets"] == {"imagesTs": 2}

    # PH2 in its official layout, added to this conversion as an extra test set
    ph2 = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    ph2_masks = {}
    for i in (2, 3):
        case = f"IMD{i:03d}"
        ph2_masks[case] = box_mask((20, 28), i)
        write_image(ph2 / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", shape=(20, 28), seed=i)
        Image.fromarray(ph2_masks[case]).save(_mkdir(ph2 / case / f"{case}_lesion") / f"{case}_lesion.bmp")  # 1-bit
        write_mask(ph2 / case / f"{case}_roi" / f"{case}_R1_Label1.bmp", ph2_masks[case])  # ignored
    add_test_set("ph2", tmp_path / "PH2Dataset", 11, raw_root=raw, verbose=False)
    assert case_ids(out / "imagesTs_PH2") == case_ids(out / "labelsTs_PH2", image=False) == ["IMD002", "IMD003"]
    for case, mask in ph2_masks.items():
        np.testing.assert_array_equal(read(out / "labelsTs_PH2" / f"{case}.png"), mask.astype(np.uint8))
    assert json.loads((out / "dataset.json").read_text())["test_sets"] == {"imagesTs": 2, "imagesTs_PH2": 2}
    assert raw_entries(raw) == ["Dataset011_ISIC2016"]
    with pytest.raises(ConversionError, match="imagesTs_PH2 exists"):
        add_test_set("ph2", tmp_path / "PH2Dataset", 11, raw_root=raw, verbose=False)
    with pytest.raises(ConversionError, match="channel_names"):  # grey images into an RGB dataset
        add_test_set("busi", tmp_path, 11, raw_root=raw, verbose=False)

    # PH2 on its own: a test-only dataset
    alone = convert("ph2", tmp_path / "PH2Dataset", 12, raw_root=raw, verbose=False)
    assert sorted(p.name for p in alone.iterdir()) == ["dataset.json", "imagesTs", "labelsTs"]
    assert json.loads((alone / "dataset.json").read_text())["numTraining"] == 0


def test_isic2017_all_splits_ignore_superpixels(tmp_path):
    src = tmp_path / "ISIC2017"
    for split, ids in (("Training", [0, 1]), ("Validation", [7]), ("Test_v2", [20, 21])):
        for i in ids:
            case = f"ISIC_{i:07d}"
            write_image(src / f"ISIC-2017_{split}_Data" / f"{case}.jpg", seed=i)
            write_image(src / f"ISIC-2017_{split}_Data" / f"{case}_superpixels.png", seed=i)  # to ignore
            write_mask(src / f"ISIC-2017_{split}_Part1_GroundTruth" / f"{case}_segmentation.png", box_mask((24, 32), i))
        (src / f"ISIC-2017_{split}_Data" / f"ISIC-2017_{split}_Data_metadata.csv").write_text("image_id\n")
    zip_folder(src / "ISIC-2017_Test_v2_Data", tmp_path / "ISIC-2017_Test_v2_Data.zip")  # a zip as the source's
    for p in (src / "ISIC-2017_Test_v2_Data").iterdir():  # Test_v2 images: moved into the zip
        p.unlink()
    (src / "ISIC-2017_Test_v2_Data").rmdir()
    (tmp_path / "ISIC-2017_Test_v2_Data.zip").rename(src / "ISIC-2017_Test_v2_Data.zip")

    out = convert("isic2017", src, 13, raw_root=tmp_path / "raw", verbose=False)
    assert case_ids(out / "imagesTr") == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000007"]
    assert case_ids(out / "imagesTs") == case_ids(out / "labelsTs", image=False) == ["ISIC_0000020", "ISIC_0000021"]
    assert json.loads((out / SPLITS_FILE).read_text()) == [
        {"train": ["ISIC_0000000", "ISIC_0000001"], "val": ["ISIC_0000007"]}
    ]
    np.testing.assert_array_equal(read(out / "labelsTs" / "ISIC_0000021.png"), box_mask((24, 32), 21).astype(np.uint8))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_kvasir_zip_with_jpeg_masks(tmp_path):
    folder = tmp_path / "Kvasir-SEG"
    masks = {}
    for i, name in enumerate(["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv"]):
        masks[name] = box_mask((24, 32), i)
        write_image(folder / "images" / f"{name}.jpg", seed=i)
        write_mask(folder / "masks" / f"{name}.jpg", masks[name], rgb=i == 0)  # JPEG masks, grey and RGB
    (folder / "kavsir_bboxes.json").write_text("{}")
    noisy = read(folder / "masks" / "cju0qoxqj9q6s0835b43399p4.jpg")
    assert not set(np.unique(noisy).tolist()) <= {0, 255}  # the fixture really has JPEG noise
    archive = zip_folder(folder, tmp_path / "kvasir-seg.zip")

    out = convert("kvasir", archive, 21, raw_root=tmp_path / "raw", verbose=False)
    assert out.name == "Dataset021_KvasirSEG"
    assert case_ids(out / "imagesTr") == sorted(masks) and not (out / "imagesTs").exists()
    for name, mask in masks.items():
        np.testing.assert_array_equal(read(out / "labelsTr" / f"{name}.png"), mask.astype(np.uint8))
    assert raw_entries(tmp_path / "raw") == ["Dataset021_KvasirSEG"]  # the extraction folder is gone


def test_polyp_pranet_split_with_two_test_sets(tmp_path):
    src = tmp_path / "data"
    for i in range(3):
        write_image(src / "TrainDataset" / "image" / f"{i + 1}.png", seed=i)
        write_mask(src / "TrainDataset" / "mask" / f"{i + 1}.png", box_mask((24, 32), i))
    for name, n in (("CVC-300", 2), ("Kvasir", 2)):
        for i in range(n):
            write_image(src / "TestDataset" / name / "images" / f"{150 + i}.png", seed=10 + i)
            write_mask(src / "TestDataset" / name / "masks" / f"{150 + i}.png", box_mask((24, 32), 10 + i))
    out = convert("polyp", src, 31, raw_root=tmp_path / "raw", max_size=16, verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json", "imagesTr", "imagesTs_CVC-300", "imagesTs_Kvasir",
        "labelsTr", "labelsTs_CVC-300", "labelsTs_Kvasir",
    ]  # fmt: skip
    assert case_ids(out / "imagesTr") == ["1", "2", "3"]
    assert case_ids(out / "imagesTs_CVC-300") == case_ids(out / "labelsTs_Kvasir", image=False) == ["150", "151"]
    image, label = read(out / "imagesTs_Kvasir" / "151_0000.png"), read(out / "labelsTs_Kvasir" / "151.png")
    assert image.shape == (12, 16, 3) and label.shape == (12, 16)  # 32 x 24 -> longer side 16
    assert set(np.unique(label).tolist()) == {0, 1}
    dataset_json = json.loads((out / "dataset.json").read_text())
    assert dataset_json["test_sets"] == {"imagesTs_CVC-300": 2, "imagesTs_Kvasir": 2}
    assert dataset_json["max_size"] == 16
    # the paper's split has official test sets: a hold-out is refused, at conversion and afterwards, writing nothing
    before = sorted(str(p) for p in (tmp_path / "raw").rglob("*"))
    with pytest.raises(ConversionError, match="already has a test split"):
        convert("polyp", src, 32, raw_root=tmp_path / "raw", max_size=16, verbose=False, hold_out=0.3)
    with pytest.raises(ConversionError, match="already has a test split"):
        hold_out_test_set(out, 0.3, verbose=False)
    assert sorted(str(p) for p in (tmp_path / "raw").rglob("*")) == before


def test_mosmed_lvit_layout_grey_and_official_split(tmp_path):
    src = tmp_path / "MosMedDataPlus"
    expected = {}
    for split, names in (("Train", ["study_0255_12", "study_0255_13"]), ("Val", ["study_0300_5"]), ("Test", ["a"])):
        folder = src / f"{split}_Folder"
        (_mkdir(folder) / f"{split}_text.xlsx").write_bytes(b"not read")
        for i, name in enumerate(names):
            expected[name] = box_mask((24, 32), i + len(split))
            write_image(folder / "img" / f"{name}.png", seed=i, rgb_grey=i == 0, grey=i != 0)
            write_mask(folder / "labelcol" / f"{name}.png", expected[name], values=(0, 1) if i == 0 else (0, 255))
    out = convert("mosmed", src, 41, raw_root=tmp_path / "raw", verbose=False)
    assert case_ids(out / "imagesTr") == ["study_0255_12", "study_0255_13", "study_0300_5"]
    assert case_ids(out / "imagesTs") == ["a"]
    for label_file in [*(out / "labelsTr").glob("*.png"), *(out / "labelsTs").glob("*.png")]:
        np.testing.assert_array_equal(read(label_file), expected[label_file.stem].astype(np.uint8))
    for image_file in (out / "imagesTr").glob("*.png"):
        assert read(image_file).shape == (24, 32)  # grey, also when stored as RGB
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "grey"}
    assert json.loads((out / SPLITS_FILE).read_text()) == [
        {"train": ["study_0255_12", "study_0255_13"], "val": ["study_0300_5"]}
    ]


def test_busi_merges_extra_masks(tmp_path):
    folder = tmp_path / "Dataset_BUSI_with_GT" / "Dataset_BUSI_with_GT"  # doubly nested, as in some mirrors
    first, second = box_mask((24, 32), 1), box_mask((24, 32), 2)
    write_image(folder / "benign" / "benign (1).png", rgb_grey=True)
    write_mask(folder / "benign" / "benign (1)_mask.png", first)
    write_mask(folder / "benign" / "benign (1)_mask_1.png", second)
    write_image(folder / "malignant" / "malignant (12).png", grey=True)
    write_mask(folder / "malignant" / "malignant (12)_mask.png", first, rgb=True)
    write_image(folder / "normal" / "normal (3).png", rgb_grey=True)
    write_mask(folder / "normal" / "normal (3)_mask.png", np.zeros((24, 32), bool))
    zip_folder(folder.parent, tmp_path / "src" / "archive.zip")  # as downloaded from Kaggle, in a folder
    out = convert("busi", tmp_path / "src", 51, raw_root=tmp_path / "raw", verbose=False)
    assert case_ids(out / "imagesTr") == ["benign_001", "malignant_012", "normal_003"]
    np.testing.assert_array_equal(read(out / "labelsTr" / "benign_001.png"), (first | second).astype(np.uint8))
    np.testing.assert_array_equal(read(out / "labelsTr" / "malignant_012.png"), first.astype(np.uint8))
    assert not read(out / "labelsTr" / "normal_003.png").any()


@pytest.mark.parametrize(
    "mode, values, suffix, expected",
    [
        ("L", (0, 255), ".png", True),
        ("L", (0, 1), ".png", True),  # lossless 0/1 masks are kept
        ("L", (3, 120), ".png", False),  # below the threshold
        ("RGB", (0, 200), ".png", True),
        ("P", (0, 1), ".png", True),  # palette: index 1 is white
        ("L", (0, 1), ".jpg", False),  # in a JPEG, 1 is noise
    ],
)
def test_read_mask_binarisation(tmp_path, mode, values, suffix, expected):
    mask = box_mask((16, 16), 0)
    array = np.where(mask, values[1], values[0]).astype(np.uint8)
    path = tmp_path / f"mask{suffix}"
    if mode == "P":
        image = Image.fromarray(array, mode="L").convert("P")
        image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        image.putdata(array.ravel().tolist())
    else:
        image = Image.fromarray(np.stack([array] * 3, -1) if mode == "RGB" else array)
    image.save(path, quality=95) if suffix == ".jpg" else image.save(path)
    np.testing.assert_array_equal(read_mask(path), mask if expected else np.zeros_like(mask))


def test_target_size():
    assert target_size(640, 480, 256) == (256, 192)
    assert target_size(480, 640, 256) == (192, 256)
    assert target_size(100, 50, 256) == (100, 50)
    assert target_size(100, 50, None) == (100, 50)


# ----------------------------------------------------------------------------------------------------------------------
# errors, and nothing half-written
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_mask_and_orphan_mask_are_named(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_isic2016(src, n_test=0)
    gt = src / "ISBI2016_ISIC_Part1_Training_GroundTruth"
    (gt / "ISIC_0000001_Segmentation.png").unlink()
    with pytest.raises(ConversionError, match=r"image without mask: .*ISIC_0000001\.jpg"):
        convert("isic2016", src, 61, raw_root=raw, verbose=False)
    write_mask(gt / "ISIC_0000001_Segmentation.png", box_mask((24, 32), 1))
    write_mask(gt / "ISIC_0000009_Segmentation.png", box_mask((24, 32), 9))
    with pytest.raises(ConversionError, match=r"mask without image: .*ISIC_0000009_Segmentation\.png"):
        convert("isic2016", src, 61, raw_root=raw, verbose=False)
    assert raw_entries(raw) == []


def test_size_mismatch_leaves_nothing(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_isic2016(src, n_train=3, n_test=0)
    write_mask(
        src / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000002_Segmentation.png", np.ones((20, 32), bool)
    )
    with pytest.raises(ConversionError, match=r"size mismatch: mask .*ISIC_0000002_Segmentation\.png"):
        convert("isic2016", src, 62, raw_root=raw, verbose=False)  # fails after two cases were written
    assert raw_entries(raw) == []


@pytest.mark.parametrize(
    "name, expected",
    [
        ("isic2016", "ISBI2016_ISIC_Part1_Training_Data"),
        ("isic2017", "ISIC-2017_Training_Data"),
        ("ph2", "PH2 Dataset images"),
        ("kvasir", "Kvasir-SEG"),
        ("polyp", "TrainDataset"),
        ("mosmed", "Train_Folder"),
        ("busi", "Dataset_BUSI_with_GT"),
    ],
)
def test_wrong_folder_names_the_expected_one(tmp_path, name, expected):
    write_image(tmp_path / "src" / "some_folder" / "x.png")
    with pytest.raises(ConversionError, match=re.escape(expected)):
        convert(name, tmp_path / "src", 63, raw_root=tmp_path / "raw", verbose=False)
    assert raw_entries(tmp_path / "raw") == []


def test_missing_subfolder_and_source(tmp_path):
    write_image(tmp_path / "TrainDataset" / "image" / "1.png")
    with pytest.raises(ConversionError, match=r"TrainDataset/mask"):
        convert("polyp", tmp_path, 64, raw_root=tmp_path / "raw", verbose=False)
    with pytest.raises(ConversionError, match="does not exist"):
        convert("polyp", tmp_path / "nowhere", 64, raw_root=tmp_path / "raw", verbose=False)
    with pytest.raises(ConversionError, match="unknown dataset"):
        convert("isic2020", tmp_path, 64, raw_root=tmp_path / "raw", verbose=False)


def test_existing_id_and_overwrite(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_isic2016(src, n_train=2, n_test=0)
    first = convert("isic2016", src, 71, raw_root=raw, verbose=False)
    for kwargs in ({}, {"dataset_name": "Other"}):
        with pytest.raises(ConversionError, match=r"id 71 is already used by .*Dataset071_ISIC2016"):
            convert("isic2016", src, 71, raw_root=raw, verbose=False, **kwargs)
    assert raw_entries(raw) == ["Dataset071_ISIC2016"] and len(list((first / "imagesTr").iterdir())) == 2

    (src / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000001_Segmentation.png").unlink()
    with pytest.raises(ConversionError, match="image without mask"):  # a failed overwrite keeps the old dataset
        convert("isic2016", src, 71, raw_root=raw, overwrite=True, verbose=False)
    assert raw_entries(raw) == ["Dataset071_ISIC2016"] and len(list((first / "imagesTr").iterdir())) == 2

    (src / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000001.jpg").unlink()
    out = convert("isic2016", src, 71, raw_root=raw, dataset_name="Other", overwrite=True, verbose=False)
    assert raw_entries(raw) == ["Dataset071_Other"] and case_ids(out / "imagesTr") == ["ISIC_0000000"]


def test_id_used_in_preprocessed_under_another_name(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_isic2016(src, n_train=1, n_test=0)
    (tmp_path / "pre" / "Dataset074_Old").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    with pytest.raises(ConversionError, match=r"Dataset074_Old \(nnUNet_preprocessed\)"):
        convert("isic2016", src, 74, raw_root=tmp_path / "raw", verbose=False)
    assert raw_entries(tmp_path / "raw") == []
    convert("isic2016", src, 74, raw_root=tmp_path / "raw", dataset_name="Old", verbose=False)  # same name: fine


def test_raw_root_from_environment(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_isic2016(src, n_train=1, n_test=0)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ConversionError, match="nnUNet_raw"):
        convert("isic2016", src, 72, verbose=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    assert convert("isic2016", src, 72, verbose=False) == tmp_path / "env_raw" / "Dataset072_ISIC2016"


def test_bad_arguments(tmp_path):
    for kwargs in ({"dataset_id": 0}, {"dataset_id": 1000}, {"max_size": 0}, {"dataset_name": "my data"}):
        arguments = {"dataset_id": 73, **kwargs}
        with pytest.raises(ConversionError):
            convert("kvasir", tmp_path, raw_root=tmp_path / "raw", verbose=False, **arguments)
    assert set(CONVERTERS) == {"isic2016", "isic2017", "ph2", "kvasir", "polyp", "mosmed", "busi"}


def test_a_truncated_zip_is_called_damaged_not_neither_folder_nor_zip(tmp_path):
    make_isic2016(tmp_path / "src", n_train=1, n_test=0)
    archive = zip_folder(tmp_path / "src" / "ISBI2016_ISIC_Part1_Training_Data", tmp_path / "data.zip")
    archive.write_bytes(archive.read_bytes()[:-30])  # cut off the central directory at the end
    assert not zipfile.is_zipfile(archive)
    with pytest.raises(ConversionError, match=r"data.zip is a damaged or truncated .zip file"):
        convert("isic2016", archive, 75, raw_root=tmp_path / "raw", verbose=False)
    other = tmp_path / "data.rar"
    other.write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(ConversionError, match="neither a folder nor a .zip file"):
        convert("isic2016", other, 75, raw_root=tmp_path / "raw", verbose=False)


def test_a_converted_dataset_nnunet_cannot_train_folds_on_is_flagged(tmp_path):
    from nnunet_dale.nnunet_env import NnUNetPitfallWarning

    make_isic2016(tmp_path / "src", n_train=1, n_test=0)
    with pytest.warns(NnUNetPitfallWarning, match="Dataset076_ISIC2016 has 1 training case"):
        convert("isic2016", tmp_path / "src", 76, raw_root=tmp_path / "raw", verbose=False)
