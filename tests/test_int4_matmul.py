"""The int4_matmul kernel (int4 weights per group, int8 or float activations) against numpy,
and the int4_weights graph pass on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir

from squeezer.passes.graph.int4_weights import int4_weights
from squeezer.schedules import default_schedule_pass
from squeezer.schedules.int4_matmul import (
    ILV,
    LANES,
    Int4Weight,
    has_vnni,
    int4_matmul_func,
    int4_matmul_space,
    rows_padded,
)
from squeezer.targets.cpu import make_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = make_target(2)
VNNI = has_vnni(TARGET)
ACT = "int16" if VNNI else "float"  # what int4_weights picks by default
needs_vnni = pytest.mark.skipif(not VNNI, reason="int8 activations need AVX512-VNNI")
# float sums of up to a few hundred products in another order, relative to the largest output
FLOAT_RTOL = 1e-5


def int4_weight(n: int, k: int, group: int, seed: int = 0) -> Int4Weight:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-8, 8, (n, k)).astype(np.int8)
    scales = rng.uniform(0.01, 0.1, (n, -(-k // group))).astype(np.float32)
    return Int4Weight.from_codes(codes, scales, group)


QMAX = {"int8": 127, "int16": 127 * 128}


def quantize_rows(x: np.ndarray, act: str) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's activation quantization in float32: ``round(x * (qmax / max|x|))``."""
    qmax = np.float32(QMAX[act])
    amax = np.abs(x).max(axis=1).astype(np.float32)
    inv = np.where(amax > 0, qmax / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.clip(np.round(x * inv[:, None]), -qmax, qmax).astype(np.int64)
    return q, (amax / qmax).astype(np.float32)


def group_sums(a: np.ndarray, w: Int4Weight) -> np.ndarray:
    """``sum_{k in g} a[m, k] * w_q[n, k]`` as ``(m, n, groups)`` (exact int64 for int input)."""
    m, (n, k), g = a.shape[0], w.shape, w.group
    ng = -(-k // g)
    ap = np.zeros((m, ng * g), a.dtype)
    ap[:, :k] = a
    cp = np.zeros((n, ng * g), np.int64)
    cp[:, :k] = w.codes()
    return np.einsum("mgj,ngj->mng", ap.reshape(m, ng, g), cp.reshape(n, ng, g))


def rounding_bound(x: np.ndarray, w: np.ndarray, act: str) -> np.ndarray:
    """How far the kernel may be from the float64 product ``x @ w.T``: the activation
    rounding (``s_a / 2`` per element, quantized modes) plus float rounding. A bias add and a
    relu after the product do not widen it (``|relu(a) - relu(b)| <= |a - b|``)."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    bound = np.full((x2.shape[0], w.shape[0]), FLOAT_RTOL * np.abs(x2 @ w.T).max())
    if act != "float":
        sa = np.abs(x2).max(axis=1) / QMAX[act]
        bound = bound + (sa[:, None] / 2) @ np.abs(w).sum(axis=1)[None]
    return bound


def build(func, sch_fn=None):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if sch_fn is None:
        mod = default_schedule_pass(TARGET)(mod)
        script = mod.script()
        assert "dot_init" in script, "the int4 rule did not apply"
    else:
        sch = s_tir.Schedule(mod)
        with TARGET:
            sch_fn(sch)
        mod = sch.mod
    return tvm.compile(mod, TARGET)


def run(x: np.ndarray, w: Int4Weight, act: str, *, sums: bool = False, sch_fn=None):
    func = int4_matmul_func(x.shape, w, act, sums=sums)
    lib = build(func, sch_fn)
    y_buf = func.params[-1]
    y = np.zeros([int(d) for d in y_buf.shape], y_buf.dtype)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in (x, w.packed, w.scales, y)]
    lib(*args)
    return args[-1].numpy()


def unpack_sums(y: np.ndarray, m: int, n: int) -> np.ndarray:
    """The sums variant's ``(Mp, tiles, groups, 16)`` as ``(m, n, groups)``."""
    mp, tiles, ng, lanes = y.shape
    return y.transpose(0, 1, 3, 2).reshape(mp, tiles * lanes, ng)[:m, :n]


def test_packing_layout_and_round_trip():
    rng = np.random.default_rng(0)
    codes = rng.integers(-8, 8, (75, 75)).astype(np.int8)
    scales = rng.uniform(0.01, 0.1, (75, 3)).astype(np.float32)
    w = Int4Weight.from_codes(codes, scales, 32)
    # 75 outputs -> 2 chunks of 4 tiles of 16; k 75 -> 96 (3 groups of 32), 12 steps of 8
    assert w.packed.shape == (2, 12, ILV, LANES, 4) and w.scales.shape == (2, 3, ILV, LANES)
    u = np.full((128, 96), 8, np.int64)  # padding is u = 8, the code 0
    u[:75, :75] = codes.astype(np.int64) + 8
    for c, s, t, i, j in [(0, 0, 0, 0, 0), (1, 9, 0, 10, 3), (0, 11, 3, 15, 2), (1, 4, 2, 1, 1)]:
        byte, row = int(w.packed[c, s, t, i, j]), 64 * c + 16 * t + i
        # byte j of a tile: value (lane i, k 8s + j) low, (lane i, k 8s + 4 + j) high
        assert byte & 15 == u[row, 8 * s + j] and byte >> 4 == u[row, 8 * s + 4 + j]
        assert w.scales[c, s % 3, t, i] == (scales[row, s % 3] if row < 75 else 0)
    np.testing.assert_array_equal(w.codes(), codes)
    np.testing.assert_array_equal(w.group_scales(), scales)
    s_full = np.repeat(scales, 32, axis=1)[:, :75]
    np.testing.assert_array_equal(w.to_dense(), codes.astype(np.float32) * s_full)
    assert w.nbytes == w.packed.nbytes + w.scales.nbytes


def test_bad_weights_are_named():
    codes = np.zeros((4, 64), np.int8)
    with pytest.raises(ValueError, match="group size"):
        Int4Weight.from_codes(codes, np.ones((4, 1), np.float32), 100)
    with pytest.raises(ValueError, match=r"scales must have shape \(4, 2\)"):
        Int4Weight.from_codes(codes, np.ones((4, 1), np.float32), 32)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        Int4Weight.from_codes(codes + 8, np.ones((4, 2), np.float32), 32)
    w = Int4Weight.from_codes(codes, np.ones((4, 2), np.float32), 32)
    with pytest.raises(ValueError, match="last dim 63"):
        int4_matmul_func((1, 63), w)


CASES = [  # m, n, k, group: odd n and k, k not a multiple of the group, batch 1 and 16
    (1, 40, 100, 32),
    (16, 33, 200, 64),
    (1, 64, 300, 128),
    (16, 50, 128, 128),
]


@needs_vnni
@pytest.mark.parametrize("act", ["int8", "int16"])
@pytest.mark.parametrize("m,n,k,group", CASES)
def test_group_sums_bit_exact(m, n, k, group, act):
    rng = np.random.default_rng(m + n + k)
    w = int4_weight(n, k, group, seed=k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    # exact halves (the kernel rounds half to even), then the row's maximum
    x[0, :4] = np.array([2.5, -2.5, 0.5, QMAX[act]]) * (np.float32(127) / QMAX[act])
    if m > 1:
        x[1] = 0  # a zero row: scale 0, no division by zero
    q, _ = quantize_rows(x, act)
    got = unpack_sums(run(x, w, act, sums=True), m, n)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, group_sums(q, w))


@needs_vnni
@pytest.mark.parametrize("m,n,k,group,act", [(*CASES[0], "int16"), (*CASES[1], "int8")])
def test_quantized_output(m, n, k, group, act):
    rng = np.random.default_rng(1)
    w = int4_weight(n, k, group, seed=3)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = run(x, w, act)
    q, sa = quantize_rows(x, act)
    scales = w.group_scales().astype(np.float64)
    ref = (group_sums(q, w) * scales[None] * sa[:, None, None]).sum(axis=2)
    np.testing.assert_allclose(y, ref, rtol=0, atol=FLOAT_RTOL * np.abs(ref).max())
    exact = x.astype(np.float64) @ w.to_dense().T.astype(np.float64)
    assert np.all(np.abs(y - exact) <= rounding_bound(x, w.to_dense(), act))


@pytest.mark.parametrize("m,n,k,group", CASES[:2])
def test_float_activations(m, n, k, group):
    rng = np.random.default_rng(2)
    w = int4_weight(n, k, group, seed=5)
    x = rng.standard_normal((m, k)).astype(np.float32)
    sums = unpack_sums(run(x, w, "float", sums=True), m, n)
    ref_sums = group_sums(x.astype(np.float64), w)
    np.testing.assert_allclose(sums, ref_sums, rtol=0, atol=1e-5 * np.abs(ref_sums).max())
    y = run(x, w, "float")
    exact = x.astype(np.float64) @ w.to_dense().T.astype(np.float64)
    np.testing.assert_allclose(y, exact, rtol=0, atol=FLOAT_RTOL * np.abs(exact).max())


def test_leading_dims_and_row_padding():
    """A rank-3 input (rows flattened), rows past 8 padded to a multiple of 8."""
    assert rows_padded(1) == 1 and rows_padded(8) == 8 and rows_padded(9) == 16
    rng = np.random.default_rng(4)
    w = int4_weight(20, 64, 64, seed=7)
    x = rng.standard_normal((3, 3, 64)).astype(np.float32)
    y = run(x, w, "float")
    exact = x.astype(np.float64) @ w.to_dense().T.astype(np.float64)
    assert y.shape == (3, 3, 20)
    np.testing.assert_allclose(y, exact, rtol=0, atol=FLOAT_RTOL * np.abs(exact).max())


@pytest.mark.parametrize("act", ["int8", "int16", "float"])
def test_tuning_space_samples_are_correct(act):
    if act != "float" and not VNNI:
        pytest.skip("quantized activations need AVX512-VNNI")
    rng = np.random.default_rng(6)
    w = int4_weight(64, 96, 32, seed=9)
    x = rng.standard_normal((16, 96)).astype(np.float32)
    want = run(x, w, act, sums=True)

    def space(sch):
        sch.seed(3)
        int4_matmul_space(sch)

    np.testing.assert_array_equal(run(x, w, act, sums=True, sch_fn=space), want)


def linear_module(w: np.ndarray, bias: np.ndarray, x_shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(np.ascontiguousarray(w.T))))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(bias))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_pass_rewrites_int4_and_leaves_others():
    w = int4_weight(24, 70, 32, seed=11).to_dense()
    ternary = np.sign(np.random.default_rng(0).standard_normal((24, 70))).astype(np.float32)
    dense = np.random.default_rng(1).standard_normal((24, 70)).astype(np.float32)
    bias = np.zeros(24, np.float32)
    log: list[dict] = []
    with TARGET:
        out = {name: int4_weights(log)(linear_module(m, bias, (2, 70)))
               for name, m in (("int4", w), ("ternary", ternary), ("dense", dense))}
    calls = {name: [gv.name_hint for gv, f in mod.functions_items()
                    if isinstance(f, tvm.tirx.PrimFunc)] for name, mod in out.items()}
    assert calls == {"int4": ["int4_matmul"], "ternary": [], "dense": []}
    assert [e["reason"] for e in log] == [f"int4 group 32, {ACT} activations",
                                          "binary weights: left to the bit kernels"]
    assert log[0]["op"] == "matmul" and log[0]["where"] == "matmul (2, 70) x 70x24"
    # 24 outputs padded to a chunk of 64, k 70 to 96: nibbles plus one scale per group
    assert log[0]["bytes"] == 64 * 96 // 2 + 64 * 3 * 4 and log[0]["float_bytes"] == 24 * 70 * 4


