"""The models and method rows of ``squeezer bench quant``.

Every row is a recipe as a user would write it, with the settings and training budgets that the
accuracy tests of ``tests/test_quantize_*.py`` found to work on the digits: post-training int8
(min-max, percentile and KL calibration) and the dynamic tree 8-bit weights without training,
the other methods with a few epochs of quantization-aware training.

The MLP puts batch norm and hardtanh before every hidden layer, as the BNN and XNOR-Net papers
do: a binarized input read after a ReLU is +1 everywhere (``sign`` of a non-negative tensor), so
on ReLU networks such as the zoo CNNs the methods that binarize inputs (``xnor``, ``bnn``,
``horq``) lose most of their accuracy, and their rows say so (the method logs a warning per
layer, kept in the row).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from squeezer.bench_prune_cases import ModelCase

MLP_HIDDEN = (256, 256)
MLP_EPOCHS = 30  # batch norm + hardtanh trains slower than the ReLU MLP of bench prune
ZOO_EPOCHS = 20  # as bench prune: past the zoo's own epochs, so QAT epochs add no free accuracy


@dataclass(frozen=True)
class QuantModelCase(ModelCase):
    """A digits model: ``mlp`` (batch norm and hardtanh before each hidden layer's output is
    read) or a small zoo model, trained ``epochs`` before quantization."""

    def build(self):
        """The untrained model, seeded."""
        import torch

        if self.is_zoo:
            return super().build()
        torch.manual_seed(0)
        widths = (64, *MLP_HIDDEN)
        mods: list[torch.nn.Module] = [torch.nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            mods += [torch.nn.Linear(a, b), torch.nn.BatchNorm1d(b), torch.nn.Hardtanh()]
        mods.append(torch.nn.Linear(widths[-1], 10))
        return torch.nn.Sequential(*mods).eval()

    @property
    def description(self) -> str:
        if self.is_zoo:
            return super().description
        return "MLP " + "-".join(str(w) for w in (64, *MLP_HIDDEN, 10)) + ", batch norm + hardtanh"


@dataclass(frozen=True)
class QuantMethodCase:
    """One row per model: ``recipe`` (the method entry first).

    ``weights`` and ``activations`` are the bits the quantized layers compute with, as printed
    (``8``, ``4``, ``1``, ``2x1`` for two residual binary planes, ``32`` for float; the label
    names the format: ternary, powers of two, the dynamic tree code). ``ptq``: no training
    after quantization (the goal's int8 rows).
    """

    label: str
    recipe: tuple[dict[str, Any], ...]
    weights: str
    activations: str
    ptq: bool = False

    @property
    def method(self) -> str:
        return str(self.recipe[0]["method"])

    def recipe_for(self, model: ModelCase) -> list[dict[str, Any]]:
        """A copy of the recipe (the same for every model today)."""
        return copy.deepcopy(list(self.recipe))


INT8_MINMAX = QuantMethodCase("int8 ptq minmax", ({"method": "int8", "calibration": "minmax"},),
                              "8", "8", ptq=True)
INT8_PERCENTILE = QuantMethodCase(
    "int8 ptq percentile", ({"method": "int8", "calibration": "percentile"},), "8", "8", ptq=True)
INT8_KL = QuantMethodCase("int8 ptq kl", ({"method": "int8", "calibration": "kl"},), "8", "8",
                          ptq=True)
INT8_QAT = QuantMethodCase("int8 qat", ({"method": "int8", "epochs": 3},), "8", "8")
INT4_QAT = QuantMethodCase("int4 qat g32", ({"method": "int4", "group_size": 32, "epochs": 3},),
                           "4", "8")
DYNAMIC8 = QuantMethodCase(
    "dynamic8 (row)", ({"method": "dynamic8", "tensors": {"*": {"granularity": "row"}}},),
    "8", "32")
TWN = QuantMethodCase("twn", ({"method": "twn", "epochs": 4},), "2", "32")
BWN = QuantMethodCase("bwn", ({"method": "bwn", "epochs": 4},), "1", "32")
XNOR = QuantMethodCase("xnor", ({"method": "xnor", "epochs": 3},), "1", "1")
BNN = QuantMethodCase("bnn", ({"method": "bnn", "epochs": 3},), "1", "1")
HORQ2 = QuantMethodCase("horq order 2", ({"method": "horq", "order": 2, "epochs": 3},), "2x1",
                        "2x1")
INQ5 = QuantMethodCase("inq 5-bit", ({"method": "inq", "bits": 5, "epochs": 6},), "5", "32")

ALL_METHODS = (INT8_MINMAX, INT8_PERCENTILE, INT8_KL, INT8_QAT, INT4_QAT, DYNAMIC8, TWN, BWN,
               XNOR, BNN, HORQ2, INQ5)


@dataclass(frozen=True)
class Suite:
    models: tuple[QuantModelCase, ...]
    methods: tuple[QuantMethodCase, ...]


def full_suite() -> Suite:
    """The MLP and a digits-size zoo CNN, every method."""
    models = (QuantModelCase("mlp", MLP_EPOCHS), QuantModelCase("resnet18", ZOO_EPOCHS))
    return Suite(models, ALL_METHODS)


def quick_suite() -> Suite:
    """The MLP with int8 PTQ (min-max), TWN and XNOR-Net, for tests."""
    return Suite((QuantModelCase("mlp", MLP_EPOCHS),), (INT8_MINMAX, TWN, XNOR))
