"""Binary quantization (BWN, XNOR-Net, BNN, HORQ): per-filter values, the binarized-input formula,
straight-through gradients, state_dict round trips, torch.export, bad input, and accuracy after
quantization-aware training on the digits."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from lowbit_util import prepare, weight_formats

from squeezer import data
from squeezer.compression import compress
from squeezer.errors import RecipeError
from squeezer.passes.compress.prune.layers import candidates
from squeezer.passes.compress.quantize.binary import BinaryWeight
from squeezer.passes.compress.quantize.horq import residual_binarize
from squeezer.passes.compress.quantize.lowbit_act import BinaryInput, geometry
from squeezer.passes.compress.quantize.lowbit_base import sign_ste
from squeezer.recipe import load_recipe

FAST = settings(max_examples=25, deadline=None)

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bcnn(seed: int = 0) -> torch.nn.Sequential:
    """Batch norm and hardtanh before every binarized layer, as in the BNN and XNOR-Net papers."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.Hardtanh(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.BatchNorm2d(64),
        torch.nn.Hardtanh(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.BatchNorm2d(64),
        torch.nn.Hardtanh(),
        torch.nn.Flatten(), torch.nn.Linear(64 * 4, 10), torch.nn.BatchNorm1d(10),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def trained(digits: data.Digits) -> torch.nn.Module:
    return data.train(bcnn(), 10, data=digits)



def random_layers(seed: int, out: int, cin: int) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, cin, 3), torch.nn.Conv2d(cin, out, 3, stride=2, padding=1),
        torch.nn.Flatten(), torch.nn.Linear(out * 9, 7),
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def sign_np(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def assert_per_filter_binary(w: torch.Tensor, latent: torch.Tensor) -> None:
    """Every filter of ``w`` is ``alpha * sign(latent)`` with ``alpha = mean |latent|``."""
    wn, ln = w.detach().numpy(), latent.detach().numpy()
    for row, lat in zip(wn.reshape(len(wn), -1), ln.reshape(len(ln), -1), strict=True):
        alpha = np.abs(lat.astype(np.float64)).mean()
        assert set(np.unique(np.abs(row))) == {np.float32(row[0] * np.sign(row[0]))}
        np.testing.assert_allclose(abs(row[0]), alpha, rtol=1e-6)
        np.testing.assert_array_equal(np.sign(row), sign_np(lat))


@FAST
@given(seed=st.integers(0, 2**16), out=st.integers(1, 5), cin=st.integers(1, 5),
       method=st.sampled_from(["bwn", "xnor"]))  # fmt: skip
def test_bwn_and_xnor_weights_are_plus_minus_mean_abs_per_filter(
    seed: int, out: int, cin: int, method: str, digits: data.Digits
) -> None:
    model = random_layers(seed, out, cin)
    with torch.no_grad():
        model[1].weight[0, 0, 0, 0] = 0.0  # sign(0) := +1
    latent = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() > 1}
    q, _ = prepare(model, digits, method, first="binary", last="binary") if method == "xnor" else \
        prepare(model, digits, method)  # fmt: skip
    assert set(q.layers) == set(latent)
    for name, layer in q.layers.items():
        assert_per_filter_binary(layer.weight, latent[name])
    q.squash(model)
    for name, layer in q.layers.items():
        assert type(layer.owner) in (torch.nn.Conv2d, torch.nn.Linear)
        assert_per_filter_binary(layer.weight, latent[name])
    assert float(model[1].weight.detach()[0, 0, 0, 0]) > 0


