"""Compression recipes: an ordered list of methods with their settings.

A recipe is a list of mappings, each with a ``method`` key (a name from
``squeezer.passes.compress.methods()``) and that method's settings; settings left out take the
method's defaults. In Python::

    [{"method": "finetune", "epochs": 5}, {"method": "distill", "temperature": 4.0}]

In YAML, the same list at the top level or under a single top-level ``recipe:`` key::

    recipe:
      - method: distill
        student: {zoo: mobilenetv2, width: 0.5}
        epochs: 20
      - method: finetune
        epochs: 3
        patience: 2

Entries are named ``recipe[i]`` (0-based) in errors, which are one-line ``RecipeError`` messages
with the file and line when the recipe came from a file. ``run_recipe`` runs the methods'
lifecycle (``squeezer.passes.compress.base``); ``squeezer.compress`` (defined in
``squeezer.compression``) is the public entry point.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import yaml
from pydantic import BaseModel, ValidationError
from rich.progress import Progress

from squeezer.data import cross_entropy, evaluate, train
from squeezer.errors import RecipeError, SqueezerError
from squeezer.passes.compress import CompressContext, Method, MethodSettings, get_method, methods

__all__ = ["Recipe", "RecipeEntry", "load_recipe", "run_recipe"]


@dataclass(frozen=True)
class RecipeEntry:
    """One method of a recipe with its validated settings."""

    method: str
    settings: MethodSettings

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in a recipe, settings at their defaults left out."""
        settings = self.settings.model_dump(mode="json", exclude_defaults=True)
        return {"method": self.method, **settings}


