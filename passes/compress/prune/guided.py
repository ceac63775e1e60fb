"""Guided pruning: Park, Li, Wen, Tang, Li, Chen and Dubey (2017), "Faster CNNs with Direct
Sparse Convolutions and Guided Pruning", ICLR, arXiv:1608.01409.

The paper prunes a layer only where its sparse kernel beats the dense one: a performance model
gives, per layer and machine, the density below which sparsity pays, and the accuracy budget goes
to the layers where it buys speed. Here the performance model is the compiler's own
(``squeezer.schedules.sparse_cost``: ``estimate_seconds`` and ``choose_format``), so the layers
pruned are the ones ``sparsify_weights`` then compiles to the sparse kernel.

Layers (``products``). A ``Linear`` is an ``out x in`` product with ``p = batch`` columns and a
1x1 ``Conv2d`` (no padding) is ``out x in`` with ``p = H * W`` of its output, both for
``sparse_matmul``; a KxK ``Conv2d`` (stride 1 or 2) runs the direct sparse convolution
``sparse_conv2d``, priced by the compiler as its im2col product ``out x in * kh * kw`` with
``p = H * W``. One forward pass on a training image at ``resolution`` finds the sizes.
Convolutions need groups 1 and no dilation, and ``sparsify_weights`` rewrites them for batch-1
inputs only, so with ``batch > 1`` every convolution is left dense. Layers without a sparse
kernel (depthwise and grouped convolutions, for one) are left dense by default (naming one in
``layers`` is an error; prune them with another method), but their dense time counts in the
model's predicted time.

Break-even. For a layer and a block shape ``r x c`` it is the smallest fraction of the blocks to
remove such that the sparse kernel on the kept blocks is predicted faster than ``margin`` times
the dense product (the compiler's ``MARGIN`` by default) *and* ``choose_format``, offered the
block shapes the compiler offers that kernel (``sparse_conv2d`` takes blocks of output rows,
``r x 1``), picks a sparse format for a weight with that many blocks, evenly spread (so a rule
of the compiler beyond the time estimate, such as its density ceiling, counts too). Each layer
takes, of the allowed ``blocks`` its kernel takes, the one with the lowest break-even (ties: the
smaller block); it is pruned in whole blocks of that shape. A layer whose break-even exceeds
``max_sparsity`` never pays.

Allocation (``sparsity``; the searches are in ``allocate``). The target is the fraction of the
weights of the eligible layers (those chosen by ``layers``/``exclude`` that have a sparse
kernel) removed in all: exactly ``round(sparsity * weights)`` with 1x1 blocks. Paying layers
join in order of predicted time saved per weight removed when pruned to their break-even (rates
equal to two digits, as layers in the same regime of the model are: the larger layer first),
each as long as its break-even still fits in the budget; should the joined layers not hold the
budget at ``max_sparsity``, the largest layers join first instead. The joined layers share the
budget at one common level ``L``: each is pruned to ``min(max(L, break_even), max_sparsity)``
(water-filling with the break-even as a floor), the rounding remainder going to the largest
fractional parts. The rest stay dense. This spreads the budget evenly over the layers that pay
rather than concentrating it where the model predicts the steepest savings: the model's savings
are nearly linear in the weights removed, so concentrating gains little time and costs accuracy.

Allocation (``speedup``). The fewest weights removed, under the same allocation, whose predicted
time of the model's products is at most the dense time over ``speedup``. A layer that joins at
its break-even takes budget from the others, so the time is not monotone in the budget: the
first of 200 evenly spaced budgets that meets the goal is refined by bisection below it, to a
budget that meets it where one weight fewer does not.

Decisions. A model where no eligible layer can pay, a ``sparsity`` too small to bring any layer
to its break-even, or a goal beyond what the paying layers can give, is a ``RecipeError`` that
states the numbers (the break-evens, the smallest paying sparsity, the largest predicted
speedup): guided pruning that silently removed nothing, or removed weights that buy no speed,
would defeat its purpose. ``sparsity: 0`` is allowed and prunes nothing. Masks are by magnitude
within each layer (block RMS for larger blocks). The plan (``GuidedPruning.plan``) is logged one
line per layer (product shape, ``p``, block, break-even, allocated sparsity, predicted dense and
allocated times, the sparse speedup at the requested sparsity capped at ``max_sparsity``) and
one line for the model. The predicted model time is the sum over every ``Linear``/``Conv2d`` of
the estimated product time (convolutions as their im2col product); other operators are not
modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import ModuleType
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from squeezer.errors import RecipeError

from ..base import CompressContext, register_method
from .allocate import Curve, breakeven, for_budget, for_speedup
from .base import PruningMethod
from .block import _blocked
from .layers import Layer
from .masks import bsr_bytes, csr_bytes
from .products import Site, conv_reason, module_reason, probe
from .settings import PruneSettings

__all__ = ["GuidedPlan", "GuidedPruning", "GuidedSettings", "LayerPlan", "plan_pruning"]

_DEFAULT_SPARSITY = 0.5


def _cost_model() -> ModuleType:
    # Imported on use: it loads TVM, which `import squeezer.passes.compress` should not pay for.
    from squeezer.schedules import sparse_cost

    return sparse_cost


class GuidedSettings(PruneSettings):
    """Settings of ``guided``.

    Attributes
    ----------
    sparsity : float or None
        Fraction of the weights of the eligible layers removed in all (see the module docstring);
        0.5 when neither it nor ``speedup`` is given.
    speedup : float or None
        Instead of ``sparsity``: the predicted speedup of the model's products to reach with the
        fewest weights removed.
    batch : int
        Inputs per run: ``p`` of a linear layer (times the tokens of one input); a convolution
        runs once per input.
    resolution : int or None
        Side of the square input that sets the convolutions' spatial sizes (default: the data's).
    blocks : list of (int, int)
        Block shapes a pruned weight may be stored in, each one the sparse kernel supports;
        per tensor too. Default ``[[1, 1]]`` (unstructured, CSR).
    cores : int
        Cores of the deployment target in the performance model.
    margin : float or None
        A layer pays when its sparse kernel is predicted faster than ``margin`` times its dense
        product (default: the compiler's ``sparse_cost.MARGIN``; a larger one changes
        nothing, as ``choose_format`` must pick the sparse kernel too).
    max_sparsity : float
        The most of one layer's blocks removed; a layer whose break-even lies above stays dense.
    scope
        Only ``layer``: the allocation sets each layer's sparsity.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("blocks",)

    sparsity: float | None = None  # type: ignore[assignment]
    speedup: float | None = Field(None, gt=1)
    batch: int = Field(1, ge=1)
    resolution: int | None = Field(None, ge=1)
    blocks: list[tuple[int, int]] = Field(default_factory=lambda: [(1, 1)], min_length=1)
    cores: int = Field(2, ge=1)
    margin: float | None = Field(None, gt=0, le=1)
    max_sparsity: float = Field(0.95, gt=0, lt=1)

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, value: float | None) -> float | None:  # type: ignore[override]
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"must be in [0, 1) (the fraction of weights removed), got {value}")
        return value

    @field_validator("blocks")
    @classmethod
    def _positive(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for r, c in value:
            if r < 1 or c < 1:
                raise ValueError(f"block sides must be positive, got {r}x{c}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.speedup is not None and self.sparsity is not None:
            raise ValueError("give either sparsity or speedup, not both")
        if self.scope != "layer":
            raise ValueError(
                "guided pruning sets each layer's sparsity itself: scope must be "
                f"'layer', got {self.scope!r}"
            )
        return self

    @property
    def overall(self) -> float:
        """The requested overall sparsity (``sparsity``, or its default)."""
        return _DEFAULT_SPARSITY if self.sparsity is None else self.sparsity


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    """What guided pruning predicts and chose for one layer.

    ``sparsity`` and ``breakeven`` are fractions of the layer's blocks (of its weights with 1x1
    blocks); ``at_request`` is the dense time over the sparse kernel's at the requested overall
    sparsity, at most ``max_sparsity`` of the layer (below 1: slower than dense). Times are
    seconds per model run.
    """

    tensor: str
    shape: tuple[int, int]
    runs: dict[int, int]
    kernel: str | None
    block: tuple[int, int] | None
    units: int
    breakeven: float | None
    removed: int
    dense_s: float
    pruned_s: float
    at_request: float | None
    note: str

    @property
    def sparsity(self) -> float:
        return self.removed / self.units

    @property
    def eligible(self) -> bool:
        return self.block is not None


@dataclass(frozen=True)
class GuidedPlan:
    """The allocation over the model: ``layers`` has every ``Linear``/``Conv2d`` product that
    ran, by tensor (``eligible`` ones were chosen and have a sparse kernel); times per model
    run, dense and as allocated."""

    layers: dict[str, LayerPlan]
    dense_s: float
    pruned_s: float
    batch: int
    cores: int

    @property
    def speedup(self) -> float:
        return self.dense_s / self.pruned_s

    def lines(self) -> list[str]:
        out = []
        for lp in self.layers.values():
            n, k = lp.shape
            ps = ", ".join(f"{p}" + (f" (x{c})" if c > 1 else "") for p, c in lp.runs.items())
            head = f"{lp.tensor} {n}x{k} at p={ps}: "
            if lp.block is None:
                out.append(f"{head}{lp.note}; predicted {_us(lp.dense_s)} dense")
                continue
            be = "never pays" if lp.breakeven is None else f"break-even {lp.breakeven:.1%}"
            req = "" if lp.at_request is None else f", {lp.at_request:.2f}x at the request"
            times = f"predicted {_us(lp.dense_s)} dense"
            if lp.removed:
                times += f" -> {_us(lp.pruned_s)} ({lp.dense_s / lp.pruned_s:.2f}x)"
            out.append(
                f"{head}{lp.kernel} {lp.block[0]}x{lp.block[1]} blocks, {be}{req}, allocated "
                f"{lp.sparsity:.1%}{lp.note}; {times}"
            )
        eligible = [lp for lp in self.layers.values() if lp.eligible]
        weights = sum(lp.shape[0] * lp.shape[1] for lp in eligible)
        gone = sum(lp.removed * lp.shape[0] * lp.shape[1] / lp.units for lp in eligible)
        out.append(
            f"predicted time of the products at batch {self.batch} on {self.cores} cores: "
            f"{_us(self.dense_s)} dense -> {_us(self.pruned_s)} ({self.speedup:.2f}x); "
            f"{gone / max(weights, 1):.2%} of the {weights:,} weights of the eligible "
            "layers removed"
        )
        return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} us"


def _kernel_blocks(cm: ModuleType) -> dict[str, tuple[tuple[int, int], ...]]:
    """The block shapes the compiler offers each sparse kernel."""
    from squeezer.passes.graph.sparsify_weights import CONV_BLOCKS

    return {"sparse_matmul": tuple(cm.BLOCKS), "sparse_conv2d": tuple(CONV_BLOCKS)}


def _curves(
    sites: dict[str, Site], chosen: list[str], settings: GuidedSettings, cm: ModuleType
) -> dict[str, Curve]:
    from tvm.target import Target

    target = Target({"kind": "llvm", "num-cores": settings.cores})
    margin = cm.MARGIN if settings.margin is None else settings.margin
    offered = _kernel_blocks(cm)
    out = {}
    for t in chosen:
        site = sites[t]
        dense = site.seconds(None, 0, settings.cores)
        allowed = [tuple(b) for b in settings.for_tensor(t).blocks]
        for b in allowed:
            if b not in offered["sparse_matmul"]:
                raise RecipeError(
                    f"blocks: the sparse kernels have no {b[0]}x{b[1]} blocks (for {t!r}); "
                    f"they take {', '.join(f'{r}x{c}' for r, c in cm.BLOCKS)}"
                )
        kernel_blocks = offered.get(site.kernel or "", ())
        usable = [b for b in allowed if b in kernel_blocks]
        if site.kernel is not None and not usable:
            reason = (
                f"{site.kernel} takes blocks {', '.join(f'{r}x{c}' for r, c in kernel_blocks)}, "
                f"none of 'blocks'"
            )
            site = replace(site, kernel=None, reason=reason)
        if site.kernel is None:
            out[t] = Curve(t, site, None, site.n * site.k, None, 0, dense, settings.cores)
            continue
        best = None
        for block in usable:
            units = -(-site.n // block[0]) * -(-site.k // block[1])
            cap = math.floor(settings.max_sparsity * units)
            floor = breakeven(site, block, units, margin, settings.cores, cm, target, kernel_blocks)
            c = Curve(
                t,
                site,
                block,
                units,
                floor if floor is not None and floor <= cap else None,
                cap,
                dense,
                settings.cores,
            )
            key = (c.floor is None, (c.floor or 0) / units, block[0] * block[1])
            if best is None or key < best[0]:
                best = (key, c)
        assert best is not None
        out[t] = best[1]
    return out


def plan_pruning(
    model: torch.nn.Module, layers: dict[str, Layer], sample: torch.Tensor, settings: GuidedSettings
) -> GuidedPlan:
    """The per-layer sparsities of guided pruning (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Runs once on ``sample`` (eval mode, no gradients) to find the layers' shapes.
    layers : dict of str to Layer
        The layers to prune, by tensor name (``layers``/``exclude`` applied).
    sample : torch.Tensor
        One input, ``(1, C, R, R)``.
    settings : GuidedSettings

    Raises
    ------
    RecipeError
        A chosen layer that did not run, an unsupported block shape, no eligible layer that can
        pay, a ``sparsity`` too small to bring any layer to break-even or too large for the
        paying layers at ``max_sparsity``, or a ``speedup`` beyond reach.
    """
    cm = _cost_model()
    sites = probe(model, sample, settings.batch)
    missing = [t for t in layers if t not in sites]
    if missing:
        raise RecipeError(
            f"layer {missing[0]!r} did not run on a sample input (unused?); "
            "leave it out with 'exclude'"
        )
    curves = _curves(sites, list(layers), settings, cm)
    others = sum(s.seconds(None, 0, settings.cores) for t, s in sites.items() if t not in curves)
    eligible = [c for c in curves.values() if c.block is not None]
    if not eligible:
        raise RecipeError(
            "no chosen layer has a sparse kernel: "
            + "; ".join(f"{c.tensor}: {c.site.reason}" for c in curves.values())
        )
    # Rates within rounding of each other (the same regime of the model) tie: the larger layer
    # joins first, as it can take more of the budget.
    paying = sorted(
        (c for c in eligible if c.floor is not None),
        key=lambda c: (-float(f"{c.rate():.1e}"), -c.dense),
    )
    if not paying:
        raise RecipeError(
            f"no layer pays for a sparse kernel at batch {settings.batch} up to max_sparsity "
            f"{settings.max_sparsity:.0%}: "
            + ", ".join(f"{c.tensor} ({c.site.n}x{c.site.k})" for c in eligible)
            + "; dense is predicted faster. Prune for size with another method"
        )
    weights = sum(c.weights for c in eligible)

    def total(removed: dict[str, int]) -> float:
        return others + sum(c.time(removed.get(c.tensor, 0)) for c in curves.values())

    if settings.speedup is not None:
        removed = for_speedup(paying, weights, total, settings.speedup, settings.max_sparsity)
    else:
        budget = round(settings.overall * weights)
        removed = for_budget(paying, budget, weights, settings.max_sparsity)
    request = (
        settings.overall
        if settings.speedup is None
        else (sum(removed.get(c.tensor, 0) * c.per_unit for c in eligible) / weights)
    )
    plans = {}
    for t, site in sites.items():  # every product, in the order the model ran them
        if t not in curves:
            note = site.reason or "not chosen ('layers'/'exclude')"
            dense_t = site.seconds(None, 0, settings.cores)
            plans[t] = LayerPlan(
                tensor=t,
                shape=(site.n, site.k),
                runs=dict(site.runs),
                kernel=None,
                block=None,
                units=site.n * site.k,
                breakeven=None,
                removed=0,
                dense_s=dense_t,
                pruned_s=dense_t,
                at_request=None,
                note=note,
            )
            continue
        c = curves[t]
        r = removed.get(t, 0)
        note = ""
        if c.block is not None and r == 0 and c.floor is not None:
            note = " (dense: the budget did not reach it)"
        elif c.block is not None and c.floor is None:
            note = " (dense)"
        at_request = None
        if c.block is not None:
            # capped: a layer is never pruned past max_sparsity, and the model predicts no
            # time at all for a layer with every block removed
            at_request = c.dense / c.sparse(min(round(request * c.units), c.cap))
        plans[t] = LayerPlan(
            tensor=t,
            shape=(c.site.n, c.site.k),
            runs=dict(c.site.runs),
            kernel=c.site.kernel,
            block=c.block,
            units=c.units,
            breakeven=None if c.floor is None else c.floor / c.units,
            removed=r,
            dense_s=c.dense,
            pruned_s=c.time(r),
            at_request=at_request,
            note=c.site.reason or note,
        )
    dense = others + sum(c.dense for c in curves.values())
    return GuidedPlan(plans, dense, total(removed), settings.batch, settings.cores)


# -- the method ----------------------------------------------------------------------------------


@register_method("guided")
class GuidedPruning(PruningMethod[GuidedSettings]):
    """Prune only the layers whose sparse kernel pays, as the performance model predicts
    (Park et al., 2017).

    Attributes
    ----------
    plan : GuidedPlan or None
        The allocation, set by ``prepare``.
    """

    Settings = GuidedSettings

    def __init__(self, settings: GuidedSettings) -> None:
        super().__init__(settings)
        self.plan: GuidedPlan | None = None

    def not_applicable(self, layer: Layer) -> str | None:
        if self.plan is not None and layer.tensor in self.plan.layers:  # what running it found
            lp = self.plan.layers[layer.tensor]
            return None if lp.eligible else lp.note
        batch = self.settings.batch
        if isinstance(layer.owner, torch.nn.Conv2d):
            return module_reason(layer.owner, batch)
        if layer.kind == "Conv2d":  # a graph's weight: stride and padding are checked as it runs
            return conv_reason(layer.groups, layer.weight.shape[2:], 1, 0, 1, batch)
        return None

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        layers, _ = self._select(model)
        side = self.settings.resolution or ctx.resolution
        sample = torch.from_numpy(ctx.data.x_train[:1])
        if sample.shape[-1] != side:
            sample = F.interpolate(sample, size=(side, side), mode="bilinear", align_corners=False)
        self.plan = plan_pruning(model, layers, sample, self.settings)
        for line in self.plan.lines():
            ctx.log(line)
        # The base hands each tensor's settings to group_scores/expand_units: the block the plan
        # chose travels as that tensor's ``blocks`` override.
        chosen = {t: {"blocks": [lp.block]} for t, lp in self.plan.layers.items() if lp.block}
        self.settings = self.settings.model_copy(
            update={"tensors": {**self.settings.tensors, **chosen}}
        )
        return super().prepare(model, ctx)

    def final(self, name: str) -> float:
        assert self.plan is not None, "final() before prepare"
        return self.plan.layers[name].sparsity

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.layers[n].weight.detach().abs() for n in names}

    def group_scores(self, score: torch.Tensor, settings: GuidedSettings) -> torch.Tensor:
        block = tuple(settings.blocks[0])
        if block == (1, 1):
            return score
        blocks = _blocked(score, block)  # type: ignore[arg-type]
        count = _blocked(torch.ones_like(score), block).sum(dim=(1, 3))  # type: ignore[arg-type]
        return (blocks.square().sum(dim=(1, 3)) / count).sqrt()

    def expand_units(
        self, keep: torch.Tensor, shape: torch.Size, settings: GuidedSettings
    ) -> torch.Tensor:
        r, c = settings.blocks[0]
        if (r, c) == (1, 1):
            return keep.reshape(shape)
        full = keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
        return full[: shape[0], : math.prod(shape[1:])].reshape(shape)

    def sparse_bytes(self, weight: torch.Tensor, name: str) -> int:
        block = tuple(self.settings.for_tensor(name).blocks[0])
        return csr_bytes(weight) if block == (1, 1) else bsr_bytes(weight, block)  # type: ignore[arg-type]
