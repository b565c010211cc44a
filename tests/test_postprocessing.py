"""nnU-Net's own postprocessing in the study (`Demo.postprocess_evaluate`): chosen on a run's validation fold by
nnU-Net's CLIs, applied to its test predictions, checked against scipy's largest component on planted blobs (slow:
runs nnU-Net's command lines)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nnunet_dale.demo import Demo, DemoError

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainer_planted"


def _square(top: int, left: int, size: int = 12) -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[top : top + size, left : left + size] = 1
    return mask


def _write(folder: Path, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(mask).save(folder / f"{name}.png")


def _read(folder: Path) -> dict[str, np.ndarray]:
    return {f.stem: np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))}


def _planted_run(root: Path, dataset_2d_plans: tuple[Path, Path], second_lesion_is_real: bool) -> Demo:
    """A finished run without training: validation predictions (with nnU-Net's summary), ground truth, test
    predictions and labels. Validation predictions carry a second component that is a false blob, or a real lesion."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    demo = Demo(root)
    demo.dataset = demo.raw / "Dataset990_DALEBench"
    demo.logs.mkdir(parents=True)
    fold = demo._result_folder(TRAINER, 0)
    fold.mkdir(parents=True)
    for source in dataset_2d_plans:
        shutil.copy(source, fold.parent / ("plans.json" if "Plans" in source.name else "dataset.json"))
    lesion, second = _square(2, 2), _square(24, 24, size=4)
    gt = {f"val_{i}": lesion + (second if second_lesion_is_real else 0) for i in range(4)}
    gt_folder = Path(demo.env["nnUNet_preprocessed"]) / demo.dataset.name / "gt_segmentations"
    _write(gt_folder, gt)
    _write(fold / "validation", {name: lesion + second for name in gt})
    compute_metrics_on_folder(
        str(gt_folder),
        str(fold / "validation"),
        str(fold / "validation" / "summary.json"),
        NaturalImage2DIO(),
        ".png",
        [1],
        None,
        1,
    )
    _write(demo.dataset / "labelsTs", {f"test_{i}": _square(4 + i, 6) for i in range(3)})
    blob = _square(26, 1, size=3)
    _write(demo.out / "predictions" / f"{TRAINER}_fold0", {f"test_{i}": _square(5 + i, 6) + blob for i in range(3)})
    return demo


@pytest.fixture(scope="module")
def dataset_2d_plans(dataset_2d, nnunet_dirs) -> tuple[Path, Path]:
    folder = nnunet_dirs["nnUNet_preprocessed"] / "Dataset990_DALEBench"
    return folder / "nnUNetPlans.json", folder / "dataset.json"


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask > 0)
    sizes = ndimage.sum(mask > 0, labels, range(1, n + 1))
    return (labels == 1 + int(np.argmax(sizes))).astype(np.uint8)


def test_blobs_judged_false_on_validation_are_removed_from_the_test_predictions(tmp_path, dataset_2d_plans, capsys):
    demo = _planted_run(tmp_path, dataset_2d_plans, second_lesion_is_real=False)
    raw_eval = demo._evaluate(demo.out / "predictions" / f"{TRAINER}_fold0")
    evaluation = demo.postprocess_evaluate(TRAINER, 0)
    assert demo.postprocessing_chosen(TRAINER, 0) == ["remove_all_but_largest_component_from_segmentation"]
    raw = _read(demo.out / "predictions" / f"{TRAINER}_fold0")
    done = _read(demo.out / "predictions" / f"{TRAINER}_fold0_postprocessed")
    assert sorted(done) == sorted(raw) == ["test_0", "test_1", "test_2"]
    for name in raw:
        assert ndimage.label(raw[name])[1] == 2  # the planted blob is there before
        np.testing.assert_array_equal(done[name], _largest_component(raw[name]))
    hd95 = [json.loads((e / "summary.json").read_text())["mean"]["1"]["HD95"] for e in (raw_eval, evaluation)]
    assert hd95[1] < hd95[0] / 3  # the far blob set the HD95; without it the boundary shift does
    capsys.readouterr()
    assert demo.postprocess_evaluate(TRAINER, 0) == evaluation  # a second call reuses both finished steps
    reused = capsys.readouterr().out
    assert f"reusing the finished step (postprocessing_{TRAINER}_fold0)" in reused
    assert f"reusing the finished step (apply_postprocessing_{TRAINER}_fold0)" in reused


def test_a_second_component_that_is_real_on_validation_keeps_the_test_predictions(tmp_path, dataset_2d_plans):
    demo = _planted_run(tmp_path, dataset_2d_plans, second_lesion_is_real=True)
    demo.postprocess_evaluate(TRAINER, 0)
    assert demo.postprocessing_chosen(TRAINER, 0) == []
    raw = _read(demo.out / "predictions" / f"{TRAINER}_fold0")
    done = _read(demo.out / "predictions" / f"{TRAINER}_fold0_postprocessed")
    assert sorted(done) == sorted(raw)
    for name in raw:
        np.testing.assert_array_equal(done[name], raw[name])


def test_a_run_without_validation_is_one_clear_error(tmp_path):
    demo = Demo(tmp_path)
    demo.dataset = demo.raw / "Dataset990_DALEBench"
    with pytest.raises(DemoError, match="no finished validation"):
        demo.postprocess_evaluate(TRAINER, 0)
