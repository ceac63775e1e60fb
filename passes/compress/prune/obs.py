"""Optimal Brain Surgeon, layer-wise: Hassibi and Stork (1993), "Second order derivatives for
network pruning: Optimal Brain Surgeon", NeurIPS 5; in the layer-wise form of Dong, Chen and Pan
(2017), "Learning to Prune Deep Neural Networks via Layer-wise Optimal Brain Surgeon", NeurIPS,
with the solvers of Frantar and Alistarh: "Optimal Brain Compression" (OBC, NeurIPS 2022) and
"SparseGPT" (ICML 2023).

Each layer is pruned to keep its outputs on calibration data: the error of a row ``w`` of the
``(out, in * kh * kw)`` weight matrix is ``(w' - w)^T H (w' - w)`` with ``H = 2 X X^T / n`` from
the layer's inputs ``X`` (im2col-unfolded for convolutions, per group for grouped ones), collected
with forward hooks on ``samples`` training examples, plus ``damp`` times the mean of ``diag(H)``
on the diagonal. Removing ``w_q`` costs ``w_q^2 / (2 [H^-1]_qq)`` (the saliency) after the
compensating update ``delta w = -(w_q / [H^-1]_qq) H^-1[:, q]`` of the row's other weights.

Solvers (``solver``; ``auto`` takes ``exact`` for a layer when ``rows * (in * kh * kw)^3`` is at
most ``1e9``, else ``blocked``):

* ``exact`` (OBC): every row removes its weights one at a time, smallest saliency first, each
  with its update and the exact downdate of the inverse,
  ``H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq``. The saliency at removal (made
  non-decreasing along each row) ranks all weights of the layer, so the pruned set of every row is
  a prefix of its greedy sequence and rows lose different numbers of weights (OBC's global mask).
  The kept weights then get the exact joint update for the whole pruned set. Float64 throughout.
* ``blocked`` (SparseGPT): the columns are processed left to right in blocks of ``block_size``;
  each block removes the weights of lowest saliency ``w^2 / (2 U_qq^2)`` at the weights updated
  so far (``U`` the upper Cholesky factor of ``H^-1 = U^T U``) until the layer has lost its share
  of ``sparsity`` (SparseGPT's adaptive mask), a removed weight's error divided by ``U_qq``
  updates the columns to its right, and the block's errors reach the later columns as one matrix
  product: ``O(d^3 + rows d^2)`` per layer instead of ``O(rows d^3)``. The set SparseGPT removes
  at the layer's final sparsity ranks lowest; a schedule step short of it takes the part of that
  set removed first. Only later columns are updated, so this is less accurate than ``exact``.

Inputs are collected on the model as it is when pruning (earlier layers dense in a one-shot
pass); with the ``iterative`` schedule, later steps see the pruned, fine-tuned layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from squeezer.errors import RecipeError

from ..base import CompressContext, register_method
from .base import PruningMethod
from .layers import Layer
from .masks import keep_mask
from .settings import PruneSettings

_EXACT_BUDGET = 1e9  # rows * d^3 multiply-adds up to which ``auto`` runs OBC exactly
_CHUNK_BYTES = 64 << 20  # per-row inverse copies held at once by the exact solver
_CONV = torch.ops.aten.conv2d.default
_LINEAR = torch.ops.aten.linear.default
_MODULES = (torch.nn.Linear, torch.nn.Conv2d)


class ObsSettings(PruneSettings):
    """Settings of ``obs``.

    Attributes
    ----------
    samples : int
        Training examples (the first ones of the training split) whose layer inputs form ``H``.
    damp : float
        Added to ``diag(H)``, relative to its mean (keeps ``H`` invertible when inputs are
        constant or dead, e.g. the always-blank border pixels of the digits).
    solver : {"auto", "exact", "blocked"}
        See the module docstring.
    block_size : int
        Columns per block of the ``blocked`` solver.
    """

    samples: int = Field(512, ge=1)
    damp: float = Field(0.01, gt=0)
    solver: Literal["auto", "exact", "blocked"] = "auto"
    block_size: int = Field(128, ge=1)


@dataclass(frozen=True)
class _Unfold:
    """How a layer reads its input: a Linear (``kernel`` None) or a Conv2d's geometry."""

    kernel: tuple[int, int] | None = None
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input as ``(groups, n, d)``: one row per output position, im2col for a conv."""
        if self.kernel is None:
            return x.reshape(1, -1, x.shape[-1])
        cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)
        n, d, positions = cols.shape
        cols = cols.transpose(1, 2).reshape(n * positions, self.groups, d // self.groups)
        return cols.transpose(0, 1)


def _module_unfold(m: torch.nn.Module) -> _Unfold:
    if isinstance(m, torch.nn.Conv2d):
        return _Unfold(tuple(m.kernel_size), m.stride, m.padding, m.dilation, m.groups)  # type: ignore[arg-type]
    return _Unfold()


def _node_unfold(node: torch.fx.Node, weight: torch.Tensor) -> _Unfold:
    if node.target is _LINEAR:
        return _Unfold()
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    a: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    a.update(zip(names, node.args, strict=False))
    a.update(node.kwargs)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    return _Unfold(kernel, a["stride"], a["padding"], a["dilation"], int(a["groups"]))


class _Capture(torch.fx.Interpreter):
    """Runs a ``torch.export`` graph and hands each chosen layer's input to ``seen``."""

    def __init__(self, gm: torch.fx.GraphModule, seen: dict[str, Callable[..., None]]) -> None:
        super().__init__(gm)
        self.seen = seen

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        weight = n.args[1] if n.op == "call_function" and n.target in (_CONV, _LINEAR) else None
        if isinstance(weight, torch.fx.Node) and weight.target in self.seen:
            w = self.env[weight]
            self.seen[str(weight.target)](self.env[n.args[0]], _node_unfold(n, w))  # type: ignore[index]
        return out


