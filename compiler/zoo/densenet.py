"""DenseNet-BC (Huang et al., 2017): each layer sees the concatenation of all earlier maps.

The full configuration is DenseNet-121: growth rate 32, blocks of (6, 12, 24, 16) layers,
bottleneck 4k, compression 0.5 in the transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, init_weights

FULL: dict[str, Any] = {
    "width": 1.0,
    "growth_rate": 32,
    "blocks": (6, 12, 24, 16),
    "bottleneck": 4,
    "compression": 0.5,
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 1.0,
    "growth_rate": 8,
    "blocks": (3, 3),
    "bottleneck": 4,
    "compression": 0.5,
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 10


def bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Pre-activation conv: BN, ReLU, then conv."""
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
    )


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            bn_relu_conv(cin, bottleneck * growth, 1), bn_relu_conv(bottleneck * growth, growth, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(
        self,
        width: float,
        growth_rate: int,
        blocks: Sequence[int],
        bottleneck: int,
        compression: float,
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if not 0 < compression <= 1:
            raise ValueError(
                f"knob 'compression' of 'densenet' must be in (0, 1], got {compression}"
            )
        growth = max(1, round(growth_rate * width))
        cin = 2 * growth
        layers: list[nn.Module] = []
        if stem == "imagenet":
            layers += [
                nn.Conv2d(in_channels, cin, 7, 2, 3, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        else:
            layers.append(nn.Conv2d(in_channels, cin, 3, padding=1, bias=False))
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(cin, growth, bottleneck))
                cin += growth
            if i < len(blocks) - 1:
                cout = int(cin * compression)
                layers += [bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2, 2)]
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(**knobs: Any) -> nn.Module:
    return DenseNet(**knobs)
