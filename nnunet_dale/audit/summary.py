"""The audit's summaries: per-pixel noisy share -> per connected region of the annotation and per case, on the
annotation's boundary band (docs/audit.md); the case ranking and its CSV rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from nnunet_dale.audit.model import TrainedModel, foreground
from nnunet_dale.audit.omega import audit_image, case_arrays
from nnunet_dale.audit.settings import AuditSettings
from nnunet_dale.metrics import dice

__all__ = [
    "CASE_ROW",
    "CASE_SCORE",
    "CSV_COLUMNS",
    "CaseAudit",
    "audit_case",
    "boundary_band",
    "csv_text",
    "rank_key",
    "rank_rows",
    "region_statistics",
]

CSV_COLUMNS = (
    "rank",
    "case",
    "region",
    "area_px",
    "band_px",
    "suspect_area_px",
    "boundary_flagged_share",
    "score",
    "evidence",
    "case_score",
    "fuzzy_noisy_share",
    "prediction_disagreement",
)
CASE_ROW = "all"  # the `region` value of a case's summary row
CASE_SCORE = "evidence"  # the column that ranks cases and regions (docs/audit.md: why the evidence)


def boundary_band(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a 2D mask's contour: inside pixels whose distance to the background is <= radius and
    outside pixels whose distance to the mask is <= radius (Euclidean; the image border is not a contour). 3D input
    is handled slice by slice (the model is 2D)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 3:
        return np.stack([boundary_band(m, radius) for m in mask])
    if not mask.any():
        return np.zeros_like(mask)
    inside = ndimage.distance_transform_edt(mask) if not mask.all() else np.full(mask.shape, np.inf)
    outside = ndimage.distance_transform_edt(~mask)
    return (mask & (inside <= radius)) | (~mask & (outside <= radius))


def region_statistics(
    noisy_share: np.ndarray,
    annotation: np.ndarray,
    band: int = 3,
    threshold: float = 0.5,
    prediction: np.ndarray | None = None,
    fuzzy: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per connected region of the annotation and per case, from the per-pixel noisy share (2D or slice stack).

    Region (8-connected, 26 in 3D): `band_px` pixels within `band` of its contour; `suspect_area_px` of them with a
    noisy share >= `threshold`; `boundary_flagged_share` the share of the 1-pixel rings on both sides of the contour
    with a noisy share >= `threshold`; `score` the band's mean noisy share. Case (region "all"): the same over the audit
    zone = the band of the whole annotation united with the band of the model's `prediction` (a missed or spurious
    lesion is looked at too); a score on an empty zone is 0. `fuzzy_noisy_share` is the M^f-weighted noisy share of
    the whole image (the training log's statistic, per case); `prediction_disagreement` is 1 - Dice(prediction,
    annotation), a reference that does not use omega. `evidence` (with the per-pixel `evidence` map, else NaN) is the
    mean positive evidence (`TileOmega.evidence`: how much a step on the reliable data raises the pixel's own loss)
    on a region's band, and for the case over every judged pixel (M^f > 0; the whole image without `fuzzy`): the
    audit's case score.
    """
    from skimage.measure import label

    noisy_share = np.asarray(noisy_share, dtype=np.float64)
    annotation = np.asarray(annotation, dtype=bool)
    positive = None if evidence is None else np.maximum(np.asarray(evidence, dtype=np.float64), 0.0)

    def mean_evidence(where: np.ndarray) -> float:
        return float("nan") if positive is None else float(positive[where].mean()) if where.any() else 0.0

    def summary(zone: np.ndarray, ring: np.ndarray) -> dict[str, Any]:
        values = noisy_share[zone]
        return {
            "band_px": int(zone.sum()),
            "suspect_area_px": int((values >= threshold).sum()),
            "boundary_flagged_share": float((noisy_share[ring] >= threshold).mean()) if ring.any() else float("nan"),
            "score": float(values.mean()) if zone.any() else 0.0,
            "evidence": mean_evidence(zone),
        }

    labels = label(annotation, connectivity=annotation.ndim)
    regions = []
    for i in range(1, int(labels.max()) + 1):
        region = labels == i
        regions.append(
            {
                "region": i,
                "area_px": int(region.sum()),
                **summary(boundary_band(region, band), boundary_band(region, 1)),
            }
        )
    zone = boundary_band(annotation, band)
    if prediction is not None:
        zone |= boundary_band(np.asarray(prediction, dtype=bool), band)
    case = {"region": CASE_ROW, "area_px": int(annotation.sum()), **summary(zone, boundary_band(annotation, 1))}
    case["fuzzy_noisy_share"] = (
        float((noisy_share * fuzzy).sum() / max(float(fuzzy.sum()), 1e-12)) if fuzzy is not None else float("nan")
    )
    case["prediction_disagreement"] = 1.0 - dice(prediction, annotation) if prediction is not None else float("nan")
    case["evidence"] = mean_evidence(np.asarray(fuzzy) > 0 if fuzzy is not None else np.ones_like(annotation))
    return regions, case


