"""Sec. 3.3 of the paper: unstable representation calibration by Gaussian distribution alignment (Eq. 12-15).

Class-conditional Gaussians of the features before the segmentation head are estimated on the non-fuzzy region
(the target; detached) and on the clean part of the fuzzy region (Eq. 12; keeps its gradient), the target
covariance is perturbed (Eq. 13) and L_W is the sum over classes of the squared 2-Wasserstein distance (Eq. 14).
Statistics are weighted by the soft region masks; a class whose weight in either region is below `min_mass`
is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Alignment",
    "ClassGaussians",
    "alignment_loss",
    "class_gaussians",
    "class_membership",
    "fuzzy_objective",
    "gaussian_w2",
    "perturb_covariance",
    "pooled_gaussians",
    "resize_to",
]


def class_membership(target: torch.Tensor, num_classes: int, regions: bool, ignore_label: int | None) -> torch.Tensor:
    """One-hot class membership (B, C, *spatial) of integer labels, or the region masks themselves (regions)."""
    if regions:
        member = target[:, :-1] if ignore_label is not None else target
        return member.to(torch.float32)
    labels = target[:, 0].long()
    known = (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(torch.where(known, labels, 0), num_classes).movedim(-1, 1).to(torch.float32)
    return onehot * known[:, None]


def resize_to(maps: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
    """Area-average (B, C, *spatial') maps to the feature resolution (identity when it already matches)."""
    return maps if maps.shape[2:] == spatial else F.interpolate(maps, spatial, mode="area")


@dataclass
class ClassGaussians:
    """Per-class mean (C, D), covariance (C, D, D) and total weight (C,) of a feature sample."""

    mean: torch.Tensor
    cov: torch.Tensor
    mass: torch.Tensor


def class_gaussians(features: torch.Tensor, membership: torch.Tensor, weight: torch.Tensor) -> ClassGaussians:
    """Eq. 12-13 (operations d, e): weighted mean and covariance of features (B, D, *s) per class of `membership`."""
    d, dtype = features.shape[1], torch.promote_types(features.dtype, torch.float32)  # fp16 under AMP: fp32
    f = features.movedim(1, 0).reshape(d, -1).to(dtype)  # (D, N)
    w = (membership * weight).movedim(1, 0).reshape(membership.shape[1], -1).to(dtype)  # (C, N)
    mass = w.sum(1)
    mean = (w @ f.T) / mass.clamp_min(1e-8)[:, None]
    centred = f[None] - mean[:, :, None]  # (C, D, N)
    cov = (centred * w[:, None]) @ centred.transpose(1, 2) / mass.clamp_min(1e-8)[:, None, None]
    return ClassGaussians(mean=mean, cov=cov, mass=mass)


def pooled_gaussians(
    running: ClassGaussians | None, batch: ClassGaussians, momentum: float, min_mass: float
) -> ClassGaussians:
    """Running class Gaussians (the target of Eq. 14 pooled over iterations, as distribution calibration keeps them):
    mean and covariance move as exponential averages toward a batch's estimate wherever that class has at least
    `min_mass` weight in the batch; `mass` counts all weight that entered, so a class seen once stays usable."""
    batch = ClassGaussians(batch.mean.detach(), batch.cov.detach(), batch.mass.detach())
    enters = batch.mass >= min_mass
    if running is None:
        return ClassGaussians(batch.mean, batch.cov, torch.where(enters, batch.mass, torch.zeros_like(batch.mass)))
    fresh = enters & (running.mass == 0)  # first time this class enters: take the batch's estimate as it is
    keep = torch.where(enters & ~fresh, torch.full_like(batch.mass, momentum), torch.where(fresh, 0.0, 1.0))
    mean = keep[:, None] * running.mean + (1 - keep[:, None]) * batch.mean
    cov = keep[:, None, None] * running.cov + (1 - keep[:, None, None]) * batch.cov
    return ClassGaussians(mean, cov, running.mass + torch.where(enters, batch.mass, torch.zeros_like(batch.mass)))


def perturb_covariance(cov: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 13: Sigma' = Sigma + eps * 1 with eps ~ U(0, scale * mean variance), drawn per class."""
    u = torch.rand(cov.shape[0], device=cov.device, dtype=cov.dtype, generator=generator)
    eps = u * scale * cov.diagonal(dim1=-2, dim2=-1).mean(-1)
    return cov + eps[:, None, None]


def _symmetric(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def gaussian_w2(
    mean_t: torch.Tensor, cov_t: torch.Tensor, mean_f: torch.Tensor, cov_f: torch.Tensor, ridge: float = 1e-4
) -> torch.Tensor:
    """Eq. 14: squared 2-Wasserstein distance between N(mean_t, cov_t) and N(mean_f, cov_f), batched -> (C,).

    W^2 = |mu_t - mu_f|^2 + tr(S_t + S_f - 2 (S_t^1/2 S_f S_t^1/2)^1/2), computed in float64 on symmetrised,
    ridge-regularised covariances. The target (t) is a constant: no gradient flows to it. The trace of the matrix
    square root is the sum of square roots of the eigenvalues, whose gradient is stable even for repeated
    eigenvalues (no eigenvector derivative is needed).
    """
    eye = torch.eye(cov_t.shape[-1], dtype=torch.float64, device=cov_t.device)
    s_t = _symmetric(cov_t.detach().double()) + ridge * eye
    s_f = _symmetric(cov_f.double()) + ridge * eye
    evals, evecs = torch.linalg.eigh(s_t)
    root_t = (evecs * evals.clamp_min(0).sqrt()[..., None, :]) @ evecs.transpose(-1, -2)
    cross = torch.linalg.eigvalsh(_symmetric(root_t @ s_f @ root_t)).clamp_min(ridge**2).sqrt().sum(-1)
    trace = s_t.diagonal(dim1=-2, dim2=-1).sum(-1) + s_f.diagonal(dim1=-2, dim2=-1).sum(-1)
    mean_term = (mean_t.detach().double() - mean_f.double()).pow(2).sum(-1)
    return (mean_term + trace - 2 * cross).clamp_min(0)


@dataclass
class Alignment:
    """L_W (Eq. 14, float32 scalar) and how many classes entered it."""

    loss: torch.Tensor
    classes_used: torch.Tensor


def alignment_loss(
    target: ClassGaussians,
    fuzzy: ClassGaussians,
    perturbation: float = 0.01,
    ridge: float = 1e-4,
    min_mass: float = 8.0,
    generator: torch.Generator | None = None,
    scale: str = "none",
) -> Alignment:
    """Eq. 13-14: L_W = sum over classes with enough weight in both regions of W^2(N_n', N_f'); with
    scale="trace" each class's W^2 is divided by the trace of its (detached) target covariance, which makes L_W
    free of the features' scale: a fuzzy Gaussian one target standard deviation away costs about 1."""
    cov_t = perturb_covariance(target.cov.detach(), perturbation, generator)
    w2 = gaussian_w2(target.mean, cov_t, fuzzy.mean, fuzzy.cov, ridge)
    if scale == "trace":
        w2 = w2 / (cov_t.detach().double().diagonal(dim1=-2, dim2=-1).sum(-1) + ridge * cov_t.shape[-1])
    used = (target.mass >= min_mass) & (fuzzy.mass >= min_mass)
    loss = torch.where(used, w2, torch.zeros_like(w2)).sum().to(torch.float32)
    return Alignment(loss=loss, classes_used=used.sum())


def fuzzy_objective(
    weighted_seg_loss: torch.Tensor, l_w: torch.Tensor, alpha: float, mean_omega: torch.Tensor
) -> torch.Tensor:
    """Eq. 15: L_f = omega*(L + alpha L_W); omega* weights L per voxel (inside `weighted_seg_loss`) and the batch-level
    L_W by the fuzzy-region mean of omega*."""
    return weighted_seg_loss + alpha * mean_omega * l_w
