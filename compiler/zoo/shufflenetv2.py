"""ShuffleNet V2 (Ma et al., 2018): channel split, equal-width branches, concat and shuffle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, channel_shuffle, check_stem, conv_bn, init_weights

# Output channels of stages 2-4 and of conv5 for the paper's widths, Table 5 (conv5 is the
# `last_channels` knob: pass 2048 with width 2.0 for the paper's 2x model).
PAPER_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}

FULL: dict[str, Any] = {
    "width": 1.0,
    "repeats": (4, 8, 4),
    "last_channels": 1024,
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 0.5,
    "repeats": (2, 2),
    "last_channels": 128,
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 10


def stage_channels(width: float) -> tuple[int, int, int]:
    """The paper's table where it has an entry; elsewhere 116 * width, rounded to even."""
    if width in PAPER_CHANNELS:
        return PAPER_CHANNELS[width][:3]  # type: ignore[return-value]
    c = max(2, round(116 * width / 2) * 2)
    return (c, 2 * c, 4 * c)


class ShuffleV2Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.left: nn.Module = nn.Sequential(
                conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, half, 1)
            )
            branch_in = cin
        else:
            self.left = nn.Identity()
            branch_in = half
        self.right = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat([self.left(x), self.right(x)], 1)
        else:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        width: float,
        repeats: Sequence[int],
        last_channels: int,
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if not 1 <= len(repeats) <= 3:
            raise ValueError(f"knob 'repeats' of 'shufflenetv2' needs 1 to 3 stages, got {repeats}")
        cin = 24
        if stem == "imagenet":
            self.stem = nn.Sequential(conv_bn(in_channels, cin, 3, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, cin, 3)
        units: list[nn.Module] = []
        for cout, n in zip(stage_channels(width), repeats, strict=False):
            for i in range(n):
                units.append(ShuffleV2Unit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        units.append(conv_bn(cin, last_channels, 1))
        self.features = nn.Sequential(*units)
        self.classifier = Classifier(last_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return ShuffleNetV2(**knobs)
