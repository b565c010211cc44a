"""A trained nnU-Net 2d model for the audit and the omega maps: its network (deep supervision off), plans, labels,
DALE split settings and pixel-weighted loss, loaded from a result folder as nnU-Net's predictor loads it; and where
its preprocessed training cases are.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_dale.audit.settings import AuditError
from nnunet_dale.config import DALEConfig, read_record, resolve_patch_size
from nnunet_dale.files import folder_problem
from nnunet_dale.weighted_loss import pixel_weighted_loss

__all__ = [
    "CHECKPOINTS",
    "PREPROCESSED_UNSET",
    "TrainedModel",
    "checked_device",
    "find_checkpoint",
    "foreground",
    "load_trained_model",
    "loss_target",
    "open_model",
    "preprocessed_cases_folder",
    "preprocessed_dataset",
    "resolve_fold_folder",
]

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
PREPROCESSED_UNSET = (
    "nnUNet_preprocessed is not set: the preprocessed training cases (audited, and giving omega's reference "
    "direction) are read from there"
)


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
    if problem := folder_problem(folder):
        raise FileNotFoundError(f"result folder {folder} {problem}")
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

    from nnunet_dale.progress import CONFIG_KEY

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
    plans_manager = PlansManager(_read_json(model_dir / "plans.json"))
    dataset_json = _read_json(model_dir / "dataset.json")
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
    _load_weights(network, checkpoint["network_weights"], checkpoint_path, model_dir / "plans.json")
    network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(True)

    saved = read_record(checkpoint.get("logging", {}).get(CONFIG_KEY) or {})
    known = {f for f in DALEConfig.__dataclass_fields__}  # a study trainer's own settings do not split
    dale_config = DALEConfig(**{k: v for k, v in saved.items() if k in known})
    if dale_config.patch_size is not None:
        dale_config = dale_config.replace(patch_size=tuple(dale_config.patch_size))
    split_patch = resolve_patch_size(dale_config, configuration_manager.patch_size, configuration_manager.spacing)
    loss = pixel_weighted_loss(label_manager, configuration_manager.batch_dice, ddp=False)
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


def _read_json(path: Path) -> dict:
    """A JSON object from `path`; an AuditError naming the file when it is not one (truncated, not UTF-8, ...)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise AuditError(f"{path} is not a readable JSON file ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise AuditError(f"{path} does not hold a JSON object")
    return data


def _load_weights(network: torch.nn.Module, weights: dict, checkpoint: Path, plans: Path) -> None:
    """The checkpoint's weights into the network the plans build; one AuditError line when they do not fit (instead
    of torch's list of every mismatched layer)."""
    expected = network.state_dict()
    wrong = [k for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k].shape)]
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if wrong or missing or extra:
        first = wrong[0] if wrong else (missing or extra)[0]
        shapes = f" ({tuple(weights[first].shape)} in the checkpoint, {tuple(expected[first].shape)} from the plans)"
        raise AuditError(
            f"{checkpoint} does not fit the network {plans} describes: {len(wrong)} weights of other shapes, "
            f"{len(missing)} missing, {len(extra)} unexpected (first: {first}{shapes if wrong else ''}); was "
            "plans.json replaced after training?"
        )
    network.load_state_dict(weights)


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
