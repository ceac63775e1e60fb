"""Float activations times bit-plane weights without decoding them: masked sums.

For Binary-Weight-Networks, TWN and HORQ weights on *float* inputs: with bipolar planes
``w[n, k] = sum_p alpha[p, n] * (2 * b_p[n, k] - 1)``,

    y[m, n] = sum_p alpha[p, n] * (2 * S_p[m, n] - T[m]),
    S_p[m, n] = sum_{k: b_p[n, k] = 1} x[m, k],   T[m] = sum_k x[m, k].

``S_p`` runs along ``k`` in vectors of 16 floats: each 16 bits of a weight word select the lanes
to add (a masked add), so the weight is read at one bit per value and never written as floats.
A matrix-vector product (batch 1, the linear layers of a batch-1 model) is bound by reading the
weight; this one reads 1/32 of the float weight. Float sums in another order than the float
operator's: results agree within float rounding, not bit for bit.

Parameters ``(X (M, K) float32, WB (P, N, KW) uint64, ALPHA (P, N) float32, Y (M, N))``;
``WB`` holds each plane's rows packed along ``k``
(:func:`squeezer.schedules.bitpack.pack_bits`). Blocks: ``tot``, ``part`` (annotated
``squeezer.kernel``), ``epilogue``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm import s_tir, te, tirx
from tvm.target import Target

from ._common import num_cores, worth_parallel
from .bitpack import words

KERNEL = "bitmask_dense"
LANES = 16  # floats per vector, bits of a weight word per masked add


def bitmask_dense_func(m: int, k: int, n: int, planes: int) -> tirx.PrimFunc:
    """The kernel for an ``(m, k) x (k, n)`` product with ``planes`` weight bit planes."""
    i64 = functools.partial(tirx.IntImm, "int64")
    kb = -(-k // LANES)
    x = te.placeholder((i64(m), i64(k)), "float32", name="X")
    wb = te.placeholder((planes, n, words(k, 64)), "uint64", name="WB")
    alpha = te.placeholder((planes, n), "float32", name="ALPHA")
    zero = tirx.const(0.0, "float32")

    def xval(i, kk):
        return tirx.if_then_else(kk < k, x[i, tirx.min(kk, k - 1)], zero) if k % LANES \
            else x[i, kk]

    rt = te.reduce_axis((0, kb), "rt")
    tot = te.compute((m, LANES), lambda i, lane: te.sum(xval(i, rt * LANES + lane), axis=rt),
                     name="tot")
    rb = te.reduce_axis((0, kb), "rb")

    def masked(i, o, p, lane):
        # the 16 bits of this block, lane-invariant; then one bit per lane
        word = wb[p, o, rb // 4]
        half = tirx.Cast("uint32", tirx.bitwise_and(
            tirx.shift_right(word, tirx.Cast("uint64", (rb % 4) * LANES)),
            tirx.const(0xFFFF, "uint64")))
        bit = tirx.bitwise_and(tirx.shift_right(half, tirx.Cast("uint32", lane)),
                               tirx.const(1, "uint32"))
        return te.sum(tirx.Select(bit == tirx.const(1, "uint32"), xval(i, rb * LANES + lane),
                                  zero), axis=rb)

    part = te.compute((m, n, planes, LANES), masked, name="part",
                      attrs={"squeezer.kernel": KERNEL})

    def epilogue(i, o):
        total = _lane_sum(lambda lane: tot[i, lane])
        y = zero
        for p in range(planes):
            s = _lane_sum(lambda lane, p=p: part[i, o, p, lane])
            y = y + alpha[p, o] * (2.0 * s - total)
        return y

    out = te.compute((i64(m), i64(n)), epilogue, name="epilogue")
    func = te.create_prim_func([x, wb, alpha, out])
    func = func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 4})
    return func.without_attr("global_symbol")


def _lane_sum(fn):
    out = fn(0)
    for lane in range(1, LANES):
        out = out + fn(lane)
    return out


@dataclass(frozen=True)
class MaskKnobs:
    """Register tile: ``rows`` rows of X times ``cols`` outputs (each ``planes`` vectors)."""

    rows: int
    cols: int


def mask_shapes(sch: s_tir.Schedule) -> tuple[int, int, int]:
    """``(m, n, planes)`` of the kernel being scheduled."""
    part = sch.get(sch.get_sblock("part")).writes[0].source
    return int(part.shape[0]), int(part.shape[1]), int(part.shape[2])


def mask_row_choices(m: int) -> list[int]:
    return [r for r in (1, 2, 4) if m % r == 0]


def mask_col_choices(n: int) -> list[int]:
    return [c for c in (1, 2, 4, 8) if n % c == 0]


def default_mask_knobs(sch: s_tir.Schedule) -> MaskKnobs:
    m, n, planes = mask_shapes(sch)
    pairs = [MaskKnobs(r, c) for r in mask_row_choices(m) for c in mask_col_choices(n)
             if r * c * planes <= 16]
    return max(pairs or [MaskKnobs(1, 1)], key=lambda kn: (kn.rows * kn.cols, kn.cols))


def schedule_mask(sch: s_tir.Schedule, rows, cols, target: Target) -> None:
    """Outputs in parallel column groups; a ``rows x cols x planes`` tile of 16-lane partial
    sums stays in registers while ``k`` streams past (each x vector serves ``cols`` outputs,
    each 16 weight bits ``rows`` rows)."""
    m, n, planes = mask_shapes(sch)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in blocks[blocks.index("epilogue") + 1:]:
        sch.reverse_compute_inline(sch.get_sblock(name))
    for name in reversed(blocks[:min(blocks.index("tot"), blocks.index("part"))]):
        sch.compute_inline(sch.get_sblock(name))
    tot = sch.get_sblock("tot")
    i, lane, r = sch.get_loops(tot)
    sch.reorder(i, r, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(tot, r)
    part = sch.get_sblock("part")
    i, o, p, lane, r = sch.get_loops(part)
    io, ii = sch.split(i, [None, rows])
    oo, oi = sch.split(o, [None, cols])
    sch.reorder(oo, io, r, ii, oi, p, lane)
    tile = sch.cache_write(part, 0, "local")
    sch.reverse_compute_at(tile, io, preserve_unit_loops=True)
    task = sch.fuse(oo, io)
    sch.vectorize(sch.get_loops(tile)[-1])
    for loop in (ii, oi, p):
        sch.unroll(loop)
    sch.vectorize(lane)
    threads = worth_parallel(target, m * n * planes * int(sch.get(r).extent) * 16)
    if threads and num_cores(target) > 1:
        sch.parallel(task)
    sch.decompose_reduction(part, r)
    epi = sch.get_sblock("epilogue")
    if threads and num_cores(target) > 1:
        sch.parallel(sch.fuse(*sch.get_loops(epi)))
