"""Bit-serial dense: ``Y[m, n] = sum_p alpha[p, n] * D_p[m, n]`` with XOR-popcount products.

``X`` (M, K) float32 is encoded (:class:`~squeezer.schedules.bitpack.ActBits`) and packed along
``K`` into words inside the kernel; the weight planes come packed (``(KW, P * NP)`` words,
:func:`~squeezer.schedules.bitpack.dense_weight_words`). Every product is ``popcount(x ^ w)``:

- binary activations (bipolar x bipolar): ``D = K - 2 * popcount(x ^ w)`` (bits past ``K`` are
  0 on both sides and never differ);
- unipolar activation planes ``j`` (sign, uint2) against bipolar weights:
  ``sum_k (2 w_k - 1) x_k = popcount(w) - popcount(w ^ x)``, so
  ``D = sum_j beta_j * (popcount(w) - popcount(w ^ x_j))`` with the weight rows' popcounts a
  parameter (``WPC``, computed once when the weight is packed).

Outputs run along ``n`` in vectors (one activation word broadcast against a vector of weight
words), which also serves batch 1. Blocks: ``xu`` (pack), ``acc`` (annotated
``squeezer.kernel``), ``epilogue``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm import s_tir, te, tirx
from tvm.target import Target

from ._common import MAX_ACC_REGS, num_cores, vector_lanes, vectorize_innermost, worth_parallel
from .bitpack import ACC_DTYPES, WORD_DTYPES, ActBits, dense_columns, has_vector_popcount, words

KERNEL = "bitserial_dense"


def bitserial_dense_func(m: int, k: int, n: int, planes: int, act: ActBits,
                         word_bits: int = 64) -> tirx.PrimFunc:
    """The kernel for an ``(m, k) x (k, n)`` product; parameters ``(X, WB, ALPHA, Y)``, with
    ``WPC`` before ``Y`` for unipolar activations (``act.bipolar`` False).

    ``X`` (M, K) float32 holds the activation before its encoding; ``ALPHA`` is ``(P * NP,)``
    (:func:`~squeezer.schedules.bitpack.alphas_for_dense`); ``Y`` (M, N) float32.
    """
    i64 = functools.partial(tirx.IntImm, "int64")
    word, acc_t = WORD_DTYPES[word_bits], ACC_DTYPES[word_bits]
    kw_, J, P, np_ = words(k, word_bits), act.planes, planes, dense_columns(n)
    x = te.placeholder((i64(m), i64(k)), "float32", name="X")
    wb = te.placeholder((kw_, P * np_), word, name="WB")
    alpha = te.placeholder((P * np_,), "float32", name="ALPHA")
    wpc = te.placeholder((P * np_,), "int32", name="WPC")
    b = te.reduce_axis((0, word_bits), "b")

    def pack(i, j, w):
        c = w * word_bits + b
        bit = tirx.And(act.bit(x[i, tirx.min(c, k - 1)], j), c < k)
        return te.sum(tirx.shift_left(tirx.Cast(word, bit), tirx.Cast(word, b)), axis=b)

    xu = te.compute((m, J, kw_), pack, name="xu")
    rw = te.reduce_axis((0, kw_), "rw")
    acc = te.compute((m, J, P * np_), lambda i, j, q: te.sum(tirx.Cast(acc_t, tirx.popcount(
        tirx.bitwise_xor(xu[i, j, rw], wb[rw, q]))), axis=rw), name="acc",
        attrs={"squeezer.kernel": KERNEL})

    def plane_dot(i, q):
        if act.bipolar:
            return k - 2 * acc[i, 0, q]
        d = tirx.const(0, acc_t)
        for j, beta in enumerate(act.betas):
            d = d + beta * (tirx.Cast(acc_t, wpc[q]) - acc[i, j, q])
        return d

    def epilogue(i, o):
        y = tirx.const(0.0, "float32")
        for p in range(P):
            q = p * np_ + o
            y = y + alpha[q] * tirx.Cast("float32", plane_dot(i, q))
        return y

    out = te.compute((i64(m), i64(n)), epilogue, name="epilogue")
    params = [x, wb, alpha, out] if act.bipolar else [x, wb, alpha, wpc, out]
    func = te.create_prim_func(params)
    # the caller names it (BlockBuilder.add_func, or a module key)
    func = func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 4})
    return func.without_attr("global_symbol")


@dataclass(frozen=True)
class DenseKnobs:
    """Register tile: ``rows`` rows of ``X`` times ``vecs`` vectors of outputs (times the
    activation planes)."""

    rows: int
    vecs: int


def dense_shapes(sch: s_tir.Schedule) -> tuple[int, int, int, int]:
    """``(m, activation planes, columns, word bits)`` of the kernel being scheduled."""
    acc = sch.get(sch.get_sblock("acc")).writes[0].source
    wb = sch.mod["main"].params[1]
    return int(acc.shape[0]), int(acc.shape[1]), int(acc.shape[2]), int(wb.dtype.bits)


def dense_row_choices(m: int) -> list[int]:
    return [r for r in (1, 2, 3, 4, 6, 8) if m % r == 0]


def dense_vec_choices(cols: int, lanes: int) -> list[int]:
    return [v for v in (1, 2, 3, 4, 6, 8) if (cols // lanes) % v == 0]


def default_dense_knobs(sch: s_tir.Schedule, target: Target) -> DenseKnobs:
    m, planes, cols, bits = dense_shapes(sch)
    lanes = vector_lanes(target, bits)
    pairs = [DenseKnobs(r, v) for r in dense_row_choices(m) for v in dense_vec_choices(cols, lanes)]
    fit = [k for k in pairs if k.rows * k.vecs * planes <= MAX_ACC_REGS] or pairs
    cores = num_cores(target)

    def score(kn: DenseKnobs):
        # enough tasks for the cores first, then the largest tile
        tasks = (m // kn.rows) * (cols // (lanes * kn.vecs))
        return (tasks >= 2 * cores, kn.rows * kn.vecs, kn.vecs)

    return max(fit, key=score)


def schedule_dense(sch: s_tir.Schedule, rows, vecs, target: Target) -> None:
    """Register-tile the product (rows of X x vectors of outputs), vectorize along outputs."""
    m, planes, cols, bits = dense_shapes(sch)
    lanes = vector_lanes(target, bits)
    acc = sch.get_sblock("acc")
    kw = int(sch.get(sch.get_loops(acc)[-1]).extent)
    threads = worth_parallel(target, m * planes * cols * kw)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in blocks[blocks.index("epilogue") + 1:]:
        sch.reverse_compute_inline(sch.get_sblock(name))
    for name in reversed(blocks[:blocks.index("xu")]):
        sch.compute_inline(sch.get_sblock(name))
    xu = sch.get_sblock("xu")
    sch.decompose_reduction(xu, sch.get_loops(xu)[-1])
    i, j, q, w = sch.get_loops(acc)
    io, ii = sch.split(i, [None, rows])
    qo, qv, ql = sch.split(q, [None, vecs, lanes])
    sch.reorder(io, qo, w, j, ii, qv, ql)
    tile = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(tile, qo, preserve_unit_loops=True)
    task = sch.fuse(io, qo)
    sch.vectorize(sch.get_loops(tile)[-1])
    sch.unroll(j)
    sch.unroll(ii)
    sch.unroll(qv)
    if has_vector_popcount(target):
        sch.vectorize(ql)
    else:
        sch.unroll(ql)
    if threads:
        sch.parallel(task)
    sch.decompose_reduction(acc, w)
    epi = sch.get_sblock("epilogue")
    vectorize_innermost(sch, epi, vector_lanes(target))
    if threads:
        sch.parallel(sch.get_loops(epi)[0])
