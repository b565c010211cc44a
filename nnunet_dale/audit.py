"""Label audit: rank the training cases of a trained nnU-Net 2d model by DALE's label-confidence signal omega.

For every preprocessed training case, the trained network plays theta_n of Algorithm 1: the case is split into fuzzy
and non-fuzzy regions (`split.fuzzy_split`, the trainer's split patch size rule) and omega* is learned by the exact
one-step lookahead (`confidence.learn_confidence`, Eq. 8-11) with the trainer's pixel-weighted loss. A pixel is
judged *noisy* in a pass when omega went down. This is repeated over several passes (flips / rotations by 90 degrees,
undone afterwards, then shifts of the split's patch grid) and averaged into a per-pixel noisy share in [0, 1].
Per case and per connected region of the annotation the noisy share is summarised on the annotation's boundary band
(docs/audit.md); `audit.csv` ranks the cases, `top/` shows the highest-scored ones. On a dataset with known clean
labels (the built-in benchmark), `audit_quality` measures how well the ranking finds the corrupted annotations.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage

from nnunet_dale.confidence import functional_forward, learn_confidence
from nnunet_dale.config import DALEConfig, resolve_patch_size
from nnunet_dale.evaluation import dice, json_safe
from nnunet_dale.files import atomic_write, staging_dir
from nnunet_dale.split import fuzzy_split
from nnunet_dale.weighted_loss import PixelWeightedDCandBCE, PixelWeightedDCandCE

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
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
PREPROCESSED_UNSET = (
    "nnUNet_preprocessed is not set: the preprocessed training cases (audited, and giving omega's reference "
    "direction) are read from there"
)


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


# ----------------------------------------------------------------------------------------------------------------------
# the trained model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A trained nnU-Net network (deep supervision off) with its plans, labels and DALE settings."""

    network: torch.nn.Module
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict
    configuration: str
    trainer_name: str
    checkpoint: Path
    dale_config: DALEConfig
    split_patch_size: tuple[int, ...]
    loss: torch.nn.Module = field(repr=False)


def resolve_fold_folder(folder: str | os.PathLike, fold: int | str | None = None) -> Path:
    """The `fold_X` folder of a trained model, given it or its parent `<Trainer>__<plans>__<configuration>`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"result folder {folder} does not exist (or is not a folder)")
    if fold is not None:
        if folder.name.startswith("fold_"):
            raise AuditError(f"{folder} is already a fold folder; drop -f or pass its parent")
        fold_dir = folder / f"fold_{fold}"
        if not fold_dir.is_dir():
            raise FileNotFoundError(f"{fold_dir} does not exist; folds here: {', '.join(_folds(folder)) or 'none'}")
        return fold_dir
    if folder.name.startswith("fold_"):
        return folder
    folds = _folds(folder)
    if len(folds) == 1:
        return folder / folds[0]
    raise AuditError(
        f"{folder} is not a fold folder; pass -f FOLD ({'folds here: ' + ', '.join(folds) if folds else 'no fold_X'})"
    )


def _folds(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("fold_*") if p.is_dir())


def find_checkpoint(fold_dir: Path, name: str | None = None) -> Path:
    """checkpoint_final.pth, else checkpoint_best.pth (or the named one)."""
    for candidate in [name] if name else CHECKPOINTS:
        if (fold_dir / candidate).is_file():
            return fold_dir / candidate
    raise FileNotFoundError(
        f"no {name or ' or '.join(CHECKPOINTS)} in {fold_dir}: is the training finished (nnUNetv2_train)?"
    )


def _trainer_class(name: str):
    """The trainer class by name: DALE's own first, then nnU-Net's; nnUNetTrainer if neither is found (all the
    trainers here build nnU-Net's default architecture)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_dale import trainer, variants

    cls = getattr(variants, name, None) or getattr(trainer, name, None)
    if cls is None:
        try:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            cls = recursive_find_trainer_class_by_name(name)
        except Exception:  # noqa: BLE001 - nnU-Net raises plain RuntimeError/AssertionError for unknown names
            cls = None
    return cls or nnUNetTrainer


def checked_device(device: str) -> str:
    """`device` if torch can use it here; an AuditError (one line) for CUDA without CUDA or an unknown name."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise AuditError(f"--device {device!r}: {error}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise AuditError(f"--device {device}: this machine has no CUDA device (use --device cpu)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise AuditError(f"--device {device}: MPS is not available here (use --device cpu)")
    return device


def load_trained_model(fold_dir: Path, checkpoint_name: str | None = None, device: str = "cpu") -> TrainedModel:
    """Network, plans and loss of a trained model folder, built as nnU-Net's predictor builds them (deep supervision
    off), with the checkpoint's weights. DALE's split settings come from the checkpoint when it is a DALE one."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir = fold_dir.parent
    for name in ("plans.json", "dataset.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing: not an nnU-Net result folder")
    checkpoint_path = find_checkpoint(fold_dir, checkpoint_name)
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise AuditError(f"{checkpoint_path} is not a readable checkpoint ({type(error).__name__}: {error})") from None
    device = checked_device(device)
    plans_manager = PlansManager(json.loads((model_dir / "plans.json").read_text()))
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    configuration = checkpoint["init_args"]["configuration"]
    configuration_manager = plans_manager.get_configuration(configuration)
    if len(configuration_manager.patch_size) != 2:
        raise AuditError(f"omega needs a 2d model; {fold_dir} is configuration {configuration!r}")
    label_manager = plans_manager.get_label_manager(dataset_json)
    trainer_name = checkpoint.get("trainer_name", "nnUNetTrainer")
    network = _trainer_class(trainer_name).build_network_architecture(
        plans_manager,
        configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        label_manager.num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(checkpoint["network_weights"])
    network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(True)

    saved = checkpoint.get("logging", {}).get("_dale_config")
    known = {f for f in DALEConfig.__dataclass_fields__}
    dale_config = DALEConfig(**{k: v for k, v in (saved or {}).items() if k in known})
    if dale_config.patch_size is not None:
        dale_config = dale_config.replace(patch_size=tuple(dale_config.patch_size))
    split_patch = resolve_patch_size(dale_config, configuration_manager.patch_size, configuration_manager.spacing)
    common = {"batch_dice": configuration_manager.batch_dice, "smooth": 1e-5, "ddp": False}
    if label_manager.has_regions:
        loss = PixelWeightedDCandBCE(**common, use_ignore_label=label_manager.ignore_label is not None)
    else:
        loss = PixelWeightedDCandCE(**common, do_bg=False, ignore_label=label_manager.ignore_label)
    return TrainedModel(
        network=network,
        plans_manager=plans_manager,
        configuration_manager=configuration_manager,
        label_manager=label_manager,
        dataset_json=dataset_json,
        configuration=configuration,
        trainer_name=trainer_name,
        checkpoint=checkpoint_path,
        dale_config=dale_config,
        split_patch_size=tuple(int(p) for p in split_patch),
        loss=loss,
    )


def preprocessed_cases_folder(model: TrainedModel) -> Path:
    """nnUNet_preprocessed/<dataset>/<data identifier> of the model's configuration."""
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise AuditError(PREPROCESSED_UNSET)
    folder = Path(root) / model.plans_manager.dataset_name / model.configuration_manager.data_identifier
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist: preprocess the dataset with the model's plans first "
            f"(nnUNetv2_preprocess -d ... -plans_name {model.plans_manager.plans_name} -c {model.configuration})"
        )
    return folder


