"""Sec. 3.2 of the paper: label-confidence weights omega by loss-consistency collaborative optimisation (Eq. 8-11).

One iteration k of Algorithm 1, lines 7-9:
  shadow step   theta_p = theta_n - eta * grad_theta L_p(theta_n; omega)         (Eq. 8, one SGD step)
  omega step    omega  <- Adam(omega, dL_n(theta_p)/domega, lr)                  (Eq. 9-10)
with the exact hypergradient (Eq. 11)
  dL_n(theta_p)/domega = -eta * d/domega < grad_z L_p(z; omega), J_theta z . v >,   v = grad_theta L_n(theta_p),
where z are the network outputs on the fuzzy batch at theta_n. J_theta z . v is one forward-mode JVP of the
network; the remaining derivative only involves the loss head. A voxel whose loss gradient agrees with the
non-fuzzy gradient gets a negative hypergradient, so omega grows: it is judged clean (see docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], Any]
OutputLoss = Callable[..., torch.Tensor]


@dataclass
class Confidence:
    """omega* (detached, shape of the voxel weights) and its change from omega_0 = 1 (> 0 clean, < 0 noisy)."""

    omega: torch.Tensor
    update: torch.Tensor

    @property
    def clean(self) -> torch.Tensor:
        """Eq. 12's indicator I[grad omega > 0]: voxels whose confidence went up."""
        return self.update > 0

    @property
    def noisy(self) -> torch.Tensor:
        return self.update < 0


def shadow_parameters(
    params: Mapping[str, torch.Tensor], fuzzy_loss: torch.Tensor, lr: float, retain_graph: bool = True
) -> dict[str, torch.Tensor]:
    """Eq. 8: parameters of the shadow network after one SGD step on the omega-weighted fuzzy loss."""
    names = list(params)
    grads = torch.autograd.grad(
        fuzzy_loss, [params[n] for n in names], retain_graph=retain_graph, allow_unused=True, materialize_grads=True
    )
    return {n: (params[n].detach() - lr * g).requires_grad_() for n, g in zip(names, grads)}


def confidence_hypergradient(
    forward: Forward,
    params: Mapping[str, torch.Tensor],
    x_fuzzy: torch.Tensor,
    fuzzy_outputs: Any,
    fuzzy_loss: OutputLoss,
    omega: torch.Tensor,
    direction: Mapping[str, torch.Tensor],
    lr: float,
) -> torch.Tensor:
    """Eq. 11: dL_n(theta_p)/domega = -lr * d/domega <grad_z L_p(z; omega), J z . v> with v = `direction`."""
    names = list(params)
    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(direction[n] for n in names)
    _, z_dot = torch.func.jvp(lambda *p: forward(dict(zip(names, p)), x_fuzzy), primals, tangents)
    z = tree_map(lambda t: t.detach().requires_grad_(), fuzzy_outputs)
    z_leaves, _ = tree_flatten(z)
    omega = omega.detach().requires_grad_()
    grad_z = torch.autograd.grad(fuzzy_loss(z, omega), z_leaves, create_graph=True, allow_unused=True)
    inner = sum((g * t).sum() for g, t in zip(grad_z, tree_flatten(z_dot)[0]) if g is not None)
    (d_omega,) = torch.autograd.grad(inner, omega, allow_unused=True, materialize_grads=True)
    return -lr * d_omega


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
) -> Confidence:
    """Eq. 8-11 (Algorithm 1, lines 6-10): K lookahead steps from theta_n, Adam on omega from omega_0 = 1.

    `forward(params, x)` evaluates the network functionally (e.g. `torch.func.functional_call`);
    `fuzzy_loss(outputs, omega)` is L_p, `nonfuzzy_loss(outputs)` is L on the non-fuzzy batch. `fuzzy_outputs` may
    pass the outputs of `forward(params, x_fuzzy)` with their graph, to share that forward with the caller.
    """
    if fuzzy_outputs is None:
        fuzzy_outputs = forward(params, x_fuzzy)
    dtype = torch.promote_types(x_fuzzy.dtype, torch.float32)
    omega = torch.ones(omega_shape, device=x_fuzzy.device, dtype=dtype, requires_grad=True)
    optimiser = torch.optim.Adam([omega], lr=lr)
    for _ in range(steps):
        theta_p = shadow_parameters(params, fuzzy_loss(fuzzy_outputs, omega.detach()), shadow_lr)
        loss_p = nonfuzzy_loss(forward(theta_p, x_nonfuzzy))
        names = list(theta_p)
        v = torch.autograd.grad(loss_p, [theta_p[n] for n in names], allow_unused=True, materialize_grads=True)
        omega.grad = confidence_hypergradient(
            forward, params, x_fuzzy, fuzzy_outputs, fuzzy_loss, omega, dict(zip(names, v)), shadow_lr
        )
        optimiser.step()
    omega = omega.detach()
    return Confidence(omega=omega, update=omega - 1.0)
