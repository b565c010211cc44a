"""The cheaper omega modes (issue 30): first_order and first_order_jvp (v = grad L_n(theta) of the single update),
stale (v = the SGD momentum buffer) and omega_every (omega on every k-th iteration). Each hypergradient against a
slow reference written out, planted flipped labels in every mode, the update's gradient against (L_n + L_f) / 2
computed separately, the direction each mode looks along, degenerate batches and 3D. DDP: tests/test_ddp.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nnunet_dale.trainer as trainer_module
from nnunet_dale.alignment import fuzzy_objective
from nnunet_dale.confidence import (
    first_order_confidence,
    learn_confidence,
    normalised_hypergradient,
    shadow_parameters,
)
from nnunet_dale.config import FUSED_OMEGA_MODES, DALEConfig, DALEConfigError
from nnunet_dale.progress import NOT_ALWAYS_DEFINED
from nnunet_dale.split import FuzzySplit
from nnunet_dale.trainer import OMEGA_STATS, nnUNetTrainerDALE
from nnunet_dale.variants import (
    nnUNetTrainerDALE_firstOrder,
    nnUNetTrainerDALE_firstOrderJVP,
    nnUNetTrainerDALE_noOmega,
    nnUNetTrainerDALE_omegaEvery4,
    nnUNetTrainerDALE_staleOmega,
)
from nnunet_dale.weighted_loss import PixelWeightedDCandCE, weight_pyramid

from conftest import build, copy_batch

VARIANTS = {
    "first_order": nnUNetTrainerDALE_firstOrder,
    "first_order_jvp": nnUNetTrainerDALE_firstOrderJVP,
    "stale": nnUNetTrainerDALE_staleOmega,
    "every4": nnUNetTrainerDALE_omegaEvery4,
}


# ------------------------------------------------------------------ a tiny problem in 2D or 3D, float64
class TinyNetND(nn.Module):
    """Two convolutions with instance norm and a deep-supervision-like pair of outputs, in 2D or 3D."""

    def __init__(self, dims: int):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
        self.conv1, self.norm, self.conv2 = conv(1, 4, 3, padding=1), norm(4, affine=True), conv(4, 2, 3, padding=1)
        self.pool = nn.functional.avg_pool2d if dims == 2 else nn.functional.avg_pool3d

    def forward(self, x):
        out = self.conv2(nn.functional.leaky_relu(self.norm(self.conv1(x))))
        return [out, self.pool(out, 2)]


def tiny_problem(dims: int, seed: int = 0):
    """Network, its parameters, functional forward, the (real) image, and the fuzzy / non-fuzzy losses as the
    shipped trainer builds them: deep supervision, batch Dice, soft masks as weights."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    torch.manual_seed(seed)
    net = TinyNetND(dims).double()
    shape = (2, 1, 8, 8) if dims == 2 else (2, 1, 4, 6, 6)
    x = torch.randn(shape, dtype=torch.float64)
    y = (x > 0.2).double()
    targets = [y, nn.functional.interpolate(y, scale_factor=0.5, mode="nearest")]
    m_f = torch.rand(shape, dtype=torch.float64)
    loss = DeepSupervisionWrapper(PixelWeightedDCandCE(batch_dice=True), (0.7, 0.3))

    def fuzzy_loss(out, omega):
        return loss(out, targets, weight_pyramid(omega * m_f, targets), weight_pyramid(m_f, targets))

    def nonfuzzy_loss(out):
        return loss(out, targets, weight_pyramid(1 - m_f, targets))

    def forward(params, inp):
        return torch.func.functional_call(net, params, (inp,))

    return dict(net.named_parameters()), forward, x, fuzzy_loss, nonfuzzy_loss


