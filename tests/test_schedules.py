"""Numeric and structural tests for the default CPU schedules (squeezer.schedules)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import tvm  # noqa: E402
from torch import nn  # noqa: E402
from tvm import relax, tirx  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline  # noqa: E402
from tvm.relax.frontend.torch import from_exported_program  # noqa: E402

from squeezer.schedules import (  # noqa: E402
    Conv2dNCHW,
    Matmul,
    ParallelVectorize,
    SerialTiny,
    default_rules,
    default_schedule_pass,
)
from squeezer.schedules._common import worth_parallel  # noqa: E402

TARGET = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)
RTOL, ATOL = 1e-4, 1e-5


def _lower(model: nn.Module, x: torch.Tensor) -> tvm.IRModule:
    """torch -> Relax -> legalized, fused PrimFuncs (the compiler's stages before ours)."""
    with torch.no_grad():
        mod = from_exported_program(torch.export.export(model.eval(), (x,)))
    seq = tvm.transform.Sequential(
        [relax.transform.DecomposeOpsForInference(), *cpu_pipeline.legalize_passes(TARGET)]
    )
    with TARGET:
        return seq(mod)


def _rule_names(mod: tvm.IRModule) -> dict[str, str]:
    """Which rule of default_rules() claims each PrimFunc."""
    names = {}
    with TARGET:
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                rule = next(r for r in default_rules() if r.apply(func, TARGET, False))
                names[gv.name_hint] = type(rule).__name__
    return names


def _run(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, tvm.IRModule]:
    mod = default_schedule_pass(TARGET)(_lower(model, x))
    seq = tvm.transform.Sequential(
        cpu_pipeline.dataflow_lower_passes(TARGET) + cpu_pipeline.finalize_passes(TARGET)
    )
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=seq), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    out = out if hasattr(out, "numpy") else out[0]
    return out.numpy(), mod


def _check(model: nn.Module, shape: tuple[int, ...], rule: str | None = None) -> tvm.IRModule:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if rule is not None:
        assert rule in _rule_names(_lower(model, x)).values()
    got, mod = _run(model, x)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return mod


class ConvAct(nn.Module):
    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None, residual: bool = False):
        super().__init__()
        self.conv, self.act, self.residual = conv, act or nn.Identity(), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        return y + x if self.residual else y


CONV_CASES = [
    # (in, out, kernel, stride, pad, groups, bias, act, residual, hw)
    (16, 32, 1, 1, 0, 1, True, nn.ReLU6(), False, 14),  # pointwise, channel-vector path
    (24, 24, 1, 1, 0, 1, True, None, True, 7),  # pointwise + residual epilogue
    (5, 7, 1, 1, 0, 1, False, None, False, 9),  # odd channels: pixel-vector path
    (8, 16, 3, 1, 1, 1, True, nn.ReLU(), False, 11),  # regular 3x3, padding, odd size
    (6, 16, 3, 2, 1, 1, True, nn.ReLU(), False, 13),  # stride 2
    (3, 10, 5, 2, 2, 1, False, None, False, 17),  # 5x5, out channels not vector multiple
    (16, 16, 3, 1, 1, 16, True, nn.ReLU6(), False, 15),  # depthwise
    (12, 12, 3, 2, 1, 12, True, nn.ReLU6(), False, 15),  # depthwise stride 2
    (32, 32, 3, 1, 1, 32, True, nn.ReLU6(), True, 7),  # depthwise, narrow map: channel vectors
    (48, 48, 3, 1, 1, 48, True, nn.ReLU6(), False, 2),  # depthwise 2x2 map, 48 channels
    (8, 16, 3, 1, 1, 2, True, nn.ReLU(), False, 10),  # grouped
    (16, 16, 1, 2, 0, 1, True, None, False, 12),  # strided pointwise (ResNet downsample)
    # Weights >= 1 MiB: per-task packed weight slabs (conv2d_layout.weight_slabs).
    (256, 256, 3, 1, 1, 1, True, nn.ReLU(), True, 5),  # 3x3, odd map, residual
    (128, 256, 3, 2, 1, 1, True, nn.ReLU(), False, 9),  # 3x3 stride 2, odd size
    (512, 512, 1, 1, 0, 1, True, nn.ReLU(), False, 7),  # pointwise on a 7x7 map
    (1024, 1024, 3, 1, 1, 32, True, nn.ReLU(), False, 3),  # grouped, 32 channels per group
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}g{c[5]}")
def test_conv2d(case: tuple) -> None:
    cin, cout, k, s, p, g, bias, act, res, hw = case
    model = ConvAct(nn.Conv2d(cin, cout, k, s, p, groups=g, bias=bias), act, res)
    _check(model, (1, cin, hw, hw), rule="Conv2dNCHW")


