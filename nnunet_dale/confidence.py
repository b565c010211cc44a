"""Sec. 3.2 of the paper: label-confidence weights omega by loss-consistency collaborative optimisation (Eq. 8-11).

One iteration k of Algorithm 1, lines 7-9:
  shadow step   theta_p = theta_n - eta * grad_theta L_p(theta_n; omega)         (Eq. 8, one SGD step)
  omega step    omega  <- Adam(omega, dL_n(theta_p)/domega, lr)                  (Eq. 9-10)
with the exact hypergradient (Eq. 11)
  dL_n(theta_p)/domega = -eta * d/domega < grad_z L_p(z; omega), J_theta z . v >,   v = grad_theta L_n(theta_p),
where z are the network outputs on the fuzzy batch at theta_n. J_theta z . v is one forward-mode JVP of the
network; the remaining derivative only involves the loss head. A voxel whose loss gradient agrees with the
non-fuzzy gradient gets a negative hypergradient, so omega grows: it is judged clean (see docs/method.md).
`first_order_confidence` is the same formula to first order in the shadow step, along a direction v the caller
chooses (the cheaper omega modes: fast, first_order, first_order_jvp, stale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._pytree import tree_flatten, tree_map

__all__ = [
    "Confidence",
    "Forward",
    "OutputLoss",
    "Transform",
    "adam_on_omega",
    "class_means",
    "class_medians",
    "confidence_hypergradient",
    "first_order_confidence",
    "functional_forward",
    "learn_confidence",
    "normalised_hypergradient",
    "output_difference",
    "output_tangent",
    "shadow_parameters",
    "shuffled_within_classes",
]

Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], Any]
OutputLoss = Callable[..., torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Confidence:
    """omega* (detached, shape of the voxel weights), its change from omega_0 = 1 (> 0 clean, < 0 noisy) and the
    hypergradient of Eq. 11 at omega_0 (its sign is the update's opposite; Adam's first step drops its size)."""

    omega: torch.Tensor
    update: torch.Tensor
    hypergradient: torch.Tensor | None = None
    threshold: float = 0.0  # how far omega must move to count as clean / noisy (0: the paper's sign)

    @property
    def clean(self) -> torch.Tensor:
        """Eq. 12's indicator I[grad omega > 0]: voxels whose confidence went up (by more than the threshold)."""
        return self.update > self.threshold

    @property
    def noisy(self) -> torch.Tensor:
        return self.update < -self.threshold

    @classmethod
    def neutral(cls, like: torch.Tensor) -> Confidence:
        """omega = 1 everywhere and no update (nothing judged), shaped like `like`."""
        return cls(omega=torch.ones_like(like), update=torch.zeros_like(like))


def normalised_hypergradient(
    hypergradient: torch.Tensor,
    weight: torch.Tensor,
    membership: torch.Tensor,
    centre: str = "mean",
    eps: float = 1e-30,
) -> torch.Tensor:
    """The hypergradient centred within each class and divided by its root mean square, both over the `weight`ed
    (fuzzy) voxels: scale-free, so Adam's eps cannot freeze omega, and centred per class, so omega re-weights voxels
    within a class rather than the classes. `centre` "mean" gives each class a zero mean; Adam's first step is
    ~lr * sign, so a skewed class still gets a mean omega off 1 (docs/method.md); "median" (the weighted median)
    gives each class as much weight moving up as down, so a one-step omega keeps every class's mean at 1.
    `membership` (B, C, *s) is one-hot (or soft) class membership at the hypergradient's resolution, `weight`
    (B, 1, *s) the fuzzy mask."""
    g = hypergradient.to(torch.float64)
    w = weight.to(torch.float64) * membership.to(torch.float64)  # (B, C, *s)
    centres = class_medians(g, w) if centre == "median" else class_means(g, w, eps)
    centred = g - (membership.to(torch.float64) * centres.view(1, -1, *([1] * (g.ndim - 2)))).sum(1, keepdim=True)
    total = weight.to(torch.float64)
    rms = ((total * centred**2).sum() / total.sum().clamp_min(eps)).sqrt()
    return (centred / rms.clamp_min(eps)).to(hypergradient.dtype)


