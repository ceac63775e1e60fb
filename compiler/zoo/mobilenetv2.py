"""MobileNetV2 (Sandler et al., 2018): inverted residuals with linear bottlenecks and ReLU6."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, conv_bn, init_weights, make_divisible

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
IMAGENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip

FULL: dict[str, Any] = {
    "width": 1.0,
    "stages": IMAGENET_STAGES,
    "last_channels": 1280,
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 0.5,
    "stages": ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
    "last_channels": 128,
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 10


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, 1, act=None),  # linear bottleneck: no activation
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(
        self,
        width: float,
        stages: Sequence[tuple[int, int, int, int]],
        last_channels: int,
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        cin = make_divisible(32 * width)
        self.stem = conv_bn(in_channels, cin, 3, 2 if stem == "imagenet" else 1, act=nn.ReLU6)
        blocks: list[nn.Module] = []
        for t, c, n, s in stages:
            cout = make_divisible(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        # The paper keeps the last layer at 1280 for width < 1 and only widens it above 1.
        last = make_divisible(last_channels * max(1.0, width))
        blocks.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*blocks)
        self.classifier = Classifier(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return MobileNetV2(**knobs)
