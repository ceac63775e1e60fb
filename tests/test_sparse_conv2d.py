"""Direct sparse convolution against torch.nn.functional.conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

import squeezer
from squeezer.schedules import default_schedule_pass
from squeezer.schedules.sparse_conv2d import conv_geometry, conv_offsets, sparse_conv2d_func
from squeezer.targets.cpu import make_target

TARGET = make_target(2)
RTOL, ATOL = 1e-5, 1e-4


def sparse_weight(o, c, k, density, block, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    br = block[0]
    keep = rng.random((-(-o // br), c * k * k)) < density
    mask = np.repeat(keep, br, axis=0)[:o].reshape(o, c, k, k)
    return w * mask


def run(w, x, stride, pad, block, bias=None) -> np.ndarray:
    o, c, kh, kw = w.shape
    geo = conv_geometry(x.shape[1:], (kh, kw), stride, (pad, pad))
    sw = conv_offsets(w, block, geo)
    func = sparse_conv2d_func(sw, geo).with_attr("global_symbol", "main")
    mod = default_schedule_pass(TARGET)(tvm.IRModule({"main": func}))
    assert "ACC_local" in mod.script(), "the sparse rule did not apply"
    lib = tvm.compile(mod, TARGET)
    dev = tvm.cpu()
    out = np.zeros((1, o, geo["oh"], geo["ow"]), np.float32)
    bias = np.zeros(o, np.float32) if bias is None else bias
    args = [tvm.runtime.tensor(a, dev) for a in (x, sw.data, sw.indices, sw.indptr, bias, out)]
    lib(*args)
    return args[-1].numpy()


def reference(w, x, stride, pad, bias=None):
    t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                   None if bias is None else torch.from_numpy(bias),
                                   stride=stride, padding=pad)
    return t.numpy()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("block", [(1, 1), (8, 1)])
@pytest.mark.parametrize("size", [7, 14, 13])
def test_3x3_matches_torch(stride, block, size):
    rng = np.random.default_rng(1)
    w = sparse_weight(32, 16, 3, 0.2, block)
    x = rng.standard_normal((1, 16, size, size)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    got = run(w, x, stride, 1, block, bias)
    np.testing.assert_allclose(got, reference(w, x, stride, 1, bias), RTOL, ATOL)


@pytest.mark.parametrize("k, pad, stride", [(5, 2, 1), (3, 0, 1), (7, 3, 2)])
def test_other_kernels_and_paddings(k, pad, stride):
    rng = np.random.default_rng(2)
    w = sparse_weight(24, 8, k, 0.15, (1, 1))
    w[3:9] = 0  # empty output channels
    x = rng.standard_normal((1, 8, 19, 17)).astype(np.float32)
    got = run(w, x, stride, pad, (1, 1))
    np.testing.assert_allclose(got, reference(w, x, stride, pad), RTOL, ATOL)


def test_offsets_need_column_blocks_of_one():
    w = sparse_weight(8, 4, 3, 0.5, (1, 1))
    geo = conv_geometry((4, 8, 8), (3, 3), 1, (1, 1))
    with pytest.raises(ValueError, match=r"\(br, 1\)"):
        conv_offsets(w, (4, 4), geo)


class ResBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


def test_sparse_3x3_convolutions_in_a_model(tmp_path):
    torch.manual_seed(0)
    model = ResBlock().eval()
    for conv in (model.conv1, model.conv2):
        keep = torch.rand(conv.weight.shape) < 0.1
        conv.weight.data *= keep
    x = torch.randn(1, 32, 28, 28)
    compiled = squeezer.compile(model, (x,), threads=2, use_records=False, dump_ir=tmp_path)
    assert (tmp_path / "01-graph.py").read_text().count("R.call_tir(cls.sparse_conv2d") == 2
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
