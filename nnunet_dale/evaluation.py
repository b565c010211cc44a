"""Segmentation evaluation: Dice, IoU, HD95, ASD per class, and Dice inside the reference's fuzzy regions.

Conventions (see docs/evaluation.md for the reasoning):

* Boundary of a mask = mask XOR its binary erosion with the face-connected structuring element (4-connectivity in
  2D, 6-connectivity in 3D), the image outside counting as background: a foreground voxel is on the boundary when one
  of its 2*d face neighbours is background or outside the image.
* Distances are Euclidean, in the physical units of `spacing` (mm for NIfTI, pixels for PNG), from boundary voxel
  centres to the nearest boundary voxel centre of the other mask.
* HD95 = max(P95(d(pred -> ref)), P95(d(ref -> pred))), P95 = numpy's linear-interpolation 95th percentile.
* ASD = mean of the two directed distance sets pooled: (sum d(pred -> ref) + sum d(ref -> pred)) / (|dP| + |dR|).
* Both masks empty: Dice = IoU = 1, HD95 = ASD = 0. Exactly one empty: Dice = IoU = 0, HD95 = ASD = NaN.
* Fuzzy region of a reference: voxels in patches whose min-max-normalised label-edge ratio m (Eq. 4-5 of the AE&ER
  split, edge criterion only) exceeds 0.5.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from nnunet_dale.config import default_patch_size
from nnunet_dale.files import atomic_write
from nnunet_dale.split import fuzzy_split, patch_grid

METRICS = ("Dice", "IoU", "HD95", "ASD")
FUZZY_METRIC = "Dice_fuzzy"
FUZZY_PATCH_BASE = 16
FUZZY_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------------- distances
def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(array).astype(bool, copy=False)
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D mask, got shape {mask.shape}")
    return mask


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {ndim}D image")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must be positive and finite")
    return spacing


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: mask XOR binary_erosion(mask), face connectivity, outside = background."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from every True voxel of `source` (C order) to the nearest True voxel of `target`."""
    if not source.any():
        return np.zeros(0, dtype=np.float64)
    if not target.any():
        return np.full(int(source.sum()), np.inf)
    return ndimage.distance_transform_edt(~target, sampling=spacing)[source].astype(np.float64)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (d(pred -> ref), d(ref -> pred)) in physical units, 2D or 3D.

    d(pred -> ref)[i] = min_{y in dR} ||(x_i - y) * spacing|| for the i-th boundary voxel x_i of pred (C order), with
    dP, dR the boundaries of `boundary` (mask XOR erosion, face connectivity); computed with scipy's
    distance_transform_edt(sampling=spacing) on the complement of the other boundary. An empty mask has no boundary
    voxels (an empty array); distances to an empty boundary are inf.
    """
    pred = _as_mask(pred, "pred")
    ref = _as_mask(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    spacing = _check_spacing(spacing, pred.ndim)
    union = pred | ref
    if union.any():
        # crop to the union's bounding box plus one voxel: exact (all boundary voxels are inside, and the margin or
        # the image border is background either way) and much faster for small lesions in large volumes
        where = np.nonzero(union)
        box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
        pred, ref = pred[box], ref[box]
    pred_edge, ref_edge = boundary(pred), boundary(ref)
    return _directed(pred_edge, ref_edge, spacing), _directed(ref_edge, pred_edge, spacing)


# ------------------------------------------------------------------------------------------------------ metrics
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred + n_ref == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (n_pred + n_ref)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    fuzzy_mask: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """Per label l, with P = (pred == l), R = (ref == l), F = fuzzy_mask:

    Dice = 2|P & R| / (|P| + |R|), IoU = |P & R| / |P | R|,
    HD95 = max(P95(d(P -> R)), P95(d(R -> P))), ASD = mean(d(P -> R) concatenated with d(R -> P)),
    n_ref = |R|, n_pred = |P|, and with a fuzzy mask Dice_fuzzy = Dice(P & F, R & F) (NaN when F is empty).
    Both empty: Dice = IoU = 1, HD95 = ASD = 0; exactly one empty: Dice = IoU = 0, HD95 = ASD = NaN.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"segmentations must be 2D or 3D, got shape {ref.shape}")
    spacing = _check_spacing(spacing, ref.ndim)
    if fuzzy_mask is not None:
        fuzzy_mask = np.asarray(fuzzy_mask, dtype=bool)
        if fuzzy_mask.shape != ref.shape:
            raise ValueError(f"fuzzy mask {fuzzy_mask.shape} does not match the reference {ref.shape}")
    results: dict[int, dict[str, float]] = {}
    for label in labels:
        p, r = pred == label, ref == label
        n_pred, n_ref = int(p.sum()), int(r.sum())
        union = int(np.count_nonzero(p | r))
        entry: dict[str, float] = {}
        entry["Dice"] = dice(p, r)
        entry["IoU"] = 1.0 if union == 0 else int(np.count_nonzero(p & r)) / union
        if n_pred == 0 and n_ref == 0:
            entry["HD95"], entry["ASD"] = 0.0, 0.0
        elif n_pred == 0 or n_ref == 0:
            entry["HD95"], entry["ASD"] = math.nan, math.nan
        else:
            d_pr, d_rp = surface_distances(p, r, spacing)
            entry["HD95"] = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
            entry["ASD"] = float(np.concatenate([d_pr, d_rp]).mean())
        entry["n_ref"] = n_ref
        entry["n_pred"] = n_pred
        if fuzzy_mask is not None:
            entry[FUZZY_METRIC] = dice(p & fuzzy_mask, r & fuzzy_mask) if fuzzy_mask.any() else math.nan
        results[int(label)] = entry
    return results


