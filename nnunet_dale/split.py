"""Sec. 3.1 of the paper: the AE&ER soft-threshold split of a batch into fuzzy and non-fuzzy regions (Eq. 3-7).

All functions are batched, run on the input's device, and work for 2D (B, C, H, W) and 3D (B, C, D, H, W) tensors.
Patches tile the image from its first voxel; where the image size is not a multiple of the patch size the last
patch along that axis is smaller (it is not padded).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "FuzzySplit",
    "PatchGrid",
    "edge_ratio",
    "fuzzy_split",
    "label_edges",
    "minmax_normalise",
    "patch_entropy",
    "patch_grid",
    "patch_mean",
    "score_map",
    "soft_masks",
]


@dataclass(frozen=True)
class PatchGrid:
    """Which patch each voxel belongs to, for one spatial shape and patch size."""

    index: torch.Tensor  # (N,) long: patch id of every voxel, voxels in C order
    sizes: torch.Tensor  # (L,) float: number of voxels in each patch
    num_patches: int


@functools.lru_cache(maxsize=32)
def patch_grid(spatial_shape: tuple[int, ...], patch_size: tuple[int, ...], device: torch.device) -> PatchGrid:
    """Patch id of every voxel for patches of `patch_size` tiling `spatial_shape` (last patch per axis may be smaller).

    Cached: the trainer asks for the same grid every iteration.
    """
    if len(spatial_shape) != len(patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} does not match the image dimensionality {len(spatial_shape)}")
    counts = [math.ceil(s / p) for s, p in zip(spatial_shape, patch_size)]
    index = torch.zeros(spatial_shape, dtype=torch.long, device=device)
    stride = 1
    for axis in reversed(range(len(spatial_shape))):
        coord = torch.arange(spatial_shape[axis], device=device) // patch_size[axis]
        view = [1] * len(spatial_shape)
        view[axis] = -1
        index += coord.view(view) * stride
        stride *= counts[axis]
    index = index.flatten()
    sizes = torch.bincount(index, minlength=stride).to(torch.float32)
    return PatchGrid(index=index, sizes=sizes, num_patches=stride)


def patch_mean(values: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Mean of (B, C, *spatial) values over each patch -> (B, C, L)."""
    flat = values.flatten(2).to(torch.float32)
    sums = flat.new_zeros(*flat.shape[:2], grid.num_patches)
    sums.index_add_(2, grid.index, flat)
    return sums / grid.sizes


def patch_entropy(image: torch.Tensor, grid: PatchGrid, bins: int = 32) -> torch.Tensor:
    """Eq. 3: Shannon entropy of each patch's intensity histogram, averaged over channels -> (B, L).

    The histogram has `bins` equal bins over each image's own intensity range (per channel); a constant image has
    entropy 0 everywhere.
    """
    b, c = image.shape[:2]
    flat = image.detach().flatten(2).to(torch.float32)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    scaled = (flat - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    level = (scaled * bins).long().clamp_(0, bins - 1)
    slot = grid.index * bins + level  # (B, C, N): one histogram slot per (patch, bin)
    counts = flat.new_zeros(b, c, grid.num_patches * bins)
    counts.scatter_add_(2, slot, torch.ones_like(flat))
    p = counts.view(b, c, grid.num_patches, bins) / grid.sizes[:, None]
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.mean(1)


def label_edges(labels: torch.Tensor) -> torch.Tensor:
    """Edge map of labels (B, C, *spatial): voxels whose 3^d neighbourhood holds another value in any channel."""
    pool = F.max_pool2d if labels.ndim == 4 else F.max_pool3d
    lab = labels.to(torch.float32)
    differs = pool(lab, 3, stride=1, padding=1) + pool(-lab, 3, stride=1, padding=1) > 0
    return differs.any(1, keepdim=True)


def edge_ratio(labels: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Eq. 4: share of label-edge voxels in each patch -> (B, L)."""
    return patch_mean(label_edges(labels), grid)[:, 0]


def minmax_normalise(values: torch.Tensor) -> torch.Tensor:
    """Eq. 5: min-max normalise each image's patch values (B, L); an image whose values are all equal gives 0."""
    lo = values.amin(1, keepdim=True)
    span = values.amax(1, keepdim=True) - lo
    return torch.where(span > 0, (values - lo) / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)


def soft_masks(m: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: fuzzy mask M^f (1 above tau, else m) and non-fuzzy mask M^n (1 below tau, else tau - m clamped at 0)."""
    fuzzy = torch.where(m > tau, torch.ones_like(m), m)
    nonfuzzy = torch.where(m < tau, torch.ones_like(m), (tau - m).clamp_min(0.0))
    return fuzzy, nonfuzzy


@dataclass
class FuzzySplit:
    """Per-voxel soft masks (B, 1, *spatial) of Eq. 6-7 and the per-patch fuzziness m (B, L)."""

    fuzzy: torch.Tensor
    nonfuzzy: torch.Tensor
    score: torch.Tensor


def fuzzy_split(
    image: torch.Tensor,
    labels: torch.Tensor,
    patch_size: Sequence[int],
    tau: float = 0.9,
    bins: int = 32,
    use_entropy: bool = True,
    use_edges: bool = True,
) -> FuzzySplit:
    """Eq. 3-7: split a batch into soft fuzzy / non-fuzzy voxel masks from patch entropy and label edge ratio.

    `image` is (B, C, *spatial); `labels` is (B, 1, *spatial) integer labels or (B, R, *spatial) region masks.
    With only one criterion enabled (the AE-only and ER-only ablations), m is that criterion alone.
    """
    if not (use_entropy or use_edges):
        raise ValueError("the AE&ER split needs at least one of use_entropy and use_edges")
    spatial = image.shape[2:]
    if tuple(labels.shape[2:]) != tuple(spatial):
        raise ValueError(f"labels {tuple(labels.shape)} do not match the image {tuple(image.shape)}")
    grid = patch_grid(tuple(spatial), tuple(patch_size), image.device)
    scores = []
    if use_entropy:
        scores.append(minmax_normalise(patch_entropy(image, grid, bins)))
    if use_edges:
        scores.append(minmax_normalise(edge_ratio(labels, grid)))
    m = scores[0] if len(scores) == 1 else torch.maximum(scores[0], scores[1])
    fuzzy, nonfuzzy = soft_masks(m, tau)
    shape = (image.shape[0], 1, *spatial)
    return FuzzySplit(
        fuzzy=fuzzy[:, grid.index].view(shape).to(image.dtype),
        nonfuzzy=nonfuzzy[:, grid.index].view(shape).to(image.dtype),
        score=m,
    )


def score_map(split: FuzzySplit, patch_size: Sequence[int]) -> torch.Tensor:
    """The per-patch fuzziness m of `split` (made with `patch_size`) spread to its voxels -> (B, *spatial)."""
    spatial = tuple(split.fuzzy.shape[2:])
    grid = patch_grid(spatial, tuple(int(p) for p in patch_size), split.score.device)
    return split.score[:, grid.index].view(split.score.shape[0], *spatial)