def test_conv2d_batch2() -> None:
    model = ConvAct(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU())
    _check(model, (2, 8, 9, 9), rule="Conv2dNCHW")


@pytest.mark.parametrize("batch,cin,cout", [(1, 1280, 1000), (4, 67, 35), (3, 64, 48)])
def test_dense_with_bias(batch: int, cin: int, cout: int) -> None:
    _check(nn.Linear(cin, cout), (batch, cin), rule="Matmul")


def test_batch_matmul() -> None:
    class BMM(nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return torch.relu(a @ a.transpose(1, 2).contiguous()[:, :, :24])

    _check(BMM(), (2, 9, 20))


@pytest.mark.parametrize(
    "pool",
    [nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2, 2), nn.AdaptiveAvgPool2d(1)],
    ids=["max3s2", "avg2s2", "global"],
)
def test_pooling(pool: nn.Module) -> None:
    _check(pool, (1, 8, 15, 15))


def test_softmax_and_reduction() -> None:
    class SoftmaxSum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x, dim=-1) + x.sum(dim=-1, keepdim=True)

    _check(SoftmaxSum(), (3, 37))


def test_elementwise() -> None:
    class Elementwise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x) * 2.0 - torch.tanh(x).transpose(2, 3)

    _check(Elementwise(), (1, 3, 119, 119), rule="ParallelVectorize")


class SmallCNN(nn.Module):
    """A tiny MobileNet-like net: every operator family once, at a size worth threads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 32, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.pw(self.dw(self.stem(x))))
        return torch.softmax(self.fc(y.mean((2, 3))), dim=-1)


def _has_parallel(func: tirx.PrimFunc) -> bool:
    """A ForKind.PARALLEL loop exists (TVMScript prints exactly those as T.parallel)."""
    return "T.parallel(" in func.script()


def test_small_cnn_all_scheduled_and_parallel() -> None:
    mod = _check(SmallCNN(), (1, 3, 128, 128))
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert funcs
    for name, func in funcs.items():
        assert func.attrs["tirx.is_scheduled"], name
        tiny = "softmax" in name or "matmul" in name or "mean" in name  # 10- or 32-wide work
        if not tiny:
            assert _has_parallel(func), f"{name} has no parallel loop"


def test_rules_return_none_when_not_applicable() -> None:
    mod = _lower(nn.Linear(16, 8), torch.randn(2, 16))
    func = next(f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
    with TARGET:
        assert Conv2dNCHW().apply(func, TARGET, False) is None
        assert Matmul().apply(func, TARGET, False) is not None
        cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
        assert ParallelVectorize().apply(func, cuda, False) is None


def test_pass_skips_scheduled_functions() -> None:
    mod = default_schedule_pass(TARGET)(_lower(nn.Linear(16, 8), torch.randn(2, 16)))
    again = default_schedule_pass(TARGET)(mod)
    for gv, func in mod.functions_items():
        assert func.same_as(again[gv]), gv.name_hint


def test_worth_parallel_threshold() -> None:
    one = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    assert not worth_parallel(TARGET, 4096)  # tiny elementwise work
    assert worth_parallel(TARGET, 1 << 20)
    assert not worth_parallel(TARGET, 1 << 17, macs=True)  # tiny conv: serial is faster
    assert worth_parallel(TARGET, 1 << 22, macs=True)
    assert not worth_parallel(TARGET, 1 << 22, extent=1)
    assert not worth_parallel(one, 1 << 30)


class DigitsNet(nn.Module):
    """A digits-sized net (8x8 input): every kernel is far below the parallel threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 48, 1), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.ReLU6())
        self.dw2 = nn.Sequential(nn.Conv2d(48, 48, 3, 2, 1, groups=48), nn.ReLU6())
        self.project = nn.Conv2d(48, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw2(self.dw(self.expand(self.stem(x)))))
        return torch.softmax(self.fc(y.mean((2, 3))), dim=-1)


def test_tiny_net_is_serial() -> None:
    """Thread-pool wake-up costs more than these kernels: no parallel loop anywhere."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    names = _rule_names(_lower(DigitsNet(), x))
    assert "SerialTiny" in names.values()  # the mean/softmax, which dlight would parallelize
    mod = _check(DigitsNet(), (1, 1, 8, 8))
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            assert not _has_parallel(func), gv.name_hint


def test_serial_tiny_declines_large_work() -> None:
    mod = _lower(nn.AdaptiveAvgPool2d(1), torch.randn(1, 64, 32, 32))
    func = next(f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
    with TARGET:
        assert SerialTiny().apply(func, TARGET, False) is None