def gradient(loss, params: dict) -> dict:
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def per_voxel_first_order(params, forward, x, fuzzy_loss, omega, v, lr) -> torch.Tensor:
    """The first-order hypergradient written out: -lr * v . grad_theta (dL_p/domega_k), one double backward per
    voxel k (the per-voxel loss l_k of a CE is dL_p/domega_k; the Dice makes it depend on omega)."""
    omega = omega.clone().requires_grad_()
    (d_omega,) = torch.autograd.grad(fuzzy_loss(forward(params, x), omega), omega, create_graph=True)
    out = torch.zeros_like(omega)
    for k, d in enumerate(d_omega.flatten()):
        grads = torch.autograd.grad(d, list(params.values()), retain_graph=True, materialize_grads=True)
        out.view(-1)[k] = -lr * sum((g * v[n]).sum() for g, n in zip(grads, params))
    return out


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("direction", ["grad L_n(theta)", "a momentum buffer"])
@pytest.mark.parametrize("jvp", [True, False], ids=["jvp", "difference"])
def test_first_order_hypergradient_matches_a_per_voxel_autograd_loop(dims, direction, jvp):
    """first_order_confidence's raw hypergradient (first_order: v = grad L_n(theta); stale: v = a momentum buffer,
    here a random direction) equals -lr * v . grad l_k voxel by voxel; the JVP to round-off, the finite difference
    (at a small step) to its truncation error; omega at its Adam step."""
    params, forward, x, fuzzy_loss, nonfuzzy_loss = tiny_problem(dims)
    if direction == "grad L_n(theta)":
        v = gradient(nonfuzzy_loss(forward(params, x)), params)
    else:
        v = {n: torch.randn_like(p) for n, p in params.items()}
    lr, omega = 0.3, torch.ones_like(x)
    conf = first_order_confidence(forward, params, x, None, fuzzy_loss, v, x.shape, lr, step=1e-6, jvp=jvp)
    reference = per_voxel_first_order(params, forward, x, fuzzy_loss, omega, v, lr)
    tolerance = 1e-10 if jvp else 1e-5
    assert float((conf.hypergradient - reference).abs().max()) < tolerance * float(reference.abs().max())
    torch.testing.assert_close(conf.omega, 1 - 0.1 * reference / (reference.abs() + 1e-8))  # Adam's first step
    # the shipped step: the trainer's finite difference at step 0.01 still points each voxel's omega the same way
    shipped = first_order_confidence(forward, params, x, None, fuzzy_loss, v, x.shape, lr, jvp=jvp)
    assert float((torch.sign(shipped.hypergradient) == torch.sign(reference)).double().mean()) > 0.95


def test_first_order_is_the_lookahead_derivative_to_first_order_in_the_step():
    """Eq. 9's derivative, d L_n(theta - eta grad L_p(theta; omega)) / d omega_k by central finite differences in
    float64 at the four voxels of largest first-order hypergradient, equals the first-order formula to O(eta):
    within 1 % at eta = 1e-4 (measured 0.04 %), and they part at eta = 3 (measured 130-160 %)."""
    params, forward, x, fuzzy_loss, nonfuzzy_loss = tiny_problem(2, seed=1)
    v = gradient(nonfuzzy_loss(forward(params, x)), params)
    omega = torch.rand_like(x) + 0.5
    first = per_voxel_first_order(params, forward, x, fuzzy_loss, omega, v, 1.0)  # proportional to eta
    voxels = first.flatten().abs().argsort()[-4:]
    args = (params, forward, x, x, fuzzy_loss, nonfuzzy_loss)

    def relative_errors(lr: float, eps: float = 1e-5) -> list[float]:
        errors = []
        for k in voxels:
            plus, minus = omega.clone(), omega.clone()
            plus.view(-1)[k] += eps
            minus.view(-1)[k] -= eps
            fd = (lookahead_loss(*args, plus, lr) - lookahead_loss(*args, minus, lr)) / (2 * eps)
            errors.append(abs(fd - lr * float(first.view(-1)[k])) / abs(fd))
        return errors

    assert max(relative_errors(1e-4)) < 0.01
    assert min(relative_errors(3.0)) > 0.5  # a large step: the lookahead's v = grad L_n(theta_p) is elsewhere


def lookahead_loss(params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss, omega, lr) -> float:
    """L_n(theta_p(omega)) evaluated directly (Eq. 8-9)."""
    theta_p = shadow_parameters(params, fuzzy_loss(forward(params, x_f), omega), lr, retain_graph=False)
    return nonfuzzy_loss(forward(theta_p, x_n)).item()


