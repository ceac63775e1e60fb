"""The compression-method interface, its settings base classes and the method registry.

A method follows the lifecycle of ``torch.ao.pruning``. ``squeezer.recipe.run_recipe`` walks a
recipe in order and, for each entry, builds a fresh method object from its settings and calls:

1. ``prepare(model, ctx)``: attach masks, observers or fake-quant modules without changing the
   model's results, or return a *new* model (distillation into a narrower student). Methods
   prepared earlier stay active; when the model is replaced they are squashed on the old one
   and dropped.
2. A fine-tuning phase, if the method's settings are ``TrainSettings`` with ``epochs > 0``. The
   phase's loss is the owner's ``loss_term`` (cross-entropy when it returns ``None``) plus the
   ``loss_term`` of every active method that has no phase of its own (regularizers, pruning
   penalties). After every epoch, ``step(model, epoch, epochs)`` is called on all active methods
   (mask updates, pruning schedules, observer freezing).
3. ``squash(model)`` on every method still active, in recipe order, once the recipe is done:
   make masks permanent, convert fake-quant to stored integers, drop teachers. Then
   ``stored_bytes(model)`` tells the report what the compressed tensors take on disk.

Settings are pydantic models (``extra="forbid"``, frozen). Methods with per-tensor settings derive
theirs from ``TensorwiseSettings``: its top-level fields are the defaults and ``tensors`` maps a
fully qualified tensor name (``features.0.weight``) or a glob pattern (``features.*.weight``) to
overrides; ``for_tensor(name)`` merges them.
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from squeezer.data import Digits
from squeezer.errors import ModelLoadError, RecipeError

__all__ = [
    "CompressContext",
    "Method",
    "MethodSettings",
    "TensorwiseSettings",
    "TrainSettings",
    "get_method",
    "load_exported",
    "methods",
    "register_method",
]


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(MethodSettings):
    """Settings of a method that owns a fine-tuning phase (run by ``squeezer.data.train``)."""

    epochs: int = Field(5, ge=0)
    lr: float = Field(3e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(None, ge=1)
    seed: int = 0


class TensorwiseSettings(MethodSettings):
    """Settings with per-tensor overrides: ``tensors: {fqn_or_glob: {field: value}}``.

    Subclasses list the overridable fields in ``per_tensor``.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ()
    tensors: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_overrides(self) -> Self:
        for key, override in self.tensors.items():
            bad = sorted(set(override) - set(self.per_tensor))
            if bad:
                raise ValueError(
                    f"tensors[{key!r}]: unknown per-tensor field {bad[0]!r}; "
                    f"per-tensor fields: {', '.join(self.per_tensor) or 'none'}"
                )
            try:
                self._merged(override)
            except ValidationError as err:
                first = err.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"tensors[{key!r}].{field}: {first['msg']}") from None
        return self

    def _merged(self, override: dict[str, Any]) -> Self:
        base = self.model_dump(exclude={"tensors"})
        return type(self).model_validate({**base, **override})

    def for_tensor(self, name: str) -> Self:
        """Settings for the tensor ``name``: an exact key wins, then the first matching glob."""
        if name in self.tensors:
            return self._merged(self.tensors[name])
        for key, override in self.tensors.items():
            if fnmatch.fnmatchcase(name, key):
                return self._merged(override)
        return self

    def unmatched(self, names: list[str]) -> list[str]:
        """Keys of ``tensors`` that match none of ``names`` (typos in the recipe)."""
        return [k for k in self.tensors if not any(fnmatch.fnmatchcase(n, k) for n in names)]


@dataclass
class CompressContext:
    """What a method may read besides the model while a recipe runs.

    Attributes
    ----------
    original : torch.nn.Module
        The model given to ``compress``, unmodified (the default distillation teacher).
    data : Digits
        Training split and evaluation (test) split.
    resolution : int
        Side of the square inputs.
    recipe_dir : Path or None
        Directory of the recipe file; relative paths in settings are resolved against it.
    log : callable
        ``log(line)`` appends one line to the compression report.
    """

    original: torch.nn.Module
    data: Digits
    resolution: int
    recipe_dir: Path | None
    log: Callable[[str], None]


S = TypeVar("S", bound=MethodSettings)


class Method(Generic[S]):
    """One compression method. Subclasses set ``Settings`` and override the hooks they need.

    A method object lives for one ``compress`` call; it may keep state (masks, a teacher)
    between its own hooks, never between calls.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[MethodSettings]] = MethodSettings

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @property
    def phase(self) -> TrainSettings | None:
        """The settings of this method's fine-tuning phase, or ``None`` if it has none."""
        s = self.settings
        return s if isinstance(s, TrainSettings) and s.epochs > 0 else None

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        """Attach what the method needs, results unchanged; or return a replacement model."""
        return model

    def loss_term(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor | None:
        """A loss to add while fine-tuning (the whole loss for a phase owner), or ``None``."""
        return None

    def check_tensors(self, model: torch.nn.Module) -> None:
        """Raise ``RecipeError`` if a per-tensor setting names no tensor of ``model``."""
        s = self.settings
        if isinstance(s, TensorwiseSettings):
            names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
            missing = s.unmatched(names)
            if missing:
                raise RecipeError(f"tensors: {missing[0]!r} matches no tensor of the model")

    def step(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
        """Update masks or statistics after fine-tuning epoch ``epoch`` of ``epochs``."""

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        """Make the compression permanent and remove what ``prepare`` attached."""
        return model

    def stored_bytes(self, model: torch.nn.Module) -> dict[str, int]:
        """Bytes each tensor this method compresses takes when stored compressed, by FQN.

        Tensors left out count at their dense size in the report.
        """
        return {}


_REGISTRY: dict[str, type[Method[Any]]] = {}

M = TypeVar("M", bound=type[Method[Any]])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a ``Method`` subclass under ``name`` (its recipe key).

    Raises
    ------
    ValueError
        If another class is already registered under ``name``.
    """

    def wrap(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) needs a Method subclass, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"compression method {name!r} is already registered by {old!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def methods() -> list[str]:
    """Names of the registered compression methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method[Any]]:
    """The method class registered under ``name``; ``KeyError`` if there is none."""
    return _REGISTRY[name]


def _frozen_train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    # Exported graphs bake in eval-mode ops (BN uses running stats, no dropout): only the flag
    # moves.
    self.training = mode
    return self


def _frozen_eval(self: torch.nn.Module) -> torch.nn.Module:
    self.training = False
    return self


def load_exported(path: str | Path) -> torch.nn.Module:
    """Load a ``torch.export.save`` file as a trainable module.

    The graph keeps the mode it was exported in (normally eval: BatchNorm uses its running
    statistics and is not updated, dropout is off); ``train()``/``eval()`` only set the flag.

    Raises
    ------
    ModelLoadError
        If the file is missing or is not an ExportedProgram.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    try:
        module = torch.export.load(path).module()
    except Exception as err:  # torch raises many types for a corrupt archive
        raise ModelLoadError(
            f"{path}: not a torch.export program ({type(err).__name__}: {err})".splitlines()[0]
        ) from err
    # Bound methods (not closures) so that copy.deepcopy rebinds them to the copy.
    module.train = types.MethodType(_frozen_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(_frozen_eval, module)  # type: ignore[method-assign]
    return module