def test_pass_numerics_through_the_pipeline():
    """Rewrite, legalize (bias and relu fuse into the kernel), default schedule, run."""
    from squeezer.pipeline import legalize_stage, lower_stage

    rng = np.random.default_rng(12)
    w = int4_weight(40, 96, 32, seed=13).to_dense()
    bias = rng.standard_normal(40).astype(np.float32)
    mod = linear_module(w, bias, (3, 96))
    with TARGET:
        mod = int4_weights()(mod)
    mod = legalize_stage(mod, TARGET)
    fused = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(fused) == 1 and fused[0].startswith("fused_int4_matmul_add_relu"), fused
    mod = lower_stage(default_schedule_pass(TARGET)(mod), TARGET)
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=None), tvm.cpu())
    x = rng.standard_normal((3, 96)).astype(np.float32)
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = np.maximum(x.astype(np.float64) @ w.T + bias, 0)
    assert np.all(np.abs(y - ref) <= rounding_bound(x, w, ACT))


def test_dynamic_input_stays_float_and_is_reported():
    n = tvm.tirx.Var("n", "int64")
    mod = linear_module(int4_weight(16, 32, 32).to_dense(), np.zeros(16, np.float32), (n, 32))
    log: list[dict] = []
    fallback: list[dict] = []
    with TARGET:
        out = int4_weights(log, float_fallback=fallback)(mod)
    assert not [gv for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert fallback == [{"op": "matmul", "where": "matmul ? x 32x16", "reason":
                         "int4 weights kept float: the input needs a static float32 shape"}]
    assert log[0]["kernel"] == "float" and log[0]["format"] == "int4"


def test_quantized_activations_need_vnni():
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    mod = linear_module(int4_weight(16, 32, 32).to_dense(), np.zeros(16, np.float32), (1, 32))
    with avx2, pytest.raises(ValueError, match="AVX512-VNNI"):
        int4_weights(act="int8")(mod)
    log: list[dict] = []
    with avx2:
        int4_weights(log)(mod)  # auto: float activations
    assert log[0]["act"] == "float"


def int4_values(w: np.ndarray, group: int) -> np.ndarray:
    """``w`` rounded to int4 per group (scale max|w| / 7), as a float weight."""
    n, k = w.shape
    ng = -(-k // group)
    wp = np.zeros((n, ng * group), np.float32)
    wp[:, :k] = w
    s = (np.abs(wp.reshape(n, ng, group)).max(axis=2) / 7).astype(np.float32)
    codes = np.clip(np.round(wp.reshape(n, ng, group) / s[..., None]), -8, 7)
    codes = codes.reshape(n, -1)[:, :k].astype(np.int8)
    return Int4Weight.from_codes(codes, s, group).to_dense()


def test_compile_torch_model_with_int4_weights(tmp_path):
    """squeezer.compile finds the int4 layers (a bias and relu fused, one without bias) and
    the compiled model passes verification against torch."""
    import torch

    import squeezer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 10, bias=False)).eval()
    with torch.no_grad():
        for layer, group in ((model[0], 32), (model[2], 64)):
            layer.weight.copy_(torch.from_numpy(int4_values(layer.weight.numpy(), group)))
    x = np.random.default_rng(14).standard_normal((4, 64)).astype(np.float32)
    compiled = squeezer.compile(model, (x,), threads=2, use_records=False, dump_ir=tmp_path)
    legal = (tmp_path / "02-legalize.py").read_text()
    assert "def fused_int4_matmul_add_relu" in legal and "def int4_matmul" in legal
    assert compiled.manifest["verified"]["output"]["max_rel"] < 1e-3  # verify's tolerance


