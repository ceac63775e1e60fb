"""ResNeXt (Xie et al., 2017): aggregated residual transformations as grouped 3x3 convs.

The full configuration is ResNeXt-50 (32x4d): cardinality 32, bottleneck width 4 per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, conv_bn, init_weights

FULL: dict[str, Any] = {
    "width": 1.0,
    "cardinality": 32,
    "base_width": 4,
    "blocks": (3, 4, 6, 3),
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 0.25,
    "cardinality": 8,
    "base_width": 8,
    "blocks": (1, 1),
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 8


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped conv (``cardinality`` paths), 1x1 expand, identity shortcut."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, cardinality: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, inner, 1),
            conv_bn(inner, inner, 3, stride, groups=cardinality),
            conv_bn(inner, cout, 1, act=None),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(
        self,
        width: float,
        cardinality: int,
        base_width: int,
        blocks: Sequence[int],
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if cardinality < 1:
            raise ValueError(f"knob 'cardinality' of 'resnext' must be >= 1, got {cardinality}")
        base = max(1, round(64 * width))
        if stem == "imagenet":
            self.stem = nn.Sequential(conv_bn(in_channels, base, 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, base, 3)
        layers: list[nn.Module] = []
        cin = base
        for i, n in enumerate(blocks):
            planes = base * 2**i
            # Width per path d = base_width at 64 planes (Table 1: 32x4d -> 128 inner channels).
            inner = cardinality * max(1, int(planes * base_width / 64))
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(Bottleneck(cin, inner, 4 * planes, stride, cardinality))
                cin = 4 * planes
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return ResNeXt(**knobs)
