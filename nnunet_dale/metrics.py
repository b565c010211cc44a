"""Segmentation metrics: Dice, IoU, HD95, ASD per class, and Dice inside the reference's fuzzy regions.

Conventions (see docs/evaluation.md for the reasoning):

* Boundary of a mask = mask XOR its binary erosion with the face-connected structuring element (4-connectivity in
  2D, 6-connectivity in 3D), the image outside counting as background: a foreground voxel is on the boundary when one
  of its 2*d face neighbours is background or outside the image.
* Distances are Euclidean, in the physical units of `spacing` (mm for NIfTI, pixels for PNG), from boundary voxel
  centres to the nearest boundary voxel centre of the other mask.
* HD95 = max(P95(d(pred -> ref)), P95(d(ref -> pred))), P95 = numpy's linear-interpolation 95th percentile.
* ASD = mean of the two directed distance sets pooled: (sum d(pred -> ref) + sum d(ref -> pred)) / (|dP| + |dR|).
* Both masks empty: Dice = IoU = 1, HD95 = ASD = 0. Exactly one empty: Dice = IoU = 0, HD95 = ASD = NaN.
* Far false positives: predicted foreground voxels farther than a margin (in `spacing` units) from every
  reference foreground voxel (all predicted voxels when the reference is empty); components: connected components
  of the predicted foreground with full connectivity (8 in 2D, 26 in 3D). Both count the spurious blobs that
  raise HD95 without moving Dice much. Missed components: reference components (full connectivity) without a single
  predicted foreground voxel, the missed lesions that raise HD95 from the other side.
* Fuzzy region of a reference: voxels in patches whose min-max-normalised label-edge ratio m (Eq. 4-5 of the AE&ER
  split, edge criterion only) exceeds 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from nnunet_dale.config import default_patch_size
from nnunet_dale.split import fuzzy_split, score_map

__all__ = [
    "FUZZY_METRIC",
    "FUZZY_PATCH_BASE",
    "FUZZY_THRESHOLD",
    "METRICS",
    "boundary",
    "case_metrics",
    "check_spacing",
    "component_count",
    "dice",
    "far_false_positives",
    "missed_components",
    "reference_fuzzy_mask",
    "surface_distances",
]

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


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
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
    spacing = check_spacing(spacing, pred.ndim)
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


def far_false_positives(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], margin: float) -> int:
    """Predicted foreground voxels whose distance to the nearest reference foreground voxel exceeds `margin`."""
    pred, ref = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not ref.any():
        return int(pred.sum())
    distance = ndimage.distance_transform_edt(~ref, sampling=check_spacing(spacing, ref.ndim))
    return int(np.count_nonzero(pred & (distance > margin)))


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def component_count(mask: np.ndarray) -> int:
    """Connected components of a binary mask, full connectivity (8 neighbours in 2D, 26 in 3D)."""
    return int(_components(_as_mask(mask, "mask"))[1])


def missed_components(pred: np.ndarray, ref: np.ndarray) -> int:
    """Reference components (full connectivity) that no predicted foreground voxel touches: missed lesions."""
    pred, ref = _as_mask(pred, "prediction"), _as_mask(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    labels, count = _components(ref)
    return count - len(np.unique(labels[pred & ref]))


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
    spacing = check_spacing(spacing, ref.ndim)
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
    `config.default_patch_size` (16 voxels per axis for isotropic images, the literal reading's split patch), fixed so
    that the evaluated region does not depend on the trainer (the shipped one scales its patch with the image). A
    reference with fewer than two patches, or whose patches all have the same edge ratio (e.g. no foreground), has
    an empty fuzzy region.
    """
    ref = np.asarray(ref)
    if ref.ndim not in (2, 3):
        raise ValueError(f"reference must be 2D or 3D, got shape {ref.shape}")
    spacing = (1.0,) * ref.ndim if spacing is None else check_spacing(spacing, ref.ndim)
    patch = (
        tuple(int(p) for p in patch_size)
        if patch_size is not None
        else default_patch_size(spacing, ref.shape, FUZZY_PATCH_BASE)
    )
    labels = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    split = fuzzy_split(labels, labels, patch, use_entropy=False, use_edges=True)
    return (score_map(split, patch)[0] > threshold).numpy()
