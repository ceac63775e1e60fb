"""Shared fixtures: a tiny CNN in torch, its ONNX export and its .pt2, compiled once per session."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("SQUEEZER_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))
# Tuning records a test writes never land in the user's record directory.
os.environ.setdefault("SQUEEZER_RECORDS", os.path.join(os.path.dirname(__file__), ".cache",
                                                       "records"))
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

THREADS = 2


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``).

    The digits models are too small to gain from threads, and on a busy 2-core machine torch's
    spinning OpenMP workers make training 10-30x slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The scikit-learn digits at 8x8 (fixed split)."""
    from squeezer import data

    return data.load_digits(8)


def tiny_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny():
    return tiny_cnn()


@pytest.fixture(scope="session")
def tiny_input():
    return np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny, tiny_input):
    """The tiny CNN saved as ONNX (input name 'input') and as a .pt2 ExportedProgram."""
    import torch

    d = tmp_path_factory.mktemp("tiny")
    x = torch.from_numpy(tiny_input)
    torch.onnx.export(tiny, (x,), str(d / "tiny.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    torch.export.save(torch.export.export(tiny, (x,)), str(d / "tiny.pt2"))
    return {"onnx": d / "tiny.onnx", "pt2": d / "tiny.pt2"}


@pytest.fixture(scope="session")
def tiny_compiled(tiny, tiny_input):
    import squeezer

    return squeezer.compile(tiny, (tiny_input,), threads=THREADS)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_compiled):
    return tiny_compiled.save(tmp_path_factory.mktemp("art") / "tiny.sqz")