@dataclass
class CaseAudit:
    case: str
    summary: dict[str, Any]
    regions: list[dict[str, Any]]
    image: np.ndarray  # (Z, H, W) first channel, for the overlay
    annotation: np.ndarray  # (Z, H, W) bool
    noisy_share: np.ndarray  # (Z, H, W)
    zone_flagged: np.ndarray  # (Z, H, W) bool: noisy share >= threshold inside the audit zone
    evidence: np.ndarray  # (Z, H, W) mean evidence over passes


def audit_case(
    model: TrainedModel,
    data: np.ndarray,
    seg: np.ndarray,
    case: str,
    settings: AuditSettings,
    context: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> CaseAudit:
    """Audit one preprocessed case: data (C, Z, H, W), seg (1, Z, H, W) — every slice through the 2D network —
    against the non-fuzzy regions of `context` slices (or its own, when empty)."""
    data, seg = case_arrays(data, seg)
    results = [audit_image(model, data[:, z], seg[z], settings, context) for z in range(seg.shape[0])]
    noisy = np.stack([r.noisy_share for r in results])
    fuzzy = np.stack([r.fuzzy for r in results])
    prediction = np.stack([r.prediction for r in results])
    evidence = np.stack([r.evidence for r in results])
    annotation = foreground(model, seg)
    squeeze = (lambda a: a[0]) if seg.shape[0] == 1 else (lambda a: a)
    regions, summary = region_statistics(
        squeeze(noisy), squeeze(annotation), settings.band, settings.threshold, squeeze(prediction), squeeze(fuzzy),
        squeeze(evidence),
    )  # fmt: skip
    zone = boundary_band(annotation, settings.band) | boundary_band(prediction, settings.band)
    flagged = zone & (noisy >= settings.threshold)
    return CaseAudit(case, summary, regions, data[0], annotation, noisy, flagged, evidence)


def rank_key(audit: CaseAudit) -> tuple:
    """Case order: decreasing case score (the case's evidence), ties by name."""
    return (-audit.summary[CASE_SCORE], audit.case)


def rank_rows(audits: Sequence[CaseAudit]) -> list[dict[str, Any]]:
    """CSV rows: cases by decreasing case score (ties by name), each case's summary row first, then its regions by
    decreasing evidence (the case score's column, `CASE_SCORE`)."""
    ordered = sorted(audits, key=rank_key)
    rows = []
    for rank, audit in enumerate(ordered, 1):
        common = {"rank": rank, "case": audit.case, "case_score": audit.summary[CASE_SCORE]}
        rows.append({**common, **audit.summary})
        for region in sorted(audit.regions, key=lambda r: (-r[CASE_SCORE], r["region"])):
            rows.append({**common, **region, "fuzzy_noisy_share": "", "prediction_disagreement": ""})
    return rows


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6g}"
        return v

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: fmt(row.get(k, "")) for k in CSV_COLUMNS})
    return buffer.getvalue()
