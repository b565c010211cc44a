"""Time to accuracy from two finished nnU-Net trainings: when does DALE reach the default trainer's final Dice?

    python benchmarks/time_to_accuracy.py RESULTS/DatasetXXX_Name nnUNetTrainer_bench nnUNetTrainerDALE_bench [--fold 0]

Reads the per-epoch validation pseudo-Dice (nnU-Net's EMA, `ema_fg_dice`) and epoch timestamps that nnU-Net stores
in checkpoint_final.pth, takes the default trainer's final EMA Dice as the target, and reports the wall time (and
epochs) DALE needed to first reach it, relative to the default trainer's whole run (the paper reports 0.34-0.68x).
Wall times include validation and checkpointing, as a user would see them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _log(results: Path, trainer: str, fold: int) -> dict:
    checkpoint = results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: train {trainer} fold {fold} to the end first")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]


def time_to_accuracy(results: Path, baseline: str, dale: str, fold: int = 0) -> dict:
    """Target Dice, the default run's duration, DALE's time and epochs to reach the target, and the ratios."""
    base, ours = _log(Path(results), baseline, fold), _log(Path(results), dale, fold)
    target = float(base["ema_fg_dice"][-1])
    default_seconds = base["epoch_end_timestamps"][-1] - base["epoch_start_timestamps"][0]
    reached = next((i for i, d in enumerate(ours["ema_fg_dice"]) if d >= target), None)
    dale_seconds = (
        None if reached is None else ours["epoch_end_timestamps"][reached] - ours["epoch_start_timestamps"][0]
    )
    return {
        "target": target,
        "default_seconds": default_seconds,
        "default_epochs": len(base["ema_fg_dice"]),
        "dale_seconds": dale_seconds,
        "dale_epochs": None if reached is None else reached + 1,
        "ratio": None if dale_seconds is None else dale_seconds / default_seconds,
        "dale_final": float(ours["ema_fg_dice"][-1]),
    }


def format_row(fold: int, r: dict) -> str:
    """One markdown table row: fold | target | default s (epochs) | DALE s (epochs) | ratio."""
    if r["ratio"] is None:
        return f"| {fold} | {r['target']:.4f} | {r['default_seconds']:.0f} ({r['default_epochs']}) | not reached | - |"
    return (
        f"| {fold} | {r['target']:.4f} | {r['default_seconds']:.0f} ({r['default_epochs']}) | "
        f"{r['dale_seconds']:.0f} ({r['dale_epochs']}) | {r['ratio']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="nnUNet_results/DatasetXXX_Name")
    parser.add_argument("baseline")
    parser.add_argument("dale")
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(time_to_accuracy(Path(args.results), args.baseline, args.dale, args.fold), indent=1))


if __name__ == "__main__":
    main()
