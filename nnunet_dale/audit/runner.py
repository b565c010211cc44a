"""`audit(result_folder, ...)`: every preprocessed training case of a trained 2d model audited, ranked, and written
to audit.csv, audit.json and top/ (overlay PNGs of the top-scored cases).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nnunet_dale.audit.model import open_model, preprocessed_dataset
from nnunet_dale.audit.omega import ContextSlices
from nnunet_dale.audit.settings import AuditError, AuditSettings
from nnunet_dale.audit.summary import CaseAudit, audit_case, csv_text, rank_key, rank_rows
from nnunet_dale.files import atomic_write, json_safe, staging_dir

__all__ = [
    "audit",
    "overlay_png",
    "writable_folder",
]


def overlay_png(audit: CaseAudit, rank: int, threshold: float) -> bytes:
    """Three panels of the slice with the most annotation (or flags): image with the annotation contour (green) and
    the flagged pixels (red), the noisy-share map and the positive-evidence map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weight = audit.annotation.reshape(len(audit.annotation), -1).sum(1) + audit.zone_flagged.reshape(
        len(audit.annotation), -1
    ).sum(1)
    z = int(np.argmax(weight))
    image, annotation, flagged, share = audit.image[z], audit.annotation[z], audit.zone_flagged[z], audit.noisy_share[z]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    red = np.zeros((*image.shape, 4))
    red[flagged] = (1.0, 0.15, 0.1, 0.55)
    axes[0].imshow(image, cmap="gray", interpolation="nearest")
    axes[0].imshow(red, interpolation="nearest")
    for ax, heat in (
        (axes[1], axes[1].imshow(share, cmap="magma", vmin=0, vmax=1, interpolation="nearest")),
        (axes[2], axes[2].imshow(np.maximum(audit.evidence[z], 0), cmap="magma", vmin=0, interpolation="nearest")),
    ):
        fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    for ax in axes:
        if annotation.any() and not annotation.all():
            ax.contour(annotation.astype(float), levels=[0.5], colors=["lime"], linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title(f"#{rank} {audit.case}: flagged (share >= {threshold:g})", fontsize=8)
    axes[1].set_title(f"noisy share (band mean {audit.summary['score']:.3f})", fontsize=8)
    axes[2].set_title(f"positive evidence (case score {audit.summary['evidence']:.3g})", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def writable_folder(out: Path) -> None:
    """Create `out` (with parents) and check it takes files; an AuditError naming -o otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AuditError(f"-o {out}: cannot create the folder ({error.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise AuditError(f"-o {out}: the folder is not writable")


def audit(
    result_folder: str | os.PathLike,
    output: str | os.PathLike | None = None,
    fold: int | str | None = None,
    settings: AuditSettings | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    cases: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Audit the training labels of a trained 2d model; writes OUT/audit.csv, OUT/audit.json and OUT/top/*.png.

    `output` defaults to `<fold folder>/label_audit`. Returns the CSV path. Every file is written atomically and
    only after every case was audited (`top/` is replaced as a whole).
    """
    settings = settings or AuditSettings()
    fold_dir, model = open_model(result_folder, fold, checkpoint, device)
    out = Path(output) if output is not None else fold_dir / "label_audit"
    folder, dataset = preprocessed_dataset(model)
    identifiers = list(dataset.identifiers)
    if cases is not None:
        missing = sorted(set(cases) - set(identifiers))
        if missing:
            raise AuditError(f"cases not in {folder}: {', '.join(missing)}")
        identifiers = [i for i in identifiers if i in set(cases)]
    if not identifiers:
        raise AuditError(f"no preprocessed cases in {folder}")
    writable_folder(out)  # after the input checks (no empty folder for a refused audit), before the long part

    context_of = ContextSlices(model, dataset, settings)  # context cases come from the whole training set
    audits = []
    for n, identifier in enumerate(identifiers, 1):
        data, seg, _, _ = dataset.load_case(identifier)
        audits.append(audit_case(model, data[:], seg[:], identifier, settings, context_of(identifier)))
        if progress is not None:
            progress(n, len(identifiers), identifier)

    rows = rank_rows(audits)
    ranked = sorted(audits, key=rank_key)
    staging = staging_dir(out, ".top.", ".tmp")
    try:
        for rank, case_audit in enumerate(ranked[: settings.top], 1):
            (staging / f"{rank:02d}_{case_audit.case}.png").write_bytes(
                overlay_png(case_audit, rank, settings.threshold)
            )
        if (out / "top").exists():
            old = staging_dir(out, ".top.", ".old")
            (out / "top").rename(old / "top")
            staging.rename(out / "top")
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out / "top")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta = {
        "result_folder": str(fold_dir),
        "checkpoint": str(model.checkpoint),
        "dataset": model.plans_manager.dataset_name,
        "trainer": model.trainer_name,
        "configuration": model.configuration,
        "preprocessed": str(folder),
        "settings": asdict(settings),
        "split_patch_size": list(model.split_patch_size),
        "dale_config": model.dale_config.to_dict(),
        "num_cases": len(audits),
    }
    atomic_write(out / "audit.json", lambda f: f.write(json.dumps(json_safe(meta), indent=1) + "\n"))
    atomic_write(out / "audit.csv", lambda f: f.write(csv_text(rows)))
    return out / "audit.csv"
