"""The sparsify_weights graph pass: structure (what is rewritten) and numbers (whole models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import squeezer
from squeezer.frontend import import_model
from squeezer.passes.graph.sparsify_weights import sparsify_weights
from squeezer.pipeline import graph_stage
from squeezer.schedules.sparse_cost import choose_format
from squeezer.targets import make_target

TARGET = make_target(2)


def prune_(weight: torch.Tensor, density: float, block=(1, 1), seed: int = 0) -> None:
    """Zero all but ``density`` of ``weight`` (viewed as out x in), in whole blocks."""
    g = torch.Generator().manual_seed(seed)
    w2 = weight.data.reshape(weight.shape[0], -1)
    br, bc = block
    keep = torch.rand(w2.shape[0] // br, w2.shape[1] // bc, generator=g) < density
    mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    w2.mul_(mask.to(w2.dtype))


class MLP(torch.nn.Module):
    def __init__(self, k=256, n=512, classes=10):
        super().__init__()
        self.fc1 = torch.nn.Linear(k, n)
        self.fc2 = torch.nn.Linear(n, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class PointwiseNet(torch.nn.Module):
    """1x1 convolutions (stride 1 and 2) between a dense 3x3 stem and a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(8, 64, 3, padding=1)
        self.pw1 = torch.nn.Conv2d(64, 128, 1)
        self.dw = torch.nn.Conv2d(128, 128, 3, padding=1, groups=128)
        self.pw2 = torch.nn.Conv2d(128, 96, 1, stride=2, bias=False)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.clamp(self.pw1(x), 0, 6)
        return self.pw2(torch.relu(self.dw(x)))


def sparse_calls(mod) -> int:
    return mod.script(show_meta=False).count("sparse_matmul")


def test_sparse_linear_is_rewritten_and_dense_one_is_not():
    torch.manual_seed(0)
    model = MLP().eval()
    prune_(model.fc1.weight, 0.05)
    x = torch.randn(1, 256)
    log: list[dict] = []
    mod = graph_stage(import_model(model, (x,)).mod, TARGET)
    with TARGET:
        mod = sparsify_weights(log)(mod)  # the stage already ran it; a second run logs
    script = mod.script(show_meta=False)
    assert script.count("R.matmul") == 1  # fc2 stays dense
    assert "T.prim_func" in script and "sparse_matmul" in script
    assert [e["format"] for e in log] == ["dense"]  # only fc2 is left as a candidate


@pytest.mark.parametrize("batch", [1, 16])
def test_sparse_mlp_matches_torch(batch):
    torch.manual_seed(1)
    model = MLP().eval()
    prune_(model.fc1.weight, 0.05)
    prune_(model.fc2.weight, 0.2)
    x = torch.randn(batch, 256)
    compiled = squeezer.compile(model, (x,), threads=2, use_records=False)  # verifies
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_sparse_pointwise_convolutions_match_torch(tmp_path):
    torch.manual_seed(2)
    model = PointwiseNet().eval()
    prune_(model.pw1.weight, 0.1, (16, 1))
    prune_(model.pw2.weight, 0.1)
    x = torch.randn(1, 8, 28, 28)
    compiled = squeezer.compile(model, (x,), threads=2, use_records=False, dump_ir=tmp_path)
    graph = (tmp_path / "01-graph.py").read_text()
    assert graph.count("R.call_tir(cls.sparse_matmul") == 2
    assert graph.count("R.nn.conv2d") == 2  # the stem and the depthwise conv stay dense
    # both kernels got the sparse schedule (register accumulators), with bias/clip fused in
    scheduled = (tmp_path / "03-schedule.py").read_text()
    assert scheduled.count('ACC_local = T.sblock_alloc_buffer') == 2
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_model_pruned_elsewhere_takes_the_same_path(tmp_path):
    """Zeros in an ONNX initializer are all it takes (a model pruned by another tool)."""
    torch.manual_seed(3)
    model = MLP().eval()
    prune_(model.fc1.weight, 0.05)
    x = torch.randn(1, 256)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    compiled = squeezer.compile(str(path), {"x": x.numpy()}, threads=2, use_records=False,
                                dump_ir=tmp_path / "ir")
    assert "sparse_matmul" in (tmp_path / "ir" / "01-graph.py").read_text()
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_format_choice_follows_the_zero_pattern():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((512, 512)).astype(np.float32)
    assert choose_format(dense, 128, TARGET) is None
    unstructured = dense * (rng.random((512, 512)) < 0.08)
    assert choose_format(unstructured, 128, TARGET) == (1, 1)
    blocks = np.kron(rng.random((32, 512)) < 0.08, np.ones((16, 1))) * dense
    assert choose_format(blocks.astype(np.float32), 128, TARGET) == (16, 1)
    # half the weights zero, unstructured: not worth a sparse kernel
    assert choose_format(dense * (rng.random((512, 512)) < 0.5), 128, TARGET) is None
