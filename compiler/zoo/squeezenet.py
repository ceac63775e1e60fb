"""SqueezeNet v1.1 (Iandola et al., 2016): fire modules, squeeze 1x1 then expand 1x1 + 3x3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import check_stem

# (squeeze, expand) channels per fire module, grouped into stages separated by 3x3/2 max pools;
# the v1.1 layout from the SqueezeNet repository.
V11_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((16, 64), (16, 64)),
    ((32, 128), (32, 128)),
    ((48, 192), (48, 192), (64, 256), (64, 256)),
)

FULL: dict[str, Any] = {"width": 1.0, "stages": V11_STAGES, "stem": "imagenet"}
SMALL: dict[str, Any] = {"width": 0.5, "stages": V11_STAGES[:2], "stem": "small", "resolution": 8}
SMALL_EPOCHS = 20


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(s)), self.relu(self.expand3x3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(
        self,
        width: float,
        stages: Sequence[Sequence[tuple[int, int]]],
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        cin = max(1, round(64 * width))
        layers: list[nn.Module] = []
        if stem == "imagenet":
            layers += [nn.Conv2d(in_channels, cin, 3, 2), nn.ReLU(inplace=True)]
        else:
            layers += [nn.Conv2d(in_channels, cin, 3, padding=1), nn.ReLU(inplace=True)]
        for i, stage in enumerate(stages):
            if stem == "imagenet" or i > 0:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            for squeeze, expand in stage:
                s, e = max(1, round(squeeze * width)), max(1, round(expand * width))
                layers.append(Fire(cin, s, e))
                cin = 2 * e
        self.features = nn.Sequential(*layers)
        # No linear layer: a 1x1 conv makes one map per class, then a global average.
        self.final_conv = nn.Conv2d(cin, num_classes, 1)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]
        # Class maps start positive: with the paper's zero bias the ReLU before the pooling
        # killed 8 of 10 classes early in digits training (Adam), and a dead class never recovers.
        nn.init.normal_(self.final_conv.weight, 0.0, 0.01)
        nn.init.constant_(self.final_conv.bias, 1.0)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(self.features(x)))


def build(**knobs: Any) -> nn.Module:
    return SqueezeNet(**knobs)
