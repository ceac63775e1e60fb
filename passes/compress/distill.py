"""Knowledge distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531).

The student is trained on ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE``
with teacher logits ``t``, student logits ``s`` and temperature ``T``. The ``T^2`` factor keeps the
soft-target gradients at the same scale as the hard-target ones when ``T`` changes (section 2).

The teacher is the model given to ``compress`` unless ``teacher`` names another: a zoo model
(``{zoo: resnet18, width: 1.0}``, built and first trained on the training split for the zoo's
recommended epochs) or a ``.pt2`` file (a string, relative to the recipe file). The student is the
current model unless ``student`` names a new one, usually a narrower model of the same zoo family
(``{zoo: mobilenetv2, width: 0.5}``): distillation then replaces the model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from squeezer import data as sq_data
from squeezer.errors import RecipeError

from .base import CompressContext, Method, TrainSettings, load_exported, register_method


class ModelRef(BaseModel):
    """A model named in a recipe: ``{zoo: name, size, width, knobs}`` or ``{path: file.pt2}``.

    A bare string is read as a path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    zoo: str | None = None
    path: Path | None = None
    size: Literal["small", "full"] = "small"
    width: float | None = Field(None, gt=0)
    knobs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return {"path": value}
        if isinstance(value, dict | ModelRef):
            return value
        kind = f"{value!r} ({type(value).__name__})"
        raise ValueError(f"expected {{zoo: name, width: w}} or a .pt2 path, got {kind}")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.zoo is None) == (self.path is None):
            raise ValueError("give exactly one of 'zoo' (a zoo model name) or 'path' (a .pt2 file)")
        if self.zoo is not None:
            from squeezer import zoo

            zoo.spec(self.zoo, self.size, **self.zoo_knobs())  # ValueError names the bad knob
        elif self.width is not None or self.knobs:
            raise ValueError("'width' and 'knobs' only apply to a zoo model, not to a path")
        return self

    def zoo_knobs(self, resolution: int | None = None) -> dict[str, Any]:
        """Knobs for ``zoo.create``: ``knobs`` plus ``width``, and ``resolution`` if not set."""
        knobs = dict(self.knobs)
        if self.width is not None:
            knobs["width"] = self.width
        if resolution is not None:
            knobs.setdefault("resolution", resolution)
        return knobs

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        width = f", width {self.width}" if self.width is not None else ""
        return f"zoo {self.zoo} ({self.size}{width})"


class DistillSettings(TrainSettings):
    """Settings of ``distill``.

    Attributes
    ----------
    temperature : float
        Softmax temperature ``T`` (> 0) of both teacher and student logits.
    alpha : float
        Weight of the soft-target term, in [0, 1]; ``1 - alpha`` weighs the cross-entropy.
    teacher : ModelRef or None
        ``None``: the model given to ``compress``.
    teacher_epochs : int or None
        Training epochs of a zoo teacher; ``None``: the zoo's recommendation (``spec.epochs``).
    student : ModelRef or None
        ``None``: the current model; otherwise a new model that replaces it.
    epochs, lr, optimizer, batch_size, weight_decay, patience, seed
        As in ``squeezer.data.train``.
    """

    epochs: int = Field(10, ge=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    teacher: ModelRef | None = None
    teacher_epochs: int | None = Field(None, ge=0)
    student: ModelRef | None = None


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.'s loss, averaged over the batch.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        ``(N, C)`` logits; the teacher's carry no gradient.
    labels : torch.Tensor
        ``(N,)`` int64 class labels.
    temperature, alpha : float
        ``T`` and the soft-target weight.

    Returns
    -------
    torch.Tensor
        ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student_logits, labels)``, a scalar,
        with ``p = softmax(logits / T)`` and the KL summed over classes, averaged over samples.
    """
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / t, dim=1)
    soft = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1 - alpha) * hard


def _build(ref: ModelRef, ctx: CompressContext) -> torch.nn.Module:
    if ref.path is not None:
        relative = not ref.path.is_absolute() and ctx.recipe_dir is not None
        return load_exported(ctx.recipe_dir / ref.path if relative else ref.path)
    from squeezer import zoo

    assert ref.zoo is not None
    return zoo.create(ref.zoo, ref.size, **ref.zoo_knobs(ctx.resolution))


def _teacher(s: DistillSettings, ctx: CompressContext) -> torch.nn.Module:
    ref = s.teacher
    if ref is None:
        return copy.deepcopy(ctx.original)
    model = _build(ref, ctx)
    if ref.zoo is not None:  # zoo weights are a fresh initialization: train the teacher first
        from squeezer import zoo

        epochs = s.teacher_epochs
        if epochs is None:
            epochs = zoo.spec(ref.zoo, ref.size, **ref.zoo_knobs(ctx.resolution)).epochs or 10
        sq_data.train(model, epochs, data=ctx.data)
        acc = sq_data.evaluate(model, data=ctx.data)
        ctx.log(f"trained teacher {ref.describe()}, {epochs} epochs, acc {acc:.4f}")
    return model


@register_method("distill")
class Distill(Method[DistillSettings]):
    """Train the student on the teacher's softened outputs and the labels."""

    Settings = DistillSettings

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        s = self.settings
        teacher = _teacher(s, ctx).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher: torch.nn.Module | None = teacher
        student = model if s.student is None else _build(s.student, ctx)
        probe = torch.from_numpy(ctx.data.x_test[:2])
        with torch.no_grad():
            t_shape, s_shape = tuple(teacher(probe).shape), tuple(student.eval()(probe).shape)
        if t_shape != s_shape:
            raise RecipeError(f"student outputs shape {s_shape} but the teacher {t_shape}")
        if s.student is not None:
            ctx.log(f"new student {s.student.describe()}")
        return student

    def loss_term(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None, "distill.loss_term called before prepare"
        with torch.no_grad():
            t_logits = self.teacher(x)
        s = self.settings
        return distillation_loss(model(x), t_logits, y, temperature=s.temperature, alpha=s.alpha)

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        self.teacher = None
        return model
