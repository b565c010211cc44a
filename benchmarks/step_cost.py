"""Cost of one DALE train_step against nnU-Net's default train_step on the same batches (medians, side by side).

    python -m benchmarks.step_cost                # 2d plan of the built-in benchmark, 64 x 64, every omega mode
    python -m benchmarks.step_cost --quick        # a few minutes
    python -m benchmarks.step_cost --modes exact stale every4 --size 128 --steps 20 -K 2

Builds the default trainer and one DALE trainer per omega mode (MODES: the shipped configuration with that omega,
as the variants of nnunet_dale.variants set it) from the same plans and initial weights, feeds them the same
batches, alternating trainer by trainer step by step so machine noise hits all alike, and prints medians: ms per
step and the ratio to default per mode, DALE's time by phase, each mode's agreement with exact omega (the share of
fuzzy voxels whose omega moves the same way, under the shipped transform) and the rank correlation of its
hypergradient with exact's, fast mode's breakdown, and the peak memory of each trainer's steps (each in a fresh
process, see `peak_memory`). The last line is machine-readable.
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


MODES = ("exact", "fast", "first_order", "first_order_jvp", "stale", "every4")  # omega modes, docs/method.md
FUSED = ("first_order", "first_order_jvp", "stale")  # the single update's first-order modes


def mode_configs() -> dict[str, dict]:
    """Each omega mode's DALE configuration: the shipped one with exact omega on every iteration, and the variants
    that change only omega (so a mode's row moves with the shipped configuration); "shipped" is config.SHIPPED, the
    defaults. Each as its changes to the defaults."""
    from nnunet_dale import variants

    return {
        "exact": {"omega_mode": "exact", "omega_every": 1},
        "fast": variants.nnUNetTrainerDALE_fast.dale_defaults,
        "first_order": variants.nnUNetTrainerDALE_firstOrder.dale_defaults,
        "first_order_jvp": variants.nnUNetTrainerDALE_firstOrderJVP.dale_defaults,
        "stale": variants.nnUNetTrainerDALE_staleOmega.dale_defaults,
        "every4": variants.nnUNetTrainerDALE_omegaEvery4.dale_defaults,
        "shipped": {},
    }


def shipped_mode(modes: tuple[str, ...]) -> str:
    """The mode among `modes` whose configuration is the shipped one (nnUNetTrainerDALE), else "shipped"."""
    from nnunet_dale.config import DALEConfig

    configs = {name: DALEConfig(**config) for name, config in mode_configs().items()}
    return next((m for m in modes if configs[m] == configs["shipped"]), "shipped")


def trainers(configuration: str, lookahead: int, names: tuple[str, ...]) -> dict:
    """The default trainer ("default") and DALE in the named omega modes (mode_configs), from the same plans and the
    same initial weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_dale.inprocess import build_trainer as build
    from nnunet_dale.trainer import nnUNetTrainerDALE

    os.environ["NNUNET_DALE_LOOKAHEAD_STEPS"] = str(lookahead)
    os.environ["NNUNET_DALE_WARMUP_FRACTION"] = "0"  # a fresh trainer is at epoch 0: time DALE's steps, not warm-up's
    configs = mode_configs()
    classes = {
        name: type(f"nnUNetTrainerDALE_stepCost_{name}", (nnUNetTrainerDALE,), {"dale_defaults": configs[name]})
        for name in names
        if name != "default"
    }
    classes["default"] = nnUNetTrainer
    torch.manual_seed(0)
    built = {name: build(classes[name], 990, configuration=configuration) for name in names}
    for name in names[1:]:
        built[name].network.load_state_dict(built[names[0]].network.state_dict())
    return built


def batches(trainer, n: int) -> list[dict]:
    from nnunet_dale.inprocess import single_process_loader

    loader = single_process_loader(trainer)
    return [next(loader) for _ in range(n)]


def time_steps(configuration: str, steps: int, warmup: int, lookahead: int, names: tuple[str, ...]) -> dict:
    """Per-step seconds of each trainer (`names`, "default" first) and each DALE trainer's phase times."""
    built = trainers(configuration, lookahead, names)
    data = batches(built["default"], steps + warmup)
    times: dict[str, list[float]] = {name: [] for name in built}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in names if name != "default"}
    for i, batch in enumerate(data):
        for name, trainer in built.items():  # alternate, so machine noise hits all alike
            if name in phases:
                trainer.phase_times = {}
            start = time.perf_counter()
            trainer.train_step(copy_batch(batch))
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
                if name in phases:
                    phases[name].append(trainer.phase_times)
    every = {name: t.dale_config.omega_every for name, t in built.items() if name != "default"}
    return {"times": times, "phases": phases, "batch_size": built["default"].batch_size, "every": every}


