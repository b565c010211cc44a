"""Omega maps of test cases (nnunet_dale.omega_maps, `nnunet-dale omega-maps`) on a DALE model trained for a few
steps: the geometry against the split computed directly on the raw files and against nnU-Net's own export, the
values against Eq. 8-11 evaluated on tensors built here (learn_confidence itself, but not the maps' tiling, reference
assembly or geometry), errors, and the maps in `compare`'s omega column."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from PIL import Image

from nnunet_dale.audit import AuditSettings, audit_image, load_trained_model
from nnunet_dale.audit.settings import AuditError
from nnunet_dale.cli import main
from nnunet_dale.confidence import learn_confidence
from nnunet_dale.files import load_png
from nnunet_dale.omega_maps import RawCase, find_cases, preprocess_case, to_raw_geometry
from nnunet_dale.split import fuzzy_split
from nnunet_dale.trainer import nnUNetTrainerDALE

from conftest import train_result_folder

BORDER = ((8, 8), (16, 24))  # zero rows above / below, zero columns left / right of the 64 x 64 content
MAPPED = ["test_000", "test_002"]  # the cases given to --cases


def _copy_with_zero_border(source: Path, target: Path, image: bool) -> None:
    target.mkdir()
    for path in sorted(source.glob("*.png")):
        array = load_png(path)
        if image:
            array = np.maximum(array, 1)  # no zero inside: the nonzero region is exactly the content
        Image.fromarray(np.pad(array, BORDER).astype(np.uint8)).save(target / path.name)


@pytest.fixture(scope="module")
def bordered(dataset_2d, nnunet_dirs, tmp_path_factory) -> dict:
    """The shared 64 x 64 dataset's test cases inside zero borders (80 x 104 raw images; nnU-Net's crop to the
    nonzero region brings them back to 64 x 64), a DALE model trained for 3 steps on the shared dataset, and
    `nnunet-dale omega-maps --passes 1` of two of the test cases."""
    root = tmp_path_factory.mktemp("omega")
    source = nnunet_dirs["nnUNet_raw"] / maybe_convert_to_dataset_name(dataset_2d)
    raw = root / "raw"
    raw.mkdir()
    _copy_with_zero_border(source / "imagesTs", raw / "imagesTs", image=True)
    _copy_with_zero_border(source / "labelsTs", raw / "labelsTs", image=False)
    fold = train_result_folder(nnUNetTrainerDALE, dataset_2d, steps=3, results=root / "results")
    out = root / "omega_maps"
    args = ["omega-maps", str(fold.parent), "-f", "0", "-i", str(raw / "imagesTs"), "-r", str(raw / "labelsTs")]
    assert main([*args, "-o", str(out), "--passes", "1", "--cases", *MAPPED]) == 0
    return {"raw": raw, "fold": fold, "out": out, "args": args}


def _content_box(image: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the nonzero pixels, computed here without nnU-Net."""
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def test_maps_line_up_with_the_reference_and_judge_where_the_raw_split_is_fuzzy(bordered):
    model = load_trained_model(bordered["fold"])
    cfg = model.dale_config
    assert sorted(p.name for p in bordered["out"].iterdir()) == [f"{c}.npy" for c in MAPPED]  # no leftovers
    for case in MAPPED:
        image = load_png(bordered["raw"] / "imagesTs" / f"{case}_0000.png")
        label = load_png(bordered["raw"] / "labelsTs" / f"{case}.png")
        omega = np.load(bordered["out"] / f"{case}.npy")
        assert omega.dtype == np.float32 and omega.shape == label.shape == (80, 104)
        box = _content_box(image)
        assert (box[0].start, box[1].start, box[0].stop, box[1].stop) == (8, 16, 72, 80)
        split = fuzzy_split(
            torch.tensor(image[box], dtype=torch.float32)[None, None],
            torch.tensor(label[box], dtype=torch.int64)[None, None],
            model.split_patch_size, cfg.tau, cfg.entropy_bins, cfg.use_entropy, cfg.use_edges,
        )  # fmt: skip
        expected = np.zeros(label.shape, bool)
        expected[box] = split.fuzzy[0, 0].numpy() > 0
        assert 0 < expected.sum() < expected[box].size  # some patches are judged, the least fuzzy one is not
        judged = omega != 1
        assert np.array_equal(judged, expected)
        assert np.all(omega[~expected] == 1)  # outside the crop and on unjudged pixels: no change
        # a flipped or transposed map would not line up
        assert not np.array_equal(judged[::-1], expected) and not np.array_equal(judged[:, ::-1], expected)
        assert judged.T.shape != expected.shape


