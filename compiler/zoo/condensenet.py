"""CondenseNet (Huang et al., 2018): DenseNet with learned group convolutions.

Each 1x1 convolution is a *learned group convolution* (LGC): its output channels are split into
``groups`` groups (channel ``c`` in group ``c % groups``) and, during training, every group drops
the input channels whose weights have the smallest L1 norm, ``1/condense_factor`` of them per
condensing stage, until it keeps ``1/condense_factor`` of its inputs. The drops are masks over
the dense weight. ``CondenseNet.condense()`` then turns every LGC into its inference form: an
index-select that gathers each group's inputs, a standard group convolution and a channel
shuffle that restores the interleaved output order; its results equal the masked ones. The
classifier is condensed too: at the last stage it drops the ``fc_drop`` fraction of its input
features with the smallest weights, and ``condense()`` turns it into index-select + linear.

The full configuration is the paper's ImageNet model: growth (8, 16, 32, 64, 128), blocks of
(4, 6, 8, 10, 8) layers, G = C = 4, average pooling between blocks, full dense connectivity,
half of the classifier's inputs dropped: 4.8M parameters once condensed (Table 4 of the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import channel_shuffle, check_stem, init_weights

FULL: dict[str, Any] = {
    "width": 1.0,
    "growth": (8, 16, 32, 64, 128),
    "blocks": (4, 6, 8, 10, 8),
    "groups": 4,
    "condense_factor": 4,
    "bottleneck": 4,
    "fc_drop": 0.5,
    "stem": "imagenet",
}
SMALL: dict[str, Any] = {
    "width": 1.0,
    "growth": (8, 16),
    "blocks": (2, 2),
    "groups": 4,
    "condense_factor": 4,
    "bottleneck": 4,
    "fc_drop": 0.5,
    "stem": "small",
    "resolution": 8,
}
SMALL_EPOCHS = 12


class LearnedGroupConv(nn.Module):
    """Pre-activated (BN, ReLU) 1x1 conv whose inputs are pruned per output group by a mask."""

    def __init__(self, cin: int, cout: int, groups: int, condense_factor: int) -> None:
        super().__init__()
        if cout % groups:
            raise ValueError(f"LearnedGroupConv: {cout} outputs do not split into {groups} groups")
        self.groups, self.condense_factor = groups, condense_factor
        self.delta = cin // condense_factor
        self.norm = nn.BatchNorm2d(cin)
        self.weight = nn.Parameter(torch.empty(cout, cin, 1, 1))
        self.mask: torch.Tensor
        self.register_buffer("mask", torch.ones(cout, cin, 1, 1))

    @property
    def stages_left(self) -> int:
        """Dropping stages still to run before each group keeps ``1/condense_factor`` inputs."""
        if self.delta == 0:
            return 0
        kept = int(self.mask[0].sum())  # every row of a group, and every group, keeps as many
        return self.condense_factor - 1 - (self.weight.shape[1] - kept) // self.delta

    @torch.no_grad()
    def drop_stage(self) -> None:
        """Drop the ``cin // condense_factor`` weakest live inputs of every output group."""
        if self.stages_left <= 0:
            return
        norms = (self.weight * self.mask).abs().sum((2, 3))
        for g in range(self.groups):
            alive = self.mask[g, :, 0, 0] > 0
            score = torch.where(alive, norms[g :: self.groups].sum(0), torch.inf)
            weakest = torch.argsort(score, stable=True)[: self.delta]
            self.mask[g :: self.groups, weakest] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(self.norm(x)), self.weight * self.mask)


class CondensedGroupConv(nn.Module):
    """Inference form of a ``LearnedGroupConv``: index-select, group conv, channel shuffle."""

    def __init__(self, lgc: LearnedGroupConv) -> None:
        super().__init__()
        g = lgc.groups
        cout = lgc.weight.shape[0]
        self.groups = g
        self.norm = lgc.norm
        keep = [torch.nonzero(lgc.mask[i, :, 0, 0]).flatten() for i in range(g)]
        if len({len(k) for k in keep}) != 1:
            raise ValueError("CondensedGroupConv: groups keep different numbers of inputs")
        self.index: torch.Tensor
        self.register_buffer("index", torch.cat(keep))
        self.conv = nn.Conv2d(len(self.index), cout, 1, groups=g, bias=False)
        with torch.no_grad():
            # Conv output block i holds original channels i, i+g, i+2g, ...; the shuffle in
            # forward puts them back in place.
            rows = [lgc.weight[i::g][:, keep[i]] for i in range(g)]
            self.conv.weight.copy_(torch.cat(rows, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.index_select(F.relu(self.norm(x)), 1, self.index)
        return channel_shuffle(self.conv(x), self.groups)


class CondensingLinear(nn.Linear):
    """Linear layer whose ``drop_inputs`` masks out its weakest input features."""

    def __init__(self, cin: int, cout: int, drop_rate: float) -> None:
        super().__init__(cin, cout)
        self.drop = int(cin * drop_rate)
        self.mask: torch.Tensor
        self.register_buffer("mask", torch.ones(cin))

    @torch.no_grad()
    def drop_inputs(self) -> None:
        if self.drop and bool(self.mask.all()):
            weakest = torch.argsort(self.weight.abs().sum(0), stable=True)[: self.drop]
            self.mask[weakest] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class CondensedLinear(nn.Module):
    """Inference form of a ``CondensingLinear``: index-select, then a smaller linear."""

    def __init__(self, fc: CondensingLinear) -> None:
        super().__init__()
        self.index: torch.Tensor
        self.register_buffer("index", torch.nonzero(fc.mask).flatten())
        self.fc = nn.Linear(len(self.index), fc.out_features)
        with torch.no_grad():
            self.fc.weight.copy_(fc.weight[:, self.index])
            self.fc.bias.copy_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.index_select(x, 1, self.index))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, groups: int, condense_factor: int, bottleneck: int):
        super().__init__()
        self.conv1: nn.Module = LearnedGroupConv(cin, bottleneck * growth, groups, condense_factor)
        self.conv2 = nn.Sequential(
            nn.BatchNorm2d(bottleneck * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck * growth, growth, 3, padding=1, groups=groups, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv2(self.conv1(x))], 1)


