"""The sparse_matmul kernel (BSR/CSR x dense) against numpy/scipy, every format and edge case."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import tvm
from tvm import s_tir

from squeezer.schedules import default_schedule_pass
from squeezer.schedules._common import MIN_PARALLEL_MACS
from squeezer.schedules.sparse_matmul import (
    SparseWeight,
    index_dtype,
    sparse_matmul_func,
    sparse_matmul_space,
)
from squeezer.targets.cpu import make_target

TARGET = make_target(2)
RTOL, ATOL = 1e-5, 1e-4  # fp32 sums of up to a few thousand products, different order


def sparse(n: int, k: int, density: float, block: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random ``n x k`` matrix whose non-zeros come in whole ``block``s."""
    rng = np.random.default_rng(seed)
    br, bc = block
    nb, kb = -(-n // br), -(-k // bc)
    mask = sp.random(nb, kb, density=density, random_state=seed).toarray() != 0
    full = np.kron(mask, np.ones(block))[:n, :k]
    return (full * rng.standard_normal((n, k))).astype(np.float32)


def run(w: np.ndarray, b: np.ndarray, block, *, b_layout="kp", y_layout="np", bias=None,
        act="none", sch_fn=None, padded=True) -> np.ndarray:
    p = b.shape[1] if b_layout == "kp" else b.shape[0]
    sw = SparseWeight.for_product(w, block, p) if padded else SparseWeight.from_dense(w, block)
    func = sparse_matmul_func(sw, p, b_layout=b_layout, y_layout=y_layout,
                              bias=bias is not None, act=act)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if sch_fn is None:
        mod = default_schedule_pass(TARGET)(mod)
        script = mod.script()
        assert "_local" in script, "the sparse rule did not apply"
        # small products stay on one thread: the pool costs more than they take
        macs = sw.data.size * p
        assert ("T.parallel" in script) == (macs >= MIN_PARALLEL_MACS), macs
        gemv = p == 1 and tuple(block) == (1, 1) and padded
        assert ('"squeezer.gemv": 1' in script) == gemv, "wrong kernel variant"
    else:
        sch = s_tir.Schedule(mod)
        with TARGET:
            sch_fn(sch)
        mod = sch.mod
    lib = tvm.compile(mod, TARGET)
    n = w.shape[0]
    out = np.zeros((n, p) if y_layout == "np" else (p, n), np.float32)
    dev = tvm.cpu()
    args = [b, sw.data, sw.indices, sw.indptr,
            bias if bias is not None else np.zeros(n, np.float32), out]
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
    lib(*targs)
    return targs[-1].numpy()


def reference(w, b, b_layout, y_layout, bias, act):
    bk = b if b_layout == "kp" else b.T
    y = sp.csr_matrix(w.astype(np.float64)) @ bk.astype(np.float64)
    if bias is not None:
        y = y + bias[:, None]
    if act == "relu":
        y = np.maximum(y, 0)
    elif act == "relu6":
        y = np.clip(y, 0, 6)
    return y if y_layout == "np" else y.T


BLOCKS = [(1, 1), (1, 4), (4, 1), (8, 1), (16, 1), (4, 4)]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("p", [1, 16, 128])
def test_formats_match_scipy(block, p):
    rng = np.random.default_rng(1)
    w = sparse(64, 96, 0.2, block)
    b = rng.standard_normal((96, p)).astype(np.float32)
    got = run(w, b, block)
    np.testing.assert_allclose(got, reference(w, b, "kp", "np", None, "none"), RTOL, ATOL)


@pytest.mark.parametrize("layouts", [("kp", "np"), ("pk", "pn")])
@pytest.mark.parametrize("padded", [True, False])
def test_matrix_vector_product(layouts, padded):
    """p == 1 with CSR: rows padded to whole vectors run the lane-parallel kernel; unpadded
    storage takes the general kernel. Both give the same result."""
    rng = np.random.default_rng(7)
    w = sparse(300, 200, 0.1, (1, 1))
    w[17] = 0
    w[40, :] = rng.standard_normal(200)  # a dense row
    b_layout, y_layout = layouts
    x = rng.standard_normal((200, 1) if b_layout == "kp" else (1, 200)).astype(np.float32)
    bias = rng.standard_normal(300).astype(np.float32)
    got = run(w, x, (1, 1), b_layout=b_layout, y_layout=y_layout, bias=bias, act="relu",
              padded=padded)
    np.testing.assert_allclose(got, reference(w, x, b_layout, y_layout, bias, "relu"), RTOL, ATOL)
    sw = SparseWeight.for_product(w, (1, 1), 1)
    assert np.all(np.diff(sw.indptr) % 16 == 0) and np.diff(sw.indptr).min() == 16
    np.testing.assert_array_equal(sw.to_dense(), w)


@pytest.mark.parametrize("block", [(1, 1), (16, 1), (4, 4)])
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
def test_linear_layout_bias_activation(block, act):
    """``Y = act(X W^T + b)`` with X (p x k) and Y (p x n), as a linear layer computes it."""
    rng = np.random.default_rng(2)
    w = sparse(48, 80, 0.3, block, seed=3) * 4
    x = rng.standard_normal((32, 80)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    got = run(w, x, block, b_layout="pk", y_layout="pn", bias=bias, act=act)
    np.testing.assert_allclose(got, reference(w, x, "pk", "pn", bias, act), RTOL, ATOL)


@pytest.mark.parametrize("case", ["empty_rows", "all_zero", "dense", "ragged"])
@pytest.mark.parametrize("block", [(1, 1), (8, 1), (4, 4)])
def test_edge_cases(case, block):
    rng = np.random.default_rng(4)
    n, k, p = 40, 72, 32
    if case == "ragged":  # sizes that are not multiples of the block or the vector width
        n, k, p = 37, 53, 19
    w = sparse(n, k, 0.3, block)
    if case == "empty_rows":
        w[5:21] = 0
        w[-3:] = 0
    elif case == "all_zero":
        w[:] = 0
    elif case == "dense":
        w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((k, p)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = run(w, b, block, bias=bias, act="relu")
    np.testing.assert_allclose(got, reference(w, b, "kp", "np", bias, "relu"), RTOL, ATOL)


def test_storage_is_compressed_with_narrow_indices():
    w = sparse(256, 3072, 0.1, (1, 1))
    sw = SparseWeight.from_dense(w)
    assert sw.indices.dtype == np.int16 and sw.indptr.dtype == np.int32
    assert sw.nnzb == np.count_nonzero(w)
    assert sw.nbytes == sw.nnzb * 6 + 257 * 4
    np.testing.assert_array_equal(sw.to_dense(), w)
    blocked = SparseWeight.from_dense(sparse(256, 768, 0.1, (16, 1)), (16, 1))
    assert blocked.indices.dtype == np.int16 and blocked.data.shape[1:] == (16, 1)
    assert index_dtype(256) == "uint8" and index_dtype(257) == "int16"
    assert index_dtype(40000) == "int32"


def test_tuning_space_schedules_are_correct():
    """Every schedule the tuner can sample computes the same result."""
    rng = np.random.default_rng(5)
    w = sparse(64, 64, 0.25, (4, 1))
    b = rng.standard_normal((64, 64)).astype(np.float32)
    want = reference(w, b, "kp", "np", None, "none")
    seen = set()
    for seed in range(6):
        def fn(sch, seed=seed):
            sch.seed(seed)
            sparse_matmul_space(sch)
            seen.add(str(sch.trace))
        np.testing.assert_allclose(run(w, b, (4, 1), sch_fn=fn), want, RTOL, ATOL)
    assert len(seen) > 1


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        SparseWeight.from_dense(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="block shape"):
        SparseWeight.from_dense(np.zeros((4, 4), np.float32), (0, 1))
