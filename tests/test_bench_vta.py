"""``squeezer bench vta`` on the tiny zoo shapes: rows, figures, goals, records, CLI and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squeezer import bench_vta
from squeezer.bench_vta import bench_vta as run_bench
from squeezer.bench_vta_cases import FORMATS, block_sparse, layer_for, quick_suite, suite_layers
from squeezer.bench_vta_report import evaluate_goals
from squeezer.targets.vta.tune import tune_layers


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    return run_bench(quick_suite(tiny=True), records=tmp_path_factory.mktemp("none"))


def test_block_sparse_zeroes_whole_blocks():
    rng = np.random.default_rng(0)
    w = rng.integers(1, 128, (40, 50, 3, 3))  # no zero weights before
    s = block_sparse(rng, w, 0.8, 16, 16)
    blocks = np.pad(s, ((0, 8), (0, 14), (0, 0), (0, 0))).reshape(3, 16, 4, 16, 3, 3)
    zero = (blocks == 0).all(axis=(1, 3, 4, 5))
    assert zero.sum() == round(0.8 * 12)
    # a block is zero over every kernel position or not at all
    assert ((s == 0) == np.repeat(np.repeat(zero, 16, 0), 16, 1)[:40, :50, None, None]).all()


def test_layers_are_deterministic_and_fit_their_cores():
    c = quick_suite(tiny=True).convs[0]
    for fmt in FORMATS:
        a, b = layer_for(c, fmt), layer_for(c, fmt)
        np.testing.assert_array_equal(a.weight, b.weight)
    assert set(np.unique(layer_for(c, "binary").weight)) == {-1, 1}
    assert layer_for(c, "int4w").weight.min() >= -8
    groups = suite_layers(quick_suite(tiny=True))
    assert set(groups) == {"1x16x16", "1x16x16-int4w", "1x16x16-binary"}
    assert len(groups["1x16x16"]) == 2 * len(quick_suite(tiny=True).convs)


def test_tiny_suite_rows_figures_goals(tiny_report):
    cases = tiny_report.extra["cases"]
    n = len(quick_suite(tiny=True).convs) * len(FORMATS)
    assert len(cases) == n and len(tiny_report.rows) == 3 * n
    for c in cases:
        f = c["figures"]
        assert set(f) == {"naive", "default", "tuned"}
        assert f["naive"]["knobs"] == {"tile_b": 1, "tile_h": 1, "tile_w": 1, "tile_co": 1,
                                       "tile_ci": 1, "virtual_threads": 1}
        assert f["naive"]["cycles"] > f["default"]["cycles"] > 0
        assert f["tuned"] == f["default"] and c["source"] == "default knobs: no record"
        for s in f.values():
            assert s["gemm_utilization"] == pytest.approx(s["gemm_ops"] / s["cycles"])
            assert s["dma_bytes"] == sum(s["dma_by_buffer"].values()) > 0
            assert s["time_us"] == pytest.approx(s["cycles"] / 200.0)  # 200 MHz presets
    sparse = [c for c in cases if c["fmt"] == "int8-sp80"]
    dense = {c["case"]: c for c in cases if c["fmt"] == "int8"}
    for c in sparse:  # fewer GEMM block operations with 80% of the blocks zero
        assert c["figures"]["default"]["gemm_ops"] < dense[c["case"]]["figures"]["default"][
            "gemm_ops"]
    goals = tiny_report.extra["goals"]
    assert [g["status"] in ("met", "missed", "not run") for g in goals] == [True] * 4
    naive = next(g for g in goals if "than naive" in g["goal"])
    assert naive["status"] == "met"  # the analytic default beats the one-block start
    assert next(g for g in goals if "analytic default" in g["goal"])["measured"] == 1.0
    assert len({g["goal"] for g in goals}) == 4


def test_goal_logic_on_synthetic_results():
    R = bench_vta.VtaResult

    def res(case, fmt, naive, default, tuned, util=0.8, compute=10, load=5, gemm=8):
        r = R(case, "resnet18", 3, 1, fmt, "1x16x16")
        for s, cyc in (("naive", naive), ("default", default), ("tuned", tuned)):
            r.figures[s] = {"cycles": cyc, "gemm_utilization": util, "gemm_ops": gemm,
                            "busy": {"load": load, "compute": compute, "store": 1}}
        return r

    goals = evaluate_goals([res("a", "int8", 1000, 300, 200), res("a", "int8-sp80", 900, 80, 60),
                            res("b", "int8", 1000, 300, 300, util=0.5, load=9, gemm=6),
                            res("b", "int8-sp80", 900, 290, 290),
                            res("c", "int8", 1000, 300, 300, compute=20, gemm=9),
                            res("c", "int8-sp80", 900, 290, 290)])
    util, sparse, naive, default = goals
    assert util["status"] == "missed" and util["measured"] == 0.5
    # b is load-bound (9 > 6 GEMM ops), c ALU-bound (20 - 9 > 9): only a counts, 200 / 60 >= 3
    assert sparse["status"] == "met" and sparse["measured"] == pytest.approx(200 / 60)
    assert naive["status"] == "met" and naive["measured"] == pytest.approx(900 / 290)
    assert default["status"] == "missed" and default["measured"] == 1.0


def test_records_reach_the_bench(tmp_path):
    suite = quick_suite(tiny=True)
    c = suite.convs[1]
    layer = layer_for(c, "int8")
    tune_layers([layer], "1x16x16", 8, tmp_path, per_iter=8)
    r = bench_vta.measure_layer(c, "int8", layer, "1x16x16", tmp_path, ("default", "tuned"))
    assert "naive" not in r.figures
    if r.source.startswith("record"):
        assert r.cycles("tuned") < r.cycles("default")
    else:
        assert r.source == "default knobs: best of 9 records not faster"  # 8 + the default
        assert r.cycles("tuned") == r.cycles("default")


def test_cli_quick_json(tmp_path, monkeypatch):
    from squeezer.cli import main

    monkeypatch.setattr(bench_vta, "quick_suite", lambda: quick_suite(tiny=True))
    out = tmp_path / "vta.json"
    assert main(["bench", "vta", "--quick", "--config", "1x16x16", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["suite"] == "vta" and data["config"] == "1x16x16"
    assert len(data["rows"]) == 3 * len(data["cases"]) and len(data["goals"]) == 4
