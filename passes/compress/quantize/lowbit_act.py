"""Binarized layer inputs (XNOR-Net, BNN, HORQ): the graph pattern the compiler recognizes.

A ``BinaryInput`` computes a ``Linear`` or ``Conv2d`` layer on binarized inputs. With
``H(r) = torch.where(r >= 0, 1.0, -1.0)`` (sign with ``sign(0) := +1``, exactly this op once
squashed; the straight-through estimator of ``lowbit_base.sign_ste`` while training):

- unscaled (BNN): ``layer(H(x), W) + b``, the layer's own bias argument;
- scaled, order ``k`` (XNOR-Net for ``k = 1``, HORQ for 2 and 3): with ``r_0 = x``,
  ``beta_i = mean(|r_{i-1}|, channels, keepdim)`` and ``r_i = r_{i-1} - beta_i * H(r_{i-1})``::

      out = sum_i layer(H(r_{i-1}), W) * K_i + b

  where ``K_i = beta_i`` for ``Linear`` (the per-row mean, exact) and for ``Conv2d`` the box
  filter of XNOR-Net, ``K_i = avg_pool2d(beta_i, kernel, stride, padding)`` (zero padding, divisor
  ``kh * kw``): the per-pixel mean over channels averaged over each receptive field. The layer
  runs without bias (``b`` is added after the scale) and ``K_i`` stays float ops in the graph.

The binarizer is attached to an ``nn.Linear``/``nn.Conv2d`` module as its child
``input_binarizer``, the module's ``forward`` replaced by a call to it (its class, weights and
state_dict keys unchanged), or, in a ``torch.export`` graph (``load_exported``), as a submodule
called in place of the ``aten.conv2d``/``aten.linear`` node. It stays after ``squash``: it is
the layer's computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from ..prune.layers import Layer
from .lowbit_base import sign_ste

__all__ = ["BinaryInput", "ConvGeometry", "attach", "geometry", "unsupported"]

_OPS = {torch.ops.aten.linear.default: "Linear", torch.ops.aten.conv2d.default: "Conv2d"}


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding, dilation and groups of a convolution, and its kernel size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    pad: tuple[int, int, int, int]  # (left, right, top, bottom) zeros around the input


class BinaryInput(torch.nn.Module):
    """One layer computed on binarized inputs (see the module docstring for the formula).

    Parameters
    ----------
    kind : {"Linear", "Conv2d"}
    order : int
        Residual binarization order (1 for XNOR-Net and BNN).
    scaled : bool
        Multiply by the scale maps ``K_i`` (XNOR-Net, HORQ) or not (BNN, order 1 only).
    conv : ConvGeometry or None
        The convolution's geometry (``None`` for ``Linear``).

    Attributes
    ----------
    ste : bool
        Straight-through gradient while training; ``squash`` sets it ``False`` so that the
        graph holds the exact ``torch.where(x >= 0, 1.0, -1.0)``.
    """

    def __init__(self, kind: str, order: int, scaled: bool, conv: ConvGeometry | None) -> None:
        super().__init__()
        if order > 1 and not scaled:
            raise ValueError(f"residual order {order} needs scaled=True")
        if (kind == "Conv2d") != (conv is not None):
            raise ValueError(f"a {kind} binarizer needs conv geometry exactly when it is Conv2d")
        self.kind, self.order, self.scaled, self.conv = kind, order, scaled, conv
        self.ste = True

    def extra_repr(self) -> str:
        return f"{self.kind}, order={self.order}, scaled={self.scaled}, ste={self.ste}"

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        """``sign(x)`` in {-1, +1}, with the straight-through gradient while ``ste``."""
        if self.ste:
            return sign_ste(x)
        h = torch.where(x >= 0, 1.0, -1.0)  # float32: the exact op of the contract
        return h if h.dtype == x.dtype else h.to(x.dtype)

    def planes(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The binary inputs ``H(r_{i-1})`` with their per-position scales ``beta_i``."""
        if not self.scaled:
            return [(self.binarize(x), None)]
        dim = 1 if self.kind == "Conv2d" else -1
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        r = x
        for i in range(self.order):
            h = self.binarize(r)
            beta = r.abs().mean(dim=dim, keepdim=True)
            out.append((h, beta))
            if i + 1 < self.order:
                r = r - beta * h
        return out

    def scale_map(self, beta: torch.Tensor) -> torch.Tensor:
        """``K``: ``beta`` itself for ``Linear``, its box filter over each receptive field."""
        c = self.conv
        if c is None:
            return beta
        ph, pw = c.padding if isinstance(c.padding, tuple) else (-1, -1)
        if (pw, pw, ph, ph) == c.pad and 2 * ph <= c.kernel[0] and 2 * pw <= c.kernel[1]:
            return F.avg_pool2d(beta, c.kernel, c.stride, (ph, pw), count_include_pad=True)
        return F.avg_pool2d(F.pad(beta, c.pad), c.kernel, c.stride)

    def layer(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The float layer itself on ``x``."""
        c = self.conv
        if c is None:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not self.scaled:
            return self.layer(self.binarize(x), weight, bias)
        out: torch.Tensor | None = None
        for h, beta in self.planes(x):
            assert beta is not None
            y = self.layer(h, weight, None) * self.scale_map(beta)
            out = y if out is None else out + y
        assert out is not None
        if bias is None:
            return out
        return out + (bias[:, None, None] if self.conv is not None else bias)


class _BinarizedForward:
    """The ``forward`` of a layer with binarized inputs: its ``input_binarizer`` on its weights.

    An object rather than a bound method so that the model pickles (``torch.save``) as well as
    deep-copies (the copy's layer is the copied one).
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        binarizer = cast(BinaryInput, layer.input_binarizer)
        weight, bias = cast(torch.Tensor, layer.weight), cast(torch.Tensor | None, layer.bias)
        return binarizer(input, weight, bias)


def _pairs(value: object) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    seq = list(value)  # type: ignore[call-overload]
    return (int(seq[0]), int(seq[0])) if len(seq) == 1 else (int(seq[0]), int(seq[1]))


def _node(model: torch.nn.Module, layer: Layer) -> torch.fx.Node:
    assert isinstance(model, torch.fx.GraphModule)
    for node in model.graph.nodes:
        if node.op == "call_function" and node.target in _OPS and len(node.args) > 1:
            w = node.args[1]
            if isinstance(w, torch.fx.Node) and w.op == "get_attr" and w.target == layer.tensor:
                return node
    raise ValueError(f"{layer.tensor}: no aten.conv2d or aten.linear node reads this weight")


def _is_module(layer: Layer) -> bool:
    return isinstance(layer.owner, torch.nn.Linear | torch.nn.Conv2d) and layer.attr == "weight"


def geometry(model: torch.nn.Module, layer: Layer) -> ConvGeometry | None:
    """The geometry of ``layer`` if it is a convolution (a module or an exported-graph node)."""
    if layer.kind != "Conv2d":
        return None
    if _is_module(layer):
        m = layer.owner
        assert isinstance(m, torch.nn.Conv2d)
        padding = m.padding if isinstance(m.padding, str) else _pairs(m.padding)
        rev = m._reversed_padding_repeated_twice
        return ConvGeometry(
            _pairs(m.kernel_size), _pairs(m.stride), padding, _pairs(m.dilation), m.groups,
            (rev[0], rev[1], rev[2], rev[3]),
        )  # fmt: skip
    node = _node(model, layer)
    args = list(node.args) + [None, 1, 0, 1, 1][len(node.args) - 2 :]
    stride, (ph, pw) = _pairs(args[3]), _pairs(args[4])
    kernel = tuple(layer.weight.shape[2:4])
    groups = args[6]
    assert isinstance(groups, int)
    return ConvGeometry((kernel[0], kernel[1]), stride, (ph, pw), _pairs(args[5]), groups,
                        (pw, pw, ph, ph))  # fmt: skip


def unsupported(model: torch.nn.Module, layer: Layer, scaled: bool) -> str | None:
    """Why the inputs of ``layer`` cannot be binarized, or ``None``."""
    if _is_module(layer):
        m = layer.owner
        if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros":
            return f"padding_mode {m.padding_mode!r} (binarized inputs need zero padding)"
    elif not isinstance(model, torch.fx.GraphModule):
        return f"{type(layer.owner).__name__} is not an nn.Linear or nn.Conv2d module"
    c = geometry(model, layer)
    if scaled and c is not None and c.dilation != (1, 1):
        return f"dilation {c.dilation} (the scale map K is an undilated box filter)"
    if scaled and c is not None and c.groups != 1:
        return f"{c.groups} groups (the scale map K averages over all input channels)"
    return None


def attach(model: torch.nn.Module, layer: Layer, order: int, scaled: bool) -> BinaryInput:
    """Binarize the inputs of ``layer`` in ``model`` (see the module docstring); the binarizer."""
    binarizer = BinaryInput(layer.kind, order, scaled, geometry(model, layer))
    if _is_module(layer):
        owner = layer.owner
        owner.input_binarizer = binarizer
        owner.forward = _BinarizedForward(owner)  # type: ignore[method-assign]
        return binarizer
    assert isinstance(model, torch.fx.GraphModule)
    node = _node(model, layer)
    name = f"input_binarizer_{layer.name.replace('.', '_')}"
    model.add_submodule(name, binarizer)
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    with model.graph.inserting_before(node):
        call = model.graph.call_module(name, (node.args[0], node.args[1], bias))
    node.replace_all_uses_with(call)
    model.graph.erase_node(node)
    model.recompile()
    return binarizer
