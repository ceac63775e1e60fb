"""int8 quantization: quantization math and calibrators (property tests), the squashed QDQ
structure, PTQ and QAT accuracy on the digits, the ONNX QDQ export against onnxruntime, the
recipe path through .pt2 files, and bad input."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer import data
from squeezer.compression import compress, compress_file
from squeezer.errors import InputError, RecipeError
from squeezer.passes.compress import CompressContext, get_method
from squeezer.passes.compress.quantize import base as qb
from squeezer.passes.compress.quantize import observers as obs
from squeezer.passes.compress.quantize.int8 import Int8Weight
from squeezer.passes.compress.quantize.qdq import QuantizedLayer
from squeezer.recipe import load_recipe

FAST = settings(max_examples=40, deadline=None)
QD = torch.ops.quantized_decomposed

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).eval()


def cnn(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise: quantized too
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 16, 10),
    ).eval()


@pytest.fixture(scope="module")
def trained_mlp(digits: data.Digits) -> torch.nn.Module:
    return data.train(mlp(), 15, data=digits)


@pytest.fixture(scope="module")
def trained_cnn(digits: data.Digits) -> torch.nn.Module:
    return data.train(cnn(), 6, data=digits)


def prepared(model: torch.nn.Module, d: data.Digits, **fields: Any) -> Any:
    """The int8 method prepared on ``model`` in place, as a recipe entry with ``fields``."""
    entry = load_recipe([{"method": "int8", **fields}]).entries[0]
    method = get_method("int8")(entry.settings)
    ctx = CompressContext(copy.deepcopy(model), d, 8, None, lambda line: None)
    method.check_tensors(model)
    method.prepare(model, ctx)
    return method


# -- quantization math -------------------------------------------------------------------------


@FAST
@given(
    lo=st.floats(-50, 50), width=st.floats(0, 100), seed=st.integers(0, 2**16),
    bits=st.sampled_from(qb.SUPPORTED_BITS),
)  # fmt: skip
def test_affine_values_in_range_and_round_trip_within_half_a_step(
    lo: float, width: float, seed: int, bits: int
) -> None:
    qmin, qmax = qb.quant_range(bits, signed=False)
    scale, zp = qb.affine_qparams(lo, lo + width, qmin, qmax)
    assert qmin <= zp <= qmax
    lo_, hi_ = min(lo, 0.0), max(lo + width, 0.0)
    x = torch.rand(500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = (lo_ + x * (hi_ - lo_)).to(torch.float32)
    x = torch.cat([x, torch.tensor([lo_, hi_, 0.0], dtype=torch.float32)])
    q = qb.quantize(x, scale, zp, qmin, qmax)
    assert q.min() >= qmin and q.max() <= qmax and torch.equal(q, q.round())
    err = (qb.dequantize(q, scale, zp) - x).abs()
    assert float(err.max()) <= scale / 2 * (1 + 1e-5) + 1e-6 * max(abs(lo_), hi_)
    assert float(qb.dequantize(qb.quantize(torch.zeros(1), scale, zp, qmin, qmax), scale, zp)) == 0


@FAST
@given(
    shape=st.sampled_from([(5, 7), (3, 2, 3, 3), (1, 4), (8, 1, 3, 3)]),
    per_channel=st.booleans(), seed=st.integers(0, 2**16), zero_row=st.booleans(),
)  # fmt: skip
def test_int8_weights_in_range_and_round_trip(
    shape: tuple[int, ...], per_channel: bool, seed: int, zero_row: bool
) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    if zero_row:
        w[0] = 0
    wq = Int8Weight(per_channel)
    q, scale = wq.encode(w)
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    assert float(((q.float() * s - w).abs() - s / 2).max()) <= 1e-6
    assert torch.equal(wq.values(w), q.float() * s)
    if per_channel:  # each non-zero row reaches +-127
        top = q.reshape(q.shape[0], -1).abs().amax(1)
        nonzero = w.reshape(w.shape[0], -1).abs().amax(1) > 0
        assert bool((top[nonzero] == 127).all())
    else:
        assert bool((scale == scale[0]).all())
    # The dequantize op of the contract computes the same float weight.
    dq = QD.dequantize_per_channel.default(q, scale, torch.zeros_like(scale, dtype=torch.int64),
                                           0, -127, 127, torch.int8)
    assert torch.equal(dq, wq.values(w))


def test_bits_outside_the_supported_set() -> None:
    with pytest.raises(ValueError, match="bits must be one of 2, 3, 4, 5, 6, 7, 8, got 9"):
        qb.quant_range(9, signed=True)
    assert qb.quant_range(8, signed=True) == (-127, 127)
    assert qb.quant_range(8, signed=True, narrow=False) == (-128, 127)
    with pytest.raises(RecipeError, match=r"\(int8\): bits: int8 supports bits 8, got 4; for 4-b"):
        load_recipe([{"method": "int8", "bits": 4}])
    with pytest.raises(RecipeError, match="calibration"):
        load_recipe([{"method": "int8", "calibration": "entropy"}])


def test_fake_quant_gradients_are_clipped_ste_and_lsq() -> None:
    x = torch.tensor([-1.0, 0.26, 0.74, 3.0], requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    y = qb.fake_quant(x, scale, 1, 0, 3)  # representable: [-0.5, 1.0]
    assert y.tolist() == [-0.5, 0.5, 0.5, 1.0]
    y.sum().backward()
    assert x.grad is not None and scale.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    v = x.detach()[1:3] / 0.5  # LSQ: round(v) - v inside, qmin - zp / qmax - zp outside
    expected = (0 - 1) + float((v.round() - v).sum()) + (3 - 1)
    assert float(scale.grad) == pytest.approx(expected, abs=1e-6)


# -- calibrators ---------------------------------------------------------------------------------


def observe(observer: obs.Observer, x: torch.Tensor) -> tuple[float, float]:
    for p in range(observer.passes):
        observer.pass_index = p
        for chunk in x.split(997):
            observer.observe(chunk)
    return observer.range()


@settings(max_examples=12, deadline=None)  # a KL search takes ~0.2 s
@given(
    seed=st.integers(0, 2**16), one_sided=st.booleans(), tail=st.floats(1, 50),
    percentile=st.floats(90, 100),
)  # fmt: skip
def test_percentile_and_kl_ranges_lie_inside_minmax(
    seed: int, one_sided: bool, tail: float, percentile: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5000, generator=gen)
    x[:5] *= tail  # a few outliers
    if one_sided:
        x = x.relu()
    lo, hi = observe(obs.MinMaxObserver(), x)
    assert (lo, hi) == (float(x.min()), float(x.max()))
    for observer in (obs.PercentileObserver(percentile), obs.EntropyObserver()):
        plo, phi = observe(observer, x)
        assert lo <= plo <= phi <= hi, type(observer).__name__


def test_percentile_matches_numpy_within_a_bin() -> None:
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    lo, hi = observe(obs.PercentileObserver(99.0), x)
    width = float(x.max() - x.min()) / obs.BINS
    assert lo == pytest.approx(np.percentile(x.numpy(), 1.0), abs=width)
    assert hi == pytest.approx(np.percentile(x.numpy(), 99.0), abs=width)


def test_kl_clips_outliers_and_keeps_a_compact_range() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50000, generator=gen).abs()
    x[:3] = torch.tensor([60.0, 80.0, 100.0])
    lo, hi = observe(obs.EntropyObserver(), x)
    # Thresholds start at 256 of 2048 bins (12.5 here); the outliers are not worth covering.
    assert lo == pytest.approx(float(x.min())) and 4 < hi <= 100 * 256 / obs.BINS + 1e-4
    flat = np.ones(obs.BINS)  # uniform data: clipping loses mass, the whole range wins
    assert obs.kl_threshold_bins(flat, 128) == obs.BINS
    assert obs.kl_threshold_bins(np.ones(100), 128) == 100


def test_kl_is_not_drawn_to_the_exact_zeros_of_a_relu() -> None:
    """Half the values of a ReLU output are exactly 0. Counted as they are, that first bin makes
    every threshold look alike and the search clipped at its smallest one (a quarter of this
    range, cutting 1% of the values); ignoring it, the range keeps about 99.9% of them."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(50000, generator=gen) * torch.rand(50000, generator=gen) * 2).relu()
    lo, hi = observe(obs.EntropyObserver(), x)
    positive = x[x > 0]
    assert lo == 0 and float((positive <= hi).float().mean()) > 0.995
    assert hi > 256 / obs.BINS * float(x.max()) * 1.5


