"""Cost of one DALE train_step against nnU-Net's default train_step on the same batches (medians, side by side).

    python -m benchmarks.step_cost                # 2d plan of the built-in benchmark, 64 x 64
    python -m benchmarks.step_cost --quick        # under a minute
    python -m benchmarks.step_cost --size 128 --steps 20 -K 2

Builds the default trainer and nnUNetTrainerDALE from the same plans and initial weights, feeds both the same
batches, alternating default / DALE step by step so machine noise hits both alike, and prints medians: ms per step,
the ratio DALE / default (exact and fast mode), DALE's time by phase, the agreement of fast mode's omega
directions with exact mode's, and the peak memory of each trainer's steps (each in a fresh process, see
`peak_memory`). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunet_dale.inprocess import copy_batch

REPO = Path(__file__).resolve().parents[1]


def prepare(root: Path, size: int, dims: int, num_train: int) -> int:
    from nnunet_dale.benchmark_data import make_benchmark
    from nnunet_dale.inprocess import plan_and_preprocess
    from nnunet_dale.nnunet_env import use_nnunet_folders

    use_nnunet_folders(root)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ["nnUNet_n_proc_DA"] = "1"
    make_benchmark(root / "nnUNet_raw", 990, num_train=num_train, num_test=2, size=size, dims=dims, seed=0)
    plan_and_preprocess(990, ("2d" if dims == 2 else "3d_fullres",))
    return 990


TRAINERS = ("default", "exact", "fast")


def trainers(configuration: str, lookahead: int, names: tuple[str, ...] = TRAINERS) -> dict:
    """The default trainer and DALE in exact and fast mode, from the same plans and the same initial weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_dale.inprocess import build_trainer as build
    from nnunet_dale.trainer import nnUNetTrainerDALE
    from nnunet_dale.variants import nnUNetTrainerDALE_fast

    os.environ["NNUNET_DALE_LOOKAHEAD_STEPS"] = str(lookahead)
    os.environ["NNUNET_DALE_WARMUP_FRACTION"] = "0"  # a fresh trainer is at epoch 0: time DALE's steps, not warm-up's
    classes = {"default": nnUNetTrainer, "exact": nnUNetTrainerDALE, "fast": nnUNetTrainerDALE_fast}
    torch.manual_seed(0)
    built = {name: build(classes[name], 990, configuration=configuration) for name in names}
    for name in names[1:]:
        built[name].network.load_state_dict(built[names[0]].network.state_dict())
    return built


def batches(trainer, n: int) -> list[dict]:
    from nnunet_dale.inprocess import single_process_loader

    loader = single_process_loader(trainer)
    return [next(loader) for _ in range(n)]


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
            trainer.train_step(copy_batch(batch))
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
                if name in phases:
                    phases[name].append(trainer.phase_times)
    return {"times": times, "phases": phases, "batch_size": built["default"].batch_size}


AGREEMENTS = {
    "fast": "fast mode as shipped: v = non-fuzzy step's gradient at theta_{t-1}, finite-difference tangent",
    "fd_tangent_only": "exact v = grad L_n(theta_p) with the finite-difference tangent (the tangent's share)",
    "stale_v_only": "v at theta_{t-1} with the exact JVP tangent (the stale direction's share)",
    "fresh_v": "v = grad L_n(theta_n), a fresh non-fuzzy gradient after the step, finite-difference tangent",
    "fresh_v_jvp": "v = grad L_n(theta_n) with the exact JVP tangent (costs a forward + backward more than fast)",
}


