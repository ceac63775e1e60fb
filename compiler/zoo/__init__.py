"""The model zoo: efficient architectures from the literature, written as plain torch modules.

Every model comes in two sizes:

- ``"full"``: the paper's ImageNet configuration (3x224x224 input, 1000 classes), for latency
  benchmarks and parameter counts; never trained here.
- ``"small"``: a configuration for scikit-learn's digits (1 channel, 10 classes, 8x8 or 16x16),
  which ``squeezer.data.train`` brings to at least 90% test accuracy in seconds on a laptop CPU.

Examples
--------
>>> from squeezer import zoo, data
>>> s = zoo.spec("mobilenetv2")
>>> model = zoo.create("mobilenetv2")
>>> data.train(model, epochs=s.epochs, resolution=s.input_shape[-1])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import torch

from . import (
    condensenet,
    densenet,
    highway,
    mobilenet,
    mobilenetv2,
    resnet,
    resnext,
    shufflenet,
    shufflenetv2,
    squeezenet,
)

__all__ = ["ZooSpec", "names", "spec", "create"]

Size = Literal["small", "full"]
SIZES: tuple[str, ...] = ("small", "full")

_FAMILIES: dict[str, ModuleType] = {
    "mobilenet": mobilenet,
    "mobilenetv2": mobilenetv2,
    "shufflenet": shufflenet,
    "shufflenetv2": shufflenetv2,
    "squeezenet": squeezenet,
    "resnext": resnext,
    "densenet": densenet,
    "condensenet": condensenet,
    "highway": highway,
    "resnet18": resnet,
}

_COMMON: dict[str, dict[str, Any]] = {
    "full": {"resolution": 224, "num_classes": 1000, "in_channels": 3, "seed": 0},
    "small": {"resolution": 8, "num_classes": 10, "in_channels": 1, "seed": 0},
}


@dataclass(frozen=True)
class ZooSpec:
    """What ``create`` builds for one name and size.

    Attributes
    ----------
    name : str
        Zoo name, one of ``names()``.
    size : {"small", "full"}
        ``"full"`` is the paper's ImageNet configuration, ``"small"`` the digits one.
    input_shape : tuple of int
        ``(1, in_channels, resolution, resolution)``.
    num_classes : int
        Number of logits the model returns.
    knobs : dict
        Every knob with its value; ``create(name, size, **knobs)`` rebuilds the same model.
    epochs : int or None
        Digits training epochs that reach >= 90% test accuracy with ``squeezer.data.train``
        defaults (small size only; ``None`` for full).
    """

    name: str
    size: str
    input_shape: tuple[int, int, int, int]
    num_classes: int
    knobs: dict[str, Any] = field(hash=False)
    epochs: int | None = None


def names() -> list[str]:
    """Names of the zoo models, in a fixed order.

    Returns
    -------
    list of str
    """
    return list(_FAMILIES)


def spec(name: str, size: Size = "small", **knobs: Any) -> ZooSpec:
    """Describe a zoo model without building it.

    Parameters
    ----------
    name : str
        One of ``names()``.
    size : {"small", "full"}
        Which configuration the defaults come from.
    **knobs
        Overrides of the defaults (``width``, ``resolution``, ``num_classes``, ``in_channels``,
        ``seed`` and the family's own, e.g. ``groups`` or ``cardinality``).

    Returns
    -------
    ZooSpec

    Raises
    ------
    ValueError
        If ``name``, ``size`` or a knob is unknown; the message lists the valid ones.
    """
    if name not in _FAMILIES:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {names()}")
    if size not in SIZES:
        raise ValueError(f"unknown zoo size {size!r} for {name!r}; valid sizes: {list(SIZES)}")
    family = _FAMILIES[name]
    own = family.SMALL if size == "small" else family.FULL
    defaults = {**own, **{k: v for k, v in _COMMON[size].items() if k not in own}}
    unknown = sorted(set(knobs) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown knob(s) {unknown} for zoo model {name!r}; valid knobs: {sorted(defaults)}"
        )
    merged = {**defaults, **knobs}
    for key in ("resolution", "num_classes", "in_channels"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise ValueError(
                f"knob {key!r} of {name!r} must be a positive int, got {merged[key]!r}"
            )
    if not merged["width"] > 0:
        raise ValueError(f"knob 'width' of {name!r} must be > 0, got {merged['width']!r}")
    side = merged["resolution"]
    return ZooSpec(
        name=name,
        size=size,
        input_shape=(1, merged["in_channels"], side, side),
        num_classes=merged["num_classes"],
        knobs=merged,
        epochs=family.SMALL_EPOCHS if size == "small" else None,
    )


def create(name: str, size: Size = "small", **knobs: Any) -> torch.nn.Module:
    """Build a zoo model in eval mode with deterministic weights.

    Parameters
    ----------
    name : str
        One of ``names()``.
    size : {"small", "full"}
        Which configuration the defaults come from.
    **knobs
        Overrides of the defaults, as for ``spec``. ``seed`` (default 0) seeds the initial
        weights; the global torch RNG state is left as it was.

    Returns
    -------
    torch.nn.Module
        Takes ``spec(name, size, **knobs).input_shape`` inputs, returns ``(N, num_classes)``
        logits.

    Raises
    ------
    ValueError
        If ``name``, ``size`` or a knob is unknown, or a knob value is invalid.
    """
    s = spec(name, size, **knobs)
    build_knobs = dict(s.knobs)
    seed = build_knobs.pop("seed")
    build_knobs.pop("resolution")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _FAMILIES[name].build(**build_knobs)
    return model.eval()