# ------------------------------------------------------------------ planted flipped labels, every mode
def planted_flips_in(mode: str):
    """The sign test's set-up (test_confidence, test_validity_fixes) on the real image as shipped: labels flipped in
    a known quarter of the image, inside the fuzzy half; omega from the shipped per-class normalised hypergradient,
    each mode looking along its own direction."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.LeakyReLU(), nn.Conv2d(4, 2, 3, padding=1)
    ).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    m_f = torch.zeros_like(x)
    m_f[..., 8:] = 1.0
    flipped = torch.zeros_like(x, dtype=torch.bool)
    flipped[..., 12:] = True
    labels = torch.where(flipped, (x <= 0).double(), (x > 0).double())
    loss = PixelWeightedDCandCE(batch_dice=True)
    membership = torch.cat([1 - labels, labels], 1)

    def fuzzy_loss(out, omega):
        return loss(out, labels, omega * m_f, m_f)

    def nonfuzzy_loss(out):
        return loss(out, labels, 1 - m_f)

    def forward(params, inp):
        return torch.func.functional_call(net, params, (inp,))

    def transform(h):
        return normalised_hypergradient(h, m_f, membership)

    params, lr = dict(net.named_parameters()), 0.01
    if mode == "exact":
        conf = learn_confidence(forward, params, x, x, fuzzy_loss, nonfuzzy_loss, x.shape, lr, transform=transform)
        return conf, flipped, m_f, labels
    if mode == "stale":  # three single updates at omega = 1 (nnU-Net's SGD) leave the momentum buffer to look along
        sgd = torch.optim.SGD(net.parameters(), lr, momentum=0.99, nesterov=True)
        for _ in range(3):
            sgd.zero_grad()
            out = net(x)
            (0.5 * (nonfuzzy_loss(out) + fuzzy_loss(out, torch.ones_like(x)))).backward()
            sgd.step()
        v = {n: sgd.state[p]["momentum_buffer"] for n, p in params.items()}
    else:
        v = gradient(nonfuzzy_loss(net(x)), params)
    if mode == "fast":  # two steps: the non-fuzzy step moves theta, omega looks along its (now stale) gradient
        with torch.no_grad():
            for n, p in params.items():
                p -= lr * v[n]
    conf = first_order_confidence(
        forward, params, x, None, fuzzy_loss, v, x.shape, lr, transform=transform, jvp=mode == "first_order_jvp"
    )
    return conf, flipped, m_f, labels


@pytest.mark.parametrize("mode", ["exact", "fast", *FUSED_OMEGA_MODES])
def test_planted_flipped_labels_get_omega_measurably_below_one_in_every_mode(mode):
    """Per class, the flips' mean omega below 0.95 (stale: 0.975; measured 0.93-0.94, stale 0.943 / 0.967: its
    momentum has partly fitted the flips), the other fuzzy voxels' above 1, and most flips judged noisy."""
    conf, flipped, m_f, labels = planted_flips_in(mode)
    fuzzy = m_f > 0
    below, noisy = (0.975, 0.7) if mode == "stale" else (0.95, 0.8)
    for c in (0, 1):
        in_class = labels == c
        assert float(conf.omega[flipped & in_class].mean()) < below, (mode, c)
        assert float(conf.omega[fuzzy & ~flipped & in_class].mean()) > 1.0, (mode, c)
    assert float((conf.update[flipped] < -0.05).double().mean()) > noisy, mode  # judged noisy (shipped threshold)


# ------------------------------------------------------------------ configuration
def test_config_accepts_the_modes_only_where_they_have_their_direction():
    for mode in FUSED_OMEGA_MODES:
        assert DALEConfig(single_update=True, omega_mode=mode).omega_mode == mode
        with pytest.raises(DALEConfigError, match="single_update/omega_mode"):
            DALEConfig(single_update=False, omega_mode=mode)  # two steps: no single update to take v from
    for bad, name in (({"omega_every": 0}, "omega_every"), ({"omega_every": 2, "use_omega": False}, "omega_every")):
        with pytest.raises(DALEConfigError, match=name):
            DALEConfig(**bad)
    assert DALEConfig(**nnUNetTrainerDALE_omegaEvery4.dale_defaults).omega_every == 4
    assert DALEConfig(**nnUNetTrainerDALE.dale_defaults).omega_mode == "exact"  # shipped until the study decides


