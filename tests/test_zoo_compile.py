"""Every small zoo model compiles from torch and from its ONNX export, verified against the
reference (torch eager and onnxruntime). The full-size models run in `squeezer bench zoo`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import squeezer
from squeezer import zoo
from squeezer.bench_zoo import export_onnx


@pytest.mark.parametrize("name", zoo.names())
def test_small_zoo_model_compiles_both_ways(name, tmp_path):
    model = zoo.create(name, size="small")
    x = np.random.default_rng(0).standard_normal(zoo.spec(name, "small").input_shape)
    x = x.astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    from_torch = squeezer.compile(model, (x,), threads=2)  # verified inside
    np.testing.assert_allclose(from_torch(x), want, rtol=1e-3, atol=1e-4)
    path = export_onnx(model, x, tmp_path / f"{name}.onnx")
    from_onnx = squeezer.compile(path, (x,), threads=2)
    np.testing.assert_allclose(from_onnx(x), want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_full_zoo_model_compiles(name):
    model = zoo.create(name, size="full")
    x = np.random.default_rng(0).standard_normal(zoo.spec(name, "full").input_shape)
    squeezer.compile(model, (x.astype(np.float32),), threads=2)
