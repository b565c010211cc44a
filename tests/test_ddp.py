"""DALE's train step under torch DDP (nnU-Net's ``-num_gpus N``), on the CPU: two processes with a gloo group.

nnUNetTrainer.__init__ forces a CUDA device once a process group exists, so each process builds its trainers on the
CPU first, then joins the group and wraps them as nnU-Net's `initialize` does under DDP: the network in
DistributedDataParallel, nnU-Net's loss rebuilt with its DDP deep-supervision weights and DALE's loss rebuilt with
`ddp=True` (batch Dice sums all-gathered through nnU-Net's AllGatherGrad). The feature tap stays on the inner module.

What the maths says holds, and is tested (see docs/robustness.md):
- the ranks' parameters stay identical (DDP averages every real step's gradient; omega is per rank, locally);
- DDP on two halves of a batch == one process on the whole batch optimising the rank average of each rank's loss,
  i.e. mean_r CE_r + batch Dice of the whole batch (AllGatherGrad gives each rank world_size x its share of the
  global Dice gradient, DDP divides by world_size). It is NOT the same as one process on the concatenated batch
  with the ordinary loss: the weighted CE of each rank is normalised by that rank's own region mass.
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_dale.progress import NOT_ALWAYS_DEFINED
from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import nnUNetTrainerDALE_paper
from nnunet_dale.weighted_loss import PixelWeightedDCandCE

from conftest import build, copy_batch

pytestmark = pytest.mark.slow  # two extra processes building nnU-Net trainers: about 1-2 minutes on 2 CPU cores
WORLD = 2
PER_RANK = 2
PLAIN = {"NNUNET_DALE_USE_OMEGA": "0", "NNUNET_DALE_ALPHA": "0"}  # omega and alignment off
FUSED = ("first_order", "stale")  # omega modes fused into the single update (v: its own L_n gradient, momentum)
CONFIGS = {"default": {}, "plain": PLAIN, "shipped": {}, **{m: {"NNUNET_DALE_OMEGA_MODE": m} for m in FUSED}}
SHIPPED_CLASS = ("shipped", *FUSED)  # these build nnUNetTrainerDALE, the others _paper
TIMEOUT = 300  # seconds for the whole two-process run; a collective waits at most 90 s


# ---------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_parameters(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.network.parameters()]).clone()


def part(batch: dict, index, dtype: torch.dtype = torch.float32) -> dict:
    return {"data": batch["data"][index].to(dtype, copy=True), "target": [t[index].clone() for t in batch["target"]]}


def build_with(env: dict, dataset_id: int, state: dict, cls=nnUNetTrainerDALE_paper):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        trainer = build(cls, dataset_id)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    trainer.network.load_state_dict(state)
    return trainer


def make_ddp(trainer, rank: int) -> None:
    """What nnU-Net's `initialize` does when a process group exists (minus CUDA), plus DALE's loss rebuilt."""
    trainer.is_ddp, trainer.local_rank = True, rank
    # nnU-Net also converts BatchNorm to SyncBatchNorm (its networks use InstanceNorm: a no-op) and wraps in DDP
    trainer.network = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(trainer.network))
    trainer.loss = trainer._build_loss()  # under DDP nnU-Net weights the lowest output 1e-6 instead of 0
    trainer.dale_loss = trainer._build_dale_loss()  # ddp=True: batch Dice all-gathered
    # the feature tap was registered on the inner module in `initialize`; its hook still fires inside DDP


def ddp_loss_factors(trainer) -> tuple[float, ...]:
    trainer.is_ddp = True
    try:
        return trainer._build_loss().weight_factors
    finally:
        trainer.is_ddp = False


def nothing_fuzzy(batch: dict) -> dict:
    """Constant image, all background: m = 0 everywhere, no fuzzy region (the trainer skips omega and fuzzy step)."""
    return {"data": torch.full_like(batch["data"], 0.7), "target": [torch.zeros_like(t) for t in batch["target"]]}


# ---------------------------------------------------------------------------------------------- the two processes
def _worker(rank: int, folder: str, port: int, dataset_id: int) -> None:
    torch.set_num_threads(1)
    folder = Path(folder)
    inputs = torch.load(folder / "inputs.pt", weights_only=False)
    classes = dict.fromkeys(SHIPPED_CLASS, nnUNetTrainerDALE)
    trainers = {
        name: build_with(env, dataset_id, inputs["state"], classes.get(name, nnUNetTrainerDALE_paper))
        for name, env in CONFIGS.items()
    }  # before init
    trainers["plain"].network.double()  # float64: the equivalence below is then exact to ~1e-12, not float32 noise
    if Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=90)
    )
    results: dict = {}

    def gathered(trainer) -> list[torch.Tensor]:
        mine = flat_parameters(trainer)
        every = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(every, mine)
        return every

    try:
        for trainer in trainers.values():
            make_ddp(trainer, rank)
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

        trainer = trainers["default"]  # three DALE steps, each rank on its own images
        start = flat_parameters(trainer)
        outputs = [trainer.train_step(part(inputs["batch"], mine)) for _ in range(3)]
        results["default"] = {"start": start, "ranks": gathered(trainer), "outputs": outputs}

        trainer = trainers["plain"]  # one step without omega and L_W, against the single-process formula
        trainer.train_step(part(inputs["batch"], mine, torch.float64))
        results["plain"] = {"ranks": gathered(trainer)}

        trainer = trainers["default"]  # rank 1 has no fuzzy region, rank 0 has one
        before = flat_parameters(trainer)
        b = part(inputs["batch"], mine)
        b = nothing_fuzzy(b) if rank == 1 else b
        outputs = [trainer.train_step(copy_batch(b)) for _ in range(2)]
        results["one_rank_nothing_fuzzy"] = {
            "before": before,
            "ranks": gathered(trainer),
            "outputs": outputs,
            "fallbacks": dict(trainer.dale_fallbacks),
        }

        trainer = trainers["shipped"]  # the single update under DDP, then a step where rank 1 has nothing fuzzy
        trainer.current_epoch = 999  # past the warm-up
        start = flat_parameters(trainer)
        b = part(inputs["batch"], mine)
        outputs = [trainer.train_step(copy_batch(b)), trainer.train_step(nothing_fuzzy(b) if rank == 1 else b)]
        results["shipped"] = {"start": start, "ranks": gathered(trainer), "outputs": outputs}

        for mode in FUSED:  # two updates on each rank's images, then one where rank 1 has nothing fuzzy
            trainer = trainers[mode]
            trainer.current_epoch = 999
            start = flat_parameters(trainer)
            b = part(inputs["batch"], mine)
            outputs = [trainer.train_step(copy_batch(b)) for _ in range(2)]
            outputs.append(trainer.train_step(nothing_fuzzy(b) if rank == 1 else copy_batch(b)))
            results[mode] = {"start": start, "ranks": gathered(trainer), "outputs": outputs}
    except Exception as e:  # recorded for the tests (a desynchronised collective ends in gloo's timeout)
        results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        torch.save(results, folder / f"rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def four_images(batch) -> dict:
    """The session batch (2 images) plus a flipped, noisier copy: rank 0 and rank 1 get different images, with
    different fuzzy/non-fuzzy masses (the noise changes the patch entropies)."""
    generator = torch.Generator().manual_seed(0)
    data = batch["data"].flip(-1)
    noisy = data + 0.5 * data.std() * torch.randn(data.shape, generator=generator)
    return {
        "data": torch.cat([batch["data"], noisy]),
        "target": [torch.cat([t, t.flip(-1)]) for t in batch["target"]],
    }


@pytest.fixture(scope="module")
def ddp_run(dataset_2d, four_images, tmp_path_factory) -> dict:
    """Runs the two processes once; returns each rank's recorded results and the shared inputs."""
    folder = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build(nnUNetTrainerDALE_paper, dataset_2d).network.state_dict().items()}
    torch.save({"state": state, "batch": four_images}, folder / "inputs.pt")
    context = mp.start_processes(
        _worker, args=(str(folder), free_port(), dataset_2d), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT
    error = None
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                error = f"the DDP processes did not finish within {TIMEOUT} s"
                break
    except Exception as e:  # a child raised: keep what the ranks recorded, report it in the tests that need it
        error = f"{type(e).__name__}: {e}"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": ranks, "error": error, "state": state}


def results_of(ddp_run, scenario: str) -> list[dict]:
    missing = [r for r, ranked in enumerate(ddp_run["ranks"]) if scenario not in ranked]
    if missing:
        raise AssertionError(f"rank(s) {missing} did not finish {scenario!r}: {ddp_run['error']}")
    return [ranked[scenario] for ranked in ddp_run["ranks"]]


# ---------------------------------------------------------------------------------------------- tests
def test_ddp_ranks_stay_identical_finite_and_move(ddp_run):
    results = results_of(ddp_run, "default")
    for r, res in enumerate(results):
        every = res["ranks"]  # all_gather of the parameters, seen from rank r
        assert torch.equal(every[0], every[1]), f"rank {r}: parameters differ between ranks after 3 DDP steps"
        assert torch.isfinite(every[r]).all()
        assert not torch.allclose(every[r], res["start"])
        for out in res["outputs"]:
            assert all(torch.isfinite(torch.tensor(float(v))) for v in out.values())
            assert 0 < out["dale_fuzzy_fraction"] < 1
            assert out["dale_l_w"] > 0  # the feature tap on the inner module fires inside DDP
            assert out["dale_mean_omega"] != 1.0  # omega was learned on every rank
    assert torch.equal(results[0]["start"], results[1]["start"])
    # different images per rank: the ranks computed different losses and statistics from the same weights
    assert results[0]["outputs"][0]["dale_fuzzy_fraction"] != results[1]["outputs"][0]["dale_fuzzy_fraction"]


class RankAveragedLoss(nn.Module):
    """What a DDP step optimises, written for one process holding every rank's images: the mean over ranks of each
    rank's weighted CE (normalised by that rank's own mass) plus the batch Dice of the whole batch."""

    def __init__(self, batch_dice: bool, ranks: list[slice]):
        super().__init__()
        self.ce = PixelWeightedDCandCE(batch_dice, weight_dice=0)
        self.dice = PixelWeightedDCandCE(batch_dice, weight_ce=0)
        self.ranks = ranks

    def forward(self, logits, target, weight, normaliser=None):
        normaliser = weight if normaliser is None else normaliser
        ce = [self.ce(logits[s], target[s], weight[s], normaliser[s]) for s in self.ranks]
        return sum(ce) / len(ce) + self.dice(logits, target, weight, normaliser)


def single_process_step(dataset_id: int, state: dict, batch: dict, formula: bool, monkeypatch) -> torch.Tensor:
    for key, value in PLAIN.items():
        monkeypatch.setenv(key, value)
    trainer = build_with({}, dataset_id, state)
    trainer.network.double()
    factors = ddp_loss_factors(trainer)
    if formula:
        ranks = [slice(r * PER_RANK, (r + 1) * PER_RANK) for r in range(WORLD)]
        trainer.dale_loss = DeepSupervisionWrapper(
            RankAveragedLoss(trainer.configuration_manager.batch_dice, ranks), factors
        )
    else:  # nnU-Net-style single-process run on the concatenated batch (same deep-supervision weights as DDP)
        trainer.dale_loss = DeepSupervisionWrapper(trainer.dale_loss.loss, factors)
    trainer.train_step(part(batch, slice(None), torch.float64))
    return flat_parameters(trainer)


def test_ddp_step_equals_single_process_rank_average(ddp_run, dataset_2d, four_images, monkeypatch):
    """With omega and L_W off, one DDP DALE step (two optimiser steps, float64) == one process on all four images
    optimising mean_r CE_r + global batch Dice; the plain concatenated-batch loss differs measurably."""
    ddp = results_of(ddp_run, "plain")[0]["ranks"][0]
    start = results_of(ddp_run, "default")[0]["start"].double()  # both trainers started from the same weights
    formula = single_process_step(dataset_2d, ddp_run["state"], four_images, True, monkeypatch)
    naive = single_process_step(dataset_2d, ddp_run["state"], four_images, False, monkeypatch)

    def relative(a):  # error of an update relative to the DDP update
        return float((a - ddp).norm() / (ddp - start).norm())

    assert relative(formula) < 1e-9, relative(formula)  # float64 round-off (measured ~1e-14)
    assert relative(naive) > 1e-3, relative(naive)  # measured ~4e-2: per-rank CE normalisers differ


def test_ddp_shipped_single_update_keeps_ranks_identical(ddp_run):
    results = results_of(ddp_run, "shipped")
    for res in results:
        assert torch.equal(res["ranks"][0], res["ranks"][1])  # one update, the same on both ranks
        assert torch.isfinite(res["ranks"][0]).all()
        assert not torch.equal(res["ranks"][0], res["start"])
    assert results[1]["outputs"][1]["dale_fuzzy_fraction"] == 0 < results[0]["outputs"][1]["dale_fuzzy_fraction"]
    assert all(math.isfinite(o["dale_omega_moved"]) for res in results for o in res["outputs"])


@pytest.mark.parametrize("mode", FUSED)
def test_ddp_fused_omega_modes_keep_ranks_identical(ddp_run, mode):
    """first_order takes v by autograd.grad before the update's backward on the DDP-wrapped graph: DDP must still
    all-reduce the update (ranks with different images stay identical); stale reads the momentum buffer."""
    results = results_of(ddp_run, mode)
    for res in results:
        assert torch.equal(res["ranks"][0], res["ranks"][1])
        assert torch.isfinite(res["ranks"][0]).all() and not torch.equal(res["ranks"][0], res["start"])
        learned = res["outputs"][1 if mode == "stale" else 0]  # stale: no momentum before the first update
        assert 0 < learned["dale_omega_moved"] <= 1
    assert results[1]["outputs"][2]["dale_fuzzy_fraction"] == 0 < results[0]["outputs"][2]["dale_fuzzy_fraction"]


def test_ddp_rank_without_fuzzy_region_stays_in_step(ddp_run):
    """One rank's batch has no fuzzy region, the other's has: the skip decisions must agree across ranks (every
    real step's backward and the batch Dice are collectives), else the ranks deadlock or pair wrong collectives."""
    results = results_of(ddp_run, "one_rank_nothing_fuzzy")
    assert ddp_run["error"] is None, ddp_run["error"]
    for r, res in enumerate(results):
        every = res["ranks"]
        assert torch.equal(every[0], every[1]), f"rank {r}: ranks out of sync"
        assert torch.isfinite(every[r]).all() and not torch.equal(every[r], res["before"])
        for out in res["outputs"]:
            defined = [v for k, v in out.items() if k not in NOT_ALWAYS_DEFINED]
            assert all(torch.isfinite(torch.tensor(float(v))) for v in defined), out
    assert results[1]["outputs"][0]["dale_fuzzy_fraction"] == 0
    assert results[0]["outputs"][0]["dale_fuzzy_fraction"] > 0
    assert results[1]["outputs"][0]["dale_mean_omega"] == 1.0  # the neutral value, as without DDP
