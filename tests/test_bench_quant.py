"""``squeezer bench quant``: the quick suite (the MLP with int8 PTQ, TWN and XNOR-Net) through the
Python API, its rows, goals and JSON; the full suite's rows; failures as rows with the reason; the
goals' arithmetic."""

from __future__ import annotations

import json

import pytest

from squeezer.bench import write_json
from squeezer.bench_prune import DenseModel
from squeezer.bench_quant import Fp32Model, QuantResult, bench_quant, quant_row
from squeezer.bench_quant_cases import QuantMethodCase, QuantModelCase, full_suite, quick_suite
from squeezer.bench_quant_report import evaluate_goals
from squeezer.bench_sparse_peers import Bench

THREADS = 2
MLP = "mlp"

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quick():
    return bench_quant(quick_suite(), THREADS, repeat=5, budget_s=0.02)


def test_quick_rows_accuracy_latency_and_size(quick, digits):
    results = quick.extra["results"]
    assert [(r["model"], r["method"]) for r in results] == [
        (MLP, m.label) for m in quick_suite().methods]
    one_image = 1 / len(digits.y_test)
    for r in results:
        assert r["error"] == "", r
        for key in ("acc_fp32", "acc_quant", "acc_compiled"):
            assert 0 <= r[key] <= 1, (key, r)
        assert r["acc_fp32"] >= 0.95
        assert r["delta_points"] == pytest.approx(100 * (r["acc_quant"] - r["acc_fp32"]))
        # the compiled model classifies as torch does, within one test image
        assert r["compiled_disagree"] <= 1
        assert abs(r["acc_compiled"] - r["acc_quant"]) <= one_image + 1e-9
        assert r["ratio"] > 0 and r["ratio"] == pytest.approx(r["ms_fp32"] / r["ms_quant"])
        assert r["size_ratio"] == pytest.approx(r["bytes_fp32"] / r["bytes_quant"])
        assert r["param_bytes_quant"] < r["param_bytes_fp32"]
        assert r["float_ops"] >= 0
    int8, twn, xnor = results
    assert int8["bits_weights"] == "8" and int8["ptq"]
    assert int8["bytes_quant"] < int8["bytes_fp32"]  # the .sqz files on disk
    assert int8["float_ops"] == 0 and int8["float_fallback"] == []  # the MLP is integer
    assert twn["param_bytes_quant"] < int8["param_bytes_quant"]
    assert xnor["acc_quant"] >= 0.9  # hardtanh before the binarized layer: it trains
    # one timing row per implementation and method row, each with a positive median
    assert len(quick.rows) == 2 * len(results)
    assert all(row.median_ms > 0 and row.threads == THREADS for row in quick.rows)
    model = quick.extra["models"][MLP]
    assert model["accuracy"] == int8["acc_fp32"] and "hardtanh" in model["model"]
    assert abs(model["accuracy_compiled"] - model["accuracy"]) <= one_image + 1e-9
    assert model["artifact_bytes"] == int8["bytes_fp32"] == twn["bytes_fp32"]


def test_quick_json_tables_and_goals(quick, tmp_path):
    out = tmp_path / "quant.json"
    write_json(quick.rows, out, extra=quick.extra)
    doc = json.loads(out.read_text())
    assert doc["suite"] == "quant" and doc["threads"] == THREADS
    assert len(doc["results"]) == 3 and len(doc["rows"]) == 6
    assert doc["models"][MLP]["accuracy"] >= 0.95
    goals = {g["goal"]: g for g in doc["goals"]}
    assert len(goals) == 2 and {g["status"] for g in goals.values()} <= {"met", "missed"}
    agree = goals["compiled model classifies as the torch quantized model"]
    assert agree["status"] == "met", agree
    # rows, notes (only when a row has one: an operator left in float, a warning, an error), goals
    noted = [r for r in doc["results"]
             if r["float_fallback"] or r["warnings"] or r["notes"] or r["error"]]
    counts = [t.row_count for t in quick.tables]
    assert counts == ([3, len(noted), 2] if noted else [3, 2])
    # TWN's ternary linear layers at batch 1 run on the bit-mask kernel, not decoded to float
    assert doc["results"][1]["float_ops"] == 0, doc["results"][1]["float_fallback"]


def test_full_suite_rows_and_the_cli_registration():
    from squeezer.cli import bench_suites

    suite = full_suite()
    methods = {m.method for m in suite.methods}
    assert methods == {"int8", "int4", "dynamic8", "twn", "bwn", "xnor", "bnn", "horq", "inq"}
    assert [m.label for m in suite.methods if m.ptq] == ["int8 ptq minmax", "int8 ptq percentile",
                                                      "int8 ptq kl"]
    assert [m.name for m in suite.models] == ["mlp", "resnet18"]
    assert "hardtanh" in suite.models[0].description
    for m in suite.methods:  # QAT everywhere but the post-training rows
        epochs = m.recipe[0].get("epochs", 0)
        assert (epochs == 0) == (m.ptq or m.method == "dynamic8"), m.label
    rec = suite.methods[0].recipe_for(suite.models[0])
    rec[0]["calibration"] = "kl"  # a copy: the case is unchanged
    assert suite.methods[0].recipe[0]["calibration"] == "minmax"
    assert "quant" in bench_suites()


def test_a_failing_method_is_a_row_with_the_reason(digits, tmp_path):
    case = QuantModelCase("mlp", 0)
    dense = DenseModel(case, case.build(), 0.1, None, "not compiled", 0.0)
    bad = QuantMethodCase("bad layers", ({"method": "twn", "layers": ["nope*"]},), "2", "32")
    res = quant_row(Bench(THREADS, repeat=5, budget_s=0.01), Fp32Model(dense, None, None), bad,
                    digits, tmp_path)
    assert res.error.startswith("compress: RecipeError") and "nope*" in res.error
    assert res.acc_quant is None and res.acc_fp32 == 0.1
    assert [g["status"] for g in evaluate_goals([res])] == ["not run", "not run"]


def _row(method: str, ptq: bool, fp32: float, quant: float, compiled: float,
         disagree: int) -> QuantResult:
    return QuantResult("m", method, [], "8", "8", ptq, acc_fp32=fp32, acc_quant=quant,
                       acc_compiled=compiled, compiled_disagree=disagree)


def test_goals_take_the_worse_of_torch_and_compiled():
    ok = _row("int8 ptq minmax", True, 0.970, 0.966, 0.966, 0)  # -0.4 points
    compiled_worse = _row("int8 ptq kl", True, 0.970, 0.968, 0.964, 1)  # compiled -0.6
    qat = _row("int8 qat", False, 0.970, 0.900, 0.900, 0)  # not a PTQ row: no goal
    ptq_goal, agree = evaluate_goals([ok, qat])
    assert ptq_goal["status"] == "met" and agree["status"] == "met"
    ptq_goal, _ = evaluate_goals([ok, compiled_worse])
    assert ptq_goal["status"] == "missed" and "int8 ptq kl -0.60" in ptq_goal["detail"]
    _, agree = evaluate_goals([_row("twn", False, 0.97, 0.96, 0.955, 2)])
    assert agree["status"] == "missed" and "2 images" in agree["detail"]