def layer_hessians(
    model: torch.nn.Module, layers: dict[str, Layer], x: torch.Tensor, batch: int = 128
) -> dict[str, torch.Tensor]:
    """``H = 2 X X^T / n`` of every layer's inputs over ``x``, float64, ``(groups, d, d)``.

    Layers are ``Linear``/``Conv2d`` modules (forward hooks) or the ``aten.linear``/
    ``aten.conv2d`` weights of a ``torch.export`` graph (read while interpreting it).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def seen(name: str, inp: torch.Tensor, unfold: _Unfold) -> None:
        rows = unfold.rows(inp.detach()).double()
        sums[name] = sums.get(name, 0) + rows.transpose(1, 2) @ rows  # type: ignore[operator]
        counts[name] = counts.get(name, 0) + rows.shape[1]

    graph = {t: lay for t, lay in layers.items() if not isinstance(lay.owner, _MODULES)}
    hooks = [
        lay.owner.register_forward_hook(
            lambda m, args, out, t=t: seen(t, args[0], _module_unfold(m))
        )
        for t, lay in layers.items()
        if t not in graph
    ]
    capture = (
        _Capture(model, {t: (lambda i, u, t=t: seen(t, i, u)) for t in graph})
        if isinstance(model, torch.fx.GraphModule) and graph
        else None
    )
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                _ = capture.run(x[i : i + batch]) if capture else model(x[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
    missing = sorted(set(layers) - set(sums))
    if missing:
        raise RecipeError(
            f"layer {missing[0]!r} got no input while the model ran on the training data "
            "(unused?); leave it out with 'exclude'"
        )
    return {t: 2 * sums[t] / counts[t] for t in layers}


def eliminate(
    w: torch.Tensor, hinv: torch.Tensor, remove: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove the ``remove`` weights of each row, smallest OBS saliency first (OBC).

    Parameters
    ----------
    w : (rows, d) Tensor
    hinv : (d, d) Tensor
        ``H^-1`` shared by the rows.
    remove : (rows, d) bool Tensor
        The weights to remove.

    Returns
    -------
    (Tensor, Tensor, Tensor)
        The weights after the removals and updates (removed ones exactly zero); each removed
        weight's saliency when it went (``inf`` if kept); its step in the row's order (``-1``).
    """
    rows, d = w.shape
    w = w.clone()
    h = hinv.expand(rows, d, d).clone()
    left = remove.clone()
    loss = torch.full_like(w, torch.inf)
    when = torch.full(w.shape, -1, dtype=torch.long)
    ar = torch.arange(rows)
    for t in range(int(remove.sum(1).max()) if rows else 0):
        active = left.any(1)
        score = torch.where(left, w.square() / h.diagonal(dim1=1, dim2=2), torch.inf)
        q = score.argmin(1)
        hq = h[ar, :, q]
        dq = hq[ar, q]
        w -= torch.where(active, w[ar, q] / dq, 0.0).unsqueeze(1) * hq
        inv = torch.where(active, 1 / dq, 0.0)
        h.baddbmm_(hq.unsqueeze(2), (hq * inv.unsqueeze(1)).unsqueeze(1), alpha=-1)
        ra, qa = ar[active], q[active]
        loss[ra, qa] = score[ra, qa] / 2
        when[ra, qa] = t
        left[ra, qa] = False
    # Rounding in later downdates leaves ~1e-17 where weights went: removed means zero.
    return w.masked_fill(remove, 0.0), loss, when


