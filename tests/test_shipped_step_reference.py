"""The shipped DALE step against a reference written out here, in float64, with every part switched on.

The shipped step (`config.SHIPPED`): the AE&ER split of the network patch in 16 patches per side (Eq. 3-7), omega*
by the exact one-step lookahead from the current weights (Eq. 8-11) with the hypergradient centred per class and
divided by its RMS before Adam, clean / noisy beyond +-clean_threshold, the trace-scaled Gaussian W^2 (Eq. 12-14)
against running (EMA) target Gaussians, and one optimiser update on (L_n + L_f) / 2 of the real image (Eq. 15).
Two consecutive iterations of a tiny nnU-Net U-Net (float64) are compared on the split, the parameters, the running
target Gaussians and every statistic train_step logs; the second iteration is where the running targets and SGD's
momentum buffer carry over.

The reference calls no function of nnunet_dale. It writes out: the split with loops over patches; Dice + CE with
voxel weights and nnU-Net's deep-supervision weights; omega's hypergradient by double backward through an explicit
functional shadow step (not the trainer's forward-mode JVP), checked by a finite difference; the per-class
normalisation and Adam's first step in closed form; class Gaussians, their running average and W^2 with matrix
square roots by the Denman-Beavers iteration (not eigendecompositions); gradient clipping (written out; it does not
bind here, the update's norm is ~0.8) and nnU-Net's Nesterov SGD with weight decay. What it takes from elsewhere,
because re-writing it is not feasible or not the point: nnU-Net's network (shrunk) and trainer set-up,
`torch.func.functional_call` to evaluate the network at the shadow parameters, and the split masks the trainer used
downstream of the split (see `step`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_dale.config import SHIPPED, DALEConfig
from nnunet_dale.progress import DALE_STATS
from nnunet_dale.trainer import nnUNetTrainerDALE

from conftest import build, copy_batch

SEEDS = (11, 12)  # the covariance perturbation of Eq. 13 is a step's only random draw: seeded before each step
TINY_FEATURES = (4, 6, 8, 8, 8)  # per stage; the head sees 4 feature channels

# tolerances (measured: updates 7e-15 and 4e-14, running Gaussians 4e-16, split 2.3e-7, statistics <= 6e-8); the
# smallest of ten planted defects moved the update by 1.8e-4 of its size (L_W not weighted by the mean omega)
PARAMETER_RTOL = 1e-12  # max |update - reference update| / max |reference update|
TARGET_RTOL = 1e-12
SPLIT_ATOL = 1e-6  # the split's entropies and edge ratios are float32 by design
STAT_RTOL = 1e-6  # train_step logs float32


def tiny_network(configuration_manager, num_input_channels: int, num_output_channels: int, deep_supervision=True):
    """The plan's PlainConvUNet (stages, strides, norm, deep supervision) with TINY_FEATURES and one conv per stage."""
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    n = kwargs["n_stages"]
    assert n == len(TINY_FEATURES), kwargs
    kwargs.update(
        features_per_stage=list(TINY_FEATURES), n_conv_per_stage=[1] * n, n_conv_per_stage_decoder=[1] * (n - 1)
    )
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=deep_supervision,
    )


