"""Linear and Conv2d layers as the matrix products the compiler runs (``Site``).

``sparsify_weights`` turns a ``Linear`` with weight ``(out, in)`` into an ``out x in`` product
with ``p = batch`` columns (times the tokens of a 3-D input) and a 1x1 ``Conv2d`` (no padding,
any stride) into ``out x in`` with ``p = H * W`` of its output, both for ``sparse_matmul``; a
KxK ``Conv2d`` (stride 1 or 2, symmetric padding) runs the direct sparse convolution
``sparse_conv2d``, priced as its im2col product ``out x in * kh * kw`` with ``p = H * W``.
Convolutions need groups 1, no dilation and batch-1 inputs; they run once per input. ``probe``
runs the model once on a sample input to find these shapes; a layer without a sparse kernel is
listed with the reason, so that its dense time still counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from squeezer.errors import RecipeError

from .layers import candidates

__all__ = ["Site", "conv_kernel", "conv_reason", "module_reason", "probe"]

_CONV = torch.ops.aten.conv2d.default
_LINEAR = torch.ops.aten.linear.default


@dataclass
class Site:
    """One layer as a product: ``n x k`` weight, ``runs[p]`` products with ``p`` columns per
    model run; ``kernel`` the sparse kernel that would run it (``sparse_matmul`` or
    ``sparse_conv2d``), or None and the ``reason``."""

    n: int
    k: int
    runs: dict[int, int] = field(default_factory=dict)
    kernel: str | None = None
    reason: str | None = None

    def seconds(self, block: tuple[int, int] | None, nnzb: int, cores: int) -> float:
        """Predicted time of all its runs: dense (``block`` None) or sparse with ``nnzb``
        blocks, by the compiler's performance model."""
        from squeezer.schedules.sparse_cost import estimate_seconds  # loads TVM: on use

        return sum(
            calls * estimate_seconds(self.n, self.k, p, block, nnzb, cores)
            for p, calls in self.runs.items()
        )


def _pair(v: Any) -> list[int]:
    return [int(x) for x in v] if isinstance(v, Sequence) else [int(v)] * 2


def conv_kernel(kernel: Sequence[int]) -> str:
    """The sparse kernel that runs a convolution of this kernel size (when one does)."""
    return "sparse_matmul" if tuple(int(x) for x in kernel) == (1, 1) else "sparse_conv2d"


def conv_reason(
    groups: int, kernel: Sequence[int], stride: Any, padding: Any, dilation: Any, batch: int
) -> str | None:
    """Why ``sparsify_weights`` leaves a convolution of this geometry dense, or None."""
    kh, kw = (int(x) for x in kernel)
    if groups != 1:
        return "a grouped convolution has no sparse kernel"
    if any(d != 1 for d in _pair(dilation)):
        return "a dilated convolution has no sparse kernel"
    if batch != 1:
        return "sparsify_weights rewrites convolutions of batch-1 inputs only"
    if (kh, kw) == (1, 1):
        if not isinstance(padding, str) and any(_pair(padding)):
            return "a padded 1x1 convolution has no sparse kernel"
        return None
    sh, sw = _pair(stride)
    if sh != sw or sh not in (1, 2):
        return f"a {kh}x{kw} convolution of stride {sh}x{sw} has no sparse kernel (1 or 2)"
    if padding == "same" and (kh % 2 == 0 or kw % 2 == 0):
        return f"a {kh}x{kw} convolution padded 'same' is padded unevenly: no sparse kernel"
    return None


def module_reason(m: torch.nn.Module, batch: int) -> str | None:
    """``conv_reason`` of a ``Conv2d`` module; None for a ``Linear``."""
    if not isinstance(m, torch.nn.Conv2d):
        return None
    return conv_reason(m.groups, m.kernel_size, m.stride, m.padding, m.dilation, batch)


def _module_geometry(m: torch.nn.Module) -> tuple[Any, ...] | None:
    if isinstance(m, torch.nn.Conv2d):
        return (m.groups, m.kernel_size, m.stride, m.padding, m.dilation)
    return None


class _Probe(torch.fx.Interpreter):
    """Runs a ``torch.export`` graph, handing each ``aten.linear``/``aten.conv2d`` to ``seen``."""

    def __init__(self, gm: torch.fx.GraphModule, seen: Callable[..., None]) -> None:
        super().__init__(gm)
        self.seen = seen

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.op != "call_function" or n.target not in (_CONV, _LINEAR) or len(n.args) < 2:
            return out
        weight = n.args[1]
        if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
            return out
        w = self.env[weight]
        geometry = None
        if n.target is _CONV:
            a: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            a.update(zip(names, n.args, strict=False))
            a.update(n.kwargs)
            geometry = (int(a["groups"]), w.shape[2:], a["stride"], a["padding"], a["dilation"])
        x = self.env[n.args[0]]  # type: ignore[index]
        self.seen(str(weight.target), tuple(w.shape), x, out, geometry)
        return out


def probe(model: torch.nn.Module, sample: torch.Tensor, batch: int) -> dict[str, Site]:
    """Every ``Linear``/``Conv2d`` that ran on ``sample`` (one input) as a ``Site``, by tensor,
    in the order they ran, for a deployment at ``batch`` inputs per run.

    The model runs in eval mode without gradients (BatchNorm statistics untouched).
    """
    sites: dict[str, Site] = {}

    def seen(
        tensor: str, shape: tuple[int, ...], x: torch.Tensor, out: torch.Tensor, geometry: Any
    ) -> None:
        if geometry is None:  # linear: p is the batch times the tokens of one input
            n, k, p, calls = shape[0], shape[1], batch * (x.numel() // shape[1]), 1
            kernel, reason = "sparse_matmul", None
        else:
            n, k = shape[0], math.prod(shape[1:])
            p = out.shape[-1] * out.shape[-2]
            calls = batch * (out.shape[0] if out.dim() == 4 else 1)
            groups, size, stride, padding, dilation = geometry
            kernel = conv_kernel(size)
            reason = conv_reason(groups, size, stride, padding, dilation, batch)
        site = sites.setdefault(
            tensor, Site(n, k, kernel=None if reason else kernel, reason=reason)
        )
        site.runs[p] = site.runs.get(p, 0) + calls

    hooks = [
        lay.owner.register_forward_hook(
            lambda m, args, out, t=lay.tensor: seen(
                t, tuple(m.weight.shape), args[0], out, _module_geometry(m)
            )
        )
        for lay in candidates(model).values()
        if isinstance(lay.owner, torch.nn.Linear | torch.nn.Conv2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, torch.fx.GraphModule):
                _Probe(model, seen).run(sample)
            else:
                model(sample)
    except (RuntimeError, ValueError, TypeError) as err:
        shape = "x".join(map(str, sample.shape))
        why = f"{type(err).__name__}: {err}".splitlines()[0]
        raise RecipeError(
            f"the model does not run on a {shape} sample to measure its layers "
            f"({why}); set 'resolution' to the input side it takes"
        ) from err
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sites
