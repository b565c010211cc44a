"""Time to accuracy from finished nnU-Net trainings: when does DALE reach the default trainer's final Dice?

    python -m benchmarks.time_to_accuracy RESULTS/DatasetXXX_Name nnUNetTrainer_bench nnUNetTrainerDALE_bench \\
        --folds 0 1 2 [--plot time_to_accuracy.png]

Reads the per-epoch validation pseudo-Dice (nnU-Net's EMA, `ema_fg_dice`) and epoch timestamps that nnU-Net stores
in checkpoint_final.pth, takes the default trainer's final EMA Dice as the target, and reports the wall time (and
epochs) DALE needed to first reach it, relative to the default trainer's whole run (the paper reports 0.34-0.68x).
Wall times include validation and checkpointing, as a user would see them; because other load on the machine
stretches some epochs, the table also gives the ratio from median epoch times (epochs x median epoch duration),
which such load changes less. Prints a markdown table; --plot draws EMA Dice against wall time and epochs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch


def _log(results: Path, trainer: str, fold: int) -> dict:
    checkpoint = results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: train {trainer} fold {fold} to the end first")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]


def _epoch_seconds(log: dict) -> list[float]:
    return [end - start for start, end in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]


def time_to_accuracy(results: Path, baseline: str, dale: str, fold: int = 0) -> dict:
    """Target Dice, the default run's duration, DALE's time and epochs to reach the target, and the ratios."""
    base, ours = _log(Path(results), baseline, fold), _log(Path(results), dale, fold)
    target = float(base["ema_fg_dice"][-1])
    default_seconds = base["epoch_end_timestamps"][-1] - base["epoch_start_timestamps"][0]
    reached = next((i for i, d in enumerate(ours["ema_fg_dice"]) if d >= target), None)
    dale_seconds = (
        None if reached is None else ours["epoch_end_timestamps"][reached] - ours["epoch_start_timestamps"][0]
    )
    default_epoch, dale_epoch = statistics.median(_epoch_seconds(base)), statistics.median(_epoch_seconds(ours))
    epochs = len(base["ema_fg_dice"])
    return {
        "target": target,
        "default_seconds": default_seconds,
        "default_epochs": epochs,
        "dale_seconds": dale_seconds,
        "dale_epochs": None if reached is None else reached + 1,
        "ratio": None if dale_seconds is None else dale_seconds / default_seconds,
        "median_ratio": None if reached is None else (reached + 1) * dale_epoch / (epochs * default_epoch),
        "default_epoch_seconds": default_epoch,
        "dale_epoch_seconds": dale_epoch,
        "dale_final": float(ours["ema_fg_dice"][-1]),
    }


TABLE_HEADER = (
    "| fold | default final EMA Dice | DALE final EMA Dice | default run, s (epochs) | DALE to reach it, s (epochs) "
    "| ratio | ratio from median epochs | median epoch s, default / DALE |\n|---|---|---|---|---|---|---|---|"
)


def format_row(fold: int, r: dict) -> str:
    """One markdown table row under TABLE_HEADER."""
    reached = "not reached" if r["ratio"] is None else f"{r['dale_seconds']:.0f} ({r['dale_epochs']})"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
    median = "-" if r["median_ratio"] is None else f"{r['median_ratio']:.2f}"
    return (
        f"| {fold} | {r['target']:.4f} | {r['dale_final']:.4f} | {r['default_seconds']:.0f} ({r['default_epochs']}) | "
        f"{reached} | {ratio} | {median} | {r['default_epoch_seconds']:.1f} / {r['dale_epoch_seconds']:.1f} |"
    )


def plot(results: Path, baseline: str, dale: str, folds: list[int], out: Path) -> None:
    """EMA pseudo-Dice against wall time (left) and epochs (right), both trainers, every fold, with each target."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=120)
    by_time, by_epoch = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for fold in folds:
        for trainer, colour in ((baseline, "tab:blue"), (dale, "tab:orange")):
            log = _log(results, trainer, fold)
            minutes = [(t - log["epoch_start_timestamps"][0]) / 60 for t in log["epoch_end_timestamps"]]
            label = f"{'DALE' if trainer == dale else 'nnU-Net'}, fold {fold}"
            style = ("-", "--", ":")[folds.index(fold) % 3]
            by_time.plot(minutes, log["ema_fg_dice"], style, color=colour, label=label, lw=1.2)
            by_epoch.plot(range(1, len(minutes) + 1), log["ema_fg_dice"], style, color=colour, lw=1.2)
        target = time_to_accuracy(results, baseline, dale, fold)["target"]
        for ax in (by_time, by_epoch):
            ax.axhline(target, color="grey", lw=0.6, ls=style)
    by_time.set(xlabel="wall time, min", ylabel="validation EMA pseudo-Dice (noisy labels)")
    by_epoch.set(xlabel="epoch", title="grey: each fold's target (default's final)")
    by_time.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="nnUNet_results/DatasetXXX_Name")
    parser.add_argument("baseline")
    parser.add_argument("dale")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--plot", help="write the figure to this PNG")
    args = parser.parse_args()
    results = Path(args.results)
    print(TABLE_HEADER)
    for fold in args.folds:
        print(format_row(fold, time_to_accuracy(results, args.baseline, args.dale, fold)))
    if args.plot:
        plot(results, args.baseline, args.dale, args.folds, Path(args.plot))


if __name__ == "__main__":
    main()
