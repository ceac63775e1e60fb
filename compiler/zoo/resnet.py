"""ResNet-18 (He et al., 2016): plain basic blocks, two 3x3 convs and an identity shortcut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, conv_bn, init_weights

FULL: dict[str, Any] = {"width": 1.0, "blocks": (2, 2, 2, 2), "stem": "imagenet"}
SMALL: dict[str, Any] = {"width": 0.25, "blocks": (1, 1, 1), "stem": "small", "resolution": 8}
SMALL_EPOCHS = 8


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, width: float, blocks: Sequence[int], stem: str, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        check_stem(stem)
        base = max(1, round(64 * width))
        if stem == "imagenet":
            self.stem = nn.Sequential(conv_bn(in_channels, base, 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, base, 3)
        layers: list[nn.Module] = []
        cin = base
        for i, n in enumerate(blocks):
            cout = base * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return ResNet(**knobs)
