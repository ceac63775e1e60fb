"""The cases of ``squeezer bench lowbit`` and the models each implementation runs.

Every quantized model is built the way a user gets one: squeezer's own ``int8`` method
(calibrated, squashed to QDQ), values-only weights for binary and int4 (the formats the
compiler recognizes from the values), and ``onnxruntime.quantization.quantize_static`` for
the QDQ model of the peers. Conv shapes are read from the zoo models (forward hooks), as in
``squeezer bench sparse``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squeezer.bench_sparse_cases import spread, zoo_convs


@dataclass(frozen=True)
class GemmCase:
    m: int
    n: int
    k: int

    @property
    def name(self) -> str:
        return f"int8 GEMM {self.m}x{self.n}x{self.k}"


@dataclass(frozen=True)
class ConvCase:
    """One convolution of a zoo model (no bias, 'same' padding); ``groups`` 1 or depthwise."""

    model: str
    layer: str
    cin: int
    cout: int
    kernel: int
    stride: int
    size: tuple[int, int]
    depthwise: bool = False

    @property
    def name(self) -> str:
        h, w = self.size
        kind = "dw " if self.depthwise else ""
        return (f"{self.model} {kind}{self.cin}->{self.cout} {self.kernel}x{self.kernel}"
                f" s{self.stride} @{h}x{w}")


@dataclass(frozen=True)
class GemvCase:
    n: int
    k: int
    group: int

    @property
    def name(self) -> str:
        return f"int4 GEMV {self.n}x{self.k} b1 g{self.group}"


@dataclass(frozen=True)
class EndToEndCase:
    model: str
    size: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.size} int8"


@dataclass(frozen=True)
class Suite:
    gemms: tuple[GemmCase, ...]
    convs: tuple[ConvCase, ...]
    gemvs: tuple[GemvCase, ...]
    e2e: tuple[EndToEndCase, ...]


def conv_cases(model: str, size: str, kernel: int, count: int, depthwise: bool = False,
               stride1: bool = False) -> list[ConvCase]:
    layers = zoo_convs(model, size, kernel, depthwise=depthwise)
    if stride1:
        layers = [x for x in layers if x[3] == 1]
    return [ConvCase(model, layer, cin, cout, kernel, stride, hw, depthwise)
            for layer, cin, cout, stride, hw in spread(layers, count)]


def full_suite() -> Suite:
    """The brief's cases: 1024^3 GEMM, ResNet-18 and MobileNetV2 conv layers, int4 GEMV on
    4096x4096, MobileNetV2 end to end."""
    convs = (conv_cases("resnet18", "full", 3, 4, stride1=True)
             + conv_cases("resnet18", "full", 1, 1)
             + conv_cases("mobilenetv2", "full", 1, 3)
             + conv_cases("mobilenetv2", "full", 3, 2, depthwise=True))
    return Suite((GemmCase(1024, 1024, 1024),), tuple(convs), (GemvCase(4096, 4096, 128),),
                 (EndToEndCase("mobilenetv2", "full"),))


def quick_suite(tiny: bool = False) -> Suite:
    """One case per section; ``tiny`` keeps the structure on tiny shapes (for tests)."""
    if tiny:
        return Suite((GemmCase(16, 24, 40),),
                     tuple(conv_cases("resnet18", "small", 3, 1, stride1=True)
                           + conv_cases("mobilenetv2", "small", 3, 1, depthwise=True)),
                     (GemvCase(48, 256, 32),), (EndToEndCase("mobilenetv2", "small"),))
    return Suite((GemmCase(1024, 1024, 1024),),
                 tuple(conv_cases("resnet18", "full", 3, 1, stride1=True)),
                 (GemvCase(4096, 4096, 128),), (EndToEndCase("mobilenetv2", "full"),))


# -- models ----------------------------------------------------------------------------------------
def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def linear(w: np.ndarray):
    from squeezer.bench_sparse_peers import linear_module

    return linear_module(w)


def conv(w: np.ndarray, stride: int, groups: int = 1):
    """``torch.nn.Conv2d`` without bias, 'same' padding, holding ``w``."""
    import torch

    cout, cin_g, kh, _ = w.shape
    m = torch.nn.Conv2d(cin_g * groups, cout, kh, stride, kh // 2, groups=groups, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
    return m.eval()


def conv_arrays(c: ConvCase) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, input image)`` of a conv case (He init; ReLU-like non-negative inputs are not
    assumed: the input is standard normal)."""
    rng = rng_for(c.cin, c.cout, c.kernel, *c.size)
    cin_g = 1 if c.depthwise else c.cin
    shape = (c.cout, cin_g, c.kernel, c.kernel)
    w = (rng.standard_normal(shape) * np.sqrt(2 / (cin_g * c.kernel**2))).astype(np.float32)
    x = rng.standard_normal((1, c.cin, *c.size)).astype(np.float32)
    return w, x


