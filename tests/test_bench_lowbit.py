"""``squeezer bench lowbit``: the quick suite on tiny shapes, every peer timed or a reason,
the goals evaluated from this run's medians, the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squeezer.bench import write_json
from squeezer.bench_lowbit import bench_lowbit
from squeezer.bench_lowbit_cases import full_suite, int4_weight, quick_suite
from squeezer.bench_lowbit_report import PEERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_report():
    return bench_lowbit(quick_suite(tiny=True), 2, repeat=3, budget_s=0.005)


def test_every_peer_has_a_time_or_a_reason(tiny_report):
    cases = tiny_report.extra["cases"]
    assert {c["section"] for c in cases} == {"gemm", "conv", "gemv", "e2e"}
    for c in cases:
        for peer in PEERS[c["section"]]:
            assert peer in c["ms"] or peer in c["missing"], (c["case"], peer)
        assert all(v > 0 for v in c["ms"].values())
    # squeezer's own low-bit paths ran (a failure would be a reason in "missing")
    for c in cases:
        for peer in ("squeezer-int8", "squeezer-int4", "squeezer-binary"):
            if peer in PEERS[c["section"]] and not (peer == "squeezer-binary"
                                                    and c["info"].get("depthwise")):
                assert peer in c["ms"], (c["case"], c["missing"].get(peer))


def test_int8_rows_run_int8_kernels(tiny_report):
    """The int8 rows must time the integer path (a quantization silently dropped would time
    fp32 under the int8 name)."""
    for c in tiny_report.extra["cases"]:
        if c["section"] in ("gemm", "conv"):
            assert any("int8" in k for k in c["info"]["int8_kernels"]), c["info"]["int8_kernels"]


def test_goals_are_ratios_of_this_run(tiny_report):
    goals = {g["goal"]: g for g in tiny_report.extra["goals"]}
    assert len(goals) == 5
    cases = {c["case"]: c for c in tiny_report.extra["cases"]}
    gemm = goals["int8 GEMM >= 1.0x onnxruntime MatMulInteger"]
    c = cases[gemm["case"]]
    assert gemm["measured"] == pytest.approx(c["ms"]["onnxruntime-int8"]
                                             / c["ms"]["squeezer-int8"])
    assert gemm["status"] == ("met" if gemm["measured"] >= 1 else "missed")
    bw = goals["int4 GEMV >= 80% of the measured memory bandwidth"]
    g = next(c for c in cases.values() if c["section"] == "gemv")
    assert bw["measured"] == pytest.approx(
        g["info"]["packed_bytes"] / (g["ms"]["squeezer-int4"] * 1e-3) / 1e9
        / g["info"]["bandwidth_gbps"])


def test_json(tiny_report, tmp_path):
    path = tmp_path / "lowbit.json"
    write_json(tiny_report.rows, path, extra=tiny_report.extra)
    doc = json.loads(path.read_text())
    assert doc["suite"] == "lowbit" and doc["memory_bandwidth_gbps"] > 0
    assert len(doc["goals"]) == 5


def test_int4_weight_holds_int4_values_per_group():
    values, nbytes = int4_weight(8, 64, 32)
    g = values.reshape(8, 2, 32)
    scale = np.abs(g).max(axis=2, keepdims=True) / 7
    codes = g / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.abs(np.round(codes)).max() <= 8
    assert nbytes == 8 * 64 // 2 + 8 * 2 * 4


def test_full_suite_cases():
    suite = full_suite()
    assert [c.name for c in suite.gemms] == ["int8 GEMM 1024x1024x1024"]
    assert {c.model for c in suite.convs} == {"resnet18", "mobilenetv2"}
    assert any(c.depthwise for c in suite.convs) and any(c.kernel == 3 and not c.depthwise
                                                         for c in suite.convs)
    assert [c.name for c in suite.gemvs] == ["int4 GEMV 4096x4096 b1 g128"]