# ------------------------------------------------------------------ the trainer
def float64(batch: dict) -> dict:
    return {"data": batch["data"].double(), "target": [t.double() for t in batch["target"]]}


def recorded(trainer) -> dict:
    """Records omega* (the `_confidence` result), the direction handed to first_order_confidence and the
    gradients at the optimiser step (after clipping)."""
    records: dict = {"directions": [], "grads": [], "confidences": []}
    confidence, step = trainer._confidence, trainer.optimizer.step

    def recording_confidence(*args, **kwargs):
        records["confidences"].append(confidence(*args, **kwargs))
        return records["confidences"][-1]

    def recording_step(*args, **kwargs):
        params = trainer.network.parameters()
        records["grads"].append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
        return step(*args, **kwargs)

    trainer._confidence, trainer.optimizer.step = recording_confidence, recording_step
    return records


@pytest.fixture
def record_directions(monkeypatch):
    directions = []
    real = trainer_module.first_order_confidence

    def recording(forward, params, x_f, outputs, fuzzy_loss, direction, *args, **kwargs):
        directions.append({n: d.detach().clone() for n, d in direction.items()})
        return real(forward, params, x_f, outputs, fuzzy_loss, direction, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "first_order_confidence", recording)
    return directions


def twin_of(trainer, cls, dataset_id: int):
    """A trainer of `cls` in float64 with `trainer`'s weights and running target Gaussians."""
    twin = build(cls, dataset_id)
    twin.network.double()
    twin.network.load_state_dict(trainer.network.state_dict())
    twin.dale_target = trainer.dale_target
    return twin


