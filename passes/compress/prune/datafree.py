"""Data-free parameter pruning: Srinivas and Babu (2015), "Data-free Parameter Pruning for Deep
Neural Networks", BMVC, arXiv:1507.06149.

Two neurons ``i`` and ``j`` of a layer with the same incoming weights ``W_i = W_j`` (bias
included) compute the same activation, so neuron ``j`` can be removed and its outgoing weights
``a_j`` (column ``j`` of the next layer) added to ``a_i``: the network is unchanged. For neurons
that are only similar, the paper bounds the change of the next layer's output by the saliency
``s_ij = <a_j^2> ||W_i - W_j||^2`` (``<a_j^2>`` the mean of the squares of ``a_j``). Neurons are
removed one at a time, each time the pair ``(i, j)`` of smallest saliency (``i`` the nearest
survivor of ``j``), ``a_i += a_j``, and the saliencies involving ``i`` recomputed. No data is
needed.

Pairs of layers are found in the model's graph (``torch.fx``): a ``Linear`` whose output feeds
only another ``Linear`` through elementwise activations (ReLU, GELU, tanh, dropout, ...), and
likewise an ungrouped ``Conv2d`` feeding a ``Conv2d`` (channels are the neurons). A BatchNorm,
pooling or flatten in between breaks the identity of the neurons and the pair. ``sparsity`` is
the fraction of a layer's neurons removed (at least one is kept); the last layer of a chain only
loses the columns of the neurons removed before it, so its own ``sparsity`` is not used.

Removed neurons are zeroed, not cut out: their rows (and bias) in the layer and their columns in
the next layer become zero and stay masked while fine-tuning. The shapes stay the same, so the
rest of the pipeline sees plain structured sparsity that its sparse kernels skip; physically
shrinking the layers would change the model's interface for no further gain there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from squeezer.errors import RecipeError

from ..base import CompressContext, register_method
from .base import PruningMethod
from .layers import Layer
from .settings import PruneSettings

__all__ = ["DatafreeSettings", "DatafreePruning", "merge_neurons"]

_aten = torch.ops.aten
_LAYER_FUNCTIONS = {_aten.linear.default: torch.nn.Linear, _aten.conv2d.default: torch.nn.Conv2d}
_ELEMENTWISE_MODULES = (
    torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.GELU,
    torch.nn.SiLU, torch.nn.Mish, torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.Hardswish,
    torch.nn.Hardtanh, torch.nn.Softplus, torch.nn.Identity, torch.nn.Dropout,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardtanh,
    F.softplus, F.dropout, torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.sigmoid,
    _aten.relu.default, _aten.relu_.default, _aten.gelu.default, _aten.silu.default,
    _aten.silu_.default, _aten.sigmoid.default, _aten.tanh.default, _aten.hardtanh.default,
    _aten.hardtanh_.default, _aten.leaky_relu.default, _aten.elu.default,
    _aten.hardswish.default, _aten.dropout.default, _aten.clone.default,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clone"}


class DatafreeSettings(PruneSettings):
    """Settings of ``datafree``.

    Attributes
    ----------
    sparsity : float
        Fraction of the neurons (output features or channels) removed from every layer that
        feeds another; per tensor with ``tensors: {fqn: {sparsity}}``.
    scope, schedule
        Only ``layer`` and ``one-shot``.
    epochs
        0 by default: the method needs no data; a following ``finetune`` recovers accuracy.
    """

    scope: Literal["layer"] = "layer"
    schedule: Literal["one-shot"] = "one-shot"
    epochs: int = Field(0, ge=0)


@dataclass(frozen=True)
class Pair:
    """Layer ``producer`` feeds layer ``consumer`` (tensor names) through elementwise ops."""

    producer: str
    consumer: str
    bias: str | None  # the producer's bias tensor


def merge_neurons(
    w_in: torch.Tensor, a: torch.Tensor, k: int
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Remove ``k`` neurons by the paper's saliency, merging each into its nearest survivor.

    Parameters
    ----------
    w_in : (n, fan_in) Tensor
        Incoming weights of the ``n`` neurons (bias as a column).
    a : (n, fan_out) Tensor
        Outgoing weights: row ``j`` is every weight that reads neuron ``j``.
    k : int
        Neurons to remove, ``0 <= k < n``.

    Returns
    -------
    (list of (int, int), Tensor)
        The merges ``(j, i)`` in order (``j`` removed into ``i``) and the new outgoing weights,
        float64, with the rows of removed neurons zero.
    """
    n = w_in.shape[0]
    if not 0 <= k < n:
        raise ValueError(f"cannot remove {k} of {n} neurons (at least one stays)")
    w_in, a = w_in.double(), a.double().clone()
    dist = torch.cdist(w_in, w_in, compute_mode="donot_use_mm_for_euclid_dist").square()
    dist.fill_diagonal_(torch.inf)
    near, arg = dist.min(0)  # for each j: distance to and index of its nearest survivor i
    c = a.square().mean(1)
    alive = torch.ones(n, dtype=torch.bool)
    merges = []
    for _ in range(k):
        j = int(torch.where(alive, c * near, torch.inf).argmin())
        i = int(arg[j])
        a[i] += a[j]
        a[j] = 0.0
        c[i] = a[i].square().mean()
        alive[j] = False
        merges.append((j, i))
        dist[j, :] = torch.inf
        dist[:, j] = torch.inf
        stale = alive & (arg == j)
        if bool(stale.any()):
            near[stale], arg[stale] = dist[:, stale].min(0)
    return merges, a


