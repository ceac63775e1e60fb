"""``squeezer bench sparse``: the quick suite on tiny shapes, its JSON, every peer or a reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squeezer.bench import write_json
from squeezer.bench_sparse import PEERS, Bench, bench_sparse
from squeezer.bench_sparse_cases import (
    full_suite,
    prune,
    prune_model_,
    quick_suite,
    spread,
)

THREADS = 2


@pytest.fixture(scope="module")
def tiny_report():
    return bench_sparse(quick_suite(tiny=True), THREADS, repeat=3, budget_s=0.005)


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4)])
@pytest.mark.parametrize("sparsity", [0.7, 0.9, 0.95])
def test_prune_exact_share_of_whole_blocks(block, sparsity):
    w = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    got = prune(w, sparsity, block)
    br, bc = block
    blocks = (got != 0).reshape(64 // br, br, 96 // bc, bc).any(axis=(1, 3))
    assert (~blocks).sum() == round(sparsity * blocks.size)
    kept = np.repeat(np.repeat(blocks, br, 0), bc, 1)
    np.testing.assert_array_equal(got[kept], w[kept])  # kept blocks keep every value
    # magnitude: every dropped block is no larger (L1) than any kept one
    l1 = np.abs(w).reshape(64 // br, br, 96 // bc, bc).sum(axis=(1, 3))
    assert l1[~blocks].max() <= l1[blocks].min()


def test_prune_rejects_blocks_that_do_not_tile():
    with pytest.raises(ValueError, match="does not tile"):
        prune(np.ones((20, 8), np.float32), 0.5, (16, 1))


def test_prune_model_prunes_pointwise_and_linear_only():
    from squeezer import zoo

    model = zoo.create("mobilenetv2", "small")
    n = prune_model_(model, 0.9)
    pointwise = [m for m in model.modules() if getattr(m, "kernel_size", None) == (1, 1)]
    assert n == len(pointwise) + 1
    for m in [*pointwise, model.classifier[-1]]:
        assert (m.weight == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)


def test_spread():
    assert spread([1, 2, 3, 4, 5], 3) == [1, 3, 5]
    assert spread([1, 2, 3, 4, 5], 1) == [3]
    assert spread([1, 2], 3) == [1, 2]


def test_full_suite_cases():
    suite = full_suite()
    assert len(suite.kernels) == 3 * 2 * 4 * 2
    assert {(c.n, c.k) for c in suite.kernels} == {(768, 768), (3072, 768), (768, 3072)}
    assert {c.kernel for c in suite.convs} == {1, 3}
    downsample = [c for c in suite.convs if c.model == "resnet18" and c.kernel == 1]
    assert downsample and all(c.stride == 2 for c in downsample)
    mbv2 = {c.group for c in suite.convs if c.model == "mobilenetv2"}
    assert len(mbv2) == 3
    assert [e.name for e in suite.e2e] == ["mobilenetv2-full 90% 1x1+linear"]


def test_quick_suite_holds_every_goal_case():
    from squeezer.bench_sparse_report import GOALS

    suite = quick_suite()
    names = {c.name for c in suite.kernels} | {e.name for e in suite.e2e}
    assert {g.case for g in GOALS} <= names
    assert any(c.batch == 1 and c.sparsity == 0.9 for c in suite.kernels)  # the bound goal


def test_a_failing_peer_becomes_a_reason():
    def broken():
        raise RuntimeError("no such kernel\nsecond line")

    b = Bench(THREADS)
    assert b.measure("case", "peer", broken) == "RuntimeError: no such kernel"
    assert b.rows == []


def test_alternating_rounds_give_one_row_per_peer():
    b = Bench(THREADS, repeat=5, budget_s=0.003)
    got = b.measure_rounds("case", {"a": lambda: lambda: sum(range(100)),
                                    "b": lambda: 1 / 0})
    assert isinstance(got["a"], float) and got["b"].startswith("ZeroDivisionError")
    assert [(r.impl, r.note) for r in b.rows] == [("a", "median of 3 alternating rounds")]
    assert b.budget_s == 0.003


def test_quick_suite_json_has_every_peer_or_a_reason(tiny_report, tmp_path):
    path = tmp_path / "sparse.json"
    write_json(tiny_report.rows, path, extra=tiny_report.extra)
    data = json.loads(path.read_text())
    assert {"rows", "cases", "goals", "peers", "threads", "memory_bandwidth_gbps", "wall_s",
            "other_processes_cpu_s"} <= set(data)
    assert data["other_processes_cpu_s"] is None or data["other_processes_cpu_s"] >= 0
    assert data["threads"] == THREADS and data["memory_bandwidth_gbps"] > 0
    for r in data["rows"]:
        assert set(r) == {"case", "impl", "median_ms", "min_ms", "max_ms", "threads", "note"}
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["threads"] == (1 if r["impl"] == "scipy-csr" else THREADS)
    assert {c["section"] for c in data["cases"]} == {"kernel", "conv", "e2e"}
    for c in data["cases"]:
        peers = set(data["peers"][c["section"]])
        assert set(c["ms"]) | set(c["missing"]) == peers, c["case"]
        assert not set(c["ms"]) & set(c["missing"])
        assert all(isinstance(v, str) and v for v in c["missing"].values())
    # on tiny shapes every peer runs: a reason here is a bug, not a limitation
    assert [c["missing"] for c in data["cases"] if c["missing"]] == []
    timed = {(r["case"], r["impl"]) for r in data["rows"]}
    for c in data["cases"]:
        assert ((c["case"], "squeezer") in timed)
        for impl in set(c["ms"]) - {"squeezer"}:  # dense peers are timed once per shape
            assert (c["case"], impl) in timed or (c["group"], impl) in timed


def test_quick_suite_bounds_notes_and_goals(tiny_report):
    cases = tiny_report.extra["cases"]
    for c in (c for c in cases if c["section"] == "kernel"):
        assert c["info"]["bound_ms"] > 0 and c["info"]["stored_bytes"] > 0
        assert c["info"]["compile_format"] in {"dense", "bsr1x1", "bsr16x1", "bsr1x4",
                                               "bsr4x1", "bsr8x1", "bsr4x4"}
    convs = [c for c in cases if c["section"] == "conv"]
    assert {c["info"]["kernel"] for c in convs} == {1, 3}
    for c in convs:  # the note says what ran, read from the compiled model
        sparse = c["info"]["sparse_layers"] > 0
        assert c["note"].startswith("sparse: ") == sparse, c
        assert sparse or "dense" in c["note"], c
    goals = tiny_report.extra["goals"]
    assert len(goals) == 5
    assert all(g["status"] in {"met", "missed", "not run"} for g in goals)
    # the tiny suite has no BERT shape and no full-size model; its batch-1 cases have a bound
    assert [g["status"] for g in goals[:4]] == ["not run"] * 4
    assert goals[4]["status"] in {"met", "missed"}


def test_tables_render(tiny_report):
    from rich.console import Console

    con = Console(record=True, width=240)
    for t in tiny_report.tables:
        con.print(t)
    text = con.export_text()
    for needle in ("sparse kernels", "sparse convolutions", "end to end", "goals", "bound",
                   "other processes used"):
        assert needle in text
    # every cell under its own header: a row with more cells than headers adds blank columns
    for t in tiny_report.tables:
        assert all(str(col.header) for col in t.columns), t.title
    by_case = {c["case"]: c for c in tiny_report.extra["cases"]}
    for t in tiny_report.tables:
        headers = [str(col.header) for col in t.columns]
        if "sq dense" not in headers:
            continue
        for r, case in enumerate(t.columns[0]._cells):
            ms = by_case[case]["ms"].get("squeezer-dense")
            if ms is not None:
                cell = t.columns[headers.index("sq dense")]._cells[r]
                assert float(cell) == pytest.approx(ms, rel=1e-2, abs=1e-4), (t.title, case)


def test_cli_wires_the_suite():
    from squeezer.cli import bench_suites, build_parser

    assert "sparse" in bench_suites()
    args = build_parser().parse_args(["bench", "sparse", "--quick", "--json", "x.json"])
    assert args.quick and args.target == "sparse" and args.json == "x.json"


@pytest.mark.slow
def test_cli_quick_suite(tmp_path):
    from test_cli import squeezer

    proc = squeezer("bench", "sparse", "--quick", "--threads", THREADS, "--repeat", 10,
                    "--json", tmp_path / "q.json")
    data = json.loads((tmp_path / "q.json").read_text())
    assert "goals" in proc.stdout
    assert [g["status"] != "not run" for g in data["goals"]] == [True] * 5
    for c in data["cases"]:
        assert set(c["ms"]) | set(c["missing"]) == set(PEERS[c["section"]])


def test_suite_models_give_the_benchmark_s_own_kernels():
    """Records tuned on the gathered models must apply to the one-layer models the bench
    compiles: every kernel of a one-layer case is a workload of the gathered model."""
    import torch

    from squeezer.bench_sparse_cases import Suite, conv_arrays, kernel_arrays
    from squeezer.bench_sparse_peers import conv_module, linear_module
    from squeezer.bench_sparse_tune import suite_models
    from squeezer.frontend import import_model
    from squeezer.targets import make_target
    from squeezer.tune.records import workload_key
    from squeezer.tune.tasks import extract, prepare_for_tuning

    target = make_target(THREADS)

    def keys(model, example) -> set[str]:
        mod = prepare_for_tuning(import_model(model, example_inputs=example).mod, target)
        return {workload_key(t.mod) for t in extract(mod, target)}

    tiny = quick_suite(tiny=True)
    suite = Suite(tiny.kernels, tiny.convs, ())
    gathered = set()
    for _, model, example in suite_models(suite):
        gathered |= keys(model, example)
    wanted = set()
    for c in suite.kernels:
        dense, x, w = kernel_arrays(c)
        for weight in (dense, w):
            wanted |= keys(linear_module(weight), (torch.from_numpy(x),))
    for c in suite.convs:
        dense, x, w = conv_arrays(c)
        for weight in (dense, w):
            wanted |= keys(conv_module(weight, c.stride), (torch.from_numpy(x),))
    assert wanted <= gathered
    assert len(wanted) >= len(suite.kernels) + len(suite.convs)
