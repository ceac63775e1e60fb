"""The pruning method base class: settings, masks over the method lifecycle, exact selection.

``prepare`` attaches an all-ones mask to every chosen weight (``masks.WeightMask``), then applies
the schedule's first pruning. ``step`` (after each fine-tuning epoch) prunes further as the
schedule says; masks only grow: a weight pruned once stays pruned. ``squash`` multiplies the masks
in and removes them, leaving plain modules with zeros. Subclasses supply ``scores`` (higher =
keep) and may override ``make_mask`` (structured patterns), ``group_scores``/``expand_units``
(pruning units larger than one weight) and ``update_weights`` (compensating updates).
"""

from __future__ import annotations

import fnmatch
from typing import Any, ClassVar, TypeVar

import torch

from squeezer.errors import RecipeError

from ..base import CompressContext, Method, MethodSettings
from . import masks as M
from .layers import Layer, select_layers
from .schedule import sparsity_at
from .settings import PruneSettings

__all__ = ["PruneSettings", "PruningMethod"]


S = TypeVar("S", bound=PruneSettings)


class PruningMethod(Method[S]):
    """Base of the pruning methods (see the module docstring for the lifecycle).

    Attributes
    ----------
    straight_through : bool
        Class attribute: the loss gradient reaches pruned dense weights (Dynamic Network
        Surgery) instead of stopping at the mask.
    layers : dict of str to Layer
        The pruned weights by tensor name, set by ``prepare``.
    """

    Settings: ClassVar[type[MethodSettings]] = PruneSettings
    straight_through: ClassVar[bool] = False

    def __init__(self, settings: S) -> None:
        super().__init__(settings)
        self.layers: dict[str, Layer] = {}
        self.masks: dict[str, M.WeightMask] = {}
        self.level: dict[str, float] = {}
        self.ctx: CompressContext | None = None
        self._logged = ""

    # -- hooks for subclasses ------------------------------------------------------------------

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        """Saliency of every weight of the tensors ``names`` (higher = keep), weight-shaped."""
        raise NotImplementedError(f"{type(self).__name__} must define scores()")

    def not_applicable(self, layer: Layer) -> str | None:
        """Why this method cannot prune ``layer``, or ``None`` (it can)."""
        return None

    def layer_note(self, layer: Layer) -> str | None:
        """A line to log about ``layer`` when it is prepared (how a pattern fits it), or None."""
        return None

    def group_scores(self, score: torch.Tensor, settings: S) -> torch.Tensor:
        """Scores of the pruning units (default: every weight is a unit).

        For a non-negative input the result must be zero exactly where a unit is all zeros:
        the base class groups the current mask with it to find units already pruned.
        """
        return score

    def expand_units(self, keep: torch.Tensor, shape: torch.Size, settings: S) -> torch.Tensor:
        """The weight-shaped mask of a boolean mask over units (inverse of ``group_scores``)."""
        return keep.reshape(shape)

    def make_mask(
        self, score: torch.Tensor, sparsity: float, settings: S, current: torch.Tensor
    ) -> torch.Tensor:
        """Boolean keep-mask of one tensor with ``round(sparsity * units)`` units removed.

        Units pruned in ``current`` (the mask so far) stay pruned.
        """
        units = self._units(score, settings, current)
        return self.expand_units(
            M.keep_mask(units, round(sparsity * units.numel())), score.shape, settings
        )

    def update_weights(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """Change the dense weights before the new ``masks`` apply (OBS compensation)."""

    def on_pruned(self, model: torch.nn.Module) -> None:
        """Called after the masks changed (statistics or thresholds that follow the masks)."""

    # -- accessors -----------------------------------------------------------------------------

    def dense(self, name: str) -> torch.nn.Parameter:
        """The dense, trainable parameter under the mask of tensor ``name``."""
        layer = self.layers[name]
        return M.dense_of(layer.owner, layer.attr)

    def mask(self, name: str) -> torch.Tensor:
        """The mask buffer of tensor ``name`` (1 = kept)."""
        return self.masks[name].mask

    # -- lifecycle -----------------------------------------------------------------------------

    def check_tensors(self, model: torch.nn.Module) -> None:
        self._select(model)

    def _select(self, model: torch.nn.Module) -> tuple[dict[str, Layer], list[str]]:
        s = self.settings
        return select_layers(model, s.layers, s.exclude, list(s.tensors), self.not_applicable)

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        self.ctx = ctx
        self.layers, skipped = self._select(model)
        for line in skipped:
            ctx.log(line)
        for name, layer in self.layers.items():
            note = self.layer_note(layer)
            if note is not None:
                ctx.log(note)
            self.masks[name] = M.attach_mask(layer.owner, layer.attr, self.straight_through)
            self.level[name] = 0.0
        phase = self.phase
        self._advance(model, 0, phase.epochs if phase is not None else None)
        return model

    def step(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
        self._advance(model, epoch + 1, epochs)

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        if any(self.level[n] < self.final(n) for n in self.layers):
            self._prune(model, {n: self.final(n) for n in self.layers})
            self._log("the schedule had not ended: pruned to the final sparsity without training")
        summary = self._summary()
        if summary != self._logged:
            self._log(f"final {summary}")
        for name, layer in self.layers.items():
            M.detach_mask(layer.owner, layer.attr, self.masks[name])
        self.masks = {}
        return model

    def stored_bytes(self, model: torch.nn.Module) -> dict[str, int]:
        """CSR size of each pruned tensor, or its dense size where CSR is not smaller."""
        out = {}
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            out[name] = min(self.sparse_bytes(w, name), w.numel() * w.element_size())
        return out

    def sparse_bytes(self, weight: torch.Tensor, name: str) -> int:
        """Bytes of the pruned ``weight`` of tensor ``name`` in its sparse format (CSR)."""
        return M.csr_bytes(weight)

    # -- internals -----------------------------------------------------------------------------

    def final(self, name: str) -> float:
        """The final sparsity of tensor ``name`` (its override, else ``sparsity``)."""
        return self.settings.for_tensor(name).sparsity

    def _advance(self, model: torch.nn.Module, completed: int, epochs: int | None) -> None:
        s = self.settings
        targets = {
            n: sparsity_at(s.schedule, self.final(n), completed, epochs, start=s.start_epoch,
                           end=s.end_epoch, steps=s.steps, initial=s.initial_sparsity)
            for n in self.layers
        }  # fmt: skip
        if any(targets[n] > self.level[n] for n in self.layers):
            self._prune(model, {n: max(t, self.level[n]) for n, t in targets.items()})
            when = f"after epoch {completed}" if completed else "at start"
            self._logged = self._summary()
            self._log(f"pruned {when}: {self._logged}")

    def _prune(self, model: torch.nn.Module, targets: dict[str, float]) -> None:
        assert self.ctx is not None, "prune called before prepare"
        names = list(self.layers)
        with torch.enable_grad():
            scores = self.scores(model, self.ctx, names)
        scores = {n: scores[n].detach() for n in names}
        for n, sc in scores.items():
            if sc.shape != self.mask(n).shape:
                raise ValueError(f"{self.name}: scores of {n!r} have shape {tuple(sc.shape)}")
            if bool(sc.isnan().any()):
                raise RecipeError(f"{self.name}: the scores of {n!r} have NaNs")
        pooled = [n for n in names if self.settings.scope == "global" and not self._overridden(n)]
        new = {
            n: self.make_mask(scores[n], targets[n], self.settings.for_tensor(n), self.mask(n))
            for n in names
            if n not in pooled
        }
        if pooled:
            new.update(self._global_masks(scores, pooled, targets[pooled[0]]))
        new_float = {n: m.to(self.mask(n).dtype) for n, m in new.items()}
        self.update_weights(model, new_float)
        with torch.no_grad():
            for n, m in new_float.items():
                self.mask(n).copy_(m)
                if not self.straight_through:  # keep the stored weights as the model sees them
                    self.dense(n).mul_(m)
        self.level.update(targets)
        self.on_pruned(model)

    def _global_masks(
        self, scores: dict[str, torch.Tensor], names: list[str], sparsity: float
    ) -> dict[str, torch.Tensor]:
        settings = {n: self.settings.for_tensor(n) for n in names}
        units = [self._units(scores[n], settings[n], self.mask(n)) for n in names]
        pool = torch.cat([u.reshape(-1) for u in units])
        keep = M.keep_mask(pool, round(sparsity * pool.numel())).split([u.numel() for u in units])
        return {
            n: self.expand_units(k.reshape(u.shape), scores[n].shape, settings[n])
            for n, k, u in zip(names, keep, units, strict=True)
        }

    def _units(self, score: torch.Tensor, settings: Any, current: torch.Tensor) -> torch.Tensor:
        units = self.group_scores(score, settings)
        gone = self.group_scores(current.abs(), settings) == 0
        return torch.where(gone, torch.full_like(units, -torch.inf), units)

    def _overridden(self, name: str) -> bool:
        s = self.settings
        key = (
            name
            if name in s.tensors
            else next((k for k in s.tensors if fnmatch.fnmatchcase(name, k)), None)
        )
        return key is not None and "sparsity" in s.tensors[key]

    def _summary(self) -> str:
        parts = []
        for n in self.layers:
            m = self.mask(n)
            parts.append(f"{n} {1 - float(m.count_nonzero()) / m.numel():.1%}")
        total = sum(self.mask(n).numel() for n in self.layers)
        kept = sum(int(self.mask(n).count_nonzero()) for n in self.layers)
        return f"sparsity {1 - kept / total:.2%} of {total:,} weights ({', '.join(parts)})"

    def _log(self, line: str) -> None:
        if self.ctx is not None:
            self.ctx.log(line)