def find_pairs(model: torch.nn.Module) -> list[Pair]:
    """Every layer whose output feeds exactly one layer through elementwise ops only.

    Raises
    ------
    RecipeError
        If the model cannot be traced by ``torch.fx``.
    """
    if isinstance(model, torch.fx.GraphModule):
        gm = model
    else:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as err:  # tracing fails with many error types on dynamic code
            first = f"{type(err).__name__}: {err}".splitlines()[0]
            msg = f"cannot trace the model to find which layer feeds which ({first})"
            raise RecipeError(msg) from err
    layers = {node: _layer_of(gm, node) for node in gm.graph.nodes}
    pairs = []
    for node, found in layers.items():
        if found is None:
            continue
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not nxt.args or nxt.args[0] is not cur:
                break
            other = layers.get(nxt)
            if other is not None:
                if other[1] is found[1] and _ungrouped(gm, node) and _ungrouped(gm, nxt):
                    pairs.append(Pair(found[0], other[0], found[2]))
                break
            if not _elementwise(gm, nxt):
                break
            cur = nxt
    return pairs


def _layer_of(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[str, type, str | None] | None:
    """(weight name, layer type, bias name) of a Linear/Conv2d call, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        kind = next((k for k in (torch.nn.Linear, torch.nn.Conv2d) if isinstance(m, k)), None)
        if kind is None:
            return None
        return f"{node.target}.weight", kind, f"{node.target}.bias" if m.bias is not None else None
    if node.op == "call_function" and node.target in _LAYER_FUNCTIONS:
        args = list(node.args) + [None] * 3
        w, b = args[1], node.kwargs.get("bias", args[2])
        if not isinstance(w, torch.fx.Node) or w.op != "get_attr":
            return None
        bias = b.target if isinstance(b, torch.fx.Node) and b.op == "get_attr" else None
        return str(w.target), _LAYER_FUNCTIONS[node.target], None if bias is None else str(bias)
    return None


def _ungrouped(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "groups", 1) == 1
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return bool(groups == 1)


def _elementwise(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(path), attr)


@register_method("datafree")
class DatafreePruning(PruningMethod[DatafreeSettings]):
    """Remove neurons similar to others and fold their outgoing weights into them."""

    Settings = DatafreeSettings

    def __init__(self, settings: DatafreeSettings) -> None:
        super().__init__(settings)
        self.pairs: list[Pair] = []
        self.pending: dict[str, torch.Tensor] = {}
        self.removed: dict[str, list[int]] = {}

    def check_tensors(self, model: torch.nn.Module) -> None:
        self.pairs = find_pairs(model)
        super().check_tensors(model)

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        self.pairs = find_pairs(model)
        return super().prepare(model, ctx)

    def not_applicable(self, layer: Layer) -> str | None:
        if any(layer.tensor in (p.producer, p.consumer) for p in self.pairs):
            return None
        return "no Linear or Conv2d feeds it or reads its output through elementwise ops only"

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        keep = {n: torch.ones_like(self.mask(n)) for n in names}
        self.pending, self.removed = {}, {}
        for p in self.pairs:
            if p.producer not in names:
                continue
            if p.consumer not in names:
                raise RecipeError(
                    f"layers: {p.producer!r} feeds {p.consumer!r}, whose inputs change with it; "
                    "prune both (add it to 'layers') or neither"
                )
            # a layer both reads and feeds a pair: its rows as merged by the pair before
            w = self.pending.get(p.producer, self.layers[p.producer].weight.detach())
            w_in = w.reshape(w.shape[0], -1)
            if p.bias is not None:
                w_in = torch.cat([w_in, _tensor(model, p.bias).detach().reshape(-1, 1)], 1)
            out = self.layers[p.consumer].weight.detach()
            a = out.transpose(0, 1).reshape(out.shape[1], -1)
            n = w_in.shape[0]
            k = min(round(self.final(p.producer) * n), n - 1)
            merges, a_new = merge_neurons(w_in, a, k)
            gone = [j for j, _ in merges]
            self.removed[p.producer] = gone
            shape = (out.shape[1], out.shape[0], *out.shape[2:])
            self.pending[p.consumer] = a_new.reshape(shape).transpose(0, 1).to(out.dtype)
            keep[p.producer][gone] = 0.0
            keep[p.consumer][:, gone] = 0.0
            ctx.log(f"{p.producer}: removed {k} of {n} neurons, merged into {p.consumer}'s inputs")
        return keep

    def make_mask(
        self, score: torch.Tensor, sparsity: float, settings: DatafreeSettings,
        current: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        return (score > 0) & (current != 0)

    def update_weights(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        by_producer = {p.producer: p for p in self.pairs}
        with torch.no_grad():
            for n, w in self.pending.items():
                self.dense(n).copy_(w)
            for n, gone in self.removed.items():
                bias = by_producer[n].bias
                if bias is not None and gone:
                    _tensor(model, bias)[gone] = 0.0
