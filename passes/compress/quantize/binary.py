"""Binary weights and activations: Binary-Weight-Networks and XNOR-Net (Rastegari, Ordonez,
Redmon and Farhadi 2016, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural
Networks", ECCV, arXiv:1603.05279) and Binarized Neural Networks (Courbariaux, Hubara, Soudry,
El-Yaniv and Bengio 2016, "Binarized Neural Networks: Training Deep Neural Networks with Weights
and Activations Constrained to +1 or -1", arXiv:1602.02830).

- ``bwn``: ``W ~ alpha * sign(W)`` with ``alpha = mean|W|`` per output filter (XNOR-Net eq. 6);
  activations float. The gradient is the paper's (section 3.1): autograd through
  ``alpha * sign_ste(W)`` gives ``1/n + alpha * 1{|W| <= 1}``.
- ``xnor``: the same weights and binary inputs ``sign(I)`` with the scale map ``K`` (section 3.2):
  ``conv(I, W) ~ (sign(I) * sign(W)) . K alpha``, ``K`` the box filter of ``mean_c |I|``
  (``lowbit_act``). The first and last layers stay float by default, as in the paper.
- ``bnn``: weights and inputs ``sign(.)`` without scales (batch norm after each layer does the
  scaling), the straight-through estimator with the hardtanh gradient ``1{|x| <= 1}`` (eq. 4), and
  the latent weights clipped to [-1, 1] before every training forward pass (section 1.2). By
  default the first layer has binary weights and float inputs (the image) and the last one is
  binary, as in the paper. Batch norm must train with it: in an exported graph
  (``load_exported``) it is frozen, which costs accuracy (``prepare`` warns).

A layer's input is binarized where it is read, so binarizing the output of a ReLU gives +1
everywhere: the models of these papers put batch norm (and hardtanh) before binary layers. When a
binarized input is non-negative on a training batch, ``prepare`` turns the model's ReLU modules
into Hardtanh (setting ``relu``; logged), and warns about any input still non-negative.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle

from ..base import CompressContext, register_method
from ..prune.layers import Layer
from ..prune.masks import dense_of
from .lowbit_base import WeightQuantizer, per_filter_mean_abs, sign, sign_ste
from .lowbit_method import BinaryInputSettings, LayerMode, LowbitMethod, LowbitSettings

__all__ = [
    "BinarizedNeuralNetworks",
    "BinaryWeight",
    "BinaryWeightNetworks",
    "BnnSettings",
    "BwnSettings",
    "XnorNet",
    "XnorSettings",
    "binarize",
]


def binarize(w: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """``alpha * sign(w)`` with ``alpha = mean|w|`` per output filter, or ``sign(w)`` unscaled."""
    return per_filter_mean_abs(w) * sign(w) if scaled else sign(w)


class BinaryWeight(WeightQuantizer):
    """The parametrization ``weight = alpha * sign(W)`` (or ``sign(W)``) with the STE gradient."""

    def __init__(self, scaled: bool) -> None:
        super().__init__()
        self.scaled = scaled

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return binarize(w, self.scaled)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = sign_ste(w)
        return per_filter_mean_abs(w) * s if self.scaled else s


class BwnSettings(LowbitSettings):
    """Settings of ``bwn``: those of ``LowbitSettings`` (every layer binarized by default)."""


@register_method("bwn")
class BinaryWeightNetworks(LowbitMethod[BwnSettings]):
    """Binary weights ``alpha * {-1, +1}`` per output filter, float activations."""

    Settings = BwnSettings

    def weight_quantizer(self, name: str, layer: Layer, settings: BwnSettings) -> BinaryWeight:
        return BinaryWeight(scaled=True)

    def stored_planes(self, name: str) -> tuple[int, int]:
        return 1, 1


class XnorSettings(BinaryInputSettings):
    """Settings of ``xnor``.

    Attributes
    ----------
    first, last : {"float", "weights", "binary"}
        Float by default (the paper keeps the first and last layers in full precision).
    layers, exclude, epochs, lr, ...
        As in ``LowbitSettings``.
    """


@register_method("xnor")
class XnorNet(LowbitMethod[XnorSettings]):
    """Binary weights with per-filter scales and binary inputs with the scale map ``K``."""

    Settings = XnorSettings

    def weight_quantizer(self, name: str, layer: Layer, settings: XnorSettings) -> BinaryWeight:
        return BinaryWeight(scaled=True)

    def input_spec(self, name: str, layer: Layer, settings: XnorSettings) -> tuple[int, bool]:
        return 1, True

    def stored_planes(self, name: str) -> tuple[int, int]:
        return 1, 1


class BnnSettings(BinaryInputSettings):
    """Settings of ``bnn``.

    Attributes
    ----------
    first, last : {"float", "weights", "binary"}
        ``weights`` and ``binary`` by default: the image input stays float, every weight is
        binary (the paper).
    layers, exclude, epochs, lr, ...
        As in ``LowbitSettings``.
    """

    first: LayerMode = "weights"
    last: LayerMode = "binary"


@register_method("bnn")
class BinarizedNeuralNetworks(LowbitMethod[BnnSettings]):
    """Weights and inputs in {-1, +1} without scales; latent weights clipped to [-1, 1]."""

    Settings = BnnSettings

    def __init__(self, settings: BnnSettings) -> None:
        super().__init__(settings)
        self.hook: RemovableHandle | None = None

    def weight_quantizer(self, name: str, layer: Layer, settings: BnnSettings) -> BinaryWeight:
        return BinaryWeight(scaled=False)

    def input_spec(self, name: str, layer: Layer, settings: BnnSettings) -> tuple[int, bool]:
        return 1, False

    def stored_planes(self, name: str) -> tuple[int, int]:
        return 1, 1  # the compiler keeps a (unit) scale per row

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        model = super().prepare(model, ctx)
        if isinstance(model, torch.fx.GraphModule) and any(
            n.target == torch.ops.aten.batch_norm.default for n in model.graph.nodes
        ):
            ctx.log(
                "warning: batch norm is frozen in an exported graph, and BNN's unscaled "
                "{-1, +1} layers need it to re-estimate its statistics: expect a lower accuracy "
                "than from the nn.Module (or use xnor/horq, whose scales keep the magnitudes)"
            )
        self.clip()
        self.hook = model.register_forward_pre_hook(self._clip_before_training)
        return model

    def clip(self) -> None:
        """Clip the latent weights to [-1, 1] (their signs, so the model, do not change)."""
        with torch.no_grad():
            for layer in self.layers.values():
                dense_of(layer.owner, layer.attr).clamp_(-1.0, 1.0)

    def _clip_before_training(self, model: torch.nn.Module, args: tuple[object, ...]) -> None:
        if model.training and torch.is_grad_enabled():
            self.clip()

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        return super().squash(model)
