"""Per-pixel omega maps of test cases in their raw geometry, for the omega column of `nnunet-dale compare`.

For each case (nnU-Net raw images `CASE_0000<ending>`, ... and its reference label `CASE<ending>`):

1. the image is preprocessed by nnU-Net's own preprocessor class of the model's configuration, as nnU-Net's
   predictor does (without the label: transpose, crop to the nonzero region, normalise, resample); the label goes
   through the same preprocessing (same crop box and resampling, as for training cases);
2. `audit.omega.audit_image` gives the mean omega* over the audit's passes on every 2D slice, against the non-fuzzy
   regions of the model's preprocessed training cases (`audit.omega.ContextSlices`: the first `settings.context` ones,
   since a test case is not in the training list), or of the case itself with reference "self";
3. the map goes back to the raw geometry by nnU-Net's export steps in reverse order of the preprocessing
   (`export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape`): resampled to the cropped shape
   with the configuration's probability resampling, inserted into the crop box (omega = 1 outside: no change),
   transposed back;
4. it is saved as `<case>.npy` (float32) in the reference label's shape as `compare` reads it
   (`files.read_segmentation`: 2D images without their leading singleton axis), atomically.

Every case is checked (files, shapes, label values) before the first omega is computed. See docs/usage-compare.md.
"""

from __future__ import annotations

import copy
import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_dale.audit.model import TrainedModel, open_model, preprocessed_dataset
from nnunet_dale.audit.omega import ContextSlices, audit_image, case_arrays
from nnunet_dale.audit.settings import AuditError, AuditSettings
from nnunet_dale.files import atomic_write, check_output_folder, folder_problem, read_segmentation

__all__ = [
    "RawCase",
    "TestCase",
    "case_omega",
    "find_cases",
    "omega_maps",
    "preprocess_case",
    "read_case",
    "to_raw_geometry",
]


@dataclass(frozen=True)
class TestCase:
    """A raw test case: its image files (one per input channel) and its reference label file."""

    name: str
    images: tuple[Path, ...]
    label: Path


def find_cases(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    file_ending: str,
    num_channels: int,
    cases: Sequence[str] | None = None,
) -> list[TestCase]:
    """The cases `CASE_0000<ending>` of `images_dir` (or the named ones), each with its channel files and the label
    `labels_dir/CASE<ending>`; a clear error for a missing folder, channel file or label."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, folder in (("images", images_dir), ("labels", labels_dir)):
        if problem := folder_problem(folder):
            raise FileNotFoundError(f"{what} folder {folder} {problem}")
    pattern = re.compile(r"(.+)_0000" + re.escape(file_ending))
    found = sorted(m.group(1) for p in images_dir.iterdir() if (m := pattern.fullmatch(p.name)))
    if cases is not None:
        if not cases:
            raise AuditError("no cases asked for (an empty case list)")
        missing = sorted(set(cases) - set(found))
        if missing:
            raise AuditError(f"no image {missing[0]}_0000{file_ending} in {images_dir} (cases: {', '.join(missing)})")
        found = [c for c in found if c in set(cases)]
    if not found:
        raise AuditError(f"no images *_0000{file_ending} in {images_dir} (nnU-Net's naming: CASE_0000{file_ending})")
    out = []
    for name in found:
        images = tuple(sorted(images_dir.glob(f"{glob.escape(name)}_[0-9][0-9][0-9][0-9]{file_ending}")))
        if len(images) not in (1, num_channels):  # one file may hold all channels (an RGB PNG, as nnU-Net reads it)
            expected = ", ".join(f"{name}_{c:04d}{file_ending}" for c in range(num_channels))
            raise AuditError(
                f"case {name}: the model needs {num_channels} channels, one file each ({expected}) or all in "
                f"{name}_0000{file_ending}; found {len(images)} files"
            )
        label = labels_dir / f"{name}{file_ending}"
        if not label.is_file():
            raise AuditError(f"case {name} has no label: {label} does not exist")
        out.append(TestCase(name, images, label))
    return out


@dataclass
class RawCase:
    """A test case as read by the model's reader: images (C, *spatial), their properties, the reference labels in
    the shape `compare` reads them."""

    images: np.ndarray
    properties: dict
    reference: np.ndarray


def read_case(model: TrainedModel, case: TestCase) -> RawCase:
    """Read a case with the model's reader (plans.json) and check it: an image that is not zero everywhere, images
    and label of one shape, every label value one of the dataset's labels."""
    reader = model.plans_manager.image_reader_writer_class()
    try:
        images, properties = reader.read_images([str(p) for p in case.images])
        reference, _ = read_segmentation(reader, case.label)
    except (OSError, RuntimeError, ValueError, AssertionError) as e:
        raise AuditError(f"case {case.name}: cannot read its image or label ({type(e).__name__}: {e})") from None
    if images.shape[0] != len(model.dataset_json["channel_names"]):
        raise AuditError(
            f"case {case.name}: its image files hold {images.shape[0]} channels; the model was trained on "
            f"{len(model.dataset_json['channel_names'])}"
        )
    spatial = tuple(images.shape[1:])
    if not np.any(images):
        raise AuditError(f"case {case.name}: the image is zero everywhere (nnU-Net crops images to the nonzero region)")
    if reference.shape not in (spatial, spatial[1:] if spatial[0] == 1 else spatial):
        raise AuditError(f"case {case.name}: label {case.label.name} has shape {reference.shape}, image {spatial}")
    allowed = {int(v) for v in model.label_manager.all_labels}
    if model.label_manager.ignore_label is not None:
        allowed.add(int(model.label_manager.ignore_label))
    unknown = sorted(set(np.unique(reference).tolist()) - allowed)
    if unknown:
        raise AuditError(f"case {case.name}: label values {unknown} are not among the dataset's {sorted(allowed)}")
    return RawCase(images, properties, reference)


