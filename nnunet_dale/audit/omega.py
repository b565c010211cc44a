"""omega on one preprocessed 2D image: the trained network plays theta_n of Algorithm 1 and omega* is learned by
the exact one-step lookahead (`confidence.learn_confidence`, Eq. 8-11) over several passes (flips / rotations by 90
degrees, then shifted patch grids), tile by tile; the non-fuzzy reference direction comes from other training cases
(`ContextSlices`) or from the image itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from nnunet_dale.audit.model import TrainedModel, foreground, loss_target
from nnunet_dale.audit.settings import AuditSettings
from nnunet_dale.confidence import functional_forward, learn_confidence
from nnunet_dale.config import split_options
from nnunet_dale.split import fuzzy_split

__all__ = [
    "ContextSlices",
    "ImageAudit",
    "Reference",
    "TileOmega",
    "audit_image",
    "case_arrays",
    "context_identifiers",
    "context_slice",
    "forward_transform",
    "inverse_transform",
    "omega_noisy",
    "pass_transforms",
    "reference_batch",
    "tile_starts",
]


def pass_transforms(shape: Sequence[int], passes: int, split_patch: Sequence[int]) -> list[tuple[int, bool, tuple]]:
    """(rotations by 90 degrees, flip, grid offset) of each pass: the shape-preserving flips/rotations first (8 on a
    square image, 4 otherwise), then the same again with the split's patch grid shifted by evenly spaced offsets."""
    square = shape[0] == shape[1]
    base = [(0, False), (0, True), (2, False), (2, True)]
    if square:
        base += [(1, False), (1, True), (3, False), (3, True)]
    rounds = math.ceil(passes / len(base))
    out = []
    for p in range(passes):
        r = p // len(base)
        offset = tuple((r * s) // rounds for s in split_patch)
        out.append((*base[p % len(base)], offset))
    return out


def forward_transform(x: torch.Tensor, rot: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, rot, dims=(-2, -1)) if rot else x


def inverse_transform(x: torch.Tensor, rot: int, flip: bool) -> torch.Tensor:
    if rot:
        x = torch.rot90(x, -rot, dims=(-2, -1))
    return x.flip(-1) if flip else x


def tile_starts(size: int, tile: int) -> list[int]:
    """Start positions of tiles of length `tile` covering `size` (>= tile), evenly spread as in nnU-Net."""
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / tile) + 1
    return [round((size - tile) * i / (n - 1)) for i in range(n)]


@dataclass
class ImageAudit:
    """Per-pixel results of one 2D image (H, W)."""

    noisy_share: np.ndarray  # share of passes in which omega went down
    fuzzy: np.ndarray  # mean fuzzy mask M^f over passes
    prediction: np.ndarray  # the model's foreground (identity pass, unmasked image)
    omega: np.ndarray  # mean omega* over passes (1 where a pass did not judge the pixel)
    evidence: np.ndarray  # mean `TileOmega.evidence` over passes (> 0: the reliable data pushes against the label)


def _fit_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre crop / zero pad the last two axes of x to `shape`."""
    out = x.new_zeros((*x.shape[:-2], *shape))
    src, dst = [], []
    for have, want in zip(x.shape[-2:], shape):
        if have >= want:
            a = (have - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(0, want))
        else:
            a = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(a, a + have))
    out[(..., *dst)] = x[(..., *src)]
    return out


@dataclass
class Reference:
    """The non-fuzzy batch of a pass: inputs M^n * X, loss target and weights M^n."""

    x: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor


def reference_batch(
    model: TrainedModel, context: Sequence[tuple[np.ndarray, np.ndarray]], rot: int, flip: bool
) -> Reference | None:
    """The non-fuzzy regions of the context cases (images (C, H, W), labels (H, W)), flipped/rotated like the
    audited case and centre-cropped or padded to the network's patch size."""
    if not context:
        return None
    cfg, device = model.dale_config, next(model.network.parameters()).device
    patch = tuple(int(p) for p in model.configuration_manager.patch_size)
    xs, ys, vs = [], [], []
    for image, seg in context:
        x = forward_transform(torch.as_tensor(np.asarray(image, dtype=np.float32), device=device), rot, flip)
        y = forward_transform(torch.as_tensor(np.asarray(seg, dtype=np.int64), device=device)[None], rot, flip)
        xs.append(_fit_to(x, patch))
        ys.append(_fit_to(y, patch))
        vs.append(_fit_to(torch.ones_like(y, dtype=torch.float32), patch))
    x, valid = torch.stack(xs), torch.stack(vs)
    target = loss_target(model, torch.stack(ys))
    split = fuzzy_split(x, target, model.split_patch_size, **split_options(cfg))
    weight = split.nonfuzzy * valid
    return Reference(x=x * weight, target=target, weight=weight)


