"""int4 weights per group: codes and round trip (property tests), the values-only squash with
uint8 activation QDQ, stored sizes, PTQ and QAT on the digits, exported graphs and ONNX, and bad
settings."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer import data
from squeezer.compression import compress, compress_file
from squeezer.errors import RecipeError
from squeezer.passes.compress import CompressContext, get_method
from squeezer.passes.compress.quantize.int4 import Int4Weight
from squeezer.passes.compress.quantize.qdq import QuantizedLayer
from squeezer.recipe import load_recipe

FAST = settings(max_examples=40, deadline=None)
QD = torch.ops.quantized_decomposed

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cnn(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),  # rows of 9: one short group
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),  # rows of 144: 4 groups of 32 + 16
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 16, 10),  # rows of 512
    ).eval()


@pytest.fixture(scope="module")
def trained_cnn(digits: data.Digits) -> torch.nn.Module:
    return data.train(cnn(), 8, data=digits)


def groups_of(w: torch.Tensor, group: int) -> torch.Tensor:
    rows = w.reshape(w.shape[0], -1)
    return torch.nn.functional.pad(rows, (0, -rows.shape[1] % group)).reshape(w.shape[0], -1, group)


@FAST
@given(
    shape=st.sampled_from([(4, 64), (3, 70), (5, 2, 3, 3), (2, 130), (1, 7)]),
    group=st.sampled_from([32, 64, 128]), seed=st.integers(0, 2**16), zero_group=st.booleans(),
)  # fmt: skip
def test_int4_codes_in_range_round_trip_and_recoverable_scales(
    shape: tuple[int, ...], group: int, seed: int, zero_group: bool
) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if zero_group:
        w.reshape(w.shape[0], -1)[0, :group] = 0
    wq = Int4Weight(group)
    q, scale = wq.encode(w)
    assert q.shape == w.shape and int(q.min()) >= -8 and int(q.max()) <= 7
    assert scale.shape == (w.shape[0], math.ceil(math.prod(w.shape[1:]) / group))
    s = scale[:, :, None]
    values = wq.values(w)
    torch.testing.assert_close(groups_of(values, group), groups_of(q.float(), group) * s,
                               rtol=0, atol=0)  # fmt: skip
    assert float(((groups_of(values - w, group)).abs() - s / 2).max()) <= 1e-6
    # The format is recognizable from the values alone: a group's largest magnitude is 7 steps.
    absmax = groups_of(values, group).abs().amax(dim=2)
    nonzero = absmax > 0
    torch.testing.assert_close(absmax[nonzero] / 7, scale[nonzero], rtol=1e-6, atol=0)
    if zero_group:
        assert not bool(groups_of(values, group)[0, 0].any())


def test_stored_bytes_are_half_a_byte_per_weight_plus_group_scales() -> None:
    assert Int4Weight(32).stored_bytes(torch.ones(10, 64)) == 320 + 4 * 10 * 2
    assert Int4Weight(128).stored_bytes(torch.ones(10, 64)) == 320 + 4 * 10
    assert Int4Weight(32).stored_bytes(torch.ones(3, 1, 3, 3)) == 14 + 4 * 3  # 27 weights


def test_squash_leaves_exact_values_and_activation_qdq(
    trained_cnn: torch.nn.Module, digits: data.Digits
) -> None:
    model, fake = copy.deepcopy(trained_cnn), copy.deepcopy(trained_cnn)
    entry = load_recipe([{"method": "int4", "tensors": {"5.weight": {"group_size": 128}}}])
    methods = []
    for m in (model, fake):
        methods.append(get_method("int4")(entry.entries[0].settings))
        methods[-1].prepare(m, CompressContext(m, digits, 8, None, lambda line: None))
    out = methods[0].squash(model)
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():  # float biases: the squashed model is exactly the fake-quantized one
        torch.testing.assert_close(out(x), fake(x), rtol=0, atol=0)
    for name, group in (("0", 32), ("2", 32), ("5", 128)):
        layer = out.get_submodule(name)
        assert isinstance(layer, QuantizedLayer) and layer.weight.dtype == torch.float32
        g = groups_of(layer.weight.detach(), group)
        step = g.abs().amax(dim=2, keepdim=True) / 7
        codes = g / torch.where(step > 0, step, 1)
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    graph = torch.export.export(out, (x[:2],)).graph_module.graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets.count(QD.quantize_per_tensor.default) == 3
    assert QD.dequantize_per_channel.default not in targets
    assert methods[0].stored_bytes(out) == {
        "0.weight": 72 + 4 * 16, "2.weight": 2304 + 4 * 32 * 5, "5.weight": 2560 + 4 * 10 * 4,
    }  # fmt: skip


def test_int4_ptq_and_qat_on_the_digits(
    trained_cnn: torch.nn.Module, digits: data.Digits
) -> None:
    fp32 = data.evaluate(trained_cnn, data=digits)
    assert fp32 >= 0.95
    _, ptq = compress(trained_cnn, [{"method": "int4"}], train_data=digits, eval_data=digits,
                      progress=False)
    _, qat = compress(trained_cnn, [{"method": "int4", "epochs": 3}], train_data=digits,
                      eval_data=digits, progress=False)
    assert ptq.accuracy_after >= fp32 - 0.02
    assert qat.accuracy_after >= fp32 - 0.005
    assert qat.bytes_after == ptq.bytes_after < ptq.bytes_before / 5


def test_int4_through_a_pt2_file_and_onnx(
    trained_cnn: torch.nn.Module, digits: data.Digits, tmp_path: Any
) -> None:
    import onnxruntime as ort

    from squeezer.passes.compress.quantize.export import export_onnx_qdq, qdq_node_counts

    program = torch.export.export(trained_cnn, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "r.yaml").write_text("recipe:\n  - method: int4\n    group_size: 64\n")
    report = compress_file(tmp_path / "m.pt2", tmp_path / "r.yaml", tmp_path / "q.pt2",
                           progress=False)
    loaded = torch.export.load(str(tmp_path / "q.pt2"))
    eager, _ = compress(trained_cnn, tmp_path / "r.yaml", train_data=digits, eval_data=digits,
                        progress=False)
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        want = eager(x)
        torch.testing.assert_close(loaded.module()(x), want, rtol=0, atol=1e-5)
    biases = 4 * (16 + 32 + 10)
    assert report.bytes_after == biases + sum(
        Int4Weight(64).stored_bytes(w) for w in (eager[0].weight, eager[2].weight, eager[5].weight)
    )
    path = export_onnx_qdq(eager, x[:2], tmp_path / "q.onnx")
    assert qdq_node_counts(path)["QuantizeLinear"] == 3
    # onnxruntime's WeightBiasQuantization pass re-quantizes float weights that meet a
    # DequantizeLinear input to int8 with its own scales, changing the int4 values: disabled.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["WeightBiasQuantization"])
    got = session.run(None, {"input": digits.x_test})[0]
    # Float weights and biases in both: only float summation order differs.
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


def test_bad_settings() -> None:
    with pytest.raises(RecipeError, match=r"bits: int4 supports bits 4, got 8; for 8-bit"):
        load_recipe([{"method": "int4", "bits": 8}])
    with pytest.raises(RecipeError, match=r"group_size' expects 32, 64 or 128, got 48"):
        load_recipe([{"method": "int4", "group_size": 48}])
    with pytest.raises(RecipeError, match=r"tensors\['x'\].group_size"):
        load_recipe([{"method": "int4", "tensors": {"x": {"group_size": 16}}}])
