"""What the label audit is asked to do: its settings (passes, shadow step, band, threshold, reference) and its error."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuditError",
    "AuditSettings",
]


class AuditError(ValueError):
    """Something the user pointed the audit at is unusable; the message says what and how to fix it."""


@dataclass(frozen=True)
class AuditSettings:
    """How omega is learned and summarised (docs/audit.md)."""

    passes: int = 8  # flips / 90-degree rotations (8 on square tiles, 4 otherwise), then shifted patch grids
    shadow_lr: float = 1e-2  # eta of the shadow step (Eq. 8): nnU-Net's initial learning rate
    band: int = 3  # half-width in pixels of the boundary band around an annotation contour
    threshold: float = 0.5  # a pixel is flagged (suspect) when its noisy share is at least this
    reference: str = "others"  # non-fuzzy direction of Eq. 9: "others" (context cases) or "self" (the case itself)
    context: int = 4  # number of other training cases whose non-fuzzy regions give the reference direction
    top: int = 10  # overlay PNGs of this many top-scored cases

    def __post_init__(self):
        if self.passes < 1:
            raise AuditError(f"passes must be >= 1, got {self.passes}")
        if not self.shadow_lr > 0:
            raise AuditError(f"shadow_lr must be > 0, got {self.shadow_lr}")
        if self.band < 1:
            raise AuditError(f"band must be >= 1 pixel, got {self.band}")
        if not 0 < self.threshold <= 1:
            raise AuditError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.reference not in ("others", "self"):
            raise AuditError(f"reference must be 'others' or 'self', got {self.reference!r}")
        if self.context < 1:
            raise AuditError(f"context must be >= 1 case, got {self.context}")
        if self.top < 0:
            raise AuditError(f"top must be >= 0, got {self.top}")
