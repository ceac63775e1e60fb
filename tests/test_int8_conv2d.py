"""The int8 direct and depthwise convolutions bit-exact against numpy int64: 1x1/3x3/5x5, strides
1 and 2, symmetric and asymmetric padding with a zero-point value, groups 1/2/depthwise,
channels that are not a multiple of the packing width, uint8 and int8 over their full range, the
int16 path without VNNI, and every schedule of the tuning spaces."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir

from squeezer.schedules import default_schedule_pass
from squeezer.schedules.int8_conv2d import int8_conv2d_func, int8_conv2d_space, pack_conv_weight
from squeezer.schedules.int8_conv_geometry import ConvGeometry
from squeezer.schedules.int8_depthwise import int8_depthwise_func, int8_depthwise_space
from squeezer.schedules.vnni import AVX2_I16, DotIsa, select_isa
from squeezer.targets.cpu import make_target

TARGET = make_target(2)
HASWELL = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})

# (n, c, h, w, o, k, stride, pads (t, l, b, r), groups)
CONVS = [
    (1, 6, 9, 11, 10, 3, 1, (1, 1, 1, 1), 1),
    (1, 5, 10, 9, 18, 3, 2, (1, 1, 1, 1), 1),
    (2, 6, 8, 8, 10, 3, 1, (0, 1, 2, 1), 2),
    (1, 8, 11, 11, 8, 5, 2, (2, 2, 2, 2), 2),
    (1, 17, 7, 7, 33, 1, 1, (0, 0, 0, 0), 1),
    (1, 12, 9, 10, 20, 1, 2, (0, 0, 0, 0), 1),
    (1, 3, 12, 12, 16, 5, 1, (2, 2, 2, 2), 1),
    (1, 64, 14, 14, 64, 3, 1, (1, 1, 1, 1), 1),
    (1, 16, 8, 8, 24, 1, 1, (0, 0, 0, 0), 1),  # pixels fill whole vectors: written per tile
    (2, 12, 16, 16, 20, 1, 2, (0, 0, 0, 0), 2),
]
DEPTHWISE = [  # (n, c, h, w, multiplier, k, stride, pads)
    (1, 7, 9, 11, 1, 3, 1, (1, 1, 1, 1)),
    (2, 5, 10, 9, 2, 3, 2, (1, 1, 1, 1)),
    (1, 4, 12, 12, 1, 5, 2, (2, 2, 2, 2)),
    (1, 3, 8, 8, 1, 3, 1, (0, 1, 2, 1)),
]


def reference(x: np.ndarray, w: np.ndarray, geo: ConvGeometry, pad_value: int) -> np.ndarray:
    """Grouped convolution in numpy int64."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (geo.pt, geo.pb), (geo.pl, geo.pr)),
                constant_values=pad_value)
    cg, og = geo.c // geo.groups, geo.o // geo.groups
    wl = w.astype(np.int64)
    y = np.zeros((geo.n, geo.o, geo.oh, geo.ow), np.int64)
    for r in range(geo.kh):
        for s in range(geo.kw):
            win = xp[:, :, r:r + geo.sh * geo.oh:geo.sh, s:s + geo.sw * geo.ow:geo.sw]
            for g in range(geo.groups):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", win[:, g * cg:(g + 1) * cg], wl[g * og:(g + 1) * og, :, r, s])
    return y


def data(rng, shape, dtype) -> np.ndarray:
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, shape)
    x[:, 0] = hi if dtype == "uint8" else lo  # a whole channel at the extreme
    return x.astype(dtype)