def int8_model(model, calibration: np.ndarray, **settings):
    """``model`` quantized by squeezer's ``int8`` method (PTQ on ``calibration``), squashed to
    QDQ; ``model`` itself is not modified."""
    from squeezer.data import Digits
    from squeezer.passes.compress import CompressContext, get_method
    from squeezer.recipe import load_recipe

    entry = load_recipe([{"method": "int8", **settings}]).entries[0]
    method = get_method("int8")(entry.settings)
    q = copy.deepcopy(model).eval()
    labels = np.zeros(len(calibration), np.int64)
    data = Digits(calibration, labels, calibration[:1], labels[:1])
    ctx = CompressContext(copy.deepcopy(model), data, int(calibration.shape[-1]), None,
                          lambda line: None)
    method.check_tensors(q)
    q = method.prepare(q, ctx) or q
    return (method.squash(q) or q).eval()  # a root layer comes back as a new module


class BinaryConv:
    """A binary convolution as XNOR-Net writes it after squash: binarized input
    ``where(x >= 0, 1, -1)`` and per-filter ``alpha * sign(w)`` weights."""

    @staticmethod
    def build(w: np.ndarray, stride: int):
        import torch

        alpha = np.abs(w).reshape(len(w), -1).mean(axis=1)
        wb = (np.where(w >= 0, 1.0, -1.0) * alpha[:, None, None, None]).astype(np.float32)
        inner = conv(wb, stride)

        class Binary(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = inner

            def forward(self, x):
                return self.conv(torch.where(x >= 0, 1.0, -1.0))

        return Binary().eval()


def int4_weight(n: int, k: int, group: int) -> tuple[np.ndarray, int]:
    """A weight holding exactly int4-per-group values (codes in [-8, 7] times a per-group
    absmax/7 scale) and its packed size in bytes (nibbles plus one float32 scale per group)."""
    rng = rng_for(n, k, group)
    w = rng.standard_normal((n, k)).astype(np.float32)
    g = w.reshape(n, k // group, group)
    scale = np.abs(g).max(axis=2, keepdims=True) / 7
    q = np.clip(np.round(g / scale), -8, 7)
    values = (q * scale).reshape(n, k).astype(np.float32)
    return values, n * k // 2 + n * (k // group) * 4


def matmul_integer_onnx(w_q: np.ndarray, m: int, a_zero_point: int) -> bytes:
    """A one-node ONNX ``MatMulInteger``: ``Y[m, n] = (A - za) @ B`` with ``A`` uint8 and the
    int8 ``B`` (``k x n``) an initializer; int32 out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_q.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "za"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
        [numpy_helper.from_array(w_q.astype(np.int8), "B"),
         numpy_helper.from_array(np.array(a_zero_point, np.uint8), "za")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_quantize_static(float_onnx: Path, out: Path, calibration: np.ndarray,
                        input_name: str = "input") -> Path:
    """``onnxruntime.quantization.quantize_static`` in the QDQ format (uint8 activations,
    per-channel int8 weights), calibrated by min-max on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: x[None]} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out