@pytest.mark.slow
def test_int4_kernel_is_tuned_and_the_record_applied(tmp_path):
    """MetaSchedule searches the registered space (traces replay with other tile sizes) and
    the compile applies the record."""
    import torch

    import squeezer
    from squeezer.tune import tune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(),
                                torch.nn.Linear(384, 10)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(int4_values(model[0].weight.numpy(), 64)))
    x = torch.randn(16, 256)
    result = tune(model, example_inputs=(x,), trials=8, per_iter=4, threads=2,
                  records=tmp_path, warm_start=False)
    (task,) = [t for t in result.tasks if t.kernel == "int4_matmul"]
    assert task.trials > 0 and task.best_seconds is not None and task.best_seconds < 1.0
    compiled = squeezer.compile(model, (x.numpy(),), threads=2, records=[tmp_path])
    (row,) = [k for k in compiled.manifest["tuning"]["kernels"] if "int4_matmul" in k["name"]]
    assert row["default_seconds"] is not None, "the compile did not find the task's records"
    # the record replaces the default schedule exactly when it measured faster
    assert row["tuned"] == (task.best_seconds < row["default_seconds"]), (row, task)
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    want = model(x).detach().numpy()
    w0 = model[0].weight.detach().numpy()
    # relu then the float second layer: the first layer's rounding bound, times |W1| row sums
    bound = rounding_bound(x.numpy(), w0, ACT) @ np.abs(model[2].weight.detach().numpy()).T
    assert np.all(np.abs(got - want) <= bound + 1e-4)
