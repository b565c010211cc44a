"""Label audit: rank the training cases of a trained nnU-Net 2d model by DALE's label-confidence signal omega.

For every preprocessed training case, the trained network plays theta_n of Algorithm 1: the case is split into fuzzy
and non-fuzzy regions (`split.fuzzy_split`, the trainer's split patch size rule) and omega* is learned by the exact
one-step lookahead (`confidence.learn_confidence`, Eq. 8-11) with the trainer's pixel-weighted loss. A pixel is
judged *noisy* in a pass when omega went down. This is repeated over several passes (flips / rotations by 90 degrees,
undone afterwards, then shifts of the split's patch grid) and averaged into a per-pixel noisy share in [0, 1].
Per case and per connected region of the annotation the noisy share is summarised on the annotation's boundary band
(docs/audit.md); `audit.csv` ranks the cases, `top/` shows the highest-scored ones. On a dataset with known clean
labels (the built-in benchmark), `audit_quality` measures how well the ranking finds the corrupted annotations.

Modules: `settings` (AuditSettings, AuditError), `model` (the trained model and its preprocessed cases), `omega`
(omega on one image, the context cases), `summary` (regions, cases, ranking), `runner` (`audit`: the files),
`quality` (against clean labels).
"""

from nnunet_dale.audit.model import (
    CHECKPOINTS,
    PREPROCESSED_UNSET,
    TrainedModel,
    checked_device,
    find_checkpoint,
    foreground,
    load_trained_model,
    loss_target,
    open_model,
    preprocessed_cases_folder,
    preprocessed_dataset,
    resolve_fold_folder,
)
from nnunet_dale.audit.omega import (
    ContextSlices,
    ImageAudit,
    Reference,
    TileOmega,
    audit_image,
    case_arrays,
    context_identifiers,
    context_slice,
    forward_transform,
    inverse_transform,
    omega_noisy,
    pass_transforms,
    reference_batch,
    tile_starts,
)
from nnunet_dale.audit.quality import (
    audit_quality,
    auroc,
    case_corruption,
    check_clean_labels,
    clean_labels_folder,
    read_case_scores,
)
from nnunet_dale.audit.runner import (
    audit,
    overlay_png,
    writable_folder,
)
from nnunet_dale.audit.settings import (
    AuditError,
    AuditSettings,
)
from nnunet_dale.audit.summary import (
    CASE_ROW,
    CASE_SCORE,
    CSV_COLUMNS,
    CaseAudit,
    audit_case,
    boundary_band,
    csv_text,
    rank_key,
    rank_rows,
    region_statistics,
)

__all__ = [
    "CASE_ROW",
    "CASE_SCORE",
    "CHECKPOINTS",
    "CSV_COLUMNS",
    "PREPROCESSED_UNSET",
    "AuditError",
    "AuditSettings",
    "CaseAudit",
    "ContextSlices",
    "ImageAudit",
    "Reference",
    "TileOmega",
    "TrainedModel",
    "audit",
    "audit_case",
    "audit_image",
    "audit_quality",
    "auroc",
    "boundary_band",
    "case_arrays",
    "case_corruption",
    "check_clean_labels",
    "checked_device",
    "clean_labels_folder",
    "context_identifiers",
    "context_slice",
    "csv_text",
    "find_checkpoint",
    "foreground",
    "forward_transform",
    "inverse_transform",
    "load_trained_model",
    "loss_target",
    "omega_noisy",
    "open_model",
    "overlay_png",
    "pass_transforms",
    "preprocessed_cases_folder",
    "preprocessed_dataset",
    "rank_key",
    "rank_rows",
    "read_case_scores",
    "reference_batch",
    "region_statistics",
    "resolve_fold_folder",
    "tile_starts",
    "writable_folder",
]