def preprocess_case(model: TrainedModel, raw: RawCase) -> tuple[np.ndarray, np.ndarray, dict]:
    """nnU-Net's preprocessing of the case: data (C, Z, H, W) as the predictor makes it (without the label), the
    label (1, Z, H, W) as for a training case (same crop box and resampling), and the properties of the run."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    args = (model.plans_manager, model.configuration_manager, model.dataset_json)
    data, _, properties = preprocessor.run_case_npy(raw.images, None, copy.deepcopy(raw.properties), *args)
    seg = raw.reference.reshape((1, *raw.images.shape[1:]))
    _, seg, _ = preprocessor.run_case_npy(raw.images, seg, copy.deepcopy(raw.properties), *args)
    return data, seg, properties


def to_raw_geometry(model: TrainedModel, values: np.ndarray, properties: dict) -> np.ndarray:
    """A per-pixel map (Z, H, W) of a preprocessed case back in the raw image's geometry (the reader's axis order),
    by nnU-Net's export steps: resampled to the cropped shape with the configuration's probability resampling,
    inserted into the crop box (1 outside), transposed back."""
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    plans, configuration = model.plans_manager, model.configuration_manager
    spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    cropped = properties["shape_after_cropping_and_before_resampling"]
    current = list(configuration.spacing)
    if len(current) < len(cropped):  # a 2d configuration of 3D data keeps the slice spacing
        current = [spacing[0], *current]
    resampled = configuration.resampling_fn_probabilities(values[None].astype(np.float32), cropped, current, spacing)
    if isinstance(resampled, torch.Tensor):
        resampled = resampled.cpu().numpy()
    full = np.ones(properties["shape_before_cropping"], np.float32)
    full = insert_crop_into_image(full, np.asarray(resampled, np.float32)[0], properties["bbox_used_for_cropping"])
    return full.transpose(plans.transpose_backward)


def case_omega(model: TrainedModel, raw: RawCase, settings: AuditSettings, context: Sequence = ()) -> np.ndarray:
    """The mean omega* over the passes of one raw case, in the reference's shape (float32)."""
    data, seg, properties = preprocess_case(model, raw)
    data, seg = case_arrays(data, seg)
    omega = np.stack([audit_image(model, data[:, z], seg[z], settings, context).omega for z in range(seg.shape[0])])
    return to_raw_geometry(model, omega, properties).reshape(raw.reference.shape).astype(np.float32)


def omega_maps(
    result_folder: str | os.PathLike,
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fold: int | str | None = None,
    settings: AuditSettings | None = None,
    cases: Sequence[str] | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Path]:
    """Write `out_dir/<case>.npy`: the mean omega* over `settings.passes` passes of each test case (or of `cases`)
    of images_dir against its label in labels_dir, computed with the trained 2d model of `result_folder` and mapped
    back onto the raw image (omega = 1 outside nnU-Net's crop). Returns case -> written file.

    Every case is read and checked before any omega is computed; each map is written atomically when it is done.
    """
    settings = settings or AuditSettings()
    images_dir, labels_dir, out_dir = Path(images_dir), Path(labels_dir), Path(out_dir)
    check_output_folder(out_dir, "output folder (-o)")
    _, model = open_model(result_folder, fold, checkpoint, device, needs_preprocessed=settings.reference == "others")
    dataset_json: dict[str, Any] = model.dataset_json
    channels = len(dataset_json["channel_names"])
    test_cases = find_cases(images_dir, labels_dir, dataset_json["file_ending"], channels, cases)
    for case in test_cases:  # every bad input before the first (slow) omega
        read_case(model, case)
    context_of: Callable[[str], Sequence] = lambda name: ()  # noqa: E731 - reference "self": no context cases
    if settings.reference == "others":
        context_of = ContextSlices(model, preprocessed_dataset(model)[1], settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for n, case in enumerate(test_cases, 1):
        omega = case_omega(model, read_case(model, case), settings, context_of(case.name))
        path = out_dir / f"{case.name}.npy"
        atomic_write(path, lambda f, omega=omega: np.save(f, omega), binary=True)
        written[case.name] = path
        if progress is not None:
            progress(n, len(test_cases), case.name)
    return written
