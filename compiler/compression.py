"""The compression entry point: run a recipe on a torch module, fine-tuning on real data.

``compress`` works on a copy of the module; ``compress_file`` reads and writes ``.pt2`` files
(``torch.export``). The lifecycle of the methods is described in
``squeezer.passes.compress.base``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from squeezer.data import Digits, evaluate, load_digits
from squeezer.errors import InputError, ModelLoadError, RecipeError
from squeezer.passes.compress import CompressContext, load_exported
from squeezer.recipe import Recipe, load_recipe, run_recipe

__all__ = ["CompressReport", "compress", "compress_file"]


@dataclass(frozen=True)
class CompressReport:
    """What compression did, measured on the evaluation split.

    Attributes
    ----------
    accuracy_before, accuracy_after : float
        Top-1 accuracy in [0, 1].
    params_before, params_after : int
        Number of parameters.
    bytes_before, bytes_after : int
        Parameter bytes: dense size (4 per fp32 value) unless a method stores a tensor
        compressed, then its stored size.
    log : tuple of str
        One line per event, per method, in order.
    """

    accuracy_before: float
    accuracy_after: float
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    log: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serializable data."""
        return {**asdict(self), "log": list(self.log)}

    def to_table(self) -> Table:
        """The report as a ``rich`` table (before, after, change), the log as its caption."""
        width = min(100, max((len(line) for line in self.log), default=0))
        table = Table(
            title="compression",
            caption="\n".join(self.log) or None,
            caption_justify="left",
            min_width=width,
        )
        for name in ("", "before", "after", "change"):
            table.add_column(name, justify="right" if name else "left")
        points = 100 * (self.accuracy_after - self.accuracy_before)
        table.add_row(
            "accuracy",
            f"{self.accuracy_before:.2%}",
            f"{self.accuracy_after:.2%}",
            f"{points:+.2f} pp",
        )
        for label, before, after in (
            ("parameters", self.params_before, self.params_after),
            ("bytes", self.bytes_before, self.bytes_after),
        ):
            ratio = f"x{after / before:.3f}" if before else "-"
            table.add_row(label, f"{before:,}", f"{after:,}", ratio)
        return table


def compress(
    module: torch.nn.Module,
    recipe: Recipe | str | Path | list[dict[str, Any]],
    *,
    train_data: Digits | None = None,
    eval_data: Digits | None = None,
    resolution: int | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, CompressReport]:
    """Compress a classifier with a recipe; the input module is not modified.

    Parameters
    ----------
    module : torch.nn.Module
        Takes ``(N, 1, R, R)`` images, returns ``(N, 10)`` logits. A module loaded from a ``.pt2``
        file (``torch.export``) trains in the mode it was exported in, normally eval: BatchNorm
        statistics stay frozen.
    recipe : Recipe, str, Path or list of dict
        Anything ``squeezer.recipe.load_recipe`` accepts.
    train_data, eval_data : Digits, optional
        Training uses ``train_data``'s train split, evaluation and early stopping use
        ``eval_data``'s test split; the digits at the model's resolution when omitted.
    resolution : int, optional
        Input side ``R``; inferred from the data, an exported graph's input, or by trying
        8, 16 and 32.
    progress : bool
        Show a ``rich`` progress bar per fine-tuning phase on stderr.

    Returns
    -------
    (torch.nn.Module, CompressReport)
        The compressed model in eval mode (a new one when distillation trains a new student)
        and the report.

    Raises
    ------
    RecipeError
        If the recipe is malformed or does not fit the model (the message names the entry).
    ModelLoadError
        If a model file the recipe names (a distillation teacher) cannot be loaded.
    InputError
        If the resolution cannot be inferred or does not match the data.
    """
    recipe = load_recipe(recipe)
    res = resolution or _resolution_of(module, train_data or eval_data)
    data = _data(train_data, eval_data, res)
    model = copy.deepcopy(module)
    lines: list[str] = []
    acc0, params0, bytes0 = evaluate(model, data=data), _params(model), _bytes(model, {})
    recipe_dir = recipe.source.parent if recipe.source is not None else None
    ctx = CompressContext(module, data, res, recipe_dir, lines.append)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        model, stored = run_recipe(recipe, model, ctx, bar)
    model.eval()
    report = CompressReport(
        accuracy_before=acc0,
        accuracy_after=evaluate(model, data=data),
        params_before=params0,
        params_after=_params(model),
        bytes_before=bytes0,
        bytes_after=_bytes(model, stored),
        log=tuple(lines),
    )
    return model, report