def reference_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int,
                   planes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Direct loops: sum_i (H_i * W) . K_i + b with K_i the window mean of beta_i (zero pad)."""
    n, _, h, wd = x.shape
    cout, _, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, cout, oh, ow))
    for hi, beta in planes:
        hp = np.pad(hi, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        bp = np.pad(beta, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        for i in range(oh):
            for j in range(ow):
                win = hp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                k = bp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw].mean(
                    axis=(1, 2, 3)
                )
                out[:, :, i, j] += np.einsum("nchw,ochw->no", win, w) * k[:, None]
    return out + b[None, :, None, None]


def reference_planes(x: np.ndarray, order: int, axis: int) -> list[tuple[np.ndarray, np.ndarray]]:
    planes, r = [], x.astype(np.float64)
    for _ in range(order):
        h, beta = sign_np(r), np.abs(r).mean(axis=axis, keepdims=True)
        planes.append((h, beta))
        r = r - beta * h
    return planes


@pytest.mark.parametrize("method,order", [("xnor", 1), ("horq", 2), ("horq", 3)])
def test_binarized_layers_match_the_papers_formulas(
    method: str, order: int, digits: data.Digits
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Conv2d(3, 5, 3, stride=2, padding=1),
        torch.nn.Flatten(), torch.nn.Linear(80, 4),
    )  # fmt: skip
    fields = {"order": order} if method == "horq" else {}
    q, _ = prepare(model, digits, method, last="binary", **fields)
    assert set(q.binarizers) == {"1.weight", "3.weight"}
    conv, fc = model[1], model[3]
    x = torch.randn(2, 3, 5, 5)
    x[0, :, 0, 0] = 0.0
    with torch.no_grad():
        w = conv.weight.double().numpy()
        want = reference_conv(x.double().numpy(), w, conv.bias.double().numpy(), 2, 1,
                              reference_planes(x.double().numpy(), order, 1))  # fmt: skip
        np.testing.assert_allclose(conv(x).double().numpy(), want, rtol=1e-4, atol=1e-4)
        y = torch.randn(3, 80)
        fw = fc.weight.double().numpy()
        want_fc = sum(
            (h @ fw.T) * beta for h, beta in reference_planes(y.double().numpy(), order, 1)
        ) + fc.bias.double().numpy()
        np.testing.assert_allclose(fc(y).double().numpy(), want_fc, rtol=1e-4, atol=1e-4)
    # The binary inputs are exactly +-1, sign(0) = +1, before and after squash.
    for ste in (True, False):
        q.binarizers["1.weight"].ste = ste
        planes = q.binarizers["1.weight"].planes(x)
        assert len(planes) == order
        for h, _ in planes:
            assert set(h.unique().tolist()) <= {-1.0, 1.0} and h.dtype == torch.float32
        assert torch.equal(planes[0][0][0, :, 0, 0], torch.ones(3))
    # Squashed, the layer computes in the input's dtype: float64 matches the reference closely.
    q.squash(model)
    with torch.no_grad():
        np.testing.assert_allclose(model.double()[1](x.double()).numpy(), want, rtol=1e-10)


def test_same_padding_and_even_kernels_use_the_padded_box_filter() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 4, padding="same", bias=False))
    g = geometry(model, candidates(model)["0"])
    assert g is not None and g.pad == (1, 2, 1, 2)
    layer = BinaryInput("Conv2d", 1, True, g)
    beta = torch.rand(1, 1, 5, 5)
    ref = F.avg_pool2d(F.pad(beta, (1, 2, 1, 2)), 4, 1)
    torch.testing.assert_close(layer.scale_map(beta), ref, rtol=0, atol=0)
    assert layer.scale_map(beta).shape == (1, 1, 5, 5)


def test_straight_through_gradients() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    sign_ste(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # hardtanh's gradient
    # XNOR-Net's weight gradient: G_i alpha 1{|W_i| <= 1} + sign(W_i) / n * sum_j G_j sign(W_j).
    w = torch.tensor([[0.5, -1.5, 0.25, -0.1]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, -3.0, 0.5]])
    (BinaryWeight(scaled=True)(w) * g).sum().backward()
    s, alpha = torch.sign(w.detach()), w.detach().abs().mean()
    want = g * alpha * (w.detach().abs() <= 1) + s / 4 * (g * s).sum()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, want)


@FAST
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 4), cols=st.integers(2, 40))
def test_horq_weights_have_few_values_and_shrinking_residuals(
    seed: int, rows: int, cols: int
) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    norms = [w.norm(dim=1)]
    for order in (1, 2, 3):
        q, residuals = residual_binarize(w, order)
        assert len(residuals) == order
        torch.testing.assert_close(w - q, residuals[-1], rtol=0, atol=1e-6)
        for row in q:
            assert row.unique().numel() <= 2**order
        norms.append(residuals[-1].norm(dim=1))
    for before, after in zip(norms, norms[1:], strict=False):
        assert bool((after <= before + 1e-6).all())
    assert bool((norms[1] < norms[0]).all())  # the first order always removes error
    # beta_i is the least-squares scale: |R_i|^2 = |R_{i-1}|^2 - n beta_i^2.
    q1, (r1,) = residual_binarize(w, 1)
    beta = w.abs().mean(1)
    torch.testing.assert_close(q1, beta[:, None] * torch.where(w >= 0, 1.0, -1.0))
    torch.testing.assert_close(r1.pow(2).sum(1), w.pow(2).sum(1) - cols * beta**2,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_bnn_clips_latent_weights_and_binarizes_without_scales(digits: data.Digits) -> None:
    model = bcnn(1)
    with torch.no_grad():
        model[3].weight[0, 0] = 3.0  # out of [-1, 1]: clipped at prepare, sign kept
    q, lines = prepare(model, digits, "bnn")
    assert set(q.layers) == {"0.weight", "3.weight", "7.weight", "12.weight"}
    assert set(q.binarizers) == {"3.weight", "7.weight", "12.weight"}  # the image stays float
    assert not any("warning" in line for line in lines)
    latent = model[3].parametrizations.weight.original
    assert float(latent.detach().max()) == 1.0
    data.train(model, 1, data=digits, lr=0.05)
    q.squash(model)
    for layer in q.layers.values():
        assert set(layer.weight.unique().tolist()) == {-1.0, 1.0}
    assert float(latent.detach().abs().max()) <= 1.0
    assert not q.binarizers["3.weight"].ste


def relu_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU6(),
        torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )  # fmt: skip


@pytest.mark.parametrize("method", ["xnor", "bnn", "horq"])
def test_relu_before_a_binarized_layer_becomes_hardtanh(digits: data.Digits, method: str) -> None:
    """A ReLU before a binarized input makes it +1 everywhere: the ReLU modules become Hardtanh
    (logged), and the binarized input then has both signs."""
    model = relu_model()
    q, lines = prepare(model, digits, method, first="float", last="float")
    assert type(model[1]) is torch.nn.Hardtanh and type(model[3]) is torch.nn.Hardtanh
    assert any(line.startswith("2 ReLU module(s) became Hardtanh") and "1, 3" in line
               for line in lines), lines
    assert not any("warning" in line for line in lines), lines
    seen = []
    q.binarizers["2.weight"].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(torch.from_numpy(digits.x_train[:32]))
    assert (seen[0] < 0).any() and (seen[0] > 0).any()


def test_relu_kept_on_request_is_reported(digits: data.Digits) -> None:
    model = relu_model()
    _, lines = prepare(model, digits, "xnor", relu="keep")
    assert isinstance(model[1], torch.nn.ReLU)
    assert lines[-1].startswith("warning: every input of '2.weight' on a training batch is >= 0")


def test_no_relu_swap_when_the_inputs_have_both_signs(digits: data.Digits) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 3),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )  # fmt: skip
    _, lines = prepare(model, digits, "xnor")
    assert isinstance(model[3], torch.nn.ReLU)  # it feeds a float layer only
    assert not any("Hardtanh" in line or "warning" in line for line in lines), lines


def test_prepared_state_survives_state_dict_save_and_load(
    tmp_path: Path, digits: data.Digits
) -> None:
    for method in ("xnor", "horq", "bnn"):
        model = bcnn(2)
        prepare(model, digits, method)
        data.train(model, 1, data=digits)
        state = model.state_dict()
        assert "3.parametrizations.weight.original" in state
        torch.save(state, tmp_path / f"{method}.pt")
        fresh = bcnn(3)
        prepare(fresh, digits, method)
        fresh.load_state_dict(torch.load(tmp_path / f"{method}.pt"))
        x = torch.from_numpy(digits.x_test[:32])
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
    # Squashed, the whole model deep-copies and pickles with its binarized layers.
    q, _ = prepare(model := bcnn(4), digits, "xnor")
    q.squash(model)
    torch.save(model, tmp_path / "whole.pt")
    for other in (copy.deepcopy(model), torch.load(tmp_path / "whole.pt", weights_only=False)):
        assert other[3].forward.layer is other[3]
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def where_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The ``where(ge(x, 0), 1.0, -1.0)`` nodes of an exported graph."""
    found = []
    for node in program.graph.nodes:
        if node.target == torch.ops.aten.where.Scalar and node.args[1:] == (1.0, -1.0):
            cond = node.args[0]
            assert cond.target == torch.ops.aten.ge.Scalar and cond.args[1] == 0
            found.append(node)
    return found


