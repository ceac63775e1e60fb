"""Settings shared by the pruning methods (``PruneSettings``)."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from ..base import TensorwiseSettings, TrainSettings

__all__ = ["PruneSettings"]


class PruneSettings(TensorwiseSettings, TrainSettings):
    """Settings shared by the pruning methods.

    Attributes
    ----------
    sparsity : float
        Fraction of weights removed, in [0, 1); per tensor with ``tensors: {fqn: {sparsity}}``.
    scope : {"layer", "global"}
        ``layer``: every tensor loses ``sparsity`` of its weights. ``global``: one threshold
        over the scores of all tensors without a per-tensor override, which together lose
        ``sparsity`` of their weights (the method's scores must be comparable across layers).
    schedule : {"one-shot", "iterative", "gradual"}
        See ``squeezer.passes.compress.prune.schedule``.
    steps : int
        Pruning steps of the ``iterative`` schedule.
    initial_sparsity : float
        ``s_i`` of the ``gradual`` schedule.
    start_epoch, end_epoch : int
        Completed epochs at which pruning starts and reaches ``sparsity`` (``end_epoch`` None:
        two thirds through the phase).
    layers, exclude : list of str
        Glob patterns of module names to prune and to leave dense (default: every Linear and
        ungrouped Conv2d).
    epochs, lr, optimizer, batch_size, weight_decay, patience, seed
        The method's fine-tuning phase (``epochs = 0``: none; a later ``finetune`` entry keeps
        the masks applied and runs the schedule).
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("sparsity",)

    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    schedule: Literal["one-shot", "iterative", "gradual"] = "one-shot"
    steps: int = Field(3, ge=1)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    start_epoch: int = Field(0, ge=0)
    end_epoch: int | None = Field(None, ge=1)
    layers: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"must be in [0, 1) (the fraction of weights removed), got {value}")
        return value

    @model_validator(mode="after")
    def _check_schedule(self) -> Self:
        s = self
        if s.end_epoch is not None and s.end_epoch <= s.start_epoch:
            raise ValueError(f"end_epoch {s.end_epoch} must be after start_epoch {s.start_epoch}")
        if s.epochs > 0 and max(s.start_epoch, s.end_epoch or 0) > s.epochs:
            raise ValueError(f"start_epoch/end_epoch lie past the phase's {s.epochs} epochs")
        if s.schedule != "one-shot" and s.patience is not None:
            raise ValueError(
                f"patience would restore a less sparse epoch of the {s.schedule!r} schedule; "
                "put it on a following finetune entry"
            )
        return s