def per_step_ms(times: list[float], every: int = 1) -> float:
    """Median ms per step; with omega on every k-th step (every > 1), the median over runs of k consecutive steps
    of their mean, so each run holds one omega step whatever the phase."""
    runs = [statistics.mean(times[i : i + every]) for i in range(0, len(times) - every + 1, every)]
    return statistics.median(runs) * 1000


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors (ties broken by position)."""
    ranks = torch.stack([t.flatten().argsort().argsort().double() for t in (a, b)])
    return float(torch.corrcoef(ranks)[0, 1])


AGREEMENTS = {
    "fast": "fast mode as shipped: v = non-fuzzy step's gradient at theta_{t-1}, finite-difference tangent",
    "fd_tangent_only": "exact v = grad L_n(theta_p) with the finite-difference tangent (the tangent's share)",
    "stale_v_only": "v at theta_{t-1} with the exact JVP tangent (the stale direction's share)",
    "fresh_v": "v = grad L_n(theta_n), a fresh non-fuzzy gradient after the step, finite-difference tangent",
    "fresh_v_jvp": "v = grad L_n(theta_n) with the exact JVP tangent (costs a forward + backward more than fast)",
}


class Agreement:
    """Per omega variant against exact omega on the same state and batch: the share of fuzzy voxels (M^f > 0) whose
    exact omega moved where the variant's omega moves the same way (`weight`: weighted by it instead), pooled over
    steps, and the per-step rank correlation of the raw hypergradients over the fuzzy voxels."""

    def __init__(self) -> None:
        self.counts: dict[str, list[float]] = {}
        self.ranks: dict[str, list[float]] = {}

    def add(self, name: str, conf, exact, fuzzy: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        moved = (fuzzy > 0) & (exact.update != 0)
        weight = moved.double() if weight is None else weight * moved
        same = torch.sign(conf.update) == torch.sign(exact.update)
        count = self.counts.setdefault(name, [0.0, 0.0])
        count[0] += float((weight * same).sum())
        count[1] += float(weight.sum())
        if conf.hypergradient is not None and exact.hypergradient is not None:
            voxels = fuzzy > 0
            self.ranks.setdefault(name, []).append(
                rank_correlation(conf.hypergradient[voxels], exact.hypergradient[voxels])
            )

    def shares(self) -> dict[str, float]:
        return {k: agree / max(total, 1e-12) for k, (agree, total) in self.counts.items()}

    def rank_medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.ranks.items() if v}


def direction_agreement(configuration: str, steps: int, lookahead: int) -> dict:
    """Fast mode's agreement with exact omega, and of the approximations it is made of (AGREEMENTS), on the same
    network state and batch over a short fast-mode training run (two steps per iteration: exact omega looks ahead
    from theta_n); also fast mode's agreement weighted by M^f and on the fully fuzzy voxels (M^f = 1) only, the rank
    correlation of its hypergradient with exact's, and the cosines between the stale / fresh non-fuzzy gradients
    and the exact v. Every omega goes through the trainer's own transform of the hypergradient (the shipped
    per-class normalisation), so the signs compared are the ones used."""
    from nnunet_dale.confidence import first_order_confidence, functional_forward, learn_confidence, shadow_parameters
    from nnunet_dale.trainer import unwrap

    trainer = trainers(configuration, lookahead, ("fast",))["fast"]
    shipped = trainer._confidence
    cfg = trainer.dale_config
    agreement = Agreement()
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

    def probe(x_f, x_n, output_f, split, membership, fuzzy_loss, nonfuzzy_loss, gradient_n=None):
        fast = shipped(x_f, x_n, output_f, split, membership, fuzzy_loss, nonfuzzy_loss, gradient_n)
        transform = trainer._omega_transform(split, membership)
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

        def along(v, jvp=False):
            return first_order_confidence(forward, params, x_f, output_f, fuzzy_loss, v, shape, lr,
                                          cfg.lookahead_steps, cfg.omega_lr, transform=transform, jvp=jvp)  # fmt: skip

        variants = {"fast": fast, "fd_tangent_only": along(v_p), "stale_v_only": along(v_stale, jvp=True),
                    "fresh_v": along(v_fresh), "fresh_v_jvp": along(v_fresh, jvp=True)}  # fmt: skip
        for name, conf in variants.items():
            agreement.add(name, conf, exact, split.fuzzy)
        agreement.add("fast_weighted", fast, exact, split.fuzzy, weight=split.fuzzy)
        agreement.add("fast_fully_fuzzy", fast, exact, split.fuzzy, weight=(split.fuzzy >= 1).double())
        cosines["stale_v"].append(cosine(v_stale, v_p))
        cosines["fresh_v"].append(cosine(v_fresh, v_p))
        return fast

    trainer._confidence = probe
    for batch in batches(trainer, steps):
        trainer.train_step(copy_batch(batch))
    return {
        **agreement.shares(),
        "rank_fast": agreement.rank_medians()["fast"],
        **{f"cos_{k}": statistics.median(v) for k, v in cosines.items()},
    }


def fused_agreement(configuration: str, steps: int, lookahead: int, modes: tuple[str, ...]) -> dict:
    """Agreement with exact omega (Agreement) of the single update's omega modes (first_order, first_order_jvp,
    stale, and every4: exact omega on every 4th step, omega = 1 on the others, which counts as disagreeing), on the
    same network state and batch over a short training run of the shipped update with exact omega; each mode's omega
    by the trainer's own `_direction` and `_lookahead` under that mode, through the shipped transform. Returns
    {mode: (agreement, median rank correlation)}; every4's rank correlation is over its omega steps."""
    trainer = trainers(configuration, lookahead, ("exact",))["exact"]
    shipped = trainer._confidence
    cfg = trainer.dale_config
    agreement = Agreement()
    step = [0]

    def probe(x_f, x_n, output_f, split, membership, fuzzy_loss, nonfuzzy_loss, gradient_n=None):
        exact = shipped(x_f, x_n, output_f, split, membership, fuzzy_loss, nonfuzzy_loss, gradient_n)
        transform = trainer._omega_transform(split, membership)
        for mode in (m for m in modes if m in FUSED):
            trainer.dale_config = cfg.replace(omega_mode=mode)
            try:
                direction = trainer._direction(nonfuzzy_loss(trainer.network(x_n)))
                if direction is None:  # stale before the first optimiser step: not counted
                    continue
                conf = trainer._lookahead(x_f, x_n, output_f, split, fuzzy_loss, nonfuzzy_loss, direction, transform)
            finally:
                trainer.dale_config = cfg
            agreement.add(mode, conf, exact, split.fuzzy)
        if "every4" in modes:
            every = exact if step[0] % 4 == 0 else type(exact).neutral(split.fuzzy)
            agreement.add("every4", every, exact, split.fuzzy)
        step[0] += 1
        return exact

    trainer._confidence = probe
    for batch in batches(trainer, steps):
        trainer.train_step(copy_batch(batch))
    shares, ranks = agreement.shares(), agreement.rank_medians()
    return {mode: (shares[mode], ranks.get(mode, float("nan"))) for mode in shares}


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
    parser.add_argument("--agreement-steps", type=int, default=30, help="training steps for the omega agreement")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the measured ones (>= 1: stale's first)")
    parser.add_argument("-K", "--lookahead", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="omega modes (exact always)")
    parser.add_argument("--quick", action="store_true", help="a few minutes: 5 steps, 5 agreement steps, no memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--workdir", help="reuse a folder for the generated data (default: a temporary one)")
    parser.add_argument("--memory-child", choices=("default", *MODES, "shipped"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configuration = "2d" if args.dims == 2 else "3d_fullres"
    if args.quick:
        args.steps, args.warmup, args.no_memory, args.agreement_steps = 5, 1, True, 5

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dale_step_cost_"))
    if args.memory_child:
        prepare(workdir, args.size, args.dims, 12)
        print(json.dumps(peak_memory(configuration, args.memory_child, args.steps, args.lookahead)))
        return

    modes = tuple(m for m in MODES if m == "exact" or m in args.modes)
    shipped = shipped_mode(modes)
    names = ("default", *modes, *([shipped] if shipped not in modes else []))
    prepare(workdir, args.size, args.dims, 12)
    result = time_steps(configuration, args.steps, args.warmup, args.lookahead, names)
    fast = direction_agreement(configuration, args.agreement_steps, args.lookahead) if "fast" in modes else None
    agreement = {"exact": (1.0, 1.0), **fused_agreement(configuration, args.agreement_steps, args.lookahead, modes)}
    if fast is not None:
        agreement["fast"] = (fast["fast"], fast["rank_fast"])
    every = result["every"]
    med = {k: per_step_ms(v, every.get(k, 1)) for k, v in result["times"].items()}
    ratio = {k: med[k] / med["default"] for k in med}
    phase_ms = {
        mode: {p: statistics.median(ph[p] for ph in runs) * 1000 for p in runs[0]}
        for mode, runs in result["phases"].items()
        if every[mode] == 1  # a median phase over alternating omega and plain steps would be neither
    }

    memory = {}
    if not args.no_memory and Path("/proc/self/clear_refs").exists():
        for which in names:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.step_cost", "--memory-child", which, "--workdir", str(workdir),
                 "--size", str(args.size), "--dims", str(args.dims), "--steps", "5", "-K", str(args.lookahead)],
                capture_output=True, text=True, check=True, env={**os.environ, **MEMORY_ENV}, cwd=REPO,
            )  # fmt: skip
            memory[which] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"\n{configuration}, {args.size}^{args.dims}, batch {result['batch_size']}, K={args.lookahead}, "
          f"{args.steps} steps each after {args.warmup} warm-up, {args.agreement_steps} agreement steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("\n| trainer | median ms/step | IQR ms | ratio to default |")
    print("|---|---|---|---|")
    for name in names:
        q1, q3 = np.percentile(np.array(result["times"][name]) * 1000, [25, 75])
        print(f"| {name} | {med[name]:.0f} | {q1:.0f}-{q3:.0f} | {ratio[name]:.2f} |")
    print("\n| omega mode | ratio to default | agreement with exact | rank corr. of hypergradients | shipped |")
    print("|---|---|---|---|---|")
    for mode in modes:
        share, rank = agreement.get(mode, (float("nan"), float("nan")))
        print(f"| {mode} | {ratio[mode]:.2f} | {share:.1%} | {rank:.2f} | {'yes' if mode == shipped else ''} |")
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
    if fast is not None:
        print("\n| fast mode: omega direction agreement with exact mode, fuzzy voxels | share |")
        print("|---|---|")
        for key, what in AGREEMENTS.items():
            print(f"| {key}: {what} | {fast[key]:.1%} |")
        print(f"| fast, weighted by M^f | {fast['fast_weighted']:.1%} |")
        print(f"| fast, fully fuzzy voxels (M^f = 1) only | {fast['fast_fully_fuzzy']:.1%} |")
        cos = fast["cos_stale_v"], fast["cos_fresh_v"]
        print(f"\nmedian cosine to the exact v = grad L_n(theta_p): stale v {cos[0]:.3f}, fresh v {cos[1]:.3f}")
    mem_ratio = f"{memory['exact']['tensor_mb'] / max(memory['default']['tensor_mb'], 1e-9):.2f}" if memory else "n/a"
    split_share = phase_ms["exact"]["split"] / sum(phase_ms["exact"].values())
    fast_ratio, fast_agreement = (f"{ratio['fast']:.2f}", f"{fast['fast']:.3f}") if fast else ("n/a", "n/a")
    shipped_agreement = agreement.get(shipped, (float("nan"),))[0]
    print(
        f"\nratio_exact={ratio['exact']:.2f} ratio_fast={fast_ratio} mem_ratio={mem_ratio} "
        f"split_share={split_share:.3f} agreement={fast_agreement} ratio_shipped={ratio[shipped]:.2f} "
        f"agreement_shipped={shipped_agreement:.3f}"
    )


if __name__ == "__main__":
    main()