ACCURACY = {  # method settings, epochs, floor; measured on the fp32 model's 0.973 in comments
    "bwn": ({"method": "bwn"}, 4, 0.93),  # 0.976
    "xnor": ({"method": "xnor"}, 3, 0.93),  # 0.982
    "bnn": ({"method": "bnn"}, 3, 0.90),  # 0.980
    "horq2": ({"method": "horq", "order": 2}, 3, 0.93),  # 0.989
    "horq3": ({"method": "horq", "order": 3}, 2, 0.93),  # 0.993
}


@pytest.fixture(scope="module")
def quantized(trained: torch.nn.Module, digits: data.Digits) -> dict[str, Any]:
    out = {}
    for key, (entry, epochs, _) in ACCURACY.items():
        out[key] = compress(trained, [{**entry, "epochs": epochs}], progress=False,
                            train_data=digits, eval_data=digits)  # fmt: skip
    return out


@pytest.mark.parametrize("key", list(ACCURACY))
def test_accuracy_after_quantization_aware_training(
    key: str, quantized: dict[str, Any], trained: torch.nn.Module, digits: data.Digits
) -> None:
    model, report = quantized[key]
    floor = ACCURACY[key][2]
    print(f"{key}: fp32 {report.accuracy_before:.4f} quantized {report.accuracy_after:.4f} "
          f"bytes {report.bytes_before} -> {report.bytes_after}")  # fmt: skip
    assert report.accuracy_before == data.evaluate(trained, data=digits) > 0.95
    assert report.accuracy_after >= floor
    assert report.bytes_after < report.bytes_before / 5
    # Through torch.export (as the compiler imports it): the same outputs, binary inputs as
    # where(x >= 0, 1, -1) (order per layer), no trace of the training-time estimators.
    x = torch.from_numpy(digits.x_test[:16])
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
    order = {"bwn": 0, "xnor": 1, "bnn": 1, "horq2": 2, "horq3": 3}[key]
    binary_layers = 3 if key == "bnn" else 2
    assert len(where_nodes(program)) == order * binary_layers
    targets = {str(n.target) for n in program.graph.nodes}
    assert not any("autograd" in t or "Function" in t for t in targets)
    # The compiler recognizes the weights from their values alone, in the stored size reported.
    planes = order if key.startswith("horq") else 1
    for name, p in model.named_parameters():
        if name in {"3.weight", "7.weight"}:
            w = p.detach().numpy()
            per_filter = max(len(np.unique(row)) for row in w.reshape(len(w), -1))
            assert per_filter <= 2**planes
            found = weight_formats.detect(w)
            assert found is not None and found.kind == ("residual" if planes > 1 else "binary")
            # Exact for binary; residual fits may be off by float rounding (within RTOL).
            tol = 0 if planes == 1 else weight_formats.RTOL * float(np.abs(w).max())
            np.testing.assert_allclose(found.reconstruct(), w, rtol=0, atol=tol)
            rows, cols = len(w), w[0].size
            assert found.nbytes == rows * planes * (-(-cols // 64) * 8 + 4)


def test_bad_settings_and_weights(digits: data.Digits) -> None:
    for fields, words in [
        ({"method": "horq", "order": 4}, ["order", "expects 2 or 3"]),
        ({"method": "horq", "order": 1}, ["order"]),
        ({"method": "horq", "weight_order": 4}, ["weight_order"]),
        ({"method": "horq", "tensors": {"3.weight": {"order": 5}}}, ["tensors['3.weight'].order"]),
        ({"method": "xnor", "first": "binarized"}, ["first", "'float', 'weights' or 'binary'"]),
        ({"method": "bnn", "bits": 2}, ["unknown field 'bits'"]),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe([fields])
        assert all(w in str(err.value) for w in words), str(err.value)
    for bad in (float("nan"), float("inf")):
        model = bcnn(0)
        with torch.no_grad():
            model[7].weight[1, 2, 0, 0] = bad
        kind = "1 NaN and 0 infinite" if bad != bad else "0 NaN and 1 infinite"
        with pytest.raises(RecipeError, match=rf"xnor\): xnor: weight '7.weight' has {kind}"):
            compress(model, [{"method": "xnor", "epochs": 0}], progress=False, train_data=digits,
                     eval_data=digits)  # fmt: skip
    reflect = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        torch.nn.Conv2d(4, 4, 3, dilation=2), torch.nn.Conv2d(4, 4, 1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )  # fmt: skip
    _, lines = prepare(reflect, digits, "xnor")
    assert "kept '1' in float: padding_mode 'reflect'" in lines[1]
    assert "kept '2' in float: dilation (2, 2)" in lines[2]
    with pytest.raises(RecipeError, match="layers: cannot quantize '2': dilation"):
        prepare(copy.deepcopy(reflect), digits, "xnor", layers=["2"])
    with pytest.raises(RecipeError, match=r"layers: '9' matches no Linear or Conv2d layer"):
        prepare(bcnn(0), digits, "bwn", layers=["9"])
    with pytest.raises(RecipeError, match="no layer left to quantize"):
        prepare(bcnn(0), digits, "xnor", layers=["0", "12"])