def direction_agreement(configuration: str, steps: int, lookahead: int) -> dict:
    """Share of fuzzy voxels whose omega moves the same way (up / down) as in exact mode, for fast mode and for the
    approximations it is made of (AGREEMENTS), on the same network state and batch, over a short fast-mode training
    run; also fast mode's agreement weighted by M^f and on the fully fuzzy voxels (M^f = 1) only, and the cosines
    between the stale / fresh non-fuzzy gradients and the exact v. Every omega goes through the trainer's own
    transform of the hypergradient (the shipped per-class normalisation), so the signs compared are the ones used."""
    from nnunet_dale.confidence import (
        adam_on_omega,
        confidence_hypergradient,
        fast_confidence,
        functional_forward,
        learn_confidence,
        output_tangent,
        shadow_parameters,
    )
    from nnunet_dale.trainer import unwrap

    trainer = trainers(configuration, lookahead, ("fast",))["fast"]
    shipped = trainer._confidence
    cfg = trainer.dale_config
    counts: dict[str, list[float]] = {k: [0.0, 0.0] for k in (*AGREEMENTS, "fast_weighted", "fast_fully_fuzzy")}
    cosines: dict[str, list[float]] = {"stale_v": [], "fresh_v": []}

    def grad(loss, wrt: dict) -> dict:
        values = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True, materialize_grads=True)
        return dict(zip(wrt, values))

    def cosine(a: dict, b: dict) -> float:
        dot = sum(float((a[n] * b[n]).sum()) for n in a)
        return (
            dot
            / (sum(float(t.pow(2).sum()) for t in a.values()) * sum(float(t.pow(2).sum()) for t in b.values())) ** 0.5
        )

    def probe(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n=None, transform=None):
        fast = shipped(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, gradient_n, transform)
        module = unwrap(trainer.network)
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        forward = functional_forward(module)

        lr, shape = trainer.optimizer.param_groups[0]["lr"], split.fuzzy.shape
        exact = learn_confidence(
            forward, params, x_f, x_n, fuzzy_loss, nonfuzzy_loss, shape, lr, cfg.lookahead_steps, cfg.omega_lr,
            fuzzy_outputs=output_f, transform=transform,
        )  # fmt: skip
        theta_p = shadow_parameters(params, fuzzy_loss(output_f, torch.ones_like(split.fuzzy)), lr)
        v_p = grad(nonfuzzy_loss(forward(theta_p, x_n)), theta_p)
        v_stale = dict(zip(params, gradient_n))
        theta_n = {n: p.detach().requires_grad_() for n, p in params.items()}
        v_fresh = grad(nonfuzzy_loss(forward(theta_n, x_n)), theta_n)

        def with_fd(v):
            return fast_confidence(forward, params, x_f, output_f, fuzzy_loss, v, shape, lr, cfg.lookahead_steps,
                                   cfg.omega_lr, transform=transform)  # fmt: skip

        def with_jvp(v):
            tangent = output_tangent(forward, params, x_f, v)
            return adam_on_omega(shape, x_f, cfg.omega_lr, cfg.lookahead_steps,
                                  lambda w: confidence_hypergradient(output_f, tangent, fuzzy_loss, w, lr),
                                  transform)  # fmt: skip

        variants = {"fast": fast, "fd_tangent_only": with_fd(v_p), "stale_v_only": with_jvp(v_stale),
                    "fresh_v": with_fd(v_fresh), "fresh_v_jvp": with_jvp(v_fresh)}  # fmt: skip
        moved = (split.fuzzy > 0) & (exact.update != 0)
        for name, conf in variants.items():
            same = torch.sign(conf.update) == torch.sign(exact.update)
            counts[name][0] += float(same[moved].sum())
            counts[name][1] += float(moved.sum())
            if name == "fast":
                weight = split.fuzzy * moved
                counts["fast_weighted"][0] += float((weight * same).sum())
                counts["fast_weighted"][1] += float(weight.sum())
                full = moved & (split.fuzzy >= 1)
                counts["fast_fully_fuzzy"][0] += float(same[full].sum())
                counts["fast_fully_fuzzy"][1] += float(full.sum())
        cosines["stale_v"].append(cosine(v_stale, v_p))
        cosines["fresh_v"].append(cosine(v_fresh, v_p))
        return fast

    trainer._confidence = probe
    for batch in batches(trainer, steps):
        trainer.train_step(copy_batch(batch))
    result = {k: agree / max(total, 1e-12) for k, (agree, total) in counts.items()}
    return {**result, **{f"cos_{k}": statistics.median(v) for k, v in cosines.items()}}


MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: tensors >= 64 KiB are mmapped and unmapped when freed


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_memory(configuration: str, which: str, steps: int, lookahead: int) -> dict:
    """Peak memory of `steps` train steps of one trainer (run in a fresh process by --memory-child, with MEMORY_ENV).

    CPU stand-in for CUDA's max_memory_allocated: after one warm-up step (so optimiser state exists) the kernel's
    high-water mark of the resident set is reset (/proc/self/clear_refs); `step_mb` is the peak above the resident
    set before the steps (activations, gradients, DALE's shadow parameters and tangents), `peak_mb` the peak of the
    whole process (with the model, optimiser state, Python and libraries), `tensor_mb` the analogue of CUDA's peak:
    the persistent tensors (parameters, their gradients, optimiser state) plus `step_mb`. With large tensors
    mmapped, a freed tensor leaves the resident set, so the resident set follows the live tensors.
    """
    trainer = trainers(configuration, lookahead, (which,))[which]
    data = batches(trainer, steps + 1)
    trainer.train_step(copy_batch(data[0]))
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for batch in data[1:]:
        trainer.train_step(copy_batch(batch))
    peak = _status_kb("VmHWM")
    state = [t for group in trainer.optimizer.state.values() for t in group.values() if torch.is_tensor(t)]
    params = list(trainer.network.parameters())
    persistent = [*params, *(p.grad for p in params if p.grad is not None), *state]
    step_mb = (peak - before) / 1024
    tensor_mb = sum(t.numel() * t.element_size() for t in persistent) / 2**20 + step_mb
    return {"step_mb": step_mb, "tensor_mb": tensor_mb, "peak_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--steps", type=int, default=15, help="measured steps per trainer")
    parser.add_argument("--agreement-steps", type=int, default=30, help="fast-mode steps for the omega agreement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("-K", "--lookahead", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a run under a minute: 5 steps, no memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--workdir", help="reuse a folder for the generated data (default: a temporary one)")
    parser.add_argument("--memory-child", choices=("default", "exact", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configuration = "2d" if args.dims == 2 else "3d_fullres"
    if args.quick:
        args.steps, args.warmup, args.no_memory, args.agreement_steps = 5, 1, True, 5

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dale_step_cost_"))
    if args.memory_child:
        prepare(workdir, args.size, args.dims, 12)
        print(json.dumps(peak_memory(configuration, args.memory_child, args.steps, args.lookahead)))
        return

    prepare(workdir, args.size, args.dims, 12)
    result = time_steps(configuration, args.steps, args.warmup, args.lookahead)
    agreement = direction_agreement(configuration, args.agreement_steps, args.lookahead)
    med = {k: statistics.median(v) * 1000 for k, v in result["times"].items()}
    phase_ms = {
        mode: {p: statistics.median(ph[p] for ph in runs) * 1000 for p in runs[0]}
        for mode, runs in result["phases"].items()
    }

    memory = {}
    if not args.no_memory and Path("/proc/self/clear_refs").exists():
        for which in TRAINERS:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.step_cost", "--memory-child", which, "--workdir", str(workdir),
                 "--size", str(args.size), "--dims", str(args.dims), "--steps", "5", "-K", str(args.lookahead)],
                capture_output=True, text=True, check=True, env={**os.environ, **MEMORY_ENV}, cwd=REPO,
            )  # fmt: skip
            memory[which] = json.loads(out.stdout.strip().splitlines()[-1])

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
        print("\n| trainer | step's peak above its start, MB | tensors at the peak, MB | whole process, MB |")
        print("|---|---|---|---|")
        for which, m in memory.items():
            cells = [
                f"{m[k]:.0f} ({m[k] / max(memory['default'][k], 1e-9):.2f}x)"
                for k in ("step_mb", "tensor_mb", "peak_mb")
            ]
            print(f"| {which} | {' | '.join(cells)} |")
    print("\n| omega direction agreement with exact mode, fuzzy voxels | share |")
    print("|---|---|")
    for key, what in AGREEMENTS.items():
        print(f"| {key}: {what} | {agreement[key]:.1%} |")
    print(f"| fast, weighted by M^f | {agreement['fast_weighted']:.1%} |")
    print(f"| fast, fully fuzzy voxels (M^f = 1) only | {agreement['fast_fully_fuzzy']:.1%} |")
    cos = agreement["cos_stale_v"], agreement["cos_fresh_v"]
    print(f"\nmedian cosine to the exact v = grad L_n(theta_p): stale v {cos[0]:.3f}, fresh v {cos[1]:.3f}")
    mem_ratio = f"{memory['exact']['tensor_mb'] / max(memory['default']['tensor_mb'], 1e-9):.2f}" if memory else "n/a"
    split_share = phase_ms["exact"]["split"] / sum(phase_ms["exact"].values())
    print(
        f"\nratio_exact={med['exact'] / med['default']:.2f} ratio_fast={med['fast'] / med['default']:.2f} "
        f"mem_ratio={mem_ratio} split_share={split_share:.3f} agreement={agreement['fast']:.3f}"
    )


if __name__ == "__main__":
    main()
