"""MobileNet v1 (Howard et al., 2017): a stack of depthwise separable convolutions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, conv_bn, init_weights, make_divisible

# (output channels, stride) of each depthwise separable layer, Table 1 of the paper.
IMAGENET_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

FULL: dict[str, Any] = {"width": 1.0, "layers": IMAGENET_LAYERS, "stem": "imagenet"}
SMALL: dict[str, Any] = {
    "width": 0.5,
    "layers": ((64, 1), (128, 2), (128, 1), (256, 2)),
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 10


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""
    return nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1))


class MobileNet(nn.Module):
    def __init__(
        self,
        width: float,
        layers: Sequence[tuple[int, int]],
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        cin = make_divisible(32 * width)
        self.stem = conv_bn(in_channels, cin, 3, 2 if stem == "imagenet" else 1)
        blocks: list[nn.Module] = []
        for channels, stride in layers:
            cout = make_divisible(channels * width)
            blocks.append(depthwise_separable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return MobileNet(**knobs)