def update_gradient(twin, batch: dict, omega: torch.Tensor, clean: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """grad (L_n + L_f(omega)) / 2 of the shipped single update written out on a twin (the real image, one forward,
    L_f = omega-weighted loss + alpha * mean omega * L_W), clipped at 12 as nnU-Net clips."""
    cfg, net, loss = twin.dale_config, twin.network, twin.dale_loss
    data, target = batch["data"], batch["target"]
    split = twin.split(data, target[0])
    w_n, w_f = weight_pyramid(split.nonfuzzy, target), weight_pyramid(split.fuzzy, target)
    with twin.feature_tap.capture() as tap:
        out = net(data)
    torch.manual_seed(seed)  # the covariance perturbation of Eq. 13 is a step's only random draw
    l_w = twin._alignment(tap.value.detach(), tap.value, twin._membership(target[0]), split, clean).loss
    mean_omega = (omega * split.fuzzy).sum() / split.fuzzy.sum()
    loss_f = fuzzy_objective(loss(out, target, weight_pyramid(omega * split.fuzzy, target), w_f), l_w, cfg.alpha,
                             mean_omega)  # fmt: skip
    twin.optimizer.zero_grad(set_to_none=True)
    (0.5 * (loss(out, target, w_n, w_n) + loss_f)).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


@pytest.mark.parametrize("mode", ["exact", *VARIANTS])
def test_update_gradient_is_half_the_sum_of_both_losses(dataset_2d, batch, mode, record_directions):
    """The single update's gradient, with the mode's extra backward for v (first_order) or its momentum (stale)
    taken before it, equals grad (L_n + L_f(omega*)) / 2 written out on a twin at the omega* the mode produced
    (float64, 1e-10); omega* moved. every4: an iteration without omega is the same update at omega = 1."""
    cls = VARIANTS.get(mode, nnUNetTrainerDALE)
    torch.manual_seed(0)
    trainer = build(cls, dataset_2d)
    trainer.network.double()
    trainer.current_epoch = 999  # past the warm-up
    b = float64(batch)
    records = recorded(trainer)
    steps = 2 if mode in ("stale", "every4") else 1  # stale: a momentum buffer; every4: its second iteration
    for i in range(steps):
        twin = twin_of(trainer, cls, dataset_2d)
        torch.manual_seed(7 + i)
        out = trainer.train_step(copy_batch(b))
    learned = mode != "every4"
    assert len(records["confidences"]) == (1 if mode == "every4" else steps)  # stale: its first is the fallback's
    if learned:
        omega = records["confidences"][-1].omega
        clean = records["confidences"][-1].clean
        assert float((omega - 1).abs().max()) > 0.05 and np.isfinite(out["dale_mean_omega"])
    else:
        omega, clean = torch.ones_like(b["data"][:, :1]), torch.ones_like(b["data"][:, :1], dtype=torch.bool)
        assert all(np.isnan(out[k]) for k in OMEGA_STATS) and np.isfinite(out["dale_l_w"])
    expected = update_gradient(twin, b, omega, clean, 7 + steps - 1)
    got = records["grads"][-1]
    scale = max(float(g.abs().max()) for g in expected)
    assert max(float((g - e).abs().max()) for g, e in zip(got, expected)) < 1e-10 * scale


def test_fused_modes_look_along_their_direction(dataset_2d, batch, record_directions):
    """first_order(_jvp): v = grad L_n(theta), computed here on a twin; stale: the optimiser's momentum buffer (the
    first step has none: omega = 1 with a counted fallback)."""
    b = float64(batch)
    for cls in (nnUNetTrainerDALE_firstOrder, nnUNetTrainerDALE_firstOrderJVP):
        record_directions.clear()
        trainer = build(cls, dataset_2d)
        trainer.network.double()
        trainer.current_epoch = 999
        twin = twin_of(trainer, cls, dataset_2d)
        trainer.train_step(copy_batch(b))
        split = twin.split(b["data"], b["target"][0])
        w_n = weight_pyramid(split.nonfuzzy, b["target"])
        params = {n: p for n, p in twin.network.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(twin.dale_loss(twin.network(b["data"]), b["target"], w_n, w_n),
                                    list(params.values()), allow_unused=True, materialize_grads=True)  # fmt: skip
        (direction,) = record_directions
        for n, g in zip(params, grads):
            torch.testing.assert_close(direction[n], g, rtol=1e-10, atol=1e-14)

    record_directions.clear()
    trainer = build(nnUNetTrainerDALE_staleOmega, dataset_2d)
    trainer.current_epoch = 999
    first = trainer.train_step(copy_batch(batch))
    assert trainer.dale_fallbacks[trainer_module.NO_DIRECTION["stale"]] == 1 and record_directions == []
    assert first["dale_mean_omega"] == pytest.approx(1.0)
    buffers = {n: trainer.optimizer.state[p]["momentum_buffer"].clone() for n, p in trainer.network.named_parameters()
               if "momentum_buffer" in trainer.optimizer.state[p]}  # fmt: skip
    second = trainer.train_step(copy_batch(batch))
    (direction,) = record_directions
    assert set(buffers) < set(direction)  # the lowest deep-supervision head never had a gradient: zeros
    for n, d in direction.items():
        torch.testing.assert_close(d, buffers.get(n, torch.zeros_like(d)), rtol=0, atol=0)
    assert abs(second["dale_mean_omega"] - 1) > 1e-4
    assert trainer.dale_fallbacks[trainer_module.NO_DIRECTION["stale"]] == 1  # the first step's only


def test_omega_every_learns_on_every_kth_iteration_and_the_others_are_the_no_omega_step(dataset_2d, batch):
    """omegaEvery4: omega on iterations 0 and 4 of 5, its statistics NaN on the others; an iteration without omega
    lands on the parameters of nnUNetTrainerDALE_noOmega's step from the same state."""
    trainer = build(nnUNetTrainerDALE_omegaEvery4, dataset_2d)
    trainer.current_epoch = 999
    records = recorded(trainer)
    outputs = [trainer.train_step(copy_batch(batch)) for _ in range(5)]
    assert len(records["confidences"]) == 2
    for i, out in enumerate(outputs):
        assert all(np.isnan(out[k]) != (i % 4 == 0) for k in OMEGA_STATS), i
        assert all(np.isfinite(v) for k, v in out.items() if k not in (*OMEGA_STATS, *NOT_ALWAYS_DEFINED)), i

    torch.manual_seed(0)
    every, plain = build(nnUNetTrainerDALE_omegaEvery4, dataset_2d), build(nnUNetTrainerDALE_noOmega, dataset_2d)
    plain.network.load_state_dict(every.network.state_dict())
    every.dale_iterations = 1  # an iteration without omega
    for t in (every, plain):
        t.current_epoch = 999
        torch.manual_seed(3)
        t.train_step(copy_batch(batch))
    for p, q in zip(every.network.parameters(), plain.network.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("mode", list(VARIANTS))
@pytest.mark.parametrize("case", ["nothing fuzzy", "everything fuzzy"])
def test_degenerate_batches_in_every_mode(dataset_2d, batch, monkeypatch, mode, case):
    """No fuzzy region: the iteration is the non-fuzzy update, no v is taken; no non-fuzzy region: v = 0 along which
    nothing moves (first_order) or the momentum (stale); finite weights and statistics either way."""
    if case == "everything fuzzy":
        real_split = trainer_module.fuzzy_split

        def all_fuzzy(*args, **kwargs):
            split = real_split(*args, **kwargs)
            return FuzzySplit(torch.ones_like(split.fuzzy), torch.zeros_like(split.nonfuzzy), split.score)

        monkeypatch.setattr(trainer_module, "fuzzy_split", all_fuzzy)
    b = copy_batch(batch)
    if case == "nothing fuzzy":  # constant image, all background: m = 0 everywhere
        b = {"data": torch.full_like(b["data"], 0.7), "target": [torch.zeros_like(t) for t in b["target"]]}
    trainer = build(VARIANTS[mode], dataset_2d)
    trainer.current_epoch = 999
    before = [p.detach().clone() for p in trainer.network.parameters()]
    taken = []
    direction = trainer._direction
    trainer._direction = lambda loss: taken.append(1) or direction(loss)
    outputs = [trainer.train_step(copy_batch(b)) for _ in range(2)]
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(trainer.network.parameters(), before))
    skipped = (*OMEGA_STATS, *NOT_ALWAYS_DEFINED)
    assert all(np.isfinite(v) for out in outputs for k, v in out.items() if k not in skipped)
    if case == "nothing fuzzy":
        assert taken == [] and trainer.dale_fallbacks["no fuzzy region: omega and L_f skipped"] == 2
    else:
        assert outputs[0]["dale_fuzzy_fraction"] == 1
        assert len(taken) == {"every4": 0}.get(mode, 2)


# ------------------------------------------------------------------ 3D
@pytest.fixture(scope="module")
def dataset_3d(nnunet_dirs) -> int:
    """A small 3D lesion dataset (32^3, 6 training cases for nnU-Net's 5 folds), planned for 3d_fullres."""
    from nnunet_dale.benchmark_data import make_benchmark
    from nnunet_dale.inprocess import plan_and_preprocess

    make_benchmark(nnunet_dirs["nnUNet_raw"], dataset_id=993, num_train=6, num_test=1, size=32, dims=3, seed=0)
    plan_and_preprocess(993, ("3d_fullres",))
    return 993


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(VARIANTS))
def test_modes_train_on_3d_volumes(dataset_3d, mode):
    """Two iterations per mode on a 3d_fullres plan: finite weights that moved, omega learned where it should be."""
    from nnunet_dale.inprocess import single_process_loader

    trainer = build(VARIANTS[mode], dataset_3d, configuration="3d_fullres")
    trainer.current_epoch = 999
    loader = single_process_loader(trainer)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    outputs = [trainer.train_step(next(loader)) for _ in range(2)]
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(trainer.network.parameters(), before))
    learned = outputs[1] if mode == "stale" else outputs[0]  # stale: no momentum before the first step
    assert 0 < learned["dale_omega_moved"] <= 1 and np.isfinite(learned["dale_mean_omega"])
