"""ShuffleNet v1 (Zhang et al., 2018): pointwise group convolutions and channel shuffle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import Classifier, channel_shuffle, check_stem, conv_bn, init_weights

# Output channels of stages 2-4 at width 1.0 for each number of groups, Table 1 of the paper.
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}

FULL: dict[str, Any] = {"width": 1.0, "groups": 3, "repeats": (4, 8, 4), "stem": "imagenet"}
SMALL: dict[str, Any] = {
    "width": 0.25,
    "groups": 3,
    "repeats": (2, 2),
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 10


def _round(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


class ShuffleUnit(nn.Module):
    """Bottleneck unit: 1x1 GConv, shuffle, 3x3 DWConv, 1x1 GConv; add (stride 1) or concat."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout
        self.groups = first_groups
        self.reduce = conv_bn(cin, mid, 1, groups=first_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = conv_bn(mid, branch_out, 1, groups=groups, act=None)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reduce(x)
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), out], 1))
        return self.relu(x + out)


class ShuffleNet(nn.Module):
    def __init__(
        self,
        width: float,
        groups: int,
        repeats: Sequence[int],
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if groups not in STAGE_CHANNELS:
            raise ValueError(
                f"knob 'groups' of 'shufflenet' must be one of {sorted(STAGE_CHANNELS)}, "
                f"got {groups!r}"
            )
        if not 1 <= len(repeats) <= 3:
            raise ValueError(f"knob 'repeats' of 'shufflenet' needs 1 to 3 stages, got {repeats}")
        # Every channel count must split evenly into groups, also after the stride-2 concat
        # and the 4x bottleneck reduction.
        cin = _round(24 * width, groups)
        if stem == "imagenet":
            self.stem = nn.Sequential(conv_bn(in_channels, cin, 3, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, cin, 3)
        units: list[nn.Module] = []
        for stage, n in enumerate(repeats):
            cout = _round(STAGE_CHANNELS[groups][stage] * width, 4 * groups)
            for i in range(n):
                # The paper does not group the first pointwise conv: its input is only 24 wide.
                first_groups = 1 if stage == 0 and i == 0 else groups
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups, first_groups))
                cin = cout
        self.features = nn.Sequential(*units)
        self.classifier = Classifier(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stem(x)))


def build(**knobs: Any) -> nn.Module:
    return ShuffleNet(**knobs)