def audit_image(
    model: TrainedModel,
    image: np.ndarray,
    seg: np.ndarray,
    settings: AuditSettings,
    context: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> ImageAudit:
    """omega over `settings.passes` passes on one preprocessed 2D image (C, H, W) with integer labels (H, W): the
    noisy share, mean fuzzy mask and mean omega* per pixel (each pass's maps averaged over overlapping tiles).

    With `context` (other cases' images and labels; settings.reference == "others") the non-fuzzy step direction of
    Eq. 9 comes from their non-fuzzy regions; without it, from the image's own non-fuzzy region.
    """
    device = next(model.network.parameters()).device
    module = model.network
    params = {n: p for n, p in module.named_parameters()}
    forward = functional_forward(module)

    x_full = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)
    seg_full = torch.as_tensor(np.asarray(seg, dtype=np.int64), device=device)[None]
    h, w = seg.shape
    patch = tuple(int(p) for p in model.configuration_manager.patch_size)
    batch_size = max(1, int(model.configuration_manager.batch_size))
    sums = np.zeros((len(TileOmega._fields), h, w), np.float64)  # one plane per TileOmega field
    prediction = None
    for index, (rot, flip, offset) in enumerate(pass_transforms((h, w), settings.passes, model.split_patch_size)):
        reference = reference_batch(model, context, rot, flip)
        x = forward_transform(x_full, rot, flip)
        y = forward_transform(seg_full, rot, flip)
        size = x.shape[1:]
        canvas = [max(p, o + s) for p, o, s in zip(patch, offset, size)]
        inner = tuple(slice(o, o + s) for o, s in zip(offset, size))
        xc = x.new_zeros((x.shape[0], *canvas))
        yc = y.new_zeros((1, *canvas))
        valid = x.new_zeros((1, *canvas))
        xc[(slice(None), *inner)], yc[(slice(None), *inner)], valid[(slice(None), *inner)] = x, y, 1.0
        starts = [(a, b) for a in tile_starts(canvas[0], patch[0]) for b in tile_starts(canvas[1], patch[1])]
        maps_c = x.new_zeros((len(TileOmega._fields), *canvas))
        logits_c = None
        count_c = x.new_zeros((1, *canvas))
        for chunk in range(0, len(starts), batch_size):
            tiles = [(slice(a, a + patch[0]), slice(b, b + patch[1])) for a, b in starts[chunk : chunk + batch_size]]
            xb = torch.stack([xc[(slice(None), *t)] for t in tiles])
            yb = torch.stack([yc[(slice(None), *t)] for t in tiles])
            vb = torch.stack([valid[(slice(None), *t)] for t in tiles])
            tile = omega_noisy(model, forward, params, xb, loss_target(model, yb), vb, settings, reference)
            maps = torch.cat(tile, 1)
            logits = None
            if index == 0:
                with torch.no_grad():
                    logits = module(xb)
            for i, t in enumerate(tiles):
                maps_c[(slice(None), *t)] += maps[i]
                count_c[(slice(None), *t)] += 1
                if logits is not None:
                    if logits_c is None:
                        logits_c = x.new_zeros((logits.shape[1], *canvas))
                    logits_c[(slice(None), *t)] += logits[i]
        count_c = count_c.clamp_min(1)
        sums += inverse_transform((maps_c / count_c)[(slice(None), *inner)], rot, flip).cpu().double().numpy()
        if logits_c is not None:
            logits = inverse_transform((logits_c / count_c)[(slice(None), *inner)], rot, flip)
            if model.label_manager.has_regions:
                prediction = (torch.sigmoid(logits) > 0.5).any(0)
            else:
                prediction = logits.argmax(0) > 0
            prediction = prediction.cpu().numpy()
    noisy, fuzzy, omega, evidence = sums / settings.passes
    return ImageAudit(noisy, fuzzy, prediction, omega, evidence)


class TileOmega(NamedTuple):
    """Per-pixel results of one pass on a batch of tiles, each (B, 1, H, W)."""

    noisy: torch.Tensor  # 1 where omega* < 1 (a judged pixel whose confidence went down), else 0
    fuzzy: torch.Tensor  # the fuzzy mask M^f (0 on padding)
    omega: torch.Tensor  # omega* (1 where M^f = 0: not judged)
    evidence: torch.Tensor  # the hypergradient per unit weight: h_k * sum(M^f) / (eta * M^f_k) (0 where not judged)


