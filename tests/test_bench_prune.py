"""``squeezer bench prune``: the quick suite (the MLP, three methods) through the Python API,
its rows, goals and JSON; the full suite's rows; failures as rows with the reason."""

from __future__ import annotations

import json

import pytest

from squeezer.bench import write_json
from squeezer.bench_prune import DenseModel, bench_prune, prune_row
from squeezer.bench_prune_cases import (
    DATAFREE,
    ModelCase,
    achieved,
    full_suite,
    pruned_tensors,
    quick_suite,
)
from squeezer.bench_prune_report import evaluate_goals
from squeezer.bench_sparse_peers import Bench

THREADS = 2

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quick():
    return bench_prune(quick_suite(), THREADS, repeat=5, budget_s=0.02)


def test_quick_rows_accuracy_sparsity_and_ratio(quick):
    results = quick.extra["results"]
    suite = quick_suite()
    assert [(r["model"], r["method"]) for r in results] == [
        ("mlp", m.label) for m in suite.methods]
    for r in results:
        assert r["error"] == "", r
        assert 0 <= r["acc_dense"] <= 1 and 0 <= r["acc_pruned"] <= 1
        assert r["acc_dense"] >= 0.95
        assert r["delta_points"] == pytest.approx(100 * (r["acc_pruned"] - r["acc_dense"]))
        assert abs(r["achieved"] - r["requested"]) <= 0.01
        assert r["ratio"] > 0 and r["ratio"] == pytest.approx(r["ms_dense"] / r["ms_pruned"])
        assert 0 < r["bytes_pruned"] < r["bytes_dense"]
    # one timing row per implementation and method row, each with a positive median
    assert len(quick.rows) == 2 * len(results)
    assert all(row.median_ms > 0 and row.threads == THREADS for row in quick.rows)
    goals = {g["goal"]: g for g in quick.extra["goals"]}
    reached = goals["every method reaches its requested sparsity"]
    assert reached["status"] == "met", reached
    assert all(g["status"] in ("met", "missed") for g in goals.values())


def test_quick_json_and_tables(quick, tmp_path):
    out = tmp_path / "prune.json"
    write_json(quick.rows, out, extra=quick.extra)
    doc = json.loads(out.read_text())
    assert doc["suite"] == "prune" and doc["threads"] == THREADS
    assert len(doc["results"]) == 3 and len(doc["rows"]) == 6
    assert doc["models"]["mlp"]["accuracy"] >= 0.95
    assert {g["status"] for g in doc["goals"]} <= {"met", "missed", "not run"}
    assert len(quick.tables) == 2 and quick.tables[0].row_count == 3


def test_full_suite_rows():
    suite = full_suite()
    labels = [m.label for m in suite.methods]
    methods = {m.recipe[0]["method"] for m in suite.methods}
    assert methods == {"magnitude", "nm", "block", "dns", "obd", "obs", "datafree",
                       "density_diversity", "guided"}
    assert {"nm 2:4", "nm 1:4"} <= set(labels)
    assert [m.name for m in suite.models] == ["mlp", "mobilenetv2", "resnet18"]
    for m in suite.methods:
        if m.label.startswith("nm"):
            continue
        for model in suite.models:
            if m.applies_to(model.name) and m.recipe[0]["method"] != "guided":
                assert m.requested_for(model) == 0.8
                assert m.recipe_for(model)[0].get("sparsity") == 0.8
    # the cases' recipes are copies: editing one changes no other row
    mlp = suite.models[0]
    suite.methods[0].recipe_for(mlp)[0]["sparsity"] = 0.1
    assert suite.methods[0].recipe[0]["sparsity"] == 0.8


def test_achieved_neuron_share_and_a_failure_is_a_row(digits):
    import torch

    model = ModelCase("mlp", 0).build()
    entry = {"method": "magnitude", "sparsity": 0.5}
    with torch.no_grad():
        model[1].weight[:128] = 0  # 128 of 512 neurons gone
        model[3].weight[:, :128] = 0
    tensors = pruned_tensors(model, entry)
    assert tensors == ["1.weight", "3.weight", "5.weight"]
    neurons, weights = achieved(model, tensors, "neurons")
    assert neurons == pytest.approx(128 / 512)  # 3.weight lost input columns only
    assert weights == pytest.approx((128 * 64 + 256 * 128) / (512 * 64 + 256 * 512 + 10 * 256))
    # datafree on a model without a pair of layers linked by elementwise ops (a BatchNorm after
    # every convolution): a row with the reason
    case = ModelCase("resnet18", 0)
    dense = DenseModel(case, case.build(), 0.1, None, "not compiled", 0.0)
    res = prune_row(Bench(THREADS, repeat=5, budget_s=0.01), dense, DATAFREE, digits)
    assert res.error.startswith("compress: RecipeError") and res.acc_pruned is None
    goals = evaluate_goals([res])
    assert [g["status"] for g in goals] == ["not run", "not run"]