class TinyShippedDALE(nnUNetTrainerDALE):
    """The shipped trainer on a tiny network: a float64 step costs milliseconds, not ten seconds."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):  # fmt: skip
        return tiny_network(configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)


# ------------------------------------------------------------------ Eq. 3-7: the split, loops over patches
def reference_split(image: torch.Tensor, labels: torch.Tensor, patch, tau: float, bins: int):
    """Soft masks (M^f, M^n), (B, 1, H, W) float64: per patch the entropy of a `bins`-bin histogram over each image's
    own intensity range (per channel, averaged over channels) and the share of label-edge voxels (a voxel whose 3 x 3
    neighbourhood inside the image holds another label), each min-max normalised over the image's patches (0 if all
    equal), m = their maximum; M^f = 1 above tau else m, M^n = 1 below tau else max(tau - m, 0).
    The histogram bin of a voxel is taken in float32, as the library bins: that is its documented precision, and a
    float64 bin index could put a voxel on the other side of a bin edge."""
    b_count, c_count, h, w = image.shape
    ph, pw = patch
    lab = labels[:, 0].numpy()
    edges = np.zeros(lab.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            here = (slice(None), slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
            there = (slice(None), slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
            edges[here] |= lab[here] != lab[there]
    levels = []
    for b in range(b_count):
        per_channel = []
        for c in range(c_count):
            x = image[b, c].float()
            lo, hi = x.min(), x.max()
            scaled = (x - lo) / torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny)
            per_channel.append(torch.clamp((scaled * bins).long(), 0, bins - 1).numpy())
        levels.append(per_channel)
    rows, cols = math.ceil(h / ph), math.ceil(w / pw)
    fuzzy = np.zeros((b_count, 1, h, w))
    nonfuzzy = np.zeros((b_count, 1, h, w))
    for b in range(b_count):
        entropy, edge = np.zeros((rows, cols)), np.zeros((rows, cols))
        for i in range(rows):
            for j in range(cols):
                window = (slice(i * ph, (i + 1) * ph), slice(j * pw, (j + 1) * pw))
                values = []
                for c in range(c_count):
                    p = np.bincount(levels[b][c][window].ravel(), minlength=bins) / levels[b][c][window].size
                    p = p[p > 0]
                    values.append(-(p * np.log(p)).sum())
                entropy[i, j] = np.mean(values)
                edge[i, j] = edges[b][window].mean()

        def minmax(v):
            return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)

        m = np.maximum(minmax(entropy), minmax(edge))
        for i in range(rows):
            for j in range(cols):
                window = (b, 0, slice(i * ph, (i + 1) * ph), slice(j * pw, (j + 1) * pw))
                fuzzy[window] = 1.0 if m[i, j] > tau else m[i, j]
                nonfuzzy[window] = 1.0 if m[i, j] < tau else max(tau - m[i, j], 0.0)
    return torch.from_numpy(fuzzy), torch.from_numpy(nonfuzzy)


# ------------------------------------------------------------------ the weighted Dice + CE, deep supervision
def area_down(weight: torch.Tensor, shape) -> torch.Tensor:
    """A weight map averaged over the blocks of an integer downsampling to `shape`."""
    b, c, h, w = weight.shape
    fy, fx = h // shape[0], w // shape[1]
    assert (fy * shape[0], fx * shape[1]) == (h, w)
    return weight.reshape(b, c, shape[0], fy, shape[1], fx).mean((3, 5))


def dice_ce(logits, labels, weight, normaliser, dice_weight, batch_dice: bool) -> torch.Tensor:
    """sum(w * CE) / sum(normaliser) - mean over foreground classes of the soft Dice with `dice_weight` in every sum
    (nnU-Net's smooth 1e-5; summed over the batch too with batch Dice)."""
    log_p = torch.log_softmax(logits, 1)
    y = labels.long()  # (B, 1, H, W)
    ce = -log_p.gather(1, y)
    classes = range(1, logits.shape[1])
    onehot = torch.cat([(y == k).to(logits.dtype) for k in classes], 1)
    p = log_p.exp()[:, 1:]
    dims = (0, 2, 3) if batch_dice else (2, 3)
    intersect = (p * onehot * dice_weight).sum(dims)
    total = (p * dice_weight).sum(dims) + (onehot * dice_weight).sum(dims)
    dice = (2 * intersect + 1e-5) / (total + 1e-5)
    return (weight * ce).sum() / normaliser.sum() - dice.mean()


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's: 1 / 2^k, the lowest output 0, normalised to sum 1."""
    w = [1 / 2**k for k in range(n)]
    w[-1] = 0.0
    return [v / sum(w) for v in w]


def seg_loss(outputs, targets, weight, normaliser, dice_weight, batch_dice):
    """Dice + CE at every deep-supervision output of non-zero weight (nnU-Net leaves the others out of the graph:
    their heads get no gradient, hence no SGD step and no weight decay), weight maps averaged down to each."""
    total = 0.0
    for c, z, y in zip(deep_supervision_weights(len(outputs)), outputs, targets):
        if c == 0:
            continue
        down = [area_down(m, y.shape[2:]) for m in (weight, normaliser, dice_weight)]
        total = total + c * dice_ce(z, y, *down, batch_dice)
    return total


# ------------------------------------------------------------------ Eq. 12-14: Gaussians, running targets, W^2
def gaussians(features, onehot, weight):
    """Per class: total weight, weighted mean and weighted covariance of the features (B, D, H, W)."""
    masses, means, covs = [], [], []
    for k in range(onehot.shape[1]):
        w = onehot[:, k : k + 1] * weight
        mass = w.sum()
        mean = (w * features).sum((0, 2, 3)) / mass
        centred = features - mean[None, :, None, None]
        covs.append(torch.einsum("bihw,bjhw->ij", w * centred, centred) / mass)
        masses.append(mass)
        means.append(mean)
    return {"mass": torch.stack(masses), "mean": torch.stack(means), "cov": torch.stack(covs)}


def running_average(running, batch, momentum: float, min_mass: float):
    """The target Gaussians as an exponential average over iterations, class by class: a class with at least
    `min_mass` weight in the batch enters (the first time as it is, then mean and covariance move by 1 - momentum);
    the mass counts every weight that entered."""
    batch = {k: v.detach() for k, v in batch.items()}
    if running is None:
        running = {"mass": torch.zeros_like(batch["mass"]), "mean": batch["mean"].clone(), "cov": batch["cov"].clone()}
    new = {k: v.clone() for k, v in running.items()}
    for k in range(len(batch["mass"])):
        if batch["mass"][k] < min_mass:
            continue
        keep = momentum if running["mass"][k] > 0 else 0.0
        new["mean"][k] = keep * running["mean"][k] + (1 - keep) * batch["mean"][k]
        new["cov"][k] = keep * running["cov"][k] + (1 - keep) * batch["cov"][k]
        new["mass"][k] = running["mass"][k] + batch["mass"][k]
    return new


def sqrtm(a: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The square root of a symmetric positive definite matrix by the Denman-Beavers iteration (differentiable)."""
    y, z = a, torch.eye(a.shape[0], dtype=a.dtype)
    for _ in range(iterations):
        y, z = 0.5 * (y + torch.linalg.inv(z)), 0.5 * (z + torch.linalg.inv(y))
    assert float((y @ y - a).detach().abs().max()) < 1e-12 * float(a.detach().abs().max()), "no convergence"
    return y


def trace_scaled_w2(mean_t, cov_t, mean_f, cov_f, u: float, cfg: DALEConfig) -> torch.Tensor:
    """Eq. 13-14 with the trace scale: the target covariance plus eps * (matrix of ones), eps = u * perturbation *
    its mean variance; both covariances symmetrised plus ridge * I; W^2 = |mean_t - mean_f|^2 + tr(S_t + S_f
    - 2 (S_t^1/2 S_f S_t^1/2)^1/2), divided by tr(S_t)."""
    d = mean_t.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    perturbed = cov_t + u * cfg.cov_perturbation * cov_t.diagonal().mean() * torch.ones(d, d, dtype=torch.float64)
    s_t = 0.5 * (perturbed + perturbed.T) + cfg.ridge * eye
    s_f = 0.5 * (cov_f + cov_f.T) + cfg.ridge * eye
    root_t = sqrtm(s_t)
    cross = sqrtm(root_t @ s_f @ root_t)
    w2 = ((mean_t - mean_f) ** 2).sum() + torch.trace(s_t) + torch.trace(s_f) - 2 * torch.trace(cross)
    return w2 / torch.trace(s_t)


# ------------------------------------------------------------------ one shipped iteration
class Reference:
    """nnU-Net's network evaluated at any parameters, with the input of its final segmentation layer (the head
    features) recorded by a hook of its own."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.features = None
        network.decoder.seg_layers[-1].register_forward_pre_hook(lambda _m, args: setattr(self, "features", args[0]))

    def __call__(self, params, x):
        outputs = torch.func.functional_call(self.network, params, (x,), tie_weights=False)
        return outputs, self.features


def step(
    ref: Reference, state: dict, batch: dict, masks, seed: int, cfg: DALEConfig, hyper: dict, check_by_differences=False
) -> dict:
    """One shipped iteration written out; updates `state` (parameters, momentum buffers, running targets) and
    returns the statistics train_step logs. `masks` (M^f, M^n) are the trainer's own, checked against
    `reference_split` to float32 round-off before: the split's statistics are float32 by design, and its float32
    round-off would otherwise cap the float64 comparison of everything downstream at ~1e-7."""
    torch.manual_seed(seed)
    u = torch.rand(hyper["classes"], dtype=torch.float64)  # Eq. 13's draw, per class (the step's only one)
    x, targets = batch["data"], batch["target"]
    labels = targets[0]
    m_f, m_n = masks
    onehot = torch.cat([(labels == k).double() for k in range(hyper["classes"])], 1)
    fg, bg = onehot[:, 1:].sum(1, keepdim=True), onehot[:, :1]
    params = {n: p.detach().clone().requires_grad_() for n, p in state["params"].items()}
    eta, batch_dice = hyper["lr"], hyper["batch_dice"]

    def fuzzy_seg(outputs, omega):  # L_p / the fuzzy loss: CE weights omega * M^f over sum M^f, Dice over omega * M^f
        return seg_loss(outputs, targets, omega * m_f, m_f, omega * m_f, batch_dice)

    def nonfuzzy_seg(outputs):
        return seg_loss(outputs, targets, m_n, m_n, m_n, batch_dice)

    # Eq. 8-11 at theta (single update: theta_n = theta): L_n(theta_p(omega)), theta_p = theta - eta grad L_p
    def lookahead(omega, create_graph):  # a graph to omega only with create_graph
        outputs, _ = ref(params, x)
        grads = torch.autograd.grad(
            fuzzy_seg(outputs, omega), list(params.values()), create_graph=create_graph, materialize_grads=True
        )
        shadow = {n: p - eta * g for (n, p), g in zip(params.items(), grads)}
        return nonfuzzy_seg(ref(shadow, x)[0])

    omega0 = torch.ones_like(m_f, requires_grad=True)
    (g,) = torch.autograd.grad(lookahead(omega0, True), omega0)
    if check_by_differences:  # the double backward against a central difference along a random direction
        direction, h = torch.randn(m_f.shape, dtype=torch.float64) * m_f, 1e-4  # h = 1e-3 crosses LeakyReLU kinks
        difference = (lookahead(1 + h * direction, False) - lookahead(1 - h * direction, False)).item() / (2 * h)
        assert difference == pytest.approx(float((g * direction).sum()), rel=1e-7)

    # omega_normalise: centred per class (mean over the class's M^f-weighted voxels), divided by its M^f-RMS
    centred = g.clone()
    for k in range(hyper["classes"]):
        w = onehot[:, k : k + 1] * m_f
        centred = centred - onehot[:, k : k + 1] * (w * g).sum() / w.sum()
    normalised = centred / ((m_f * centred**2).sum() / m_f.sum()).sqrt()
    # Eq. 10: Adam's first step from omega = 1 (m_hat = g, v_hat = g^2): omega* = 1 - lr g / (|g| + eps)
    omega = 1 - cfg.omega_lr * normalised / (normalised.abs() + 1e-8)
    change = omega - 1
    clean, noisy = change > cfg.clean_threshold, change < -cfg.clean_threshold

    # the update: one forward of the real image at theta for L_n, L_f and the features of both regions
    outputs, features = ref(params, x)
    min_mass = max(cfg.min_class_mass, cfg.min_class_mass_per_dim * features.shape[1])
    batch_target = gaussians(features.detach(), onehot, m_n)
    state["target"] = target = running_average(state["target"], batch_target, cfg.target_momentum, min_mass)
    fuzzy = gaussians(features, onehot, m_f * clean)
    used = [k for k in range(hyper["classes"]) if target["mass"][k] >= min_mass and fuzzy["mass"][k] >= min_mass]
    assert used == list(range(hyper["classes"])), "every class should enter L_W in this test"
    l_w = sum(
        trace_scaled_w2(target["mean"][k], target["cov"][k], fuzzy["mean"][k], fuzzy["cov"][k], float(u[k]), cfg)
        for k in used
    )
    l_w = l_w.to(torch.float32)  # the library hands L_W on as a float32 scalar (its dtype under AMP); so does this
    mean_omega = (omega * m_f).sum() / m_f.sum()
    loss_n = nonfuzzy_seg(outputs)
    seg_f = fuzzy_seg(outputs, omega)
    loss_f = seg_f + cfg.alpha * mean_omega * l_w  # Eq. 15
    update = 0.5 * (loss_n + loss_f)

    # nnU-Net's optimiser step: clip the gradient norm at 12, SGD with weight decay and Nesterov momentum
    grads = torch.autograd.grad(update, list(params.values()), allow_unused=True)
    norm = torch.sqrt(sum((gr**2).sum() for gr in grads if gr is not None))
    scale = min(1.0, 12 / (float(norm) + 1e-6))
    for (n, p), gr in zip(params.items(), grads):
        if gr is None:  # the zero-weight deep-supervision head: SGD skips a parameter without a gradient
            continue
        d = scale * gr + hyper["weight_decay"] * p.detach()
        buffer = d if n not in state["momentum"] else hyper["momentum"] * state["momentum"][n] + d
        state["momentum"][n] = buffer
        state["params"][n] = p.detach() - eta * (d + hyper["momentum"] * buffer)

    def fuzzy_mean(values, region=1.0):
        return float((values.double() * m_f * region).sum() / (m_f * region).sum())

    update, l_w, seg_f = update.detach(), l_w.detach(), seg_f.detach()

    return {
        "loss": float(update),
        "dale_fuzzy_fraction": float(m_f.mean()),
        "dale_mean_omega": float(mean_omega),
        "dale_noisy_share": fuzzy_mean(noisy),
        "dale_l_w": float(l_w),
        "dale_alpha_l_w": cfg.alpha * float(mean_omega) * float(l_w),
        "dale_seg_loss_f": float(seg_f),
        "dale_grad_norm_n": float(norm),
        "dale_grad_norm_f": float("nan"),  # one update: no second step
        "dale_omega_fg": fuzzy_mean(omega, fg),
        "dale_omega_bg": fuzzy_mean(omega, bg),
        "dale_noisy_fg": fuzzy_mean(noisy, fg),
        "dale_noisy_bg": fuzzy_mean(noisy, bg),
        "dale_omega_moved": fuzzy_mean((omega - 1).abs() > 1e-3),
        "dale_nonfuzzy_fg_share": float((m_n * fg).sum() / fg.sum()),
    }


# ------------------------------------------------------------------ the test
@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread only adds overhead, and on a busy machine much of it (measured: 1.9 s of CPU
    alone, 15-18 s with two threads beside a training run)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_shipped_step_equals_a_float64_reference_with_every_part_on(dataset_2d, batch, one_thread):
    cfg = SHIPPED
    # every part of the shipped step is on, in the form the reference writes out
    assert (cfg.use_entropy, cfg.use_edges, cfg.use_omega, cfg.use_alignment) == (True,) * 4
    assert (cfg.omega_mode, cfg.omega_every, cfg.lookahead_steps, cfg.feature_site) == ("exact", 1, 1, "head")
    assert cfg.omega_normalise and cfg.clean_threshold > 0  # centred on the class means (the trainer's own centre)
    assert cfg.lw_scale == "trace" and cfg.target_momentum > 0 and cfg.alpha > 0
    assert cfg.single_update and not cfg.mask_input and cfg.split_patches > 0

    torch.manual_seed(0)
    trainer = build(TinyShippedDALE, dataset_2d)
    assert trainer.dale_config == cfg
    trainer.network.double()
    trainer.current_epoch = math.ceil(cfg.warmup_fraction * trainer.num_epochs)  # the first epoch after the warm-up
    manager = trainer.configuration_manager
    network = tiny_network(manager, trainer.num_input_channels, trainer.label_manager.num_segmentation_heads).double()
    network.load_state_dict(trainer.network.state_dict())
    ref = Reference(network)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD) and group["nesterov"] and group["dampening"] == 0
    hyper = {
        "classes": trainer.label_manager.num_segmentation_heads,
        "lr": group["lr"],
        "momentum": group["momentum"],
        "weight_decay": group["weight_decay"],
        "batch_dice": manager.batch_dice,
    }
    patch = tuple(math.ceil(n / cfg.split_patches) for n in manager.patch_size)  # the network patch, 16 per side
    state = {"params": {n: p.detach().clone() for n, p in network.named_parameters()}, "momentum": {}, "target": None}

    used_splits = []
    trainer_split = trainer.split
    trainer.split = lambda data, target: used_splits.append(trainer_split(data, target)) or used_splits[-1]

    first = {"data": batch["data"].double(), "target": [t.clone() for t in batch["target"]]}
    second = {"data": first["data"].flip(-1), "target": [t.flip(-1) for t in first["target"]]}  # another batch
    for i, (b, seed) in enumerate(zip((first, second), SEEDS)):
        before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
        torch.manual_seed(seed)
        logged = trainer.train_step(copy_batch(b))

        used = used_splits[i]
        m_f, m_n = reference_split(b["data"], b["target"][0], patch, cfg.tau, cfg.entropy_bins)
        torch.testing.assert_close(used.fuzzy, m_f, rtol=0, atol=SPLIT_ATOL)
        torch.testing.assert_close(used.nonfuzzy, m_n, rtol=0, atol=SPLIT_ATOL)
        assert 0 < float(m_f.mean()) < 1 and float((m_f == 1).double().mean()) > 0  # both regions, and tau acts

        expected = step(ref, state, b, (used.fuzzy, used.nonfuzzy), seed, cfg, hyper, check_by_differences=i == 0)

        # the parameter update
        changes = {n: p.detach() - before[n] for n, p in trainer.network.named_parameters()}
        reference_changes = {n: state["params"][n] - before[n] for n in changes}
        size = max(float(c.abs().max()) for c in reference_changes.values())
        error = max(float((changes[n] - reference_changes[n]).abs().max()) for n in changes)
        assert error <= PARAMETER_RTOL * size, (i, error, size)

        # the running target Gaussians
        running = trainer.dale_target
        for key in ("mass", "mean", "cov"):
            value, reference = getattr(running, key), state["target"][key]
            torch.testing.assert_close(
                value, reference, rtol=TARGET_RTOL, atol=TARGET_RTOL * float(reference.abs().max())
            )

        # every logged statistic, against the reference's own values (not against each other)
        assert set(logged) == {"loss", *DALE_STATS}
        for key, value in expected.items():
            if math.isnan(value):
                assert np.isnan(logged[key]), key
            else:
                assert float(logged[key]) == pytest.approx(value, rel=STAT_RTOL, abs=1e-12), key
        assert 0 < expected["dale_noisy_share"] < 1 and expected["dale_l_w"] > 0 and expected["dale_omega_moved"] > 0.9