def _independent_omega(model, data: np.ndarray, label: np.ndarray, context) -> np.ndarray:
    """Eq. 8-11 on one preprocessed image (C, H, W) by `learn_confidence`, with the reference batch built here: the
    non-fuzzy regions of the context images (their own split), as docs/audit.md describes; omega = 1 where M^f = 0."""
    cfg = model.dale_config

    def split(x, y):
        return fuzzy_split(x, y, model.split_patch_size, cfg.tau, cfg.entropy_bins, cfg.use_entropy, cfg.use_edges)

    x, y = torch.tensor(data)[None], torch.tensor(label, dtype=torch.int64)[None, None]
    xr = torch.tensor(np.stack([c[0] for c in context]))
    yr = torch.tensor(np.stack([c[1] for c in context]), dtype=torch.int64)[:, None]
    fuzzy, nonfuzzy_ref = split(x, y).fuzzy, split(xr, yr).nonfuzzy
    network = model.network
    params = dict(network.named_parameters())
    confidence = learn_confidence(
        lambda p, inputs: torch.func.functional_call(network, p, (inputs,), tie_weights=False),
        params, x * fuzzy, xr * nonfuzzy_ref,
        lambda out, omega: model.loss(out, y, omega * fuzzy, fuzzy),
        lambda out: model.loss(out, yr, nonfuzzy_ref),
        fuzzy.shape, 1e-2, 1, 0.1,
    )  # fmt: skip
    return torch.where(fuzzy > 0, confidence.omega, 1.0)[0, 0].numpy()


def test_one_pass_values_match_an_independent_lookahead_and_the_audits_noisy_pixels(bordered):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    model = load_trained_model(bordered["fold"])
    folder = Path(os.environ["nnUNet_preprocessed"]) / model.plans_manager.dataset_name / "nnUNetPlans_2d"
    dataset = infer_dataset_class(str(folder))(str(folder))
    context = []
    for identifier in sorted(dataset.identifiers)[:4]:  # a test case's context: the first 4 training cases
        data, seg, _, _ = dataset.load_case(identifier)
        context.append((np.asarray(data[:, 0], np.float32), np.maximum(np.asarray(seg[0, 0]), 0)))
    case = MAPPED[0]
    image_file = bordered["raw"] / "imagesTs" / f"{case}_0000.png"
    data, _, _ = DefaultPreprocessor(verbose=False).run_case(
        [str(image_file)], None, model.plans_manager, model.configuration_manager, model.dataset_json
    )  # nnU-Net's preprocessing of a test image, as its predictor runs it
    box = _content_box(load_png(image_file))
    label = load_png(bordered["raw"] / "labelsTs" / f"{case}.png")
    assert data.shape == (1, 1, 64, 64)  # cropped to the content, not resampled

    expected = np.ones(label.shape, np.float32)
    expected[box] = _independent_omega(model, data[:, 0], label[box], context)
    omega = np.load(bordered["out"] / f"{case}.npy")
    judged = expected != 1
    assert np.abs(omega - expected).max() < 1e-5
    # one Adam step from 1: omega* = 1 - 0.1 g / (|g| + 1e-8), so 0 < |omega* - 1| <= 0.1 (0.1 when |g| >> 1e-8)
    step = np.abs(omega[judged] - 1)
    assert 0 < step.min() and step.max() <= 0.1 + 1e-6 and np.median(step) > 0.09
    assert 0.05 < np.mean(omega[judged] < 1) < 0.95  # both signs occur

    audit = audit_image(model, data[:, 0], label[box], AuditSettings(passes=1), context)
    assert np.array_equal(audit.noisy_share == 1, omega[box] < 1) and np.array_equal(audit.omega, omega[box])


def _fake_model(plans: dict, dataset_json: dict) -> types.SimpleNamespace:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return types.SimpleNamespace(
        plans_manager=manager,
        configuration_manager=manager.get_configuration("2d"),
        dataset_json=dataset_json,
        label_manager=manager.get_label_manager(dataset_json),
    )


