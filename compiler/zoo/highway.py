"""Convolutional Highway Network (Srivastava et al., 2015).

Every highway layer computes ``y = H(x) * T(x) + x * (1 - T(x))`` with a 3x3 conv + BN + ReLU as
the transform ``H`` and a sigmoid 3x3 conv as the transform gate ``T``, whose bias starts negative
so that early training carries ``x`` through. Stages of highway layers are joined by plain
stride-2 convs that change the width, as in the paper's convolutional networks.

The paper has no ImageNet model; the full configuration mirrors ResNet-18's stem, widths and
depth (64-512 channels, 2 highway layers per stage) with highway layers in place of residual ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, check_stem, conv_bn, init_weights

FULL: dict[str, Any] = {
    "width": 1.0,
    "channels": (64, 128, 256, 512),
    "blocks": (2, 2, 2, 2),
    "gate_bias": -2.0,
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 0.25,
    "channels": (64, 128),
    "blocks": (2, 2),
    "gate_bias": -1.0,
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 8


class HighwayLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.transform = conv_bn(channels, channels, 3)
        self.gate = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        return self.transform(x) * t + x * (1.0 - t)


class HighwayNet(nn.Module):
    def __init__(
        self,
        width: float,
        channels: Sequence[int],
        blocks: Sequence[int],
        gate_bias: float,
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if len(channels) != len(blocks):
            raise ValueError(f"knobs 'channels' {channels} and 'blocks' {blocks} differ in length")
        widths = [max(1, round(c * width)) for c in channels]
        cin = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(conv_bn(in_channels, cin, 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, cin, 3)
        layers: list[nn.Module] = []
        for i, (c, n) in enumerate(zip(widths, blocks, strict=True)):
            if i > 0:
                layers.append(conv_bn(cin, c, 3, 2))
                cin = c
            layers += [HighwayLayer(c) for _ in range(n)]
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, HighwayLayer):
                nn.init.constant_(m.gate.bias, gate_bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return HighwayNet(**knobs)