def open_model(
    result_folder: str | os.PathLike,
    fold: int | str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    needs_preprocessed: bool = True,
) -> tuple[Path, TrainedModel]:
    """The fold folder and the trained model; the folder, fold, checkpoint and (when `needs_preprocessed`)
    nnUNet_preprocessed are checked, with a clear error each, before anything is loaded."""
    fold_dir = resolve_fold_folder(result_folder, fold)
    checkpoint_path = find_checkpoint(fold_dir, checkpoint)
    if needs_preprocessed and not os.environ.get("nnUNet_preprocessed"):
        raise AuditError(PREPROCESSED_UNSET)
    return fold_dir, load_trained_model(fold_dir, checkpoint_path.name, device)


def preprocessed_dataset(model: TrainedModel) -> tuple[Path, Any]:
    """The folder of the model's preprocessed training cases and nnU-Net's dataset class reading it."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = preprocessed_cases_folder(model)
    try:
        return folder, infer_dataset_class(str(folder))(str(folder))
    except (AssertionError, KeyError) as e:
        raise AuditError(f"cannot read the preprocessed cases in {folder}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------------
# omega on one image
# ----------------------------------------------------------------------------------------------------------------------


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


def _forward_transform(x: torch.Tensor, rot: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, rot, dims=(-2, -1)) if rot else x


def _inverse_transform(x: torch.Tensor, rot: int, flip: bool) -> torch.Tensor:
    if rot:
        x = torch.rot90(x, -rot, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _tile_starts(size: int, tile: int) -> list[int]:
    """Start positions of tiles of length `tile` covering `size` (>= tile), evenly spread as in nnU-Net."""
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / tile) + 1
    return [round((size - tile) * i / (n - 1)) for i in range(n)]


def loss_target(model: TrainedModel, seg: torch.Tensor) -> torch.Tensor:
    """The loss target of an integer label map (B, 1, H, W): itself, or region masks (+ ignore channel)."""
    lm = model.label_manager
    if not lm.has_regions:
        return seg.long()
    channels = [
        torch.isin(seg[:, 0], torch.tensor(list(np.atleast_1d(r)), device=seg.device)) for r in lm.foreground_regions
    ]
    if lm.ignore_label is not None:
        channels.append(seg[:, 0] == lm.ignore_label)
    return torch.stack(channels, 1).float()


def foreground(model: TrainedModel, seg: np.ndarray) -> np.ndarray:
    """Annotated foreground: any label but background and the ignore label."""
    fg = seg > 0
    if model.label_manager.ignore_label is not None:
        fg &= seg != model.label_manager.ignore_label
    return fg


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
        x = _forward_transform(torch.as_tensor(np.asarray(image, dtype=np.float32), device=device), rot, flip)
        y = _forward_transform(torch.as_tensor(np.asarray(seg, dtype=np.int64), device=device)[None], rot, flip)
        xs.append(_fit_to(x, patch))
        ys.append(_fit_to(y, patch))
        vs.append(_fit_to(torch.ones_like(y, dtype=torch.float32), patch))
    x, valid = torch.stack(xs), torch.stack(vs)
    target = loss_target(model, torch.stack(ys))
    split = fuzzy_split(x, target, model.split_patch_size, cfg.tau, cfg.entropy_bins, cfg.use_entropy, cfg.use_edges)
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
    sums = np.zeros((len(TileOmega._fields), h, w), np.float64)  # noisy, fuzzy, omega
    prediction = None
    for index, (rot, flip, offset) in enumerate(pass_transforms((h, w), settings.passes, model.split_patch_size)):
        reference = reference_batch(model, context, rot, flip)
        x = _forward_transform(x_full, rot, flip)
        y = _forward_transform(seg_full, rot, flip)
        size = x.shape[1:]
        canvas = [max(p, o + s) for p, o, s in zip(patch, offset, size)]
        inner = tuple(slice(o, o + s) for o, s in zip(offset, size))
        xc = x.new_zeros((x.shape[0], *canvas))
        yc = y.new_zeros((1, *canvas))
        valid = x.new_zeros((1, *canvas))
        xc[(slice(None), *inner)], yc[(slice(None), *inner)], valid[(slice(None), *inner)] = x, y, 1.0
        starts = [(a, b) for a in _tile_starts(canvas[0], patch[0]) for b in _tile_starts(canvas[1], patch[1])]
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
        sums += _inverse_transform((maps_c / count_c)[(slice(None), *inner)], rot, flip).cpu().double().numpy()
        if logits_c is not None:
            logits = _inverse_transform((logits_c / count_c)[(slice(None), *inner)], rot, flip)
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
    split = fuzzy_split(x, target, model.split_patch_size, cfg.tau, cfg.entropy_bins, cfg.use_entropy, cfg.use_edges)
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
# summaries
# ----------------------------------------------------------------------------------------------------------------------


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


def _rank_key(audit: CaseAudit) -> tuple:
    """Case order: decreasing case score (the case's evidence), ties by name."""
    return (-audit.summary[CASE_SCORE], audit.case)


def rank_rows(audits: Sequence[CaseAudit]) -> list[dict[str, Any]]:
    """CSV rows: cases by decreasing case score (ties by name), each case's summary row first, then its regions by
    decreasing score."""
    ordered = sorted(audits, key=_rank_key)
    rows = []
    for rank, audit in enumerate(ordered, 1):
        common = {"rank": rank, "case": audit.case, "case_score": audit.summary[CASE_SCORE]}
        rows.append({**common, **audit.summary})
        for region in sorted(audit.regions, key=lambda r: (-r[CASE_SCORE], r["region"])):
            rows.append({**common, **region, "fuzzy_noisy_share": "", "prediction_disagreement": ""})
    return rows


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
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
    writable_folder(out)  # before the long part, not after it
    folder, dataset = preprocessed_dataset(model)
    identifiers = list(dataset.identifiers)
    if cases is not None:
        missing = sorted(set(cases) - set(identifiers))
        if missing:
            raise AuditError(f"cases not in {folder}: {', '.join(missing)}")
        identifiers = [i for i in identifiers if i in set(cases)]
    if not identifiers:
        raise AuditError(f"no preprocessed cases in {folder}")

    context_of = ContextSlices(model, dataset, settings)  # context cases come from the whole training set
    audits = []
    for n, identifier in enumerate(identifiers, 1):
        data, seg, _, _ = dataset.load_case(identifier)
        audits.append(audit_case(model, data[:], seg[:], identifier, settings, context_of(identifier)))
        if progress is not None:
            progress(n, len(identifiers), identifier)

    rows = rank_rows(audits)
    ranked = sorted(audits, key=_rank_key)
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
    atomic_write(out / "audit.csv", lambda f: f.write(_csv_text(rows)))
    return out / "audit.csv"


# ----------------------------------------------------------------------------------------------------------------------
# quality against known clean labels
# ----------------------------------------------------------------------------------------------------------------------


def clean_labels_folder(audit_folder: str | os.PathLike) -> Path | None:
    """The raw dataset of an audit (nnUNet_raw/<dataset>, from audit.json) if it holds clean training labels."""
    try:
        dataset = json.loads((Path(audit_folder) / "audit.json").read_text())["dataset"]
    except (OSError, ValueError, KeyError):
        return None
    raw = os.environ.get("nnUNet_raw")
    folder = Path(raw) / dataset if raw else None
    return folder if folder is not None and (folder / "labelsTr_clean").is_dir() else None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n+ n-), ties count half); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_case_scores(audit_csv: str | os.PathLike, column: str = CASE_SCORE) -> dict[str, float]:
    """Per-case values of `column` from the case rows (region "all") of an audit.csv."""
    with open(audit_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region"] == CASE_ROW]
    if not rows:
        raise AuditError(f"{audit_csv} has no case rows (region '{CASE_ROW}')")
    return {r["case"]: float(r[column]) for r in rows}


def case_corruption(raw_dataset_folder: str | os.PathLike) -> dict[str, float]:
    """1 - Dice(noisy, clean) of every training case: from cases.json (the built-in benchmark) or by comparing
    labelsTr with labelsTr_clean."""
    folder = Path(raw_dataset_folder)
    meta_file = folder / "cases.json"
    if meta_file.is_file():
        cases = json.loads(meta_file.read_text())["cases"]
        return {k: 1.0 - float(c["dice_noisy_clean"]) for k, c in cases.items() if "dice_noisy_clean" in c}
    clean_dir = folder / "labelsTr_clean"
    if not clean_dir.is_dir():
        raise FileNotFoundError(f"{folder} has neither cases.json nor labelsTr_clean/: the clean labels are unknown")
    from nnunet_dale.benchmark_data import load_array

    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    out = {}
    for clean_file in sorted(clean_dir.glob(f"*{ending}")):
        case = clean_file.name[: -len(ending)]
        noisy = load_array(folder / "labelsTr" / clean_file.name) > 0
        out[case] = 1.0 - dice(noisy, load_array(clean_file) > 0)
    return out


def audit_quality(
    audit_csv: str | os.PathLike,
    raw_dataset_folder: str | os.PathLike,
    columns: Sequence[str] = (CASE_SCORE, "score", "fuzzy_noisy_share", "prediction_disagreement"),
    top_share: float = 0.1,
) -> dict[str, Any]:
    """How well the audit's case ranking finds corrupted labels, given the clean ones.

    True corruption of a case = 1 - Dice(noisy label, clean label). For the case score ("evidence") and, for
    reference, the other case columns: AUROC against "corruption above the median", Spearman correlation with the
    corruption, and the precision of the top 10 % scored cases (k = ceil(10 % of n)) — the share of them among the k
    most corrupted cases (ties at the k-th corruption included) and the share above the median; `chance_*` are the
    expected precisions of a random ranking.
    """
    from scipy.stats import spearmanr

    corruption = case_corruption(raw_dataset_folder)
    first = read_case_scores(audit_csv, columns[0])
    cases = sorted(set(first) & set(corruption))
    if len(cases) < 2:
        raise AuditError(f"{audit_csv}: fewer than 2 cases with a known clean label in {raw_dataset_folder}")
    c = np.array([corruption[k] for k in cases])
    median = float(np.median(c))
    positive = c > median
    k = max(1, math.ceil(top_share * len(cases)))
    kth = np.sort(c)[::-1][k - 1]
    most_corrupted = c >= kth
    result: dict[str, Any] = {
        "num_cases": len(cases),
        "median_corruption": median,
        "num_above_median": int(positive.sum()),
        "top_k": k,
        "chance_precision_top_in_most_corrupted": float(most_corrupted.mean()),
        "chance_precision_top_above_median": float(positive.mean()),
    }
    for column in columns:
        try:
            values = read_case_scores(audit_csv, column)
        except (KeyError, ValueError):
            continue
        s = np.array([values[k_] for k_ in cases])
        if np.isnan(s).any():
            continue
        order = sorted(range(len(cases)), key=lambda i: (-s[i], cases[i]))[:k]
        constant = np.ptp(s) == 0 or np.ptp(c) == 0
        rho = (float("nan"), float("nan")) if constant else spearmanr(s, c)
        result[column] = {
            "auroc_above_median": auroc(s, positive),
            "spearman": float(rho[0]),
            "spearman_p": float(rho[1]),
            "precision_top_in_most_corrupted": float(most_corrupted[order].mean()),
            "precision_top_above_median": float(positive[order].mean()),
            "top_cases": [cases[i] for i in order],
            "mean_corruption_top": float(c[order].mean()),
        }
    result["mean_corruption_all"] = float(c.mean())
    return result
