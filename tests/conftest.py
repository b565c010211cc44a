"""Shared fixtures: nnU-Net folders in temporary paths, a small generated dataset planned and preprocessed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory) -> dict[str, Path]:
    """nnUNet_raw / _preprocessed / _results in a session temporary folder, set for the whole session."""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        d.mkdir()
    patch = pytest.MonkeyPatch()
    for name, path in dirs.items():
        patch.setenv(name, str(path))
    patch.setenv("nnUNet_def_n_proc", "1")
    patch.setenv("nnUNet_n_proc_DA", "1")  # the planner needs >= 1; loaders in tests use `single_process_loader`
    for key in [k for k in os.environ if k.startswith("NNUNET_DALE_")]:
        patch.delenv(key)
    yield dirs
    patch.undo()


def plan_and_preprocess(dataset_id: int, configurations: tuple[str, ...] = ("2d",)) -> None:
    """nnU-Net's planning and preprocessing through its Python API (the CLI is tested end to end elsewhere)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=configurations, num_processes=[1] * len(configurations), verbose=False)


@pytest.fixture(scope="session")
def dataset_2d(nnunet_dirs) -> int:
    """A small 2D lesion dataset (64 x 64, 10 training cases), planned and preprocessed for the 2d configuration."""
    from nnunet_dale.benchmark_data import make_benchmark

    make_benchmark(nnunet_dirs["nnUNet_raw"], dataset_id=990, num_train=10, num_test=4, size=64, seed=0)
    plan_and_preprocess(990)
    return 990


def single_process_loader(trainer):
    """The trainer's training loader with augmentation in this process (nnUNet_n_proc_DA=0): no worker to leak."""
    previous = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "0"
    try:
        return trainer.get_dataloaders()[0]
    finally:
        os.environ["nnUNet_n_proc_DA"] = previous if previous is not None else "1"


def build(cls, dataset_id: int, initialize: bool = True, configuration: str = "2d"):
    """A trainer of class `cls` on the CPU from the preprocessed plans of `dataset_id`, as nnU-Net's CLI builds it."""
    folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(folder / "nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = cls(plans, configuration, 0, load_json(folder / "dataset.json"), device=torch.device("cpu"))
    if initialize:
        trainer.initialize()
    return trainer


@pytest.fixture(scope="session")
def batch(dataset_2d):
    torch.manual_seed(0)
    np.random.seed(0)
    from nnunet_dale.trainer import nnUNetTrainerDALE

    return next(single_process_loader(build(nnUNetTrainerDALE, dataset_2d)))


def copy_batch(batch):
    return {"data": batch["data"].clone(), "target": [t.clone() for t in batch["target"]]}


def train_result_folder(cls, dataset_id: int, steps: int, results: Path, seed: int = 0) -> Path:
    """A trainer of class `cls` trained for `steps` iterations on the CPU and saved as nnU-Net saves a result, under
    `results`: `<Trainer>__<plans>__2d/plans.json`, `dataset.json` and `fold_0/checkpoint_final.pth`. Returns the
    fold folder."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = build(cls, dataset_id)
    loader = single_process_loader(trainer)
    trainer.network.train()
    for _ in range(steps):
        trainer.train_step(next(loader))
    fold_dir = Path(results) / Path(trainer.output_folder_base).name / "fold_0"
    fold_dir.mkdir(parents=True)
    save_json(trainer.plans_manager.plans, str(fold_dir.parent / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(fold_dir.parent / "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(str(fold_dir / "checkpoint_final.pth"))
    return fold_dir


BIN = Path(sys.executable).parent


def run_cli(*cmd: str, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a command of this environment (nnUNetv2_*, nnunet-dale); with ok=True a failure shows its output."""
    result = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if ok and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def cli_env(root: Path) -> dict:
    """The environment for nnU-Net's command lines: nnUNet_* folders under `root`, DALE's trainers findable."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NNUNET_DALE_")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        environ[name] = str(root / name)
    trainers = run_cli("nnunet-dale", "trainers-path", env=environ).stdout.strip()
    environ.update(nnUNet_extTrainer=trainers, nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", nnUNet_compile="false")
    return environ
