"""Optimal Brain Damage: LeCun, Denker and Solla (1990), "Optimal Brain Damage", NeurIPS 2.

The saliency of weight ``q`` is ``s_q = h_qq w_q^2 / 2``: the increase of the training loss that
a second-order Taylor expansion predicts when ``w_q`` is set to zero, with the Hessian taken as
diagonal and the gradient as zero (the network is trained to a minimum). The weights of lowest
saliency are removed; with the ``iterative`` schedule the network is retrained and the
saliencies recomputed between steps (the paper's loop). Saliencies are in units of the loss, so
they are compared across layers: ``scope`` is ``global`` by default, as in the paper.

The Hessian diagonal ``h_qq`` is the exact diagonal of the Gauss-Newton matrix
``G = J^T H_z J`` of the mean cross-entropy, averaged over ``samples`` training examples: ``J`` is
the Jacobian of the logits ``z`` with respect to the weights and ``H_z = diag(p) - p p^T`` the
Hessian of the cross-entropy with respect to the logits (``p = softmax(z)``). This is the
quantity the paper computes: its recursion back-propagates second derivatives with the
Levenberg-Marquardt (Gauss-Newton) approximation, which drops the terms with the network's second
derivatives, and keeps only the diagonal. The paper's recursion also drops cross terms between
units; here the diagonal is exact. Unlike a Hutchinson estimate of the full Hessian's diagonal,
it is never negative (no negative saliencies at a saddle) and carries no sampling noise besides
the choice of examples. It does not depend on the labels.

Per example, ``H_z = S S^T`` with ``S = diag(sqrt p) - p sqrt(p)^T``, so
``diag G = sum_k (J^T s_k)^2`` over the ``C`` columns ``s_k`` of ``S``: ``C`` vector-Jacobian
products per example (``torch.func``: ``vmap`` over examples, ``jacrev`` over the directions).
The model runs in eval mode (BatchNorm statistics, no dropout), as it is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch.func import functional_call, jacrev, vmap

from ..base import CompressContext, register_method
from .base import PruningMethod
from .settings import PruneSettings

# Floats of per-example Jacobians held at once (chunk * classes * weights): about 256 MiB.
_JACOBIAN_FLOATS = 1 << 26


class ObdSettings(PruneSettings):
    """Settings of ``obd``.

    Attributes
    ----------
    samples : int
        Training examples (the first ones of the training split) over which the Hessian
        diagonal is averaged.
    scope
        ``global`` by default (one threshold on the saliencies of all layers).
    """

    samples: int = Field(512, ge=1)
    scope: Literal["layer", "global"] = "global"


def hessian_diagonal(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal of the Gauss-Newton matrix of the mean cross-entropy over the inputs ``x``.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning ``(N, C)`` logits; evaluated in its current mode.
    params : mapping of str to Tensor
        The parameters to differentiate, by name in ``model.named_parameters()``.
    x : torch.Tensor
        ``(N, ...)`` inputs.

    Returns
    -------
    dict of str to Tensor
        ``h_qq`` for every entry of every tensor of ``params`` (same shapes), non-negative.
    """
    detached = {n: p.detach() for n, p in params.items()}

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    def per_example(xi: torch.Tensor, si: torch.Tensor) -> dict[str, torch.Tensor]:
        jac = jacrev(lambda p: si.T @ logits(p, xi))(detached)
        return {n: j.square().sum(0) for n, j in jac.items()}

    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    weights = sum(p.numel() for p in params.values())
    chunk = max(1, min(256, _JACOBIAN_FLOATS // (classes * weights)))
    total = {n: torch.zeros_like(p) for n, p in detached.items()}
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        with torch.no_grad():
            prob = model(xb).softmax(1)
        root = prob.sqrt()
        s = torch.diag_embed(root) - prob.unsqueeze(2) * root.unsqueeze(1)
        for n, h in vmap(per_example)(xb, s).items():
            total[n] += h.sum(0)
    return {n: t / len(x) for n, t in total.items()}


@register_method("obd")
class OptimalBrainDamage(PruningMethod[ObdSettings]):
    """Remove the weights of smallest ``h_qq w_q^2 / 2`` (LeCun et al., 1990)."""

    Settings = ObdSettings

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        by_id = {id(p): n for n, p in model.named_parameters()}
        params = {by_id[id(self.dense(n))]: self.dense(n) for n in names}
        x = torch.from_numpy(ctx.data.x_train[: self.settings.samples])
        was_training = model.training
        model.eval()
        try:
            h = hessian_diagonal(model, params, x)
        finally:
            model.train(was_training)
        return {
            n: 0.5 * h[by_id[id(self.dense(n))]] * self.layers[n].weight.detach().square()
            for n in names
        }
