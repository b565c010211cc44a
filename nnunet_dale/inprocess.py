"""Plumbing: nnU-Net's steps in this Python process, for benchmarks and tests (the CLIs run them in subprocesses).

Planning and preprocessing through nnU-Net's Python API, a trainer built on the CPU as `nnUNetv2_train` builds it,
its training loader with augmentation in this process (no worker process to leak), and a copy of a batch (to feed
the same batch to several trainers). The nnU-Net folders and environment are in `nnunet_dale.nnunet_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["build_trainer", "copy_batch", "plan_and_preprocess", "single_process_loader"]


def plan_and_preprocess(dataset_id: int, configurations: tuple[str, ...] = ("2d",)) -> None:
    """nnU-Net's fingerprint extraction, planning and preprocessing of `dataset_id` (one process each)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=configurations, num_processes=[1] * len(configurations), verbose=False)


def build_trainer(cls, dataset_id: int, initialize: bool = True, configuration: str = "2d", fold: int = 0):
    """A trainer of class `cls` on the CPU from the preprocessed plans of `dataset_id`, as nnU-Net's CLI builds it
    (`plans["continue_training"] = False`, as nnU-Net's entry point sets it)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(folder / "nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = cls(plans, configuration, fold, load_json(folder / "dataset.json"), device=torch.device("cpu"))
    if initialize:
        trainer.initialize()
    return trainer


def single_process_loader(trainer):
    """The trainer's training loader with augmentation in this process (nnUNet_n_proc_DA=0): no worker to leak."""
    previous = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "0"
    try:
        return trainer.get_dataloaders()[0]
    finally:
        if previous is None:
            del os.environ["nnUNet_n_proc_DA"]
        else:
            os.environ["nnUNet_n_proc_DA"] = previous


def copy_batch(batch: dict) -> dict:
    """A copy of a training batch ({"data", "target": [one tensor per deep-supervision output]}): a train step may
    change its batch in place."""
    return {"data": batch["data"].clone(), "target": [t.clone() for t in batch["target"]]}