def test_resampling_crop_and_transpose_are_undone_as_nnunets_export_does(bordered):
    """A map on the preprocessed grid of an image with a foreign spacing (so it is resampled), zero borders and a
    transposing plan, mapped back by to_raw_geometry, against nnU-Net's own export of a segmentation of that map."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    model_dir = bordered["fold"].parent
    plans = json.loads((model_dir / "plans.json").read_text())
    plans["transpose_forward"] = plans["transpose_backward"] = [0, 2, 1]
    model = _fake_model(plans, json.loads((model_dir / "dataset.json").read_text()))
    rng = np.random.default_rng(0)
    image = np.zeros((1, 1, 50, 70), np.float32)
    image[0, 0, 5:41, 12:63] = rng.uniform(1, 2, (36, 51))
    label = np.zeros((50, 70), np.int64)
    raw = RawCase(image, {"spacing": (999.0, 0.6, 1.7)}, label)
    data, _, properties = preprocess_case(model, raw)
    assert data.shape[2:] == (round(51 * 1.7), round(36 * 0.6))  # transposed, cropped and resampled to spacing 1
    mask = (rng.random(data.shape[1:]) < 0.5).astype(np.float32)
    ours = to_raw_geometry(model, 1 + 0.1 * mask, properties)
    logits = torch.tensor(np.stack([0.5 - mask, mask - 0.5]))
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, properties,
        num_threads_torch=1,
    )  # fmt: skip
    assert ours.shape == theirs.shape == (1, 50, 70)
    outside = np.ones((1, 50, 70), bool)
    outside[0, 5:41, 12:63] = False
    assert np.all(ours[outside] == 1)
    clear = np.abs(ours - 1.05) > 1e-4  # not a tie of the two logits
    assert 0.2 < (theirs == 1).mean() < 0.8 and clear.mean() > 0.9
    assert np.array_equal((ours > 1.05)[clear], (theirs == 1)[clear])


# ---------------------------------------------------------------------------------------------- errors
def _fails(capsys, args: list[str], message: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def _labels_with(bordered, tmp_path: Path, case: str, array: np.ndarray | None) -> Path:
    """A copy of the test labels with `case`'s label replaced by `array` (removed when None)."""
    labels = tmp_path / "labels"
    shutil.copytree(bordered["raw"] / "labelsTs", labels)
    if array is None:
        (labels / f"{case}.png").unlink()
    else:
        Image.fromarray(array.astype(np.uint8)).save(labels / f"{case}.png")
    return labels