@dataclass(frozen=True)
class Recipe:
    """An ordered, validated list of compression methods.

    Attributes
    ----------
    entries : tuple of RecipeEntry
    source : Path or None
        The YAML file it was read from; relative paths in settings are resolved against its
        directory.
    """

    entries: tuple[RecipeEntry, ...]
    source: Path | None = None

    def __iter__(self) -> Iterator[RecipeEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_list(self) -> list[dict[str, Any]]:
        """The recipe as a Python list of dicts (``load_recipe`` accepts it back)."""
        return [e.to_dict() for e in self.entries]

    def to_yaml(self) -> str:
        """The recipe as YAML text under a top-level ``recipe:`` key."""
        return yaml.safe_dump({"recipe": self.to_list()}, sort_keys=False)


def load_recipe(recipe: str | Path | Sequence[Mapping[str, Any]] | Recipe) -> Recipe:
    """Read and validate a recipe.

    Parameters
    ----------
    recipe : str, Path, list of dict or Recipe
        A YAML file path, or the list itself (see the module docstring for the format).

    Returns
    -------
    Recipe

    Raises
    ------
    RecipeError
        Missing file, YAML syntax error (file, line and column), or a bad entry: unknown method
        (the known ones are listed), unknown field, missing field or wrong type (field, expected,
        got), each naming the entry as ``recipe[i] (method)``.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str | Path):
        return _load_file(Path(recipe))
    if isinstance(recipe, Mapping) or not isinstance(recipe, Sequence):
        raise RecipeError(f"recipe must be a list of methods or a file path, got {_kind(recipe)}")
    return _validate(recipe, None, [])


def _load_file(path: Path) -> Recipe:
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{where}: YAML syntax error: {problem}") from None
    if isinstance(doc, dict):
        if set(doc) != {"recipe"}:
            raise RecipeError(
                f"{path}: a mapping at the top level needs exactly one key, 'recipe' "
                f"(the list of methods); got keys {sorted(map(str, doc))}"
            )
        doc = doc["recipe"]
        root = root.value[0][1] if root is not None else None
    if not isinstance(doc, list):
        raise RecipeError(f"{path}: expected a list of methods, got {_kind(doc)}")
    lines = [item.start_mark.line + 1 for item in root.value] if root is not None else []
    return _validate(doc, path, lines)


def _validate(items: Sequence[Any], source: Path | None, lines: list[int]) -> Recipe:
    if len(items) == 0:
        raise RecipeError(f"{source or 'recipe'}: the recipe has no methods")
    entries = []
    for i, item in enumerate(items):
        where = f"{source}:{lines[i]}: " if source is not None else ""
        entries.append(_entry(item, f"{where}recipe[{i}]"))
    return Recipe(tuple(entries), source)


def _entry(item: Any, where: str) -> RecipeEntry:
    known = ", ".join(methods())
    if not isinstance(item, Mapping):
        raise RecipeError(f"{where}: expected a mapping with a 'method' key, got {_kind(item)}")
    name = item.get("method")
    if not isinstance(name, str):
        raise RecipeError(f"{where}: missing 'method' (a string); known methods: {known}")
    try:
        cls = get_method(name)
    except KeyError:
        hint = _did_you_mean(name, methods())
        raise RecipeError(
            f"{where}: unknown method {name!r}{hint}; known methods: {known}"
        ) from None
    fields = {k: v for k, v in item.items() if k != "method"}
    try:
        settings = cls.Settings.model_validate(fields)
    except ValidationError as err:
        problems = "; ".join(_describe(e, cls.Settings) for e in err.errors())
        raise RecipeError(f"{where} ({name}): {problems}") from None
    return RecipeEntry(name, settings)


def _describe(error: Any, settings: type[BaseModel]) -> str:
    loc = error["loc"]
    field = "".join(f"[{p!r}]" if isinstance(p, int) or "." in str(p) else f".{p}" for p in loc)
    field = field.lstrip(".")
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        names = sorted(_model_at(settings, loc[:-1]).model_fields)
        hint = _did_you_mean(str(loc[-1]), names)
        return f"unknown field {field!r}{hint}; known fields: {', '.join(names)}"
    if kind == "missing":
        return f"missing field {field!r}"
    if kind in ("value_error", "assertion_error"):
        text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{field}: {text}" if field else text
    expected = msg.removeprefix("Input should be ")
    if kind.endswith(("_parsing", "_from_float")):  # drop pydantic's "unable to parse ..." tail
        expected = expected.split(", ")[0]
    if kind.startswith(("greater_than", "less_than")):
        expected = f"a value {expected}"
    return f"field {field!r} expects {expected}, got {_kind(error.get('input'))}"


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        hint = field.annotation if field is not None else None
        models = [a for a in (hint, *get_args(hint)) if isinstance(a, type)]
        models = [a for a in models if issubclass(a, BaseModel)]
        if not models:
            break
        cls = models[0]
    return cls


def _did_you_mean(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def run_recipe(
    recipe: Recipe, model: torch.nn.Module, ctx: CompressContext, progress: Progress
) -> tuple[torch.nn.Module, dict[str, int]]:
    """Run the methods' lifecycle (``squeezer.passes.compress.base``) over ``model``.

    Returns the final model and the stored bytes the methods report for the tensors they
    compressed. ``progress`` gets one task per fine-tuning phase (it may be disabled).
    """
    active: list[Method[Any]] = []
    for i, entry in enumerate(recipe):
        where = f"recipe[{i}] ({entry.method})"
        method = get_method(entry.method)(entry.settings)
        try:
            method.check_tensors(model)
            prepared = method.prepare(model, _prefixed(ctx, where))
        except SqueezerError as err:
            raise type(err)(f"{where}: {err}") from err
        if prepared is not model:
            for old in active:  # the replaced model is finished
                old.squash(model)
            active, model = [], prepared
        active.append(method)
        if method.phase is not None:
            _train_phase(where, method, active, model, _prefixed(ctx, where), progress)
    for method in active:
        model = method.squash(model)
    stored: dict[str, int] = {}
    for method in active:
        stored.update(method.stored_bytes(model))
    return model, stored


def _prefixed(ctx: CompressContext, where: str) -> CompressContext:
    log = ctx.log
    return dataclasses.replace(ctx, log=lambda line: log(f"{where}: {line}"))


def _train_phase(
    where: str,
    owner: Method[Any],
    active: list[Method[Any]],
    model: torch.nn.Module,
    ctx: CompressContext,
    progress: Progress,
) -> None:
    s = owner.phase
    assert s is not None
    regularizers = [m for m in active if m is not owner and m.phase is None]
    batches = math.ceil(len(ctx.data.x_train) / s.batch_size)
    task = progress.add_task(where, total=s.epochs * batches, status="")

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = owner.loss_term(model, x, y)
        loss = cross_entropy(model, x, y) if loss is None else loss
        for m in regularizers:
            term = m.loss_term(model, x, y)
            loss = loss if term is None else loss + term
        progress.advance(task)
        return loss

    history: list[float] = []

    def on_epoch(epoch: int, loss: float, acc: float) -> None:
        for m in active:
            m.step(model, epoch, s.epochs)
        history.append(loss)
        progress.update(task, status=f"epoch {epoch + 1}/{s.epochs} loss {loss:.3f} acc {acc:.3f}")

    before = evaluate(model, data=ctx.data)
    train(
        model, s.epochs, data=ctx.data, lr=s.lr, batch_size=s.batch_size,
        optimizer=s.optimizer, weight_decay=s.weight_decay, loss_fn=loss_fn,
        patience=s.patience, seed=s.seed, on_epoch=on_epoch,
    )  # fmt: skip
    progress.update(task, completed=s.epochs * batches)
    early = " (early stop)" if len(history) < s.epochs else ""
    ctx.log(
        f"{len(history)} epochs{early}, last loss {history[-1]:.4f}, "
        f"accuracy {before:.4f} -> {evaluate(model, data=ctx.data):.4f}"
    )
