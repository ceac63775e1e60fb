"""`squeezer demo` end to end: trains (or reuses cached weights), distills, compiles, measures."""

from __future__ import annotations

from rich.console import Console

from squeezer.demo import run_demo


def test_demo_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZER_CACHE", str(tmp_path / "cache"))
    console = Console(quiet=True)
    rows = run_demo(console, threads=2, json_path=str(tmp_path / "demo.json"))
    assert [r.variant for r in rows] == ["mobilenetv2 fp32", "mobilenetv2 width/2 distilled"]
    base, student = rows
    assert student.params < base.params and student.artifact_bytes < base.artifact_bytes
    for r in rows:
        assert r.accuracy_torch >= 0.9
        # the compiled module classifies the test split like torch (fp32 rounding aside)
        assert abs(r.accuracy_squeezer - r.accuracy_torch) <= 1 / 450
        assert min(r.squeezer_ms, r.torch_ms, r.onnxruntime_ms) > 0
    assert (tmp_path / "demo.json").exists()
    # a second run reuses the cached weights and gives the same accuracies
    again = run_demo(console, threads=2)
    assert [r.accuracy_torch for r in again] == [r.accuracy_torch for r in rows]