# -- the squashed structure ----------------------------------------------------------------------


def test_squash_gives_qdq_ops_int8_weights_and_the_prepared_outputs(
    trained_cnn: torch.nn.Module, digits: data.Digits
) -> None:
    model, fake = copy.deepcopy(trained_cnn), copy.deepcopy(trained_cnn)
    method = prepared(model, digits, calibration="percentile", percentile=99.9)
    prepared(fake, digits, calibration="percentile", percentile=99.9)  # calibration: deterministic
    x = torch.from_numpy(digits.x_test)
    out = method.squash(model)
    # The fake-quantized model computes exactly what the squashed one does once its float biases
    # are rounded to the int32 grid (which onnxruntime's format and the integer kernels use).
    with torch.no_grad():
        for name, m in out.named_children():
            if isinstance(m, QuantizedLayer):
                fake.get_submodule(name).bias.copy_(m.bias.float() * m.bias_scale)
        torch.testing.assert_close(out(x), fake(x), rtol=0, atol=0)
    layers = [m for m in out.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) == 4 and not any(hasattr(m, "input_quant") for m in out.modules())
    for m in layers:
        assert m.weight.dtype == torch.int8 and int(m.weight.abs().max()) <= 127
        assert m.bias.dtype == torch.int32
        torch.testing.assert_close(m.bias_scale, m.weight_scale * m.input_qparams[0])
    graph = torch.export.export(out, (x,)).graph_module.graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets.count(QD.quantize_per_tensor.default) == 4
    assert targets.count(QD.dequantize_per_tensor.default) == 4
    assert targets.count(QD.dequantize_per_channel.default) == 8  # weights and biases
    sizes = method.stored_bytes(out)
    assert sizes["4.weight"] == 32 * 16 * 9 + 4 * 32 and sizes["4.bias"] == 4 * 32