def _eliminate_chunked(
    w: torch.Tensor, hinv: torch.Tensor, remove: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chunk = max(1, _CHUNK_BYTES // (8 * hinv.numel()))
    parts = [eliminate(w[i : i + chunk], hinv, remove[i : i + chunk]) for i in
             range(0, len(w), chunk)]  # fmt: skip
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


def greedy_ranks(w: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
    """OBC's layer-wide ranking: each weight's saliency at its greedy removal, made strictly
    increasing along its row's removal order (float32), so a lowest-k set is a prefix per row."""
    _, loss, when = _eliminate_chunked(w, hinv, torch.ones_like(w, dtype=torch.bool))
    order = when.argsort(1)
    seq = loss.gather(1, order).float()
    for t in range(1, seq.shape[1]):
        seq[:, t] = torch.maximum(seq[:, t], torch.nextafter(seq[:, t - 1], seq.new_tensor(1e38)))
    return torch.empty_like(seq).scatter_(1, order, seq)


def sparsegpt(
    w: torch.Tensor,
    hinv: torch.Tensor,
    block: int,
    prune: torch.Tensor | None = None,
    sparsity: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prune a ``(rows, d)`` matrix column by column with SparseGPT's lazy block updates.

    Parameters
    ----------
    w, hinv : Tensor
        Weights and the ``(d, d)`` inverse Hessian.
    block : int
        Columns per block.
    prune : bool Tensor, optional
        The weights to remove; if omitted, each block removes its lowest saliencies
        ``w^2 / (2 U_qq^2)`` (at the weights updated so far) until the layer has lost
        ``round(sparsity * rows * columns_so_far)`` weights (SparseGPT's adaptive mask).

    Returns
    -------
    (Tensor, Tensor, Tensor)
        The new weights (pruned ones zero), the pruned set, every weight's saliency when its
        block was reached.
    """
    rows, d = w.shape
    w = w.clone()
    u = torch.linalg.cholesky(hinv, upper=True)
    chosen = torch.zeros_like(w, dtype=torch.bool) if prune is None else prune
    saliency = torch.empty_like(w)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        saliency[:, i1:i2] = w1.square() / (2 * u1.diagonal().square())
        if prune is None:
            want = round(sparsity * rows * i2) - int(chosen.sum())
            chosen[:, i1:i2] = ~keep_mask(saliency[:, i1:i2], want)
        err = torch.zeros_like(w1)
        for i in range(i2 - i1):
            e = torch.where(chosen[:, i1 + i], w1[:, i], 0.0) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.masked_fill(chosen, 0.0), chosen, saliency


def sparsegpt_ranks(
    w: torch.Tensor, hinv: torch.Tensor, block: int, sparsity: float
) -> torch.Tensor:
    """Scores whose lowest ``round(sparsity * w.numel())`` are SparseGPT's own pruned set."""
    _, chosen, saliency = sparsegpt(w, hinv, block, sparsity=sparsity)
    top = float(saliency[chosen].max()) if bool(chosen.any()) else 0.0
    return torch.where(chosen, saliency, saliency + 2 * top + 1).float()


@register_method("obs")
class OptimalBrainSurgeon(PruningMethod[ObsSettings]):
    """Prune each layer by OBS saliency with compensating updates (Hassibi and Stork, 1993)."""

    Settings = ObsSettings

    def __init__(self, settings: ObsSettings) -> None:
        super().__init__(settings)
        self.hinv: dict[str, torch.Tensor] = {}

    def not_applicable(self, layer: Layer) -> str | None:
        m = layer.owner
        if isinstance(m, torch.nn.Conv2d) and (
            isinstance(m.padding, str) or m.padding_mode != "zeros"
        ):
            return f"its padding ({m.padding!r}, {m.padding_mode}) is not zero-padding by numbers"
        return None

    def solver(self, name: str) -> str:
        s = self.settings
        if s.solver != "auto":
            return s.solver
        _, rows, d = self._matrix(name).shape
        return "exact" if rows * d**3 <= _EXACT_BUDGET else "blocked"

    def _matrix(self, name: str) -> torch.Tensor:
        w = self.layers[name].weight.detach()
        g = self.layers[name].groups
        return w.reshape(g, w.shape[0] // g, -1).double()

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        s = self.settings
        x = torch.from_numpy(ctx.data.x_train[: s.samples])
        was_training = model.training
        model.eval()
        try:
            hess = layer_hessians(model, {n: self.layers[n] for n in names}, x)
        finally:
            model.train(was_training)
        out = {}
        for n in names:
            h = hess[n]
            eye = torch.eye(h.shape[-1], dtype=h.dtype)
            mean = h.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            h = h + s.damp * mean[:, None, None] * eye
            self.hinv[n] = torch.cholesky_inverse(torch.linalg.cholesky(h))
            w = self._matrix(n)
            if self.solver(n) == "exact":
                ranks = [greedy_ranks(wg, hg) for wg, hg in zip(w, self.hinv[n], strict=True)]
            else:
                ranks = [sparsegpt_ranks(wg, hg, s.block_size, self.final(n)) for wg, hg in
                         zip(w, self.hinv[n], strict=True)]  # fmt: skip
            out[n] = torch.cat([r.reshape(-1) for r in ranks]).reshape(self.mask(n).shape)
        return out

    def update_weights(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        for n, mask in masks.items():
            w = self._matrix(n)
            prune = (mask == 0).reshape(w.shape)
            if self.solver(n) == "exact":
                new = [_eliminate_chunked(wg, hg, pg)[0] for wg, hg, pg in
                       zip(w, self.hinv[n], prune, strict=True)]  # fmt: skip
            else:
                new = [sparsegpt(wg, hg, self.settings.block_size, pg)[0] for wg, hg, pg in
                       zip(w, self.hinv[n], prune, strict=True)]  # fmt: skip
            dense = self.dense(n)
            with torch.no_grad():
                dense.copy_(torch.stack(new).reshape(dense.shape).to(dense.dtype))