def compress_file(
    model_path: str | Path,
    recipe_path: str | Path,
    out_path: str | Path,
    *,
    data: str = "digits",
    progress: bool = True,
) -> CompressReport:
    """Compress a ``.pt2`` model file with a recipe file and write the result as ``.pt2``.

    Parameters
    ----------
    model_path : str or Path
        A ``torch.export.save`` file of a program with one ``(N, 1, R, R)`` input and a dynamic
        batch dimension. Exported graphs are in eval mode: BatchNorm stays frozen while training.
    recipe_path : str or Path
        A YAML recipe (see ``squeezer.recipe``).
    out_path : str or Path
        Where the compressed program is written (atomically), with a dynamic batch dimension.
    data : {"digits"}
        The dataset to fine-tune and evaluate on.
    progress : bool
        Show progress bars.

    Returns
    -------
    CompressReport

    Raises
    ------
    ModelLoadError
        If the model file is missing, not an exported program, or has a static batch size.
    RecipeError
        If the recipe is malformed or ``data`` is unknown.
    """
    if data != "digits":
        raise RecipeError(f"unknown data {data!r}; available: 'digits'")
    recipe = load_recipe(recipe_path)
    module = load_exported(model_path)
    res = _exported_resolution(module, Path(model_path))
    model, report = compress(module, recipe, resolution=res, progress=progress)
    _save_exported(model, Path(out_path), res)
    return report


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bytes(model: torch.nn.Module, stored: dict[str, int]) -> int:
    dense = {n: p.numel() * p.element_size() for n, p in model.named_parameters()}
    return sum({**dense, **stored}.values())


def _data(train_data: Digits | None, eval_data: Digits | None, res: int) -> Digits:
    for d in (train_data, eval_data):
        if d is not None and d.x_test.shape[-1] != res:
            raise InputError(
                f"data has {d.x_test.shape[-1]}x{d.x_test.shape[-1]} images, "
                f"the model takes {res}x{res}"
            )
    default = load_digits(res) if train_data is None or eval_data is None else None
    tr, ev = train_data or default, eval_data or default
    assert tr is not None and ev is not None
    return Digits(tr.x_train, tr.y_train, ev.x_test, ev.y_test)


def _graph_input_shape(module: torch.nn.Module) -> tuple[Any, ...] | None:
    if not isinstance(module, torch.fx.GraphModule):
        return None
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    val = inputs[0].meta.get("val") if len(inputs) == 1 else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _resolution_of(module: torch.nn.Module, data: Digits | None) -> int:
    if data is not None:
        return int(data.x_test.shape[-1])
    shape = _graph_input_shape(module)
    if shape is not None:
        return int(shape[-1])
    was_training = module.training
    module.eval()
    try:
        for side in (8, 16, 32):
            try:
                with torch.no_grad():
                    if tuple(module(torch.zeros(2, 1, side, side)).shape) == (2, 10):
                        return side
            except Exception:  # a wrong size fails in any layer, with any error type
                continue
    finally:
        module.train(was_training)
    raise InputError("cannot tell the model's input resolution: pass resolution= or data")


def _exported_resolution(module: torch.nn.Module, path: Path) -> int:
    shape = _graph_input_shape(module)
    if shape is None or len(shape) != 4:
        raise ModelLoadError(f"{path}: expected one image input (N, 1, R, R), got {shape}")
    if not isinstance(shape[0], torch.SymInt):
        raise ModelLoadError(
            f"{path}: the input has a static batch size {shape[0]}; compressing trains on batches, "
            "so export with a dynamic batch: dynamic_shapes=({0: torch.export.Dim('batch')},)"
        )
    if shape[1] != 1 or shape[2] != shape[3]:
        raise InputError(f"{path}: input shape {shape} does not take digits images (N, 1, R, R)")
    return int(shape[3])


def _save_exported(model: torch.nn.Module, out: Path, res: int) -> None:
    example = (torch.zeros(2, 1, res, res),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp.pt2")
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