def test_bad_inputs_are_one_line_errors_and_write_nothing(bordered, tmp_path, capsys, monkeypatch):
    fold, raw = bordered["fold"], bordered["raw"]
    images, labels = str(raw / "imagesTs"), str(raw / "labelsTs")
    out = tmp_path / "out"
    common = ["-i", images, "-r", labels, "-o", str(out)]
    _fails(capsys, ["omega-maps", str(tmp_path / "nope"), *common], "does not exist")
    _fails(
        capsys, ["omega-maps", str(fold), "-i", str(tmp_path / "none"), "-r", labels, "-o", str(out)], "images folder"
    )
    _fails(capsys, ["omega-maps", str(fold), *common, "--cases", "test_000", "nope"], "no image nope_0000.png")
    _fails(capsys, ["omega-maps", str(fold), *common, "--passes", "0"], "passes must be >= 1")
    no_label = _labels_with(bordered, tmp_path / "a", "test_001", None)
    _fails(
        capsys,
        ["omega-maps", str(fold), "-i", images, "-r", str(no_label), "-o", str(out)],
        "case test_001 has no label",
    )
    # a bad label among good ones: found before the first omega is computed, so nothing is written
    out.mkdir()
    (out / "keep.npy").write_bytes(b"kept")
    small = _labels_with(bordered, tmp_path / "b", "test_003", np.zeros((64, 64)))
    _fails(
        capsys,
        ["omega-maps", str(fold), "-i", images, "-r", str(small), "-o", str(out)],
        "label test_003.png has shape (64, 64)",
    )
    unknown = np.pad(np.full((64, 64), 3), BORDER)
    bad_value = _labels_with(bordered, tmp_path / "c", "test_003", unknown)
    _fails(
        capsys,
        ["omega-maps", str(fold), "-i", images, "-r", str(bad_value), "-o", str(out)],
        "label values [3] are not among the dataset's [0, 1]",
    )
    blank = tmp_path / "blank"
    shutil.copytree(raw / "imagesTs", blank)
    Image.fromarray(np.zeros((80, 104), np.uint8)).save(blank / "test_002_0000.png")
    _fails(capsys, ["omega-maps", str(fold), "-i", str(blank), "-r", labels, "-o", str(out)], "zero everywhere")
    assert [p.name for p in out.iterdir()] == ["keep.npy"]
    _fails(capsys, ["omega-maps", str(fold), *common[:4], "-o", str(out / "keep.npy")], "is a file, not a folder")
    _fails(capsys, ["omega-maps", str(fold), *common[:4], "-o", str(out / "keep.npy" / "x")], "is a file, not a")

    # a 3d configuration
    fake = tmp_path / "nnUNetTrainerDALE__nnUNetPlans__3d" / "fold_0"
    fake.mkdir(parents=True)
    plans = json.loads((fold.parent / "plans.json").read_text())
    plans["configurations"]["3d_test"] = {"inherits_from": "2d", "patch_size": [16, 64, 64]}
    (fake.parent / "plans.json").write_text(json.dumps(plans))
    shutil.copy(fold.parent / "dataset.json", fake.parent / "dataset.json")
    torch.save({"init_args": {"configuration": "3d_test"}}, fake / "checkpoint_final.pth")
    _fails(capsys, ["omega-maps", str(fake), *common], "omega needs a 2d model")

    monkeypatch.delenv("nnUNet_preprocessed")
    _fails(capsys, ["omega-maps", str(fold), *common], "nnUNet_preprocessed is not set")
    assert [p.name for p in out.iterdir()] == ["keep.npy"]
    # the case's own non-fuzzy region as the reference needs no training cases
    args = ["omega-maps", str(fold), *common, "--reference", "self", "--passes", "1", "--cases", "test_001"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["keep.npy", "test_001.npy"]


def test_a_failure_while_writing_leaves_no_partial_file(bordered, tmp_path, monkeypatch):
    from nnunet_dale.omega_maps import omega_maps

    def broken_save(f, array):
        f.write(b"\x93NUMPY partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "save", broken_save)
    raw = bordered["raw"]
    settings = AuditSettings(passes=1, reference="self")
    with pytest.raises(OSError, match="no space left"):
        omega_maps(
            bordered["fold"],
            raw / "imagesTs",
            raw / "labelsTs",
            tmp_path / "out",
            settings=settings,
            cases=["test_000"],
        )
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------- compare
def test_the_maps_fill_compares_omega_column(bordered, tmp_path):
    from scipy import ndimage

    from nnunet_dale.compare import compare
    from nnunet_dale.evaluation import evaluate_folders

    raw = bordered["raw"]
    evaluations = {}
    for method, grow in (("nnUNet", 0), ("DALE", 1)):
        predictions = tmp_path / f"pred_{method}"
        predictions.mkdir()
        for path in sorted((raw / "labelsTs").glob("*.png")):
            label = load_png(path) > 0
            mask = ndimage.binary_dilation(label, iterations=grow) if grow else label
            Image.fromarray(mask.astype(np.uint8)).save(predictions / path.name)
        evaluations[method] = [tmp_path / f"eval_{method}"]
        evaluate_folders(predictions, raw / "labelsTs", evaluations[method][0])
    result = compare(evaluations, tmp_path / "cmp", images_dir=raw / "imagesTs", omega_dir=bordered["out"])
    figure = result["figure"]
    assert figure["columns"][-1] == "ω" and figure["notes"] == []  # no shape mismatch, every file found
    assert sorted(figure["examples"]) == [f"test_{i:03d}" for i in range(4)]  # two with a map, two "no ω"
    without = compare(evaluations, tmp_path / "cmp2", images_dir=raw / "imagesTs")
    assert "ω" not in without["figure"]["columns"]


def test_channel_files_one_per_channel_or_one_rgb_file(bordered, tmp_path, capsys):
    """nnU-Net reads an RGB PNG's three channels from one CASE_0000.png (its natural-image reader): a 3-channel
    model's case may come as one file or as three; anything else is refused, and so is a file that holds other than
    the model's channel count."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name, files in (("rgb", 1), ("split", 3), ("two", 2)):
        for c in range(files):
            (images / f"{name}_{c:04d}.png").write_bytes(b"")
        (labels / f"{name}.png").write_bytes(b"")
    found = {c.name: len(c.images) for c in find_cases(images, labels, ".png", 3, ["rgb", "split"])}
    assert found == {"rgb": 1, "split": 3}
    with pytest.raises(AuditError, match="needs 3 channels.*found 2 files"):
        find_cases(images, labels, ".png", 3, ["two"])
    # the grey model given an RGB image: the channel count read from the file is checked
    fold, raw = bordered["fold"], bordered["raw"]
    rgb = tmp_path / "rgb_images"
    shutil.copytree(raw / "imagesTs", rgb)
    grey = np.asarray(Image.open(rgb / "test_001_0000.png"))
    Image.fromarray(np.stack([grey] * 3, -1)).save(rgb / "test_001_0000.png")
    args = ["omega-maps", str(fold), "-i", str(rgb), "-r", str(raw / "labelsTs"), "-o", str(tmp_path / "out")]
    _fails(capsys, [*args, "--cases", "test_001"], "hold 3 channels; the model was trained on 1")
