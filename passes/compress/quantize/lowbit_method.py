"""The low-bit method base class: layer choice, quantizers over the lifecycle, stored sizes.

``prepare`` checks the chosen weights are finite, attaches a ``WeightQuantizer`` parametrization
to each (``lowbit_base``) and, for the methods with binary inputs, a ``lowbit_act.BinaryInput``
to every layer in ``binary`` mode. The QAT phase trains the latent weights through the
straight-through estimators; ``squash`` bakes the quantized values into plain float weights and
switches the binarized inputs to the exact ``torch.where(x >= 0, 1.0, -1.0)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable
from typing import ClassVar, Literal, TypeVar, cast

import torch
from pydantic import Field
from torch.nn.utils import parametrize

from squeezer.errors import RecipeError

from ..base import CompressContext, Method, MethodSettings, TensorwiseSettings, TrainSettings
from ..prune.layers import Layer, candidates
from . import lowbit_act as act
from .lowbit_base import WeightQuantizer, check_finite, detach_quantizer

__all__ = ["BinaryInputSettings", "LayerMode", "LowbitMethod", "LowbitSettings", "select_layers"]

LayerMode = Literal["float", "weights", "binary"]


class LowbitSettings(TensorwiseSettings, TrainSettings):
    """Settings shared by the low-bit methods.

    Attributes
    ----------
    layers, exclude : list of str
        Glob patterns of module names to quantize and to leave in float (default: every
        ``Linear`` and ungrouped ``Conv2d``; grouped ones only when named in ``layers``).
    epochs, lr, optimizer, batch_size, weight_decay, patience, seed
        The quantization-aware training phase (``epochs = 0``: none; a later ``finetune``
        entry trains with the quantizers attached).
    """

    epochs: int = Field(10, ge=0)
    layers: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class BinaryInputSettings(LowbitSettings):
    """Settings of the methods that binarize inputs too (XNOR-Net, BNN, HORQ).

    Attributes
    ----------
    first, last : {"float", "weights", "binary"}
        What happens to the model's first and last ``Linear``/``Conv2d`` layer: kept in
        ``float``, quantized ``weights`` with float inputs, or ``binary`` (weights and inputs).
        Every other chosen layer is ``binary``.
    relu : {"hardtanh", "keep"}
        A binarized input read after a ReLU is +1 everywhere (the papers' networks put batch
        norm and hardtanh there). ``hardtanh`` (default): when some binarized input is
        non-negative on a training batch, the model's ``nn.ReLU``/``nn.ReLU6`` modules become
        ``nn.Hardtanh`` (BNN's activation) before training, and the log lists them; ``keep``:
        only warn.
    """

    first: LayerMode = "float"
    last: LayerMode = "float"
    relu: Literal["hardtanh", "keep"] = "hardtanh"


S = TypeVar("S", bound=LowbitSettings)


class LowbitMethod(Method[S]):
    """Base of the low-bit methods: layer choice, quantizers over the lifecycle, stored sizes.

    Subclasses set ``Settings`` and define ``weight_quantizer`` and ``stored_planes``; those
    binarizing inputs define ``input_spec``. Attributes set by ``prepare``: ``layers``
    (tensor name to ``Layer``), ``quantizers`` (tensor name to its parametrization) and
    ``binarizers`` (tensor name to its ``BinaryInput``, for layers with binary inputs).
    """

    Settings: ClassVar[type[MethodSettings]] = LowbitSettings

    def __init__(self, settings: S) -> None:
        super().__init__(settings)
        self.layers: dict[str, Layer] = {}
        self.quantizers: dict[str, WeightQuantizer] = {}
        self.binarizers: dict[str, act.BinaryInput] = {}
        self.ctx: CompressContext | None = None

    # -- hooks for subclasses ------------------------------------------------------------------

    def weight_quantizer(self, name: str, layer: Layer, settings: S) -> WeightQuantizer:
        """The parametrization that quantizes the weight ``name``."""
        raise NotImplementedError(f"{type(self).__name__} must define weight_quantizer()")

    def input_spec(self, name: str, layer: Layer, settings: S) -> tuple[int, bool] | None:
        """``(order, scaled)`` of the layer's binarized inputs (``lowbit_act``), or ``None``."""
        return None

    def not_applicable(self, model: torch.nn.Module, layer: Layer, mode: LayerMode) -> str | None:
        """Why the method cannot quantize ``layer`` in ``mode``, or ``None``."""
        if mode != "binary":
            return None
        spec = self.input_spec(layer.tensor, layer, cast(S, self.settings.for_tensor(layer.tensor)))
        return None if spec is None else act.unsupported(model, layer, spec[1])

    def stored_planes(self, name: str) -> tuple[int, int]:
        """``(bit planes, float32 scales per output row)`` the compiler stores ``name`` with."""
        raise NotImplementedError(f"{type(self).__name__} must define stored_planes()")

    # -- lifecycle -----------------------------------------------------------------------------

    def check_tensors(self, model: torch.nn.Module) -> None:
        self._select(model)

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        self.ctx = ctx
        chosen, lines = self._select(model)
        for line in lines:
            ctx.log(line)
        for name, (layer, _) in chosen.items():
            check_finite(self.name, name, layer.weight)
        for name, (layer, mode) in chosen.items():
            s = cast(S, self.settings.for_tensor(name))
            self.layers[name] = layer
            quantizer = self.weight_quantizer(name, layer, s)
            parametrize.register_parametrization(layer.owner, layer.attr, quantizer)
            self.quantizers[name] = quantizer
            spec = self.input_spec(name, layer, s) if mode == "binary" else None
            if spec is not None:
                self.binarizers[name] = act.attach(model, layer, *spec)
        if self.binarizers:
            nonneg = self._nonnegative_inputs(model, ctx)
            if nonneg and getattr(self.settings, "relu", "keep") == "hardtanh":
                swapped = _relu_to_hardtanh(model)
                if swapped:
                    ctx.log(f"{len(swapped)} ReLU module(s) became Hardtanh (binarized inputs "
                            f"after a ReLU are +1 everywhere): {', '.join(swapped[:6])}"
                            + (", ..." if len(swapped) > 6 else ""))
                    nonneg = self._nonnegative_inputs(model, ctx)
            for name in nonneg:
                ctx.log(
                    f"warning: every input of {name!r} on a training batch is >= 0 (a ReLU "
                    "before it?): its binarized input is +1 everywhere"
                )
        return model

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        for name, layer in self.layers.items():
            detach_quantizer(layer, self.quantizers[name])
            check_finite(self.name, name, layer.weight)
        for binarizer in self.binarizers.values():
            binarizer.ste = False
        self.quantizers = {}
        return model

    def stored_bytes(self, model: torch.nn.Module) -> dict[str, int]:
        """Bytes of each weight in the compiler's format for it (``passes/graph/weight_formats``):
        every bit plane of an output row in whole 64-bit words, plus float32 scales per row.

        The compiler may store a layer whose rows are short in a smaller equivalent format.
        """
        out = {}
        for name, layer in self.layers.items():
            w = layer.weight
            planes, scales = self.stored_planes(name)
            rows, cols = w.shape[0], w[0].numel()
            out[name] = rows * (planes * math.ceil(cols / 64) * 8 + scales * 4)
        return out

    # -- internals -----------------------------------------------------------------------------

    def _select(self, model: torch.nn.Module) -> tuple[dict[str, tuple[Layer, LayerMode]], list]:
        s = self.settings
        return select_layers(
            model, self.name, s.layers, s.exclude, list(s.tensors),
            getattr(s, "first", "binary"), getattr(s, "last", "binary"),
            lambda layer, mode: self.not_applicable(model, layer, mode),
        )  # fmt: skip

    def _nonnegative_inputs(self, model: torch.nn.Module, ctx: CompressContext) -> list[str]:
        """The binarized layers whose every input is >= 0 on a training batch."""
        seen: dict[str, bool] = {}
        hooks = [
            b.register_forward_pre_hook(_recorder(seen, n)) for n, b in self.binarizers.items()
        ]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.from_numpy(ctx.data.x_train[:64]))
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        return [name for name, nonneg in seen.items() if nonneg]