# -- accuracy on the digits ----------------------------------------------------------------------


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "kl"])
def test_int8_ptq_within_half_a_point_of_fp32(
    calibration: str, trained_mlp: torch.nn.Module, trained_cnn: torch.nn.Module,
    digits: data.Digits,
) -> None:  # fmt: skip
    for model in (trained_mlp, trained_cnn):
        out, report = compress(model, [{"method": "int8", "calibration": calibration}],
                               train_data=digits, eval_data=digits, progress=False)
        assert report.accuracy_before >= 0.95
        assert report.accuracy_after >= report.accuracy_before - 0.005
        # int8 weights + fp32 scales + int32 biases: about a quarter of fp32.
        assert report.bytes_after < 0.3 * report.bytes_before


@pytest.mark.parametrize("ranges", ["learned", "frozen"])
def test_int8_qat_trains_the_quantized_model(
    ranges: str, trained_cnn: torch.nn.Module, digits: data.Digits
) -> None:
    model = copy.deepcopy(trained_cnn)
    method = prepared(model, digits, epochs=2, ranges=ranges)
    scales = {n: s.log_scale.item() for n, s in model.named_modules() if isinstance(s, qb.ActQuant)}
    params = [p for p in model.parameters() if p.requires_grad]
    data.train(model, 2, data=digits, lr=1e-3)
    moved = [abs(s.log_scale.item() - scales[n]) for n, s in model.named_modules()
             if isinstance(s, qb.ActQuant)]  # fmt: skip
    assert (max(moved) > 1e-3) if ranges == "learned" else (max(moved) == 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    acc = data.evaluate(model, data=digits)
    squashed = method.squash(model)
    assert data.evaluate(squashed, data=digits) == pytest.approx(acc, abs=0.005)
    assert acc >= data.evaluate(trained_cnn, data=digits) - 0.01


def test_prune_then_int8_keeps_the_zeros(trained_mlp: torch.nn.Module, digits: data.Digits) -> None:
    recipe = [{"method": "magnitude", "sparsity": 0.5}, {"method": "int8"}]
    out, report = compress(trained_mlp, recipe, train_data=digits, eval_data=digits,
                           progress=False)
    w = out[1].weight
    assert w.dtype == torch.int8 and int((w == 0).sum()) >= w.numel() // 2
    assert report.accuracy_after >= report.accuracy_before - 0.02


# -- ONNX QDQ export and onnxruntime ----------------------------------------------------------


def test_onnx_qdq_export_matches_the_torch_model_within_one_step(
    trained_cnn: torch.nn.Module, digits: data.Digits, tmp_path: Any
) -> None:
    import onnx
    import onnxruntime as ort

    from squeezer.passes.compress.quantize.export import export_onnx_qdq

    # The logits get an output QDQ (a per-tensor override), so "one step" is defined there.
    recipe = [{"method": "int8", "calibration": "kl", "tensors": {"7.weight": {"outputs": True}}}]
    out, report = compress(trained_cnn, recipe, train_data=digits, eval_data=digits,
                           progress=False)
    path = export_onnx_qdq(out, torch.zeros(2, 1, 8, 8), tmp_path / "q.onnx")
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 13
    weights = 0
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            axis = [a.i for a in node.attribute if a.name == "axis"]
            dtype = inits[node.input[0]].data_type
            assert axis == [0] and dtype in (onnx.TensorProto.INT8, onnx.TensorProto.INT32)
            weights += dtype == onnx.TensorProto.INT8
    assert weights == 4
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": digits.x_test})[0]
    with torch.no_grad():
        want = out(torch.from_numpy(digits.x_test)).numpy()
    step = out[7].output_qparams[0]
    assert np.abs(got - want).max() <= step * (1 + 1e-5)
    assert np.mean(got != want) < 0.05
    ort_accuracy = data.accuracy_of(lambda x: got, digits)
    assert ort_accuracy == pytest.approx(report.accuracy_after, abs=0.005)


def test_export_refuses_a_float_model(trained_mlp: torch.nn.Module, tmp_path: Any) -> None:
    from squeezer.passes.compress.quantize.export import export_onnx_qdq

    with pytest.raises(ValueError, match="no quantize/dequantize operators"):
        export_onnx_qdq(trained_mlp, torch.zeros(2, 1, 8, 8), tmp_path / "f.onnx")


# -- the recipe path through .pt2 files -------------------------------------------------------


def test_yaml_recipe_on_a_pt2_file(trained_cnn: torch.nn.Module, digits: data.Digits,
                                   tmp_path: Any) -> None:  # fmt: skip
    program = torch.export.export(trained_cnn, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "r.yaml").write_text(
        "recipe:\n  - method: int8\n    calibration: percentile\n    exclude: ['3']\n"
    )
    report = compress_file(tmp_path / "m.pt2", tmp_path / "r.yaml", tmp_path / "q.pt2",
                           progress=False)
    assert report.accuracy_after >= report.accuracy_before - 0.005
    quantized = {"0": 16 * 9, "4": 32 * 16 * 9, "7": 10 * 512}  # weights; '3' stays fp32
    channels = {"0": 16, "4": 32, "7": 10}
    stored = sum(w + 4 * channels[k] + 4 * channels[k] for k, w in quantized.items())
    rest = 4 * (16 * 9 + 16) + 4 * (16 + 16)  # depthwise conv and BatchNorm in fp32
    assert report.bytes_after == stored + rest
    loaded = torch.export.load(str(tmp_path / "q.pt2"))
    targets = [n.target for n in loaded.graph_module.graph.nodes if n.op == "call_function"]
    assert targets.count(QD.quantize_per_tensor.default) == 3
    assert loaded.state_dict["4.weight"].dtype == torch.int8
    assert loaded.state_dict["3.weight"].dtype == torch.float32
    # The graph path computes what the module path computes.
    eager, _ = compress(trained_cnn, tmp_path / "r.yaml", train_data=digits, eval_data=digits,
                        progress=False)
    x = torch.from_numpy(digits.x_test[:50])
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), eager(x), rtol=0, atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------


