"""Label confidence (Eq. 8-11): exact hypergradient against finite differences, and the sign on planted noise."""

import torch
from torch import nn

from nnunet_dale.confidence import (
    confidence_hypergradient,
    first_order_confidence,
    learn_confidence,
    output_difference,
    output_tangent,
    shadow_parameters,
)
from nnunet_dale.weighted_loss import PixelWeightedDCandCE, weight_pyramid


class TinyNet(nn.Module):
    """Two conv layers with instance norm; optionally a deep-supervision-like list of outputs."""

    def __init__(self, deep_supervision=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)
        self.deep_supervision = deep_supervision

    def forward(self, x):
        out = self.conv2(torch.nn.functional.leaky_relu(self.norm(self.conv1(x))))
        return [out, nn.functional.avg_pool2d(out, 2)] if self.deep_supervision else out


def problem(deep_supervision, seed=0):
    torch.manual_seed(seed)
    net = TinyNet(deep_supervision).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = (x > 0.2).double()
    targets = [y, y[..., ::2, ::2]] if deep_supervision else y
    m_f = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    m_n = 1 - m_f
    base = PixelWeightedDCandCE(batch_dice=True)
    if deep_supervision:
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

        base = DeepSupervisionWrapper(base, (0.7, 0.3))

    def fuzzy_loss(out, omega):
        return base(out, targets, weight_pyramid(omega * m_f, targets), weight_pyramid(m_f, targets))

    def nonfuzzy_loss(out):
        return base(out, targets, weight_pyramid(m_n, targets))

    def forward(params, inp):
        return torch.func.functional_call(net, params, (inp,))

    params = dict(net.named_parameters())
    return net, params, forward, x * m_f, x * m_n, fuzzy_loss, nonfuzzy_loss


def lookahead_loss(params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss, omega, lr):
    """L_n(theta_p(omega)) evaluated directly: the function whose derivative Eq. 11 claims to give."""
    theta_p = shadow_parameters(params, fuzzy_loss(forward(params, x_f), omega), lr, retain_graph=False)
    return nonfuzzy_loss(forward(theta_p, x_n)).item()


def test_hypergradient_matches_finite_differences():
    for deep_supervision in (False, True):
        net, params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss = problem(deep_supervision)
        lr = 0.5
        omega = torch.rand(2, 1, 8, 8, dtype=torch.float64) + 0.5
        theta_p = shadow_parameters(params, fuzzy_loss(forward(params, x_f), omega), lr)
        names = list(theta_p)
        v = torch.autograd.grad(nonfuzzy_loss(forward(theta_p, x_n)), [theta_p[n] for n in names])
        tangent = output_tangent(forward, params, x_f, dict(zip(names, v)))
        hyper = confidence_hypergradient(forward(params, x_f), tangent, fuzzy_loss, omega, lr)
        eps = 1e-5
        for idx in [(0, 0, 0, 0), (0, 0, 3, 4), (1, 0, 7, 7), (1, 0, 2, 5)]:
            plus, minus = omega.clone(), omega.clone()
            plus[idx] += eps
            minus[idx] -= eps
            args = (params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss)
            fd = (lookahead_loss(*args, plus, lr) - lookahead_loss(*args, minus, lr)) / (2 * eps)
            assert abs(fd - hyper[idx].item()) < 1e-6 + 1e-4 * abs(fd), (deep_supervision, idx, fd, hyper[idx].item())


def test_planted_flipped_labels_get_lower_omega_and_are_flagged_noisy():
    """Sign test: labels flipped in a known part of the fuzzy region -> omega down / noisy there, up elsewhere."""
    torch.manual_seed(0)
    net = TinyNet().double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    clean_labels = (x > 0).double()
    m_f = torch.zeros(4, 1, 16, 16, dtype=torch.float64)
    m_f[..., 8:] = 1.0  # right half fuzzy, left half non-fuzzy
    m_n = 1 - m_f
    flipped = torch.zeros_like(m_f, dtype=torch.bool)
    flipped[..., 12:] = True  # a known part of the fuzzy region gets wrong labels
    labels = torch.where(flipped, 1 - clean_labels, clean_labels)
    loss = PixelWeightedDCandCE(batch_dice=True)

    def forward(params, inp):
        return torch.func.functional_call(net, params, (inp,))

    conf = learn_confidence(
        forward,
        dict(net.named_parameters()),
        x * m_f,
        x * m_n,
        lambda out, omega: loss(out, labels, omega * m_f, m_f),
        lambda out: loss(out, labels, m_n),
        m_f.shape,
        shadow_lr=0.1,
        steps=1,
        lr=0.1,
    )
    untouched = (m_f > 0) & ~flipped
    assert conf.noisy[flipped].double().mean() > 0.8
    assert conf.clean[untouched].double().mean() > 0.8
    assert conf.omega[flipped].mean() < 1 < conf.omega[untouched].mean()
    # Adam's first step moves a voxel whose hypergradient is well above Adam's eps by about lr; non-fuzzy ones stay at 1
    assert torch.allclose(conf.omega[m_f == 0], torch.ones(1, dtype=torch.float64))
    assert ((conf.update[m_f > 0].abs() - 0.1).abs() < 1e-3).double().mean() > 0.95


def test_more_lookahead_steps_move_omega_further():
    net, params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss = problem(False, seed=3)
    shape = x_f.shape
    one = learn_confidence(forward, params, x_f, x_n, fuzzy_loss, nonfuzzy_loss, shape, 0.1, steps=1, lr=0.1)
    three = learn_confidence(forward, params, x_f, x_n, fuzzy_loss, nonfuzzy_loss, shape, 0.1, steps=3, lr=0.1)
    assert three.update.abs().mean() > 2 * one.update.abs().mean()
    # network parameters are untouched by the lookahead
    assert all(p.grad is None for p in net.parameters())


def test_fast_mode_finite_difference_tracks_the_jvp_and_omega_direction_agrees():
    """Fast mode: forward difference ~ JVP; with v from theta_n instead of theta_p the omega directions agree."""
    net, params, forward, x_f, x_n, fuzzy_loss, nonfuzzy_loss = problem(True, seed=5)
    names = list(params)
    v = dict(zip(names, torch.autograd.grad(nonfuzzy_loss(forward(params, x_n)), [params[n] for n in names])))
    outputs = forward(params, x_f)
    exact_t = output_tangent(forward, params, x_f, v)
    approx_t = output_difference(forward, params, x_f, outputs, v, step=1e-4)
    for e, a in zip(exact_t, approx_t):
        assert (e - a).norm() < 1e-3 * e.norm()
    shape = x_f.shape
    exact = learn_confidence(forward, params, x_f, x_n, fuzzy_loss, nonfuzzy_loss, shape, 0.01, fuzzy_outputs=outputs)
    fast = first_order_confidence(forward, params, x_f, outputs, fuzzy_loss, v, shape, 0.01)
    moved = exact.update != 0
    agreement = (torch.sign(exact.update[moved]) == torch.sign(fast.update[moved])).double().mean()
    assert agreement > 0.95
