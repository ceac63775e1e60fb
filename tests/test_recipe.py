"""Recipe loading and validation, and the compression-method registry."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pydantic import Field

from squeezer.errors import RecipeError
from squeezer.passes.compress import (
    Method,
    TensorwiseSettings,
    base,
    get_method,
    methods,
    register_method,
)
from squeezer.passes.compress.distill import Distill, DistillSettings, ModelRef
from squeezer.passes.compress.finetune import Finetune, FinetuneSettings
from squeezer.recipe import Recipe, load_recipe


class _SparsitySettings(TensorwiseSettings):
    per_tensor: ClassVar[tuple[str, ...]] = ("sparsity",)
    sparsity: float = Field(0.5, ge=0, le=1)
    scope: str = "all"


@pytest.fixture
def tensorwise(monkeypatch: pytest.MonkeyPatch) -> type[Method]:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register_method("toy_prune")
    class ToyPrune(Method[_SparsitySettings]):
        Settings = _SparsitySettings

    return ToyPrune


def test_registry_lists_builtin_methods() -> None:
    assert {"finetune", "distill"} <= set(methods())
    assert methods() == sorted(methods())
    assert get_method("finetune") is Finetune and Finetune.Settings is FinetuneSettings
    assert get_method("distill") is Distill and Distill.Settings is DistillSettings


def test_register_rejects_a_second_class_under_a_taken_name(tensorwise: type[Method]) -> None:
    assert "toy_prune" in methods()
    with pytest.raises(ValueError, match="toy_prune.*already registered"):

        @register_method("toy_prune")
        class Other(Method[_SparsitySettings]):
            Settings = _SparsitySettings


def test_defaults_and_python_list() -> None:
    recipe = load_recipe([{"method": "finetune", "epochs": 2}, {"method": "distill"}])
    assert [e.method for e in recipe] == ["finetune", "distill"]
    ft, kd = recipe.entries[0].settings, recipe.entries[1].settings
    assert isinstance(ft, FinetuneSettings) and ft.epochs == 2 and ft.optimizer == "adam"
    assert isinstance(kd, DistillSettings) and kd.teacher is None and kd.temperature == 4.0
    assert recipe.source is None and load_recipe(recipe) is recipe


@pytest.mark.parametrize(
    ("items", "parts"),
    [
        (
            [{"method": "prune"}],
            ["recipe[0]", "unknown method 'prune'", "known methods:", "finetune", "magnitude"],
        ),
        (
            [{"method": "finetune"}, {"method": "finetune", "epoch": 3}],
            ["recipe[1] (finetune)", "unknown field 'epoch'", "did you mean 'epochs'"],
        ),
        (
            [{"method": "finetune", "epochs": "five"}],
            ["recipe[0] (finetune)", "field 'epochs'", "valid integer", "got 'five' (str)"],
        ),
        (
            [{"method": "finetune", "optimizer": "rmsprop"}],
            ["recipe[0] (finetune)", "field 'optimizer'", "'adam' or 'sgd'", "got 'rmsprop'"],
        ),
        (
            [{"method": "distill", "temperature": 0}],
            ["recipe[0] (distill)", "field 'temperature'", "greater than 0", "got 0 (int)"],
        ),
        (
            [{"method": "distill", "student": {"zoo": "mobilenetv2", "widht": 0.5}}],
            ["recipe[0] (distill)", "unknown field 'student.widht'", "did you mean 'width'"],
        ),
        (
            [{"method": "distill", "student": {"zoo": "no_such_net"}}],
            ["recipe[0] (distill)", "student", "no_such_net", "mobilenetv2"],
        ),
        (
            [{"method": "distill", "teacher": {"zoo": "mobilenet", "path": "t.pt2"}}],
            ["recipe[0] (distill)", "teacher", "exactly one of 'zoo'"],
        ),
        ([{"epochs": 3}], ["recipe[0]", "missing 'method'", "known methods:", "distill", "nm"]),
        (["finetune"], ["recipe[0]", "mapping", "got 'finetune' (str)"]),
        ([], ["no methods"]),
        ({"method": "finetune"}, ["list of methods", "(dict)"]),
    ],
)
def test_bad_entries_name_what_and_where(items: object, parts: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(items)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_yaml_round_trip(tmp_path: Path) -> None:
    items = [
        {"method": "finetune", "epochs": 3, "lr": 0.01, "patience": 2},
        {"method": "distill", "student": {"zoo": "mobilenetv2", "width": 0.25}, "alpha": 0.5},
        {"method": "distill", "teacher": "models/teacher.pt2", "temperature": 2.0},
    ]
    recipe = load_recipe(items)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again.entries == recipe.entries and again.source == path
    assert again.to_list() == recipe.to_list()
    assert again.to_list()[1] == {
        "method": "distill",
        "alpha": 0.5,
        "student": {"zoo": "mobilenetv2", "width": 0.25},
    }
    ref = again.entries[2].settings.teacher  # type: ignore[attr-defined]
    assert ref == ModelRef(path=Path("models/teacher.pt2"))


def test_yaml_top_level_list(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text("- method: finetune\n  epochs: 1\n")
    assert load_recipe(str(path)).to_list() == [{"method": "finetune", "epochs": 1}]


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("recipe:\n  - method: finetune\n  - method: finetune\n    epochs: [1\n")
    with pytest.raises(RecipeError, match=rf"^{path}:\d+:\d+: YAML syntax error"):
        load_recipe(path)
    path.write_text("recipe:\n  - method: finetune\n\n  - method: finetune\n    lr: x\n")
    with pytest.raises(RecipeError, match=rf"^{path}:4: recipe\[1\] \(finetune\): field 'lr'"):
        load_recipe(path)
    path.write_text("methods:\n  - method: finetune\n")
    with pytest.raises(RecipeError, match=r"exactly one key, 'recipe'.*\['methods'\]"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="missing.yaml: no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_per_tensor_settings_override_defaults(tensorwise: type[Method]) -> None:
    items = [
        {
            "method": "toy_prune",
            "sparsity": 0.5,
            "tensors": {"0.weight": {"sparsity": 0.9}, "*.bias": {"sparsity": 0.0}},
        }
    ]
    s = load_recipe(items).entries[0].settings
    assert isinstance(s, _SparsitySettings)
    assert s.for_tensor("0.weight").sparsity == 0.9
    assert s.for_tensor("2.bias").sparsity == 0.0
    assert s.for_tensor("2.weight").sparsity == 0.5 and s.for_tensor("2.weight") is s
    assert s.for_tensor("0.weight").scope == "all"


@pytest.mark.parametrize(
    ("tensors", "parts"),
    [
        ({"0.weight": {"scope": "x"}}, ["tensors['0.weight']", "per-tensor field 'scope'"]),
        ({"0.weight": {"sparsity": 2}}, ["tensors['0.weight'].sparsity", "less than or equal"]),
    ],
)
def test_bad_per_tensor_settings(tensorwise: type[Method], tensors: dict, parts: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe([{"method": "toy_prune", "tensors": tensors}])
    for part in ["recipe[0] (toy_prune)", *parts]:
        assert part in str(info.value)


def test_per_tensor_names_must_exist(tensorwise: type[Method]) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    ok = tensorwise(_SparsitySettings(tensors={"0.*": {"sparsity": 0.1}}))
    ok.check_tensors(model)
    typo = tensorwise(_SparsitySettings(tensors={"0.wieght": {"sparsity": 0.1}}))
    with pytest.raises(RecipeError, match="'0.wieght' matches no tensor"):
        typo.check_tensors(model)


def test_recipe_is_immutable() -> None:
    recipe = load_recipe([{"method": "finetune"}])
    assert isinstance(recipe, Recipe)
    with pytest.raises(Exception, match="frozen"):
        recipe.entries[0].settings.epochs = 3  # type: ignore[misc]
