"""Which weights a pruning method prunes: ``layers`` and ``exclude`` patterns over module names.

Prunable layers are ``nn.Linear`` and ``nn.Conv2d`` modules and, in a ``torch.export`` graph
(``load_exported``), the weights that ``aten.linear`` and ``aten.conv2d`` nodes read. By default
every one of them is pruned except grouped and depthwise convolutions, which the sparse kernels
leave dense.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from squeezer.errors import RecipeError

__all__ = ["Layer", "candidates", "select_layers", "sparsity_report"]


@dataclass(frozen=True)
class Layer:
    """A prunable weight: ``owner.<attr>``, read by a layer named ``name``.

    Attributes
    ----------
    name : str
        Module name (``features.0``), what ``layers`` and ``exclude`` patterns match.
    tensor : str
        Fully qualified tensor name (``features.0.weight``), the key of ``tensors`` overrides.
    owner : torch.nn.Module
        The module holding the weight as attribute ``attr``.
    kind : str
        ``Linear`` or ``Conv2d``.
    groups : int
        Convolution groups (1 for ``Linear``).
    """

    name: str
    tensor: str
    owner: torch.nn.Module
    attr: str
    kind: str
    groups: int

    @property
    def weight(self) -> torch.Tensor:
        """The weight the layer computes with (masked while a pruning method is active)."""
        return getattr(self.owner, self.attr)


def candidates(model: torch.nn.Module) -> dict[str, Layer]:
    """Every ``Linear`` and ``Conv2d`` weight of ``model`` by module name, in model order."""
    found: dict[str, Layer] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            kind = parametrize.type_before_parametrizations(m).__name__
            groups = m.groups if isinstance(m, torch.nn.Conv2d) else 1
            found[name] = Layer(name, _join(name, "weight"), m, "weight", kind, groups)
    if isinstance(model, torch.fx.GraphModule):
        found.update(_graph_candidates(model))
    return found


def _graph_candidates(model: torch.fx.GraphModule) -> dict[str, Layer]:
    ops = {torch.ops.aten.linear.default: "Linear", torch.ops.aten.conv2d.default: "Conv2d"}
    found: dict[str, Layer] = {}
    for node in model.graph.nodes:
        kind = ops.get(node.target) if node.op == "call_function" else None
        if kind is None or len(node.args) < 2:
            continue
        weight = node.args[1]
        if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
            continue
        path, _, attr = str(weight.target).rpartition(".")
        groups = int(node.args[6]) if kind == "Conv2d" and len(node.args) > 6 else 1
        owner = model.get_submodule(path)
        found[path] = Layer(path, str(weight.target), owner, attr, kind, groups)
    return found


def _join(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


def _no_match(field: str, pattern: str, names: list[str], model: torch.nn.Module) -> RecipeError:
    others = {n: type(m).__name__ for n, m in model.named_modules() if n and n not in names}
    hit = next((n for n in others if fnmatch.fnmatchcase(n, pattern)), None)
    if hit is not None:
        return RecipeError(
            f"{field}: {pattern!r} matches {hit!r}, a {others[hit]}, not a Linear or Conv2d layer"
        )
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
    return RecipeError(f"{field}: {pattern!r} matches no Linear or Conv2d layer{hint}")


def select_layers(
    model: torch.nn.Module,
    layers: list[str],
    exclude: list[str],
    tensors: list[str],
    not_applicable: Callable[[Layer], str | None],
) -> tuple[dict[str, Layer], list[str]]:
    """The layers to prune, by tensor name, and one line per default layer left out.

    Parameters
    ----------
    layers, exclude : list of str
        Glob patterns of module names; empty ``layers``: every ungrouped layer.
    tensors : list of str
        Keys (names or globs) of per-tensor overrides; each must match a chosen tensor.
    not_applicable : callable
        ``not_applicable(layer)`` is the reason a method cannot prune ``layer`` (an N:M group
        that does not divide the row), or ``None``. Such layers are skipped when chosen by
        default and an error when named in ``layers``.

    Raises
    ------
    RecipeError
        A pattern matching no prunable layer (the closest names listed), an override key
        matching no chosen tensor, a named layer the method cannot prune, or nothing to prune.
    """
    found = candidates(model)
    names = list(found)
    if not names:
        raise RecipeError("no prunable layer: the model has no nn.Linear or nn.Conv2d weight")
    for field, patterns in (("layers", layers), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise _no_match(field, pattern, names, model)
    if layers:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in layers)]
    else:
        chosen = [n for n in names if found[n].groups == 1]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    skipped = []
    for n in list(chosen):
        reason = not_applicable(found[n])
        if reason is not None and layers:
            raise RecipeError(f"layers: cannot prune {n!r}: {reason}")
        if reason is not None:
            chosen.remove(n)
            skipped.append(f"left {n!r} dense: {reason}")
    if not chosen and skipped:
        raise RecipeError(f"no layer left to prune: {'; '.join(skipped)}")
    if not chosen:
        grouped = " (grouped convolutions are left out unless named in 'layers')" * (not layers)
        raise RecipeError(f"no prunable layer left after 'layers' and 'exclude'{grouped}")
    result = {found[n].tensor: found[n] for n in chosen}
    for key in tensors:
        if not any(fnmatch.fnmatchcase(t, key) for t in result):
            close = difflib.get_close_matches(key, list(result), n=3, cutoff=0.4)
            hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
            raise RecipeError(f"tensors: {key!r} matches no pruned weight{hint}")
    return result, skipped


def sparsity_report(model: torch.nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in every prunable weight (``candidates``), by tensor name.

    Reads the weight the layer computes with, so a prepared model reports its masks.
    """
    out = {}
    for layer in candidates(model).values():
        w = layer.weight.detach()
        out[layer.tensor] = 1.0 - int(w.count_nonzero()) / w.numel()
    return out