def with_train(d: data.Digits, x: np.ndarray) -> data.Digits:
    return data.Digits(x, d.y_train[: len(x)], d.x_test, d.y_test)


def test_calibration_data_of_the_wrong_shape_or_empty(digits: data.Digits) -> None:
    wrong = with_train(digits, np.zeros((10, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"shape \(10, 3, 8, 8\) failed at or after the input "
                                         r"of layer '0' \(Conv2d\): .*channels"):
        prepared(cnn(), wrong)
    small = with_train(digits, np.zeros((10, 1, 6, 6), np.float32))
    with pytest.raises(InputError, match=r"\(10, 1, 6, 6\) failed at or after the input of layer "
                                         r"'7' \(Linear\)"):
        prepared(cnn(), small)
    with pytest.raises(InputError, match=r"calibration data is empty \(shape \(0, 1, 8, 8\)\)"):
        prepared(cnn(), with_train(digits, np.zeros((0, 1, 8, 8), np.float32)))


def test_nan_or_inf_in_weights_or_calibration_data(digits: data.Digits) -> None:
    model = mlp()
    with torch.no_grad():
        model[3].weight[2, 5] = float("nan")
    with pytest.raises(InputError, match=r"weight '3.weight' has nan at index \(2, 5\)"):
        prepared(model, digits)
    x = digits.x_train[:20].copy()
    x[7, 0, 1, 2] = np.inf
    with pytest.raises(InputError, match=r"calibration data has inf at index \(7, 0, 1, 2\)"):
        prepared(mlp(), with_train(digits, x))


def test_layer_patterns_and_overrides_are_checked(digits: data.Digits) -> None:
    with pytest.raises(RecipeError, match="layers: '9' matches no Linear or Conv2d layer"):
        prepared(mlp(), digits, layers=["9"])
    with pytest.raises(RecipeError, match="tensors: '1.bias' matches no quantized weight"):
        prepared(mlp(), digits, tensors={"1.bias": {"calibration": "kl"}})
    with pytest.raises(RecipeError, match=r"unknown per-tensor field 'bits'"):
        load_recipe([{"method": "int8", "tensors": {"1.weight": {"bits": 4}}}])
    method = prepared(mlp(), digits, tensors={"3.weight": {"calibration": "kl"}})
    kinds = {t: type(s.acts["input"].observer).__name__ for t, s in method.sites.items()}
    assert kinds == {"1.weight": "MinMaxObserver", "3.weight": "EntropyObserver"}
