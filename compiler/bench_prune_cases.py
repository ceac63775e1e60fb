"""The models and method rows of ``squeezer bench prune``, and how the achieved sparsity is read.

Every row is a recipe as a user would write it: the pruning method with its settings, then (for
the one-shot methods that prune without training) a ``finetune`` entry. Settings follow the
accuracy tests of ``tests/test_prune*.py`` with one budget of about eight fine-tuning epochs per
row. On the zoo CNNs the stem (a 3x3 convolution of the one-channel image: nine weights per
filter) stays dense, as Han et al. find the first layer the most sensitive; depthwise
convolutions stay dense by default (no sparse kernel).

``guided`` asks for what its plan can pay for: the sparsity is over the layers with a sparse
kernel, and on the digits-size CNNs most of their weights sit in layers whose kernel never pays
at batch 1, so their request is lower than 80% (an 80% request is refused with the numbers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

MLP_HIDDEN = (512, 256)
MLP_EPOCHS = 20
ZOO_EPOCHS = 20  # past the zoo's own epochs: the fine-tuning epochs then add no free accuracy
STEM = ["stem.0"]


@dataclass(frozen=True)
class ModelCase:
    """A digits model: ``mlp`` or a small zoo model, trained ``epochs`` before pruning."""

    name: str
    epochs: int

    @property
    def is_zoo(self) -> bool:
        return self.name != "mlp"

    def build(self):
        """The untrained model, seeded."""
        import torch

        if self.is_zoo:
            from squeezer import zoo

            return zoo.create(self.name, "small")
        torch.manual_seed(0)
        widths = (64, *MLP_HIDDEN, 10)
        mods: list[torch.nn.Module] = [torch.nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*mods[:-1]).eval()

    @property
    def description(self) -> str:
        if self.is_zoo:
            return f"zoo {self.name}, size small"
        return "MLP " + "-".join(str(w) for w in (64, *MLP_HIDDEN, 10)) + ", ReLU"


@dataclass(frozen=True)
class MethodCase:
    """One row per model: ``recipe`` (method entry first) asking for ``requested`` sparsity.

    ``unit`` is ``weights``, or ``neurons`` for ``datafree`` (its sparsity is the share of
    neurons removed). ``zoo`` holds extra fields of the method entry on the zoo CNNs,
    ``per_model`` fields by model name; ``models`` limits the row to those models (empty:
    every model of the suite).
    """

    label: str
    recipe: tuple[dict[str, Any], ...]
    requested: float
    unit: str = "weights"
    zoo: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: tuple[str, ...] = ()

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models

    def recipe_for(self, model: ModelCase) -> list[dict[str, Any]]:
        entries = copy.deepcopy(list(self.recipe))
        extra = {**(self.zoo if model.is_zoo else {}), **self.per_model.get(model.name, {})}
        entries[0].update(extra)
        return entries

    def requested_for(self, model: ModelCase) -> float:
        return float(self.per_model.get(model.name, {}).get("sparsity", self.requested))


def _finetune(epochs: int) -> dict[str, Any]:
    return {"method": "finetune", "epochs": epochs}


MAGNITUDE = MethodCase("magnitude", ({"method": "magnitude", "sparsity": 0.8, "epochs": 8},),
                       0.8, zoo={"exclude": STEM})
NM_2_4 = MethodCase("nm 2:4", ({"method": "nm", "n": 2, "m": 4, "epochs": 8},), 0.5)
NM_1_4 = MethodCase("nm 1:4", ({"method": "nm", "n": 1, "m": 4, "epochs": 8},), 0.75)
BLOCK = MethodCase("block 4x4",
                   ({"method": "block", "block": [4, 4], "sparsity": 0.8, "epochs": 8},),
                   0.8, zoo={"exclude": STEM})
DNS = MethodCase("dns", ({"method": "dns", "sparsity": 0.8, "epochs": 8},), 0.8,
                 zoo={"exclude": STEM})
OBD = MethodCase("obd (layer-wise)",
                 ({"method": "obd", "sparsity": 0.8, "scope": "layer", "epochs": 0},
                  _finetune(8)), 0.8, zoo={"exclude": STEM})
OBS = MethodCase("obs (iterative)",
                 ({"method": "obs", "sparsity": 0.8, "schedule": "iterative", "steps": 4,
                   "epochs": 8},), 0.8, zoo={"exclude": STEM})
DATAFREE = MethodCase("datafree", ({"method": "datafree", "sparsity": 0.8}, _finetune(8)), 0.8,
                      unit="neurons")
DENSITY_DIVERSITY = MethodCase(
    "density_diversity",
    ({"method": "density_diversity", "sparsity": 0.8, "epochs": 10, "clusters": 16},
     _finetune(3)), 0.8, models=("mlp",))  # fully connected layers only
GUIDED = MethodCase("guided (batch 1)",
                    ({"method": "guided", "sparsity": 0.9, "batch": 1, "epochs": 8},), 0.9,
                    per_model={"mobilenetv2": {"sparsity": 0.2}, "resnet18": {"sparsity": 0.2}})


@dataclass(frozen=True)
class Suite:
    models: tuple[ModelCase, ...]
    methods: tuple[MethodCase, ...]


def full_suite() -> Suite:
    """The MLP and two digits-size zoo CNNs (1x1 convolutions; 3x3), every method."""
    models = (ModelCase("mlp", MLP_EPOCHS), ModelCase("mobilenetv2", ZOO_EPOCHS),
              ModelCase("resnet18", ZOO_EPOCHS))
    methods = (MAGNITUDE, NM_2_4, NM_1_4, BLOCK, DNS, OBD, OBS, DATAFREE, DENSITY_DIVERSITY,
               GUIDED)
    return Suite(models, methods)


def quick_suite() -> Suite:
    """The MLP and three fast methods that reach their sparsity exactly, for tests."""
    return Suite((ModelCase("mlp", MLP_EPOCHS),), (MAGNITUDE, NM_2_4, BLOCK))


# -- achieved sparsity ---------------------------------------------------------------------------
def pruned_tensors(model, entry: dict[str, Any]) -> list[str]:
    """The tensors the method entry prunes on ``model``: its ``layers``/``exclude`` selection
    minus the layers the method cannot prune (N:M rows that ``m`` does not divide, ...)."""
    from squeezer.passes.compress import get_method
    from squeezer.passes.compress.prune.layers import select_layers
    from squeezer.recipe import load_recipe

    loaded = load_recipe([entry]).entries[0]
    method = get_method(loaded.method)(loaded.settings)
    method.check_tensors(model)
    s = loaded.settings
    chosen, _ = select_layers(model, s.layers, s.exclude, list(s.tensors), method.not_applicable)
    return list(chosen)


def achieved(pruned, tensors: list[str], unit: str) -> tuple[float, float]:
    """``(share in the row's unit, share of zero weights)`` over ``tensors`` of ``pruned``.

    For ``neurons`` the share is of all-zero output rows (removed neurons) over the tensors that
    lost any: the last layer of a chain only loses input columns.
    """
    weights = [pruned.get_parameter(t).detach() for t in tensors]
    total = sum(w.numel() for w in weights)
    zeros = sum(w.numel() - int(w.count_nonzero()) for w in weights)
    weight_share = zeros / total if total else 0.0
    if unit == "weights":
        return weight_share, weight_share
    rows = [(w.reshape(w.shape[0], -1) == 0).all(1) for w in weights]
    rows = [r for r in rows if bool(r.any())]
    neurons = sum(int(r.sum()) for r in rows) / sum(r.numel() for r in rows) if rows else 0.0
    return neurons, weight_share