def reference_fuzzy_mask(
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    threshold: float = FUZZY_THRESHOLD,
) -> np.ndarray:
    """Fuzzy region of a reference label map: voxels of patches whose edge score m > threshold.

    m is the AE&ER split's per-patch score with the edge criterion only (fuzzy_split(use_entropy=False)): the share of
    label-edge voxels in the patch (Eq. 4), min-max normalised over the image's patches (Eq. 5). Patches default to
    the trainer's default split patch (`config.default_patch_size`: 16 voxels per axis for isotropic images). A
    reference with fewer than two patches, or whose patches all have the same edge ratio (e.g. no foreground), has
    an empty fuzzy region.
    """
    ref = np.asarray(ref)
    if ref.ndim not in (2, 3):
        raise ValueError(f"reference must be 2D or 3D, got shape {ref.shape}")
    spacing = (1.0,) * ref.ndim if spacing is None else _check_spacing(spacing, ref.ndim)
    patch = (
        tuple(int(p) for p in patch_size)
        if patch_size is not None
        else default_patch_size(spacing, ref.shape, FUZZY_PATCH_BASE)
    )
    labels = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    split = fuzzy_split(labels, labels, patch, use_entropy=False, use_edges=True)
    grid = patch_grid(tuple(ref.shape), patch, labels.device)
    return (split.score[0, grid.index] > threshold).view(ref.shape).numpy()


# ------------------------------------------------------------------------------------------------------ folders
def supported_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    return sorted({e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}, key=len, reverse=True)


def _guess_file_ending(ref_dir: Path) -> str:
    endings = supported_endings()
    found = set()
    for f in ref_dir.iterdir():
        if f.is_file():
            ending = next((e for e in endings if f.name.lower().endswith(e)), None)
            if ending is not None:
                found.add(ending)
    if not found:
        raise FileNotFoundError(f"no segmentation files with a supported ending {endings} in {ref_dir}")
    if len(found) > 1:
        raise ValueError(f"{ref_dir} holds several file endings {sorted(found)}; pass file_ending")
    return found.pop()