def conv_case(spec, dtype, isa: DotIsa, seed):
    n, c, h, w, o, k, s, pads, groups = spec
    rng = np.random.default_rng(seed)
    geo = ConvGeometry(n, c, h, w, o, k, k, groups, s, s, *pads, isa.lanes)
    x = data(rng, (n, c, h, w), dtype)
    wt = rng.integers(-128, 128, (o, c // groups, k, k)).astype(np.int8)
    wt[0] = -128
    pad_value = int(rng.integers(0, 256) if dtype == "uint8" else rng.integers(-128, 128))
    packed, comp = pack_conv_weight(wt, isa, dtype)
    func = int8_conv2d_func(geo, dtype, pad_value, isa)
    return func, [x, packed, comp], reference(x, wt, geo, pad_value)


def dw_case(spec, dtype, lanes, seed):
    n, c, h, w, mult, k, s, pads = spec
    rng = np.random.default_rng(seed)
    geo = ConvGeometry(n, c, h, w, c * mult, k, k, c, s, s, *pads, lanes)
    x = data(rng, (n, c, h, w), dtype)
    wt = rng.integers(-128, 128, (c * mult, 1, k, k)).astype(np.int8)
    wt[0] = -128
    pad_value = 200 if dtype == "uint8" else -77
    return int8_depthwise_func(geo, dtype, pad_value), [x, wt], reference(x, wt, geo, pad_value)


def run_all(cases, target, scheduled=False) -> list[np.ndarray]:
    """Compile every case as one module (one LLVM run) and return each output."""
    mod = tvm.IRModule({f"f{i}": c[0].with_attr("global_symbol", f"f{i}")
                        for i, c in enumerate(cases)})
    if not scheduled:
        mod = default_schedule_pass(target)(mod)
    lib = tvm.compile(mod, target)
    outs = []
    for i, (_, args, want) in enumerate(cases):
        tensors = [tvm.runtime.tensor(a) for a in (*args, np.zeros(want.shape, np.int32))]
        lib[f"f{i}"](*tensors)
        outs.append(tensors[-1].numpy())
    return outs


def test_direct_and_depthwise_bit_exact():
    isa = select_isa(TARGET)
    cases = [conv_case(spec, dtype, isa, i) for i, spec in enumerate(CONVS)
             for dtype in ("uint8", "int8")]
    cases += [dw_case(spec, dtype, isa.lanes, i) for i, spec in enumerate(DEPTHWISE)
              for dtype in ("uint8", "int8")]
    for (_, _, want), got in zip(cases, run_all(cases, TARGET), strict=True):
        np.testing.assert_array_equal(got, want)


def test_avx2_path_is_exact():
    """Built for Haswell (AVX2, no VNNI): int16 vpmaddwd, 8 lanes; runs on this CPU too."""
    assert select_isa(HASWELL) == AVX2_I16
    cases = [conv_case(CONVS[i], dtype, AVX2_I16, i) for i in (1, 2, 4, 9) for dtype in
             ("uint8", "int8")]
    cases.append(dw_case(DEPTHWISE[1], "int8", AVX2_I16.lanes, 0))
    for (_, _, want), got in zip(cases, run_all(cases, HASWELL), strict=True):
        np.testing.assert_array_equal(got, want)


def test_tuning_space_schedules_are_exact():
    isa = select_isa(TARGET)
    conv = conv_case((1, 12, 10, 10, 24, 3, 1, (1, 1, 1, 1), 2), "int8", isa, 9)
    dense = conv_case((1, 12, 8, 8, 24, 1, 1, (0, 0, 0, 0), 1), "uint8", isa, 9)
    dw = dw_case((1, 6, 13, 13, 1, 3, 1, (1, 1, 1, 1)), "uint8", isa.lanes, 9)
    cases, distinct = [], set()
    for space, base in ((int8_conv2d_space, conv), (int8_conv2d_space, dense),
                        (int8_depthwise_space, dw)):
        mod, traces = tvm.IRModule({"main": base[0]}), []
        for seed in range(1, 6):
            sch = s_tir.Schedule(mod, seed=seed)
            with TARGET:
                space(sch)
            traces.append(sch.trace)
            cases.append((sch.mod["main"], base[1], base[2]))
        distinct |= {str(t) for t in traces}
        replays_with_any_decisions(mod, traces)
    assert len(distinct) > 4
    for (_, _, want), got in zip(cases, run_all(cases, TARGET, scheduled=True), strict=True):
        np.testing.assert_array_equal(got, want)


def replays_with_any_decisions(mod: tvm.IRModule, traces: list) -> None:
    """MetaSchedule's mutators replay a trace with other decisions: every sampled trace must
    replay with the decisions of every other one (no structure depending on a sample)."""
    for a in traces:
        for b in traces:
            t = a
            for x, y in zip([i for i in a.insts if i in a.decisions],
                            [i for i in b.insts if i in b.decisions], strict=True):
                t = t.with_decision(x, b.decisions[y], remove_postproc=True)
            with TARGET:
                t.apply_to_schedule(s_tir.Schedule(mod), remove_postproc=True)


def test_geometry_of_strided_padded_planes():
    geo = ConvGeometry(1, 64, 56, 56, 64, 3, 3, 1, 2, 2, 1, 1, 1, 1, 16)
    assert (geo.oh, geo.ow, geo.ph, geo.pw, geo.hq, geo.wq) == (28, 28, 2, 2, 29, 29)
    assert geo.qp % 16 == 0 and geo.qp >= geo.q == 28 * 29
    assert geo.flat >= geo.qp + geo.tap_offset(2, 2)  # every tap of every pixel is stored
    assert geo.macs() == 64 * 28 * 28 * 64 * 9


def test_bad_geometry_and_pad_values_are_rejected():
    with pytest.raises(ValueError, match="groups 3 must divide"):
        ConvGeometry(1, 8, 5, 5, 8, 3, 3, 3, 1, 1, 0, 0, 0, 0, 16)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ConvGeometry(1, 8, 2, 2, 8, 3, 3, 1, 1, 1, 0, 0, 0, 0, 16)
    geo = ConvGeometry(1, 8, 5, 5, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 16)
    with pytest.raises(ValueError, match="pad value 300 outside the uint8 range"):
        int8_conv2d_func(geo, "uint8", 300, select_isa(TARGET))
    with pytest.raises(ValueError, match="groups == channels"):
        int8_depthwise_func(geo, "int8", 0)
    with pytest.raises(ValueError, match="4-D int8 OIHW"):
        pack_conv_weight(np.zeros((8, 8, 3), np.int8), select_isa(TARGET), "uint8")
