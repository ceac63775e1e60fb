"""The lifecycle shared by int8, int4 and dynamic8: choose layers, attach quantizers, calibrate on
the user's data, fine-tune (QAT) with the straight-through estimator, squash to QDQ.

``prepare`` attaches to every chosen ``Linear``/``Conv2d`` weight a ``WeightQuant``
parametrization (the layer computes with the quantized values from then on) and, for methods
that quantize activations, an ``ActQuant`` on the layer's input (and output with
``outputs: true``): a forward hook on eager modules, a ``call_module`` node in exported graphs.
It then calibrates the activation ranges on ``calibration_batches`` batches of the training split
(two passes for the histogram calibrators). With ``epochs > 0`` the recipe fine-tunes the
fake-quantized model (QAT). ``squash`` replaces each layer by its ``qdq.LayerPlan``: a
``QuantizedLayer`` in eager models, QDQ nodes in graphs, or, for weight-only formats, the float
weight overwritten with its quantized values.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, cast

import torch
from pydantic import Field
from torch.nn.utils import parametrize

from squeezer.errors import RecipeError

from ..base import CompressContext, Method, TensorwiseSettings, TrainSettings
from ..prune.layers import candidates
from .base import ActQuant, WeightQuant, check_finite
from .calibrate import calibrate
from .observers import make_observer
from .qdq import LayerPlan, QuantizedLayer, conv_args, rewrite_node

__all__ = ["ActivationSettings", "QuantMethod", "QuantSettings", "Site"]


class QuantSettings(TensorwiseSettings, TrainSettings):
    """Settings shared by the quantization methods.

    Attributes
    ----------
    layers, exclude : list of str
        Glob patterns of module names to quantize and to leave in float (default: every
        ``Linear`` and ``Conv2d`` the method supports).
    epochs, lr, optimizer, batch_size, weight_decay, patience, seed
        Quantization-aware training (``epochs = 0``, the default: post-training quantization).
    """

    epochs: int = Field(0, ge=0)
    layers: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class ActivationSettings(QuantSettings):
    """Settings of methods with uint8 activations (per tensor, asymmetric).

    Attributes
    ----------
    calibration : {"minmax", "percentile", "kl"}
        How activation ranges are chosen (``observers``); per tensor.
    percentile : float
        Percentile of ``percentile`` calibration, in (50, 100].
    calibration_batches : int
        Batches of ``batch_size`` training images used to calibrate.
    ranges : {"learned", "frozen"}
        During QAT: activation scales trained (LSQ gradient) or kept as calibrated.
    outputs : bool
        Also quantize each layer's output (for integer adds or pooling after it; the next
        quantized layer's input quantization already covers a chain of layers).
    """

    calibration: Literal["minmax", "percentile", "kl"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    calibration_batches: int = Field(8, ge=1)
    ranges: Literal["learned", "frozen"] = "learned"
    outputs: bool = False


def check_bits(bits: int, allowed: tuple[int, ...], method: str, hint: str) -> int:
    """Validate a ``bits`` setting (pydantic validators call it)."""
    if bits not in allowed:
        raise ValueError(f"{method} supports bits {', '.join(map(str, allowed))}, got {bits}{hint}")
    return bits


@dataclass
class Site:
    """A quantized layer: its weight ``owner.<attr>`` and what the method attached."""

    name: str
    tensor: str
    owner: torch.nn.Module
    attr: str
    kind: str
    groups: int
    node: torch.fx.Node | None = None
    weight_quant: WeightQuant | None = None
    acts: dict[str, ActQuant] = field(default_factory=dict)
    act_nodes: dict[str, torch.fx.Node] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.tensor.rpartition(".")[0]


S = TypeVar("S", bound=QuantSettings)
_LAYER_OPS = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)


class QuantMethod(Method[S]):
    """Base of the quantization methods; subclasses define the weight format.

    Subclasses set ``Settings`` and ``activations`` (whether inputs get uint8 QDQ) and define
    ``weight_quant(site, settings)``, ``plan(site, settings, weight, bias)`` and optionally
    ``not_applicable(site)``.
    """

    activations: ClassVar[bool] = True

    def __init__(self, settings: S) -> None:
        super().__init__(settings)
        self.sites: dict[str, Site] = {}
        self.stored: dict[str, int] = {}
        self.ctx: CompressContext | None = None

    # -- hooks for subclasses ------------------------------------------------------------------

    def weight_quant(self, site: Site, settings: Any) -> WeightQuant:
        """The weight quantizer of ``site`` under its (per-tensor) ``settings``."""
        raise NotImplementedError

    def plan(
        self, site: Site, settings: Any, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> LayerPlan | None:
        """What ``site`` becomes at squash; ``None``: keep the layer, weight := its values."""
        raise NotImplementedError

    def not_applicable(self, site: Site) -> str | None:
        """Why this method cannot quantize ``site``, or ``None``."""
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    def check_tensors(self, model: torch.nn.Module) -> None:
        self._select(model)

    def prepare(self, model: torch.nn.Module, ctx: CompressContext) -> torch.nn.Module:
        self.ctx = ctx
        self.attach(model)
        if self.activations:
            s = cast(ActivationSettings, self.settings)
            acts = self._acts()
            limit = s.calibration_batches * s.batch_size
            n = calibrate(model, acts, ctx.data.x_train, limit, s.batch_size)
            kinds = sorted({type(a.observer).__name__.removesuffix("Observer") for a in acts})
            ctx.log(
                f"calibrated {len(acts)} activations ({', '.join(kinds).lower()}) "
                f"on {n} training images"
            )
        return model

    def attach(self, model: torch.nn.Module) -> None:
        """Choose the layers and attach the quantizers (``prepare`` without calibration)."""
        self.sites, skipped = self._select(model)
        for line in skipped:
            self._log(line)
        for site in self.sites.values():
            check_finite(getattr(site.owner, site.attr), f"weight {site.tensor!r}")
            settings = self.settings.for_tensor(site.tensor)
            site.weight_quant = self.weight_quant(site, settings)
            parametrize.register_parametrization(site.owner, site.attr, site.weight_quant)
            if self.activations:
                self._attach_acts(model, site, settings)
        self._log(f"quantizing {len(self.sites)} layers: {', '.join(self.sites)}")

    def squash(self, model: torch.nn.Module) -> torch.nn.Module:
        for site in self.sites.values():
            weight = self._detach_weight(site)
            check_finite(weight, f"weight {site.tensor!r} after fine-tuning")
            settings = self.settings.for_tensor(site.tensor)
            bias = self._bias(model, site)
            plan = self.plan(site, settings, weight, bias)
            assert site.weight_quant is not None
            self.stored[site.tensor] = site.weight_quant.stored_bytes(weight)
            if plan is None:
                with torch.no_grad():
                    getattr(site.owner, site.attr).copy_(site.weight_quant.values(weight))
                continue
            if plan.bias is not None and plan.bias.dtype == torch.int32:
                bias_name = f"{site.prefix}.bias" if site.prefix else "bias"
                self.stored[bias_name] = 4 * plan.bias.numel()
            model = self._apply(model, site, plan)
        self.sites = {}
        return model

    def stored_bytes(self, model: torch.nn.Module) -> dict[str, int]:
        """Bytes of each quantized weight (codes + scales) and of int32 biases, by name."""
        return dict(self.stored)

    def qparams(self, site: Site, kind: str) -> tuple[float, int] | None:
        """Scale and zero point of ``site``'s ``input`` or ``output`` quantizer, if it has one."""
        act = site.acts.get(kind)
        return act.qparams() if act is not None else None

    # -- selection -----------------------------------------------------------------------------

    def _select(self, model: torch.nn.Module) -> tuple[dict[str, Site], list[str]]:
        s = self.settings
        found = _sites(model)
        names = list(found)
        if not names:
            raise RecipeError("no layer to quantize: the model has no nn.Linear or nn.Conv2d")
        for fld, patterns in (("layers", s.layers), ("exclude", s.exclude)):
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
                    hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
                    raise RecipeError(f"{fld}: {pattern!r} matches no Linear or Conv2d layer{hint}")
        def matches(name: str, patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

        chosen = [n for n in names if (not s.layers or matches(n, s.layers))]
        chosen = [n for n in chosen if not matches(n, s.exclude)]
        skipped = []
        for n in list(chosen):
            reason = found[n].node_problem or self.not_applicable(found[n].site)
            if reason is not None and s.layers:
                raise RecipeError(f"layers: cannot quantize {n!r}: {reason}")
            if reason is not None:
                chosen.remove(n)
                skipped.append(f"left {n!r} in float: {reason}")
        if not chosen:
            raise RecipeError(f"no layer left to quantize ({'; '.join(skipped) or 'all excluded'})")
        result = {found[n].site.tensor: found[n].site for n in chosen}
        for key in s.tensors:
            if not any(fnmatch.fnmatchcase(t, key) for t in result):
                quantized = ", ".join(result)
                raise RecipeError(f"tensors: {key!r} matches no quantized weight ({quantized})")
        return result, skipped

    # -- attaching and removing ----------------------------------------------------------------

    def _acts(self) -> list[ActQuant]:
        return [a for site in self.sites.values() for a in site.acts.values()]

    def _attach_acts(self, model: torch.nn.Module, site: Site, settings: Any) -> None:
        kinds = ("input", "output") if settings.outputs else ("input",)
        for kind in kinds:
            observer = make_observer(settings.calibration, settings.percentile)
            where = f"{kind} of layer {site.name!r} ({site.kind})"
            site.acts[kind] = ActQuant(observer, where, settings.ranges)
        if site.node is None:
            for kind, act in site.acts.items():
                site.owner.add_module(f"{kind}_quant", act)
            site.hooks.append(site.owner.register_forward_pre_hook(_quant_input))
            if "output" in site.acts:
                site.hooks.append(site.owner.register_forward_hook(_quant_output))
            return
        assert isinstance(model, torch.fx.GraphModule)
        graph, node = model.graph, site.node
        for kind, act in site.acts.items():
            attr = f"{site.attr}_{kind}_quant"
            site.owner.add_module(attr, act)
            target = f"{site.prefix}.{attr}" if site.prefix else attr
            if kind == "input":
                x = node.args[0]
                assert isinstance(x, torch.fx.Node)
                with graph.inserting_before(node):
                    site.act_nodes[kind] = graph.call_module(target, (x,))
                node.replace_input_with(x, site.act_nodes[kind])
            else:
                users = list(node.users)
                with graph.inserting_after(node):
                    site.act_nodes[kind] = graph.call_module(target, (node,))
                for user in users:
                    user.replace_input_with(node, site.act_nodes[kind])
        model.recompile()

    def _detach_weight(self, site: Site) -> torch.Tensor:
        plists = cast(torch.nn.ModuleDict, site.owner.parametrizations)
        plist = cast(parametrize.ParametrizationList, plists[site.attr])
        if plist[-1] is not site.weight_quant:
            raise RecipeError(
                f"{self.name}: {site.tensor!r} has a parametrization added after quantization; "
                "put the quantization method last in the recipe"
            )
        if len(plist) == 1:
            parametrize.remove_parametrizations(site.owner, site.attr, leave_parametrized=False)
        else:
            del plist[len(plist) - 1]
        return getattr(site.owner, site.attr).detach()

    def _bias(self, model: torch.nn.Module, site: Site) -> torch.Tensor | None:
        if site.node is None:
            bias = cast(torch.Tensor | None, site.owner.bias)
            return bias.detach() if bias is not None else None
        b = site.node.args[2] if len(site.node.args) > 2 else None
        return model.get_parameter(str(b.target)).detach() if isinstance(b, torch.fx.Node) else None

    def _apply(self, model: torch.nn.Module, site: Site, plan: LayerPlan) -> torch.nn.Module:
        if site.node is None:
            for hook in site.hooks:
                hook.remove()
            if site.kind == "Conv2d":
                plan.conv = conv_args(site.owner)  # type: ignore[arg-type]
            layer = QuantizedLayer(plan)
            if not site.name:
                return layer
            parent, _, child = site.name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
            return model
        assert isinstance(model, torch.fx.GraphModule)
        x = site.node.args[0]
        for kind, act_node in site.act_nodes.items():
            source = act_node.args[0]
            assert isinstance(source, torch.fx.Node)
            act_node.replace_all_uses_with(source)
            model.graph.erase_node(act_node)
            delattr(site.owner, f"{site.attr}_{kind}_quant")
            if kind == "input":
                x = source
        assert isinstance(x, torch.fx.Node)
        rewrite_node(model, site.node, site.owner, site.prefix, plan, x)
        return model

    def _log(self, line: str) -> None:
        if self.ctx is not None:
            self.ctx.log(line)


def _quant_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (cast(ActQuant, module.input_quant)(args[0]), *args[1:])


def _quant_output(module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
    return cast(ActQuant, module.output_quant)(out)


@dataclass
class _Found:
    site: Site
    node_problem: str | None


def _sites(model: torch.nn.Module) -> dict[str, _Found]:
    graph = model.graph if isinstance(model, torch.fx.GraphModule) else None
    found: dict[str, _Found] = {}
    for name, layer in candidates(model).items():
        site = Site(name, layer.tensor, layer.owner, layer.attr, layer.kind, layer.groups)
        problem = None
        if graph is None:
            if getattr(layer.owner, "padding_mode", "zeros") != "zeros":
                problem = f"padding_mode {layer.owner.padding_mode!r} (only zero padding)"
        else:
            nodes = [n for n in graph.nodes if n.op == "call_function" and n.target in _LAYER_OPS
                     and isinstance(n.args[1], torch.fx.Node) and n.args[1].target == layer.tensor]
            bias = nodes[0].args[2] if len(nodes) == 1 and len(nodes[0].args) > 2 else None
            if len(nodes) != 1:
                problem = f"its weight is read by {len(nodes)} operators"
            elif bias is not None and getattr(bias, "target", None) != f"{site.prefix}.bias":
                problem = f"its bias is not the parameter {site.prefix + '.bias'!r}"
            else:
                site.node = nodes[0]
        found[name] = _Found(site, problem)
    return found