def _relu_to_hardtanh(model: torch.nn.Module) -> list[str]:
    """Replace every ``nn.ReLU``/``nn.ReLU6`` submodule by ``nn.Hardtanh``; their names."""
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in (torch.nn.ReLU, torch.nn.ReLU6):
                setattr(module, child_name, torch.nn.Hardtanh())
                swapped.append(f"{name}.{child_name}" if name else child_name)
    return swapped


def _recorder(seen: dict[str, bool], name: str) -> Callable[..., None]:
    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen[name] = bool((args[0] >= 0).all())

    return hook


def select_layers(
    model: torch.nn.Module,
    method: str,
    layers: list[str],
    exclude: list[str],
    tensors: list[str],
    first: LayerMode,
    last: LayerMode,
    not_applicable: Callable[[Layer, LayerMode], str | None],
) -> tuple[dict[str, tuple[Layer, LayerMode]], list[str]]:
    """The weights to quantize, by tensor name, with their mode, and lines about layers left out.

    ``first`` and ``last`` are the modes of the model's first and last ``Linear``/``Conv2d``
    layers (in model order) when they are chosen; every other chosen layer is ``binary``.

    Raises
    ------
    RecipeError
        A pattern matching no ``Linear``/``Conv2d`` layer (closest names listed), an override
        key matching no chosen tensor, a named layer the method cannot quantize, or nothing
        left to quantize.
    """
    found = candidates(model)
    names = list(found)
    if not names:
        raise RecipeError(f"{method}: the model has no nn.Linear or nn.Conv2d weight to quantize")
    for field, patterns in (("layers", layers), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
                hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
                raise RecipeError(f"{field}: {pattern!r} matches no Linear or Conv2d layer{hint}")
    if layers:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in layers)]
    else:
        chosen = [n for n in names if found[n].groups == 1]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    modes: dict[str, LayerMode] = {n: "binary" for n in chosen}
    if names[0] == names[-1] and first != last:
        raise RecipeError(
            f"first: {first!r} and last: {last!r} disagree on the only layer {names[0]!r}"
        )
    for n, mode in ((names[0], first), (names[-1], last)):
        if n in modes:
            modes[n] = mode
    lines = []
    for n in chosen:
        if modes[n] == "float":
            lines.append(f"kept {n!r} in float (the {'first' if n == names[0] else 'last'} layer)")
            continue
        reason = not_applicable(found[n], modes[n])
        if reason is not None and layers:
            raise RecipeError(f"layers: cannot quantize {n!r}: {reason}")
        if reason is not None:
            modes[n] = "float"
            lines.append(f"kept {n!r} in float: {reason}")
    result = {found[n].tensor: (found[n], modes[n]) for n in chosen if modes[n] != "float"}
    if not result:
        raise RecipeError(f"{method}: no layer left to quantize after layers/exclude/first/last")
    for key in tensors:
        if not any(fnmatch.fnmatchcase(t, key) for t in result):
            close = difflib.get_close_matches(key, list(result), n=3, cutoff=0.4)
            hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
            raise RecipeError(f"tensors: {key!r} matches no quantized weight{hint}")
    return result, lines