class CondenseNet(nn.Module):
    def __init__(
        self,
        width: float,
        growth: Sequence[int],
        blocks: Sequence[int],
        groups: int,
        condense_factor: int,
        bottleneck: int,
        fc_drop: float,
        stem: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        check_stem(stem)
        if len(growth) != len(blocks):
            raise ValueError(f"knobs 'growth' {growth} and 'blocks' {blocks} differ in length")
        if groups < 1 or condense_factor < 1:
            raise ValueError("knobs 'groups' and 'condense_factor' of 'condensenet' must be >= 1")
        if not 0 <= fc_drop < 1:
            raise ValueError(f"knob 'fc_drop' of 'condensenet' must be in [0, 1), got {fc_drop}")
        # The 3x3 group conv needs its growth-wide output to split into `groups`.
        rates = [max(groups, round(k * width / groups) * groups) for k in growth]
        cin = 2 * rates[0]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, cin, 3, 2 if stem == "imagenet" else 1, 1, bias=False)
        ]
        for i, (k, n) in enumerate(zip(rates, blocks, strict=True)):
            if i > 0:
                layers.append(nn.AvgPool2d(2, 2))
            for _ in range(n):
                layers.append(DenseLayer(cin, k, groups, condense_factor, bottleneck))
                cin += k
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc: nn.Module = CondensingLinear(cin, num_classes, fc_drop)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, LearnedGroupConv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))

    def learned_convs(self) -> list[LearnedGroupConv]:
        """The learned group convolutions not condensed yet."""
        return [m for m in self.modules() if isinstance(m, LearnedGroupConv)]

    @property
    def stages_left(self) -> int:
        """Condensing stages still to run (0 once every group keeps its final inputs)."""
        return max((m.stages_left for m in self.learned_convs()), default=0)

    def condense_step(self) -> None:
        """Run one condensing stage: every learned group conv drops its weakest inputs."""
        for m in self.learned_convs():
            m.drop_stage()
        if self.stages_left == 0 and isinstance(self.fc, CondensingLinear):
            self.fc.drop_inputs()

    def condensing_schedule(self, epochs: int) -> Callable[[int, float, float], None]:
        """An ``on_epoch`` hook for ``squeezer.data.train`` that condenses during training.

        As in the paper, the ``condense_factor - 1`` stages are spread over the first half of
        the ``epochs``; the second half trains the final sparsity pattern.

        Parameters
        ----------
        epochs : int
            Number of training epochs the hook will see.

        Returns
        -------
        callable
            ``hook(epoch, loss, accuracy)``.
        """
        stages = self.stages_left
        at = [max(0, (s + 1) * epochs // (2 * stages) - 1) for s in range(stages)]

        def hook(epoch: int, loss: float, accuracy: float) -> None:
            for _ in range(at.count(epoch)):
                self.condense_step()

        return hook

    def condense(self) -> CondenseNet:
        """Finish the condensing stages, then swap every LGC for its inference form, in place.

        Returns
        -------
        CondenseNet
            ``self``; its forward equals the masked forward after the remaining stages.
        """
        while self.stages_left > 0:
            self.condense_step()
        if isinstance(self.fc, CondensingLinear):
            self.fc.drop_inputs()
            self.fc = CondensedLinear(self.fc)
        for layer in list(self.modules()):
            if isinstance(layer, DenseLayer) and isinstance(layer.conv1, LearnedGroupConv):
                layer.conv1 = CondensedGroupConv(layer.conv1)
        return self


def build(**knobs: Any) -> nn.Module:
    return CondenseNet(**knobs)