def omega_noisy(
    model: TrainedModel, forward, params, x, target, valid, settings: AuditSettings, reference: Reference | None = None
) -> TileOmega:
    """Noisy indicator (omega* < 1), fuzzy mask M^f and omega* of a batch of tiles; padding is excluded from every
    weight. omega* is 1 wherever M^f = 0, and everywhere when there is nothing to judge or no reference direction.

    The fuzzy loss is L(M^f * X; omega * M^f) of the tiles; the non-fuzzy loss L(M^n * X; M^n) is that of the
    `reference` batch, or of the tiles themselves when there is none.
    """
    cfg = model.dale_config
    split = fuzzy_split(x, target, model.split_patch_size, **split_options(cfg))
    fuzzy = split.fuzzy * valid
    if reference is None:
        nonfuzzy = split.nonfuzzy * valid
        reference = Reference(x=x * nonfuzzy, target=target, weight=nonfuzzy)
    if fuzzy.sum() == 0 or reference.weight.sum() == 0:  # nothing to judge, or no reference direction
        return TileOmega(torch.zeros_like(fuzzy), fuzzy, torch.ones_like(fuzzy), torch.zeros_like(fuzzy))
    loss = model.loss

    def fuzzy_loss(output, omega):
        return loss(output, target, omega * fuzzy, fuzzy)

    def nonfuzzy_loss(output):
        return loss(output, reference.target, reference.weight)

    confidence = learn_confidence(
        forward, params, x * fuzzy, reference.x, fuzzy_loss, nonfuzzy_loss, fuzzy.shape, settings.shadow_lr,
        cfg.lookahead_steps, cfg.omega_lr,
    )  # fmt: skip
    judged = fuzzy > 0
    omega = torch.where(judged, confidence.omega.to(x.dtype), torch.ones_like(fuzzy))
    # Eq. 11 for the CE part: h_k = -eta * M_k / sum(M) * <grad l_k, v>; undoing the weights leaves the rate at which
    # a step on the reliable (reference) data raises pixel k's own loss: comparable across pixels, tiles and cases
    scale = fuzzy.sum() / (settings.shadow_lr * torch.where(judged, fuzzy, torch.ones_like(fuzzy)))
    evidence = torch.where(judged, confidence.hypergradient.to(x.dtype) * scale, torch.zeros_like(fuzzy))
    return TileOmega((confidence.noisy & judged).to(x.dtype), fuzzy, omega, evidence)


# ----------------------------------------------------------------------------------------------------------------------
# the reference direction: other training cases
# ----------------------------------------------------------------------------------------------------------------------


def case_arrays(data: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A preprocessed case as float32 (C, Z, H, W) and int64 (Z, H, W) labels, nnU-Net's -1 (outside the
    normalisation mask) set to background as in training."""
    seg = np.asarray(seg)[0].astype(np.int64)
    return np.asarray(data, dtype=np.float32), np.where(seg < 0, 0, seg)


def context_slice(model: TrainedModel, data: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A context case's slice with the most annotated foreground: image (C, H, W) and labels (H, W)."""
    data, seg = case_arrays(data, seg)
    z = int(np.argmax(foreground(model, seg).reshape(seg.shape[0], -1).sum(1)))
    return data[:, z], seg[z]


def context_identifiers(identifiers: Sequence[str], identifier: str, settings: AuditSettings) -> list[str]:
    """The training cases whose non-fuzzy regions give the reference direction for `identifier`: the
    `settings.context` cases after it in `identifiers` (wrapping round; the first ones for a case that is not in the
    list, such as a test case), never the case itself; none with reference "self"."""
    if settings.reference == "self":
        return []
    inside = identifier in identifiers
    i = list(identifiers).index(identifier) if inside else -1
    n = min(settings.context, len(identifiers) - inside)
    return [identifiers[(i + k) % len(identifiers)] for k in range(1, n + 1)]


class ContextSlices:
    """The context slices (`context_slice`) of the preprocessed training cases in `dataset`, each loaded once."""

    def __init__(self, model: TrainedModel, dataset: Any, settings: AuditSettings):
        self.model, self.dataset, self.settings = model, dataset, settings
        self.identifiers = list(dataset.identifiers)
        self._slices: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, identifier: str) -> list[tuple[np.ndarray, np.ndarray]]:
        chosen = context_identifiers(self.identifiers, identifier, self.settings)
        for other in chosen:
            if other not in self._slices:
                data, seg, _, _ = self.dataset.load_case(other)
                self._slices[other] = context_slice(self.model, data[:], seg[:])
        return [self._slices[o] for o in chosen]
