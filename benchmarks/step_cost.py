"""Cost of one DALE train_step against nnU-Net's default train_step on the same batches (medians, side by side).

    python benchmarks/step_cost.py                # 2d plan of the built-in benchmark, 64 x 64
    python benchmarks/step_cost.py --quick        # under a minute
    python benchmarks/step_cost.py --size 128 --steps 20 -K 2

Builds the default trainer and nnUNetTrainerDALE from the same plans and initial weights, feeds both the same
batches, alternating default / DALE step by step so machine noise hits both alike, and prints medians: ms per step,
the ratio DALE / default (exact and fast mode), DALE's time by phase, the agreement of fast mode's omega
directions with exact mode's, and the peak resident memory each trainer's steps add (measured in
separate processes). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def prepare(root: Path, size: int, dims: int, num_train: int) -> int:
    from nnunet_dale.benchmark_data import make_benchmark

    from conftest import plan_and_preprocess

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ["nnUNet_n_proc_DA"] = "1"
    make_benchmark(root / "nnUNet_raw", 990, num_train=num_train, num_test=2, size=size, dims=dims, seed=0)
    plan_and_preprocess(990, ("2d" if dims == 2 else "3d_fullres",))
    return 990


def trainers(configuration: str, lookahead: int) -> dict:
    """The default trainer and DALE in exact and fast mode, from the same plans and the same initial weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_dale.trainer import nnUNetTrainerDALE
    from nnunet_dale.variants import nnUNetTrainerDALE_fast

    from conftest import build

    os.environ["NNUNET_DALE_LOOKAHEAD_STEPS"] = str(lookahead)
    torch.manual_seed(0)
    built = {
        "default": build(nnUNetTrainer, 990, configuration=configuration),
        "exact": build(nnUNetTrainerDALE, 990, configuration=configuration),
        "fast": build(nnUNetTrainerDALE_fast, 990, configuration=configuration),
    }
    for name in ("exact", "fast"):
        built[name].network.load_state_dict(built["default"].network.state_dict())
    return built


def batches(trainer, n: int) -> list[dict]:
    from conftest import single_process_loader

    loader = single_process_loader(trainer)
    return [next(loader) for _ in range(n)]


def copy(batch: dict) -> dict:
    return {"data": batch["data"].clone(), "target": [t.clone() for t in batch["target"]]}


def time_steps(configuration: str, steps: int, warmup: int, lookahead: int) -> dict:
    built = trainers(configuration, lookahead)
    data = batches(built["default"], steps + warmup)
    times: dict[str, list[float]] = {name: [] for name in built}
    phases: dict[str, list[dict[str, float]]] = {"exact": [], "fast": []}
    for i, batch in enumerate(data):
        for name, trainer in built.items():  # alternate, so machine noise hits all three alike
            if name in phases:
                trainer.phase_times = {}
            start = time.perf_counter()
            trainer.train_step(copy(batch))
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
                if name in phases:
                    phases[name].append(trainer.phase_times)
    return {"times": times, "phases": phases, "batch_size": built["default"].batch_size}


def direction_agreement(configuration: str, steps: int, lookahead: int) -> float:
    """Share of fuzzy voxels whose omega moves the same way (up / down) in fast and exact mode, on the same
    network state and batch, over a short fast-mode training run."""
    trainer = trainers(configuration, lookahead)["fast"]
    fast_confidence = trainer._confidence
    counts = [0, 0]

    def both(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n):
        fast = fast_confidence(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n)
        config = trainer.dale_config
        trainer.dale_config = config.replace(omega_mode="exact")
        exact = fast_confidence(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n)
        trainer.dale_config = config
        moved = (split.fuzzy > 0) & (exact.update != 0)
        counts[0] += int((torch.sign(fast.update[moved]) == torch.sign(exact.update[moved])).sum())
        counts[1] += int(moved.sum())
        return fast

    trainer._confidence = both
    for batch in batches(trainer, steps):
        trainer.train_step(copy(batch))
    return counts[0] / max(counts[1], 1)


def peak_memory(configuration: str, which: str, steps: int, lookahead: int) -> float:
    """MB of resident memory the steps add on top of the set-up (run in a fresh process by --memory-child)."""
    built = trainers(configuration, lookahead)
    trainer = built[which]
    data = batches(built["default"], steps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for batch in data:
        trainer.train_step(copy(batch))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--steps", type=int, default=15, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("-K", "--lookahead", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a run under a minute: 5 steps, no memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--workdir", help="reuse a folder for the generated data (default: a temporary one)")
    parser.add_argument("--memory-child", choices=("default", "exact", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configuration = "2d" if args.dims == 2 else "3d_fullres"
    if args.quick:
        args.steps, args.warmup, args.no_memory = 5, 1, True

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dale_step_cost_"))
    if args.memory_child:
        prepare(workdir, args.size, args.dims, 12)
        print(json.dumps({"mb": peak_memory(configuration, args.memory_child, args.steps, args.lookahead)}))
        return

    prepare(workdir, args.size, args.dims, 12)
    result = time_steps(configuration, args.steps, args.warmup, args.lookahead)
    agreement = direction_agreement(configuration, args.steps, args.lookahead)
    med = {k: statistics.median(v) * 1000 for k, v in result["times"].items()}
    phase_ms = {
        mode: {p: statistics.median(ph[p] for ph in runs) * 1000 for p in runs[0]}
        for mode, runs in result["phases"].items()
    }

    memory = {}
    if not args.no_memory:
        for which in ("default", "exact", "fast"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", which, "--workdir", str(workdir), "--size", str(args.size),
                 "--dims", str(args.dims), "--steps", "5", "-K", str(args.lookahead)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            memory[which] = json.loads(out.stdout.strip().splitlines()[-1])["mb"]

    print(f"\n{configuration}, {args.size}^{args.dims}, batch {result['batch_size']}, K={args.lookahead}, "
          f"{args.steps} steps each after {args.warmup} warm-up, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("\n| trainer | median ms/step | IQR ms | ratio to default |")
    print("|---|---|---|---|")
    for name in ("default", "exact", "fast"):
        q1, q3 = np.percentile(np.array(result["times"][name]) * 1000, [25, 75])
        print(f"| {name} | {med[name]:.0f} | {q1:.0f}-{q3:.0f} | {med[name] / med['default']:.2f} |")
    for mode, phases in phase_ms.items():
        total = sum(phases.values())
        print(f"\n| DALE {mode} phase | median ms | share |")
        print("|---|---|---|")
        for p, ms in phases.items():
            print(f"| {p} | {ms:.0f} | {ms / total:.1%} |")
    if memory:
        print("\n| trainer | peak RSS added by 5 steps (MB) |")
        print("|---|---|")
        for which, mb in memory.items():
            print(f"| {which} | {mb:.0f} |")
    print(f"\nomega direction agreement fast vs exact on fuzzy voxels: {agreement:.1%}")
    mem_ratio = f"{memory['exact'] / max(memory['default'], 1e-9):.2f}" if memory else "n/a"
    split_share = phase_ms["exact"]["split"] / sum(phase_ms["exact"].values())
    print(
        f"\nratio_exact={med['exact'] / med['default']:.2f} ratio_fast={med['fast'] / med['default']:.2f} "
        f"mem_ratio={mem_ratio} split_share={split_share:.3f} agreement={agreement:.3f}"
    )


if __name__ == "__main__":
    main()
