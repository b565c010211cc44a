"""A standard noise-robust loss to compare DALE with: generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018).

For a voxel of class y with softmax probability p_y,

    L_q = (1 - p_y^q) / q,        0 < q <= 1,

which tends to the cross-entropy -log p_y as q -> 0 and is the mean absolute error 1 - p_y (up to a factor) at q = 1:
a confidently wrong label (p_y near 0) costs at most 1 / q instead of an unbounded -log p_y, so noisy labels pull less.
The paper's default q = 0.7. ``nnUNetTrainer_GCE`` (variants) puts it in place of the cross-entropy term of nnU-Net's
Dice + CE loss; DALE's paper compares against it (Table 3).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEFAULT_Q", "GeneralisedCrossEntropy", "generalised_cross_entropy"]

DEFAULT_Q = 0.7


def generalised_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, q: float = DEFAULT_Q, ignore_index: int | None = None
) -> torch.Tensor:
    """mean over voxels of L_q = (1 - p_y^q) / q, p = softmax(logits) over dim 1, y the target class.

    ``logits``: (B, C, ...); ``target``: (B, ...) or (B, 1, ...) class indices (float is fine, as nnU-Net passes
    them); voxels whose target is ``ignore_index`` are left out of the mean (0 if every voxel is ignored).
    p_y^q is computed as exp(q log p_y) from log_softmax, which stays finite for p_y -> 0.
    """
    if not 0 < q <= 1:
        raise ValueError(f"generalised cross-entropy needs 0 < q <= 1, got {q!r}")
    if target.ndim == logits.ndim:
        target = target[:, 0]
    target = target.long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    index = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    log_p = torch.log_softmax(logits, dim=1).gather(1, index).squeeze(1)
    loss = (1 - torch.exp(q * log_p)) / q
    if ignore_index is None:
        return loss.mean()
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class GeneralisedCrossEntropy(nn.Module):
    """``generalised_cross_entropy`` as a module with nnU-Net's CE call signature (logits, target)."""

    def __init__(self, q: float = DEFAULT_Q, ignore_index: int | None = None):
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"generalised cross-entropy needs 0 < q <= 1, got {q!r}")
        self.q = q
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return generalised_cross_entropy(logits, target, self.q, self.ignore_index)

    def extra_repr(self) -> str:
        return f"q={self.q}, ignore_index={self.ignore_index}"