def class_means(values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Per class c: the mean of `values` (B, 1, *s) weighted by `weights[:, c]` (B, C, *s); shape (C,)."""
    dims = (0, *range(2, values.ndim))
    return (weights * values).sum(dims) / weights.sum(dims).clamp_min(eps)


def class_medians(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per class c: the weighted median of `values` (B, 1, *s) under `weights[:, c]` (B, C, *s), the smallest value
    whose cumulative weight reaches half the class's weight (0 for a class without weight); shape (C,)."""
    order = values.flatten().argsort()
    ordered = values.flatten()[order]
    medians = []
    for c in range(weights.shape[1]):
        cumulative = weights[:, c].flatten()[order].cumsum(0)
        if float(cumulative[-1]) <= 0:
            medians.append(ordered.new_zeros(()))
            continue
        index = torch.searchsorted(cumulative, 0.5 * cumulative[-1]).clamp_max(ordered.numel() - 1)
        medians.append(ordered[index])
    return torch.stack(medians)


def shuffled_within_classes(confidence: Confidence, weight: torch.Tensor, membership: torch.Tensor) -> Confidence:
    """A control for omega*: its values (with their updates, pairwise) permuted at random among each class's voxels of
    non-zero `weight`, so every class keeps its omega values and a voxel keeps its own only by chance. The weight is
    soft: weighted by it, a class's mean omega becomes (in expectation) its unweighted mean over those voxels.
    `membership` (B, C, *s) is a partition of the labelled voxels; unlabelled voxels and those outside `weight` keep
    theirs. The hypergradient (kept for the label audit) is dropped."""
    omega = confidence.omega.clone(memory_format=torch.contiguous_format)
    update = confidence.update.clone(memory_format=torch.contiguous_format)
    labelled = membership.amax(1, keepdim=True) > 0
    owner = membership.argmax(1, keepdim=True)
    for c in range(membership.shape[1]):
        where = ((weight > 0) & labelled & (owner == c)).flatten().nonzero().squeeze(1)
        source = where[torch.randperm(where.numel(), device=where.device)]
        omega.view(-1)[where] = confidence.omega.flatten()[source]
        update.view(-1)[where] = confidence.update.flatten()[source]
    return Confidence(omega=omega, update=update, threshold=confidence.threshold)


def functional_forward(module: torch.nn.Module) -> Forward:
    """forward(params, x): `module` evaluated with other parameters (the shadow network of Eq. 8), by
    torch.func.functional_call with tie_weights=False. nnU-Net's conv blocks register each layer twice (`conv` and
    `all_modules.0`); with tie_weights=True, functional_call swaps such a parameter twice and restores the wrong
    tensor, detaching the module's parameters from the optimiser. Swapping each parameter once reaches both names,
    as they share one module."""

    def forward(parameters: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return torch.func.functional_call(module, parameters, (x,), tie_weights=False)

    return forward


def shadow_parameters(
    params: Mapping[str, torch.Tensor], fuzzy_loss: torch.Tensor, lr: float, retain_graph: bool = True
) -> dict[str, torch.Tensor]:
    """Eq. 8: parameters of the shadow network after one SGD step on the omega-weighted fuzzy loss."""
    names = list(params)
    grads = torch.autograd.grad(
        fuzzy_loss, [params[n] for n in names], retain_graph=retain_graph, allow_unused=True, materialize_grads=True
    )
    return {n: (params[n].detach() - lr * g).requires_grad_() for n, g in zip(names, grads)}


def output_tangent(
    forward: Forward, params: Mapping[str, torch.Tensor], x: torch.Tensor, direction: Mapping[str, torch.Tensor]
) -> Any:
    """J_theta z . v: the change of the outputs z = forward(params, x) along `direction`, by one forward-mode pass.

    Dual tensors (torch.autograd.forward_ad) without a backward graph: the same JVP as torch.func.jvp, measured
    about a fifth cheaper on nnU-Net's 2d network on the CPU (docs/performance.md).
    """
    with torch.no_grad(), fwAD.dual_level():
        dual = {n: fwAD.make_dual(p.detach(), direction[n]) for n, p in params.items()}
        outputs = forward(dual, x)
        return tree_map(lambda z: _tangent_or_zeros(*fwAD.unpack_dual(z)), outputs)


def _tangent_or_zeros(primal: torch.Tensor, tangent: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(primal) if tangent is None else tangent


def output_difference(
    forward: Forward,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    outputs: Any,
    direction: Mapping[str, torch.Tensor],
    step: float = 0.01,
) -> Any:
    """Stand-in for `output_tangent` by one forward without graph: (z(theta + eps v) - z(theta)) / eps with
    eps = step / |v|, in at least float32 (AMP outputs are upcast)."""
    norm = torch.stack([torch.linalg.vector_norm(d) for d in direction.values()]).norm().clamp_min(1e-12)
    eps = step / norm
    with torch.no_grad():
        moved = forward({n: p.detach() + eps * direction[n] for n, p in params.items()}, x)

    def difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return (a.to(dtype) - b.detach().to(dtype)) / eps

    return tree_map(difference, moved, outputs)


def confidence_hypergradient(
    fuzzy_outputs: Any, tangent: Any, fuzzy_loss: OutputLoss, omega: torch.Tensor, lr: float
) -> torch.Tensor:
    """Eq. 11: dL_n(theta_p)/domega = -lr * d/domega <grad_z L_p(z; omega), J z . v>, given `tangent` = J z . v.

    Only the loss head is differentiated twice; the network enters through the outputs z and their tangent.
    """
    z = tree_map(lambda t: t.detach().requires_grad_(), fuzzy_outputs)
    z_leaves, _ = tree_flatten(z)
    omega = omega.detach().requires_grad_()
    grad_z = torch.autograd.grad(fuzzy_loss(z, omega), z_leaves, create_graph=True, allow_unused=True)
    inner = sum((g * t).sum() for g, t in zip(grad_z, tree_flatten(tangent)[0]) if g is not None)
    (d_omega,) = torch.autograd.grad(inner, omega, allow_unused=True, materialize_grads=True)
    return -lr * d_omega


def adam_on_omega(
    shape, like: torch.Tensor, lr: float, steps: int, hypergradient, transform: Transform | None = None
) -> Confidence:
    """Eq. 10: omega_0 = 1, then `steps` Adam steps along hypergradient(omega) (after `transform`, if given)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    omega = torch.ones(shape, device=like.device, dtype=dtype, requires_grad=True)
    optimiser = torch.optim.Adam([omega], lr=lr)
    first = None
    for _ in range(steps):
        raw = hypergradient(omega.detach())
        first = raw if first is None else first
        omega.grad = raw if transform is None else transform(raw)
        optimiser.step()
    omega = omega.detach()
    return Confidence(omega=omega, update=omega - 1.0, hypergradient=first)


def learn_confidence(
    forward: Forward,
    params: Mapping[str, torch.Tensor],
    x_fuzzy: torch.Tensor,
    x_nonfuzzy: torch.Tensor,
    fuzzy_loss: OutputLoss,
    nonfuzzy_loss: OutputLoss,
    omega_shape: torch.Size,
    shadow_lr: float,
    steps: int = 1,
    lr: float = 0.1,
    fuzzy_outputs: Any = None,
    transform: Transform | None = None,
) -> Confidence:
    """Eq. 8-11 (Algorithm 1, lines 6-10), exact: K lookahead steps from theta_n, Adam on omega from omega_0 = 1.

    `forward(params, x)` evaluates the network functionally (e.g. `torch.func.functional_call`);
    `fuzzy_loss(outputs, omega)` is L_p, `nonfuzzy_loss(outputs)` is L on the non-fuzzy batch. `fuzzy_outputs` may
    pass the outputs of `forward(params, x_fuzzy)` with their graph, to share that forward with the caller (the
    graph is kept for the caller's backward). `transform` maps the hypergradient before Adam (e.g.
    `normalised_hypergradient`).
    """
    if fuzzy_outputs is None:
        fuzzy_outputs = forward(params, x_fuzzy)

    def hypergradient(omega: torch.Tensor) -> torch.Tensor:
        theta_p = shadow_parameters(params, fuzzy_loss(fuzzy_outputs, omega), shadow_lr)  # Eq. 8
        names = list(theta_p)
        loss_p = nonfuzzy_loss(forward(theta_p, x_nonfuzzy))  # Eq. 9
        v = torch.autograd.grad(loss_p, [theta_p[n] for n in names], allow_unused=True, materialize_grads=True)
        tangent = output_tangent(forward, params, x_fuzzy, dict(zip(names, v)))
        return confidence_hypergradient(fuzzy_outputs, tangent, fuzzy_loss, omega, shadow_lr)  # Eq. 10-11

    return adam_on_omega(omega_shape, x_fuzzy, lr, steps, hypergradient, transform)


def first_order_confidence(
    forward: Forward,
    params: Mapping[str, torch.Tensor],
    x_fuzzy: torch.Tensor,
    fuzzy_outputs: Any,
    fuzzy_loss: OutputLoss,
    direction: Mapping[str, torch.Tensor],
    omega_shape: torch.Size,
    shadow_lr: float,
    steps: int = 1,
    lr: float = 0.1,
    step: float = 0.01,
    transform: Transform | None = None,
    jvp: bool = False,
) -> Confidence:
    """Eq. 8-11 to first order in the shadow step: dL_n/domega ~ -lr * d/domega <grad_z L_p(z; omega), J z . v> at
    theta (theta_p = theta), with v = `direction` given instead of grad L_n(theta_p), and J z . v by a forward finite
    difference (`output_difference`: one extra forward without graph) or, with `jvp`, one forward-mode JVP
    (`output_tangent`). No shadow step, no pass at theta_p. When `fuzzy_outputs` (z at theta) is None it costs one
    more forward without graph. The omega modes differ in v (docs/method.md): fast, the non-fuzzy step's gradient at
    theta_{t-1}; first_order / first_order_jvp, grad L_n(theta) of the single update; stale, the SGD momentum buffer.
    """
    if fuzzy_outputs is None:
        with torch.no_grad():
            fuzzy_outputs = forward(params, x_fuzzy)
    if jvp:
        tangent = output_tangent(forward, params, x_fuzzy, direction)
    else:
        tangent = output_difference(forward, params, x_fuzzy, fuzzy_outputs, direction, step)
    return adam_on_omega(
        omega_shape,
        x_fuzzy,
        lr,
        steps,
        lambda omega: confidence_hypergradient(fuzzy_outputs, tangent, fuzzy_loss, omega, shadow_lr),
        transform,
    )