def read_segmentation(reader, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A segmentation as an integer (H, W) or (D, H, W) array and its spacing in array-axis order."""
    try:
        seg, props = reader.read_seg(str(path))
    except (RuntimeError, OSError, ValueError, SyntaxError) as error:  # SimpleITK / PIL / nibabel on a bad file
        raise ValueError(f"{path}: cannot read it as a segmentation ({type(error).__name__}: {error})") from None
    seg = np.asarray(seg)
    if seg.ndim not in (3, 4) or seg.shape[0] != 1:
        raise ValueError(f"{path}: expected a single-channel 2D or 3D segmentation, got array shape {seg.shape}")
    seg = seg[0]
    spacing = tuple(float(s) for s in props["spacing"])
    if seg.ndim == 3 and seg.shape[0] == 1:  # 2D images come as (1, H, W) with a dummy first spacing (999 for PNG)
        seg, spacing = seg[0], spacing[1:]
    if np.issubdtype(seg.dtype, np.floating):
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise ValueError(f"{path}: segmentation holds non-integer values")
        seg = rounded
    return seg.astype(np.int32, copy=False), spacing


LABELS_SEEN = "_label_values"  # a case's label values in prediction or reference; dropped before the summary


def _evaluate_case(reader_class, pred_file: Path, ref_file: Path, labels: Sequence[int], fuzzy: bool) -> dict:
    reader = reader_class()
    ref, spacing = read_segmentation(reader, ref_file)
    pred, pred_spacing = read_segmentation(reader, pred_file)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch for {pred_file.name}: prediction {pred.shape}, reference {ref.shape}")
    if not np.allclose(pred_spacing, spacing, rtol=1e-3):
        warnings.warn(
            f"{pred_file.name}: prediction spacing {pred_spacing} differs from the reference's {spacing}; "
            "using the reference's",
            stacklevel=2,
        )
    check_label_values(pred, ref, labels, pred_file)
    fuzzy_mask = reference_fuzzy_mask(ref, spacing) if fuzzy else None
    metrics = case_metrics(pred, ref, labels, spacing, fuzzy_mask)
    return {
        "prediction_file": str(pred_file),
        "reference_file": str(ref_file),
        "spacing": list(spacing),
        "metrics": {str(k): v for k, v in metrics.items()},
        LABELS_SEEN: sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref))),
    }


def check_label_values(pred, ref, labels, pred_file: Path) -> None:
    """A prediction may hold 0, the evaluated labels and its reference's own labels; anything else (a 0/255 mask, a
    swapped or foreign folder) is a ValueError naming the file, instead of a silent Dice of 0."""
    allowed = {0, *(int(v) for v in labels)} | {int(v) for v in np.unique(ref)}
    stray = sorted({int(v) for v in np.unique(pred)} - allowed)
    if stray:
        raise ValueError(
            f"prediction {pred_file} holds label values {stray} that are neither background (0), an evaluated label "
            f"{sorted(int(v) for v in labels)} nor in its reference: is it a 0/255 mask or the wrong folder? "
            "Predictions and references must hold the dataset's integer labels"
        )


def json_safe(value):
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _summarise(cases: list[dict], labels: Sequence[int], metric_names: Sequence[str]) -> dict:
    means: dict[str, dict] = {}
    for label in labels:
        key = str(label)
        entry: dict = {}
        n_nan: dict[str, int] = {}
        for m in metric_names:
            values = np.array([c["metrics"][key][m] for c in cases], dtype=np.float64)
            finite = ~np.isnan(values)
            entry[m] = float(values[finite].mean()) if finite.any() else math.nan
            n_nan[m] = int((~finite).sum())
        entry["n_cases"] = len(cases)
        entry["n_nan"] = n_nan
        means[key] = entry
    foreground_mean = {}
    foreground = [str(label) for label in labels if label != 0]
    for m in metric_names:
        values = np.array([means[k][m] for k in foreground], dtype=np.float64)
        values = values[~np.isnan(values)]
        foreground_mean[m] = float(values.mean()) if values.size else math.nan
    return {"mean": means, "foreground_mean": foreground_mean}


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    labels: Sequence[int] | None = None,
    file_ending: str | None = None,
    fuzzy: bool = True,
    num_processes: int = 1,
) -> dict:
    """Evaluate every reference in `ref_dir` against the same-named prediction in `pred_dir` (case_metrics per class).

    Files are read with nnU-Net's reader for `file_ending` (guessed from `ref_dir` when None); spacing comes from the
    reader (PNG: 1, so distances are in pixels). `labels` defaults to the union of the labels in the references, minus
    0. With `fuzzy`, Dice_fuzzy is computed inside `reference_fuzzy_mask` of each reference. Writes
    out_dir/per_case.csv (one row per case and label) and out_dir/summary.json ({"mean": {label: {metric: nanmean,
    "n_cases", "n_nan": {metric: count}}}, "foreground_mean": {metric: nanmean over labels != 0}, "metric_per_case":
    [...]}), each atomically and only after every case succeeded; NaN is written as null. Returns the summary as
    written (json.load of summary.json).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    for name, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder {folder} does not exist")
    if file_ending is None:
        file_ending = _guess_file_ending(ref_dir)
    ref_files = sorted(f for f in ref_dir.iterdir() if f.is_file() and f.name.endswith(file_ending))
    if not ref_files:
        raise FileNotFoundError(f"no reference files ending in {file_ending!r} in {ref_dir}")
    pred_files = [pred_dir / f.name for f in ref_files]
    missing = [p.name for p in pred_files if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"prediction {missing[0]} missing in {pred_dir} for reference {ref_dir / missing[0]}{more}"
        )
    reader_class = determine_reader_writer_from_file_ending(
        file_ending, str(ref_files[0]), allow_nonmatching_filename=True, verbose=False
    )
    if labels is None:
        reader = reader_class()
        present: set[int] = set()
        for f in ref_files:
            present.update(int(v) for v in np.unique(read_segmentation(reader, f)[0]))
        labels = sorted(present - {0})
        if not labels:
            raise ValueError(f"the references in {ref_dir} hold no foreground label; pass labels")
    labels = [int(label) for label in labels]

    jobs = [(reader_class, p, r, labels, fuzzy) for p, r in zip(pred_files, ref_files, strict=True)]
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            cases = pool.starmap(_evaluate_case, jobs)
    else:
        cases = [_evaluate_case(*job) for job in tqdm(jobs, desc="evaluating", disable=not sys.stderr.isatty())]
    seen = set().union(*(case.pop(LABELS_SEEN) for case in cases))
    absent = sorted(set(labels) - seen)
    if absent:
        raise ValueError(
            f"--labels {absent} occur in no prediction and no reference of {pred_dir} / {ref_dir}: a typo, or the "
            "wrong folders?"
        )

    metric_names = list(METRICS) + ([FUZZY_METRIC] if fuzzy else [])
    summary = _summarise(cases, labels, metric_names)
    summary["metric_per_case"] = cases
    summary = json_safe(summary)

    columns = ["case", "label", *metric_names, "n_ref", "n_pred", "prediction_file", "reference_file"]

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(columns)
        for ref_file, case in zip(ref_files, cases, strict=True):
            case_name = ref_file.name[: -len(file_ending)] if file_ending else ref_file.name
            for label in labels:
                m = case["metrics"][str(label)]
                values = ["nan" if m[k] is None else repr(float(m[k])) for k in metric_names]
                writer.writerow(
                    [
                        case_name,
                        label,
                        *values,
                        m["n_ref"],
                        m["n_pred"],
                        case["prediction_file"],
                        case["reference_file"],
                    ]
                )

    def write_json(f) -> None:
        json.dump(summary, f, indent=2, allow_nan=False)
        f.write("\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "per_case.csv", write_csv)
    atomic_write(out_dir / "summary.json", write_json)
    return summary
