"""The stage pipeline and verification."""

from __future__ import annotations

import numpy as np
import pytest

import squeezer
from squeezer.errors import VerificationError
from squeezer.frontend import import_model
from squeezer.pipeline import default_stages, graph_stage
from squeezer.targets import make_target
from squeezer.verify import compare, verify


def test_stage_names():
    assert [s.name for s in default_stages()] == ["graph", "legalize", "schedule", "build"]


def test_graph_stage_folds_batch_norm(tiny, tiny_input):
    im = import_model(tiny, (tiny_input,))
    assert "R.nn.batch_norm" in im.mod.script(show_meta=False)
    after = graph_stage(im.mod, make_target(1)).script(show_meta=False)
    assert "R.nn.batch_norm" not in after and "R.nn.conv2d" in after


def test_dump_ir_is_tvmscript(tiny, tiny_input, tmp_path):
    squeezer.compile(tiny, (tiny_input,), threads=1, dump_ir=tmp_path, verify=False)
    legalized = (tmp_path / "02-legalize.py").read_text()
    assert "T.prim_func" in legalized and "R.call_tir" in legalized
    assert "@R.function" in (tmp_path / "01-graph.py").read_text()
    assert "vm.builtin" in (tmp_path / "04-build.py").read_text()


def test_schedule_stage_parallelizes_heavy_work_only(tiny, tiny_input, tmp_path):
    """Big convolutions run on the thread pool; kernels too small to repay waking it run serial."""
    big = np.zeros((1, 3, 128, 128), np.float32)
    squeezer.compile(tiny, (big,), threads=2, dump_ir=tmp_path / "big", verify=False)
    funcs = (tmp_path / "big" / "03-schedule.py").read_text().split("@T.prim_func")[1:]
    first_conv = [f for f in funcs if "def fused_conv2d_add_relu" in f]
    assert len(first_conv) == 1 and "T.parallel" in first_conv[0]
    squeezer.compile(tiny, (tiny_input,), threads=2, dump_ir=tmp_path / "small", verify=False)
    assert "T.parallel" not in (tmp_path / "small" / "03-schedule.py").read_text()


def test_compare_and_verify_mismatch():
    ok = compare("y", np.ones(4, np.float32), np.ones(4, np.float32) + 1e-6)
    assert ok.ok and ok.max_abs == pytest.approx(1e-6, rel=0.2)
    bad = compare("y", np.ones(4, np.float32), np.full(4, 2.0, np.float32))
    assert not bad.ok and bad.max_abs == 1.0
    assert not compare("i", np.array([1, 2]), np.array([1, 3])).ok
    specs = [squeezer.frontend.TensorSpec("logits", (2,), "float32")]

    def run(x):
        return x * 2

    with pytest.raises(VerificationError, match=r"output 'logits'.*max abs error 1.*max rel"):
        verify(run, lambda xs: [xs[0]], specs, [np.ones(2, np.float32)])
    checks = verify(run, lambda xs: [xs[0] * 2], specs, [np.ones(2, np.float32)])
    assert checks[0].ok


def test_compile_verification_catches_a_wrong_reference(tiny, tiny_input, monkeypatch):
    """A compile whose reference disagrees fails loudly and names the output."""
    import squeezer.frontend.torch_import as ti

    real = ti._import_exported

    def skewed(*args, **kwargs):
        imported = real(*args, **kwargs)
        ref = imported.reference
        ref64 = imported.reference64
        imported.reference = lambda xs: [r + 0.5 for r in ref(xs)]
        imported.reference64 = lambda xs: [r + 0.5 for r in ref64(xs)]
        return imported

    monkeypatch.setattr(ti, "_import_exported", skewed)
    with pytest.raises(VerificationError, match="output 'output'"):
        squeezer.compile(tiny, (tiny_input,), threads=1)


@pytest.mark.parametrize("ref64", ["exact", "fails", "none"])
def test_float32_reference_failure_falls_back_to_float64(tiny, tiny_input, monkeypatch, ref64):
    """When the float32 reference disagrees (a binarized model's sign tie), the float64 one
    decides and the manifest says so; without a float64 reference, or when it cannot run (QDQ
    ops want float32), the float32 error stands."""
    import squeezer.frontend.torch_import as ti

    real = ti._import_exported

    def skewed(*args, **kwargs):
        imported = real(*args, **kwargs)
        ref = imported.reference
        imported.reference = lambda xs: [r + 0.5 for r in ref(xs)]
        if ref64 == "fails":
            imported.reference64 = lambda xs: 1 / 0
        elif ref64 == "none":
            imported.reference64 = None
        return imported

    monkeypatch.setattr(ti, "_import_exported", skewed)
    if ref64 != "exact":
        with pytest.raises(VerificationError, match="output 'output'"):
            squeezer.compile(tiny, (tiny_input,), threads=1)
        return
    mod = squeezer.compile(tiny, (tiny_input,), threads=1)
    assert mod.manifest["verified"]["output"]["reference"] == "float64"
    assert mod.manifest["verified"]["output"]["max_abs"] < 1e-4


def test_float64_reference_of_a_binarized_model():
    """``where(x >= 0, 1.0, -1.0)`` and the layers after it run in float64 (literals included),
    matching numpy's float64 arithmetic; the user's module is not converted."""
    import torch

    class Binary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(24, 7)

        def forward(self, x):
            return self.fc(torch.where(x >= 0, 1.0, -1.0)) * 0.3

    torch.manual_seed(0)
    model = Binary().eval()
    x = np.random.default_rng(0).standard_normal((3, 24)).astype(np.float32)
    imported = import_model(model, (x,))
    got = imported.reference64([x])[0]
    w, b = (p.detach().double().numpy() for p in (model.fc.weight, model.fc.bias))
    want = ((np.where(x >= 0, 1.0, -1.0) @ w.T + b) * 0.3).astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    assert model.fc.weight.dtype == torch.float32
