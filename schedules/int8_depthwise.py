"""int8 depthwise convolution, NCHW in and out, int32 result, without dot-product instructions.

``Y[n, o, oh, ow] = sum_{kh, kw} Xpad[n, o // mult, oh * sh + kh, ow * sw + kw] * W[o, 0, kh,
kw]`` (``groups == C``, ``O = C * mult``). A depthwise layer has no reduction over channels to
feed a dot-product instruction, so each tap is a vector multiply along the image width: the
padded phase planes of :mod:`~squeezer.schedules.int8_conv_geometry` hold the input widened
to int16, each product is formed in int16 (exact: ``|x * w| <= 255 * 128 < 2^15``) and summed
in int32 lanes.

Stages: ``pack`` (the padded planes, a parallel pass over channels), ``compute``
(``ACC[n, o, q]`` on the extended width) and ``unpack`` (the real pixels into ``Y``, with the
fused epilogue inlined).
"""

from __future__ import annotations

import functools

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._common import num_cores, vector_lanes
from .int8_common import KernelRule, inline_epilogue, inline_producers, tile_divisors
from .int8_conv2d import _vectorize_row
from .int8_conv_geometry import ConvGeometry
from .spaces import register_space

KERNEL = "int8_depthwise"


def int8_depthwise_func(geo: ConvGeometry, x_dtype: str, pad_value: int) -> tirx.PrimFunc:
    """The kernel for ``geo`` (``groups == c``). Parameters ``(X, W, Y)``: ``X (N, C, H, W)``
    of ``x_dtype``, ``W (O, 1, KH, KW)`` int8 as the model has it, ``Y (N, O, OH, OW)`` int32.
    ``geo.lanes`` is the int32 vector width the extended output is padded to."""
    if geo.groups != geo.c:
        raise ValueError(f"depthwise kernel needs groups == channels, got {geo.groups} "
                         f"groups for {geo.c} channels")
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"int8 kernels take uint8 or int8 activations, got {x_dtype}")
    lo, hi = (0, 255) if x_dtype == "uint8" else (-128, 127)
    if not lo <= pad_value <= hi:
        raise ValueError(f"pad value {pad_value} outside the {x_dtype} range")
    n, c, h, w, o = geo.n, geo.c, geo.h, geo.w, geo.o
    mult = o // c
    kh, kw, sh, sw = geo.kh, geo.kw, geo.sh, geo.sw
    wq, rows, qp, oh, ow = geo.wq, geo.rows, geo.qp, geo.oh, geo.ow
    i64 = functools.partial(tirx.IntImm, "int64")
    x_shape = tuple(i64(d) for d in (n, c, h, w))
    w_shape = tuple(i64(d) for d in (o, 1, kh, kw))
    y_shape = tuple(i64(d) for d in (n, o, oh, ow))

    def load(X, vn, vc, vph, vpw, vi, vj):
        r = vi * sh + vph - geo.pt
        col = vj * sw + vpw - geo.pl
        inside = tirx.all(r >= 0, r < h, col >= 0, col < w)
        v = X[vn, vc, T.max(T.min(r, h - 1), 0), T.max(T.min(col, w - 1), 0)]
        return T.Cast("int16", T.if_then_else(inside, v, T.Cast(x_dtype, pad_value)))

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_shape, x_dtype)
        W = T.match_buffer(w_h, w_shape, "int8")
        Y = T.match_buffer(y_h, y_shape, "int32")
        X2 = T.sblock_alloc_buffer((n, c, geo.ph, geo.pw, rows * wq), "int16")
        ACC = T.sblock_alloc_buffer((n, o, qp), "int32")
        for nn, cc, pph, ppw, ii, jj in T.grid(n, c, geo.ph, geo.pw, rows, wq):
            with T.sblock("pack"):
                vn, vc, vph, vpw, vi, vj = T.axis.remap("SSSSSS", [nn, cc, pph, ppw, ii, jj])
                X2[vn, vc, vph, vpw, vi * wq + vj] = load(X, vn, vc, vph, vpw, vi, vj)
        for nn, oo, qq, rh, rw in T.grid(n, o, qp, kh, kw):
            with T.sblock("compute"):
                vn, vo, vq, vrh, vrw = T.axis.remap("SSSRR", [nn, oo, qq, rh, rw])
                T.sblock_attr({"squeezer.kernel": KERNEL})
                with T.init():
                    ACC[vn, vo, vq] = 0
                ACC[vn, vo, vq] = ACC[vn, vo, vq] + T.Cast("int32", X2[
                    vn, vo // mult, vrh % sh, vrw % sw, vq + vrh // sh * wq + vrw // sw
                ] * T.Cast("int16", W[vo, 0, vrh, vrw]))
        for nn, oo, hh, ww in T.grid(n, o, oh, ow):
            with T.sblock("unpack"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [nn, oo, hh, ww])
                T.reads(ACC[vn, vo, 0:qp])
                T.writes(Y[vn, vo, vh, vw])
                Y[vn, vo, vh, vw] = ACC[vn, vo, vh * wq + vw]

    return kernel.without_attr("global_symbol")


def schedule(sch: s_tir.Schedule, target: Target, qt=None) -> None:
    """One task per (image, channel), ``qt`` vectors of pixels in registers over the taps.
    ``qt=None`` samples it (tuning space)."""
    inline_producers(sch, "pack", target)
    compute, unpack, pack = (sch.get_sblock(b) for b in ("compute", "unpack", "pack"))
    un, uo, *_ = sch.get_loops(unpack)
    task = sch.fuse(un, uo)
    work = 1
    for lp in sch.get_loops(compute):
        work *= int(sch.get(lp).extent)
    if num_cores(target) > 1 and work >= 4 * 32768:
        sch.parallel(task)
    sch.compute_at(compute, task, preserve_unit_loops=True)
    # The pack stays a stage of its own: compute-at would have to invert the planes' flat
    # index (row * width + column), which TVM's region analysis gets wrong.
    pn, pc, *_ = sch.get_loops(pack)
    ptask = sch.fuse(pn, pc)
    if num_cores(target) > 1 and work >= 4 * 32768:
        sch.parallel(ptask)
    qq, rh, rw = sch.get_loops(compute)[-3:]
    lanes = _lanes(sch, target)
    qv, ql = sch.split(qq, [None, lanes])
    if qt is None:
        qt = sch.sample_perfect_tile(qv, n=2, max_innermost_factor=8)[1]
    q_out, q_in = sch.split(qv, [None, qt])
    sch.reorder(q_out, rh, rw, q_in, ql)
    sch.unroll(rw)
    sch.unroll(q_in)
    sch.vectorize(ql)
    init = sch.decompose_reduction(compute, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    inline_epilogue(sch, "unpack")  # after compute-at: it rewrites the unpack's reads
    _vectorize_row(sch, unpack, lanes)
    # the pack's row loop is left to LLVM's loop vectorizer (clamped loads, selects)


def _lanes(sch: s_tir.Schedule, target: Target) -> int:
    """The target's int32 vector width, if it divides the extended output (which the
    rewrite padded for the target it had), else 8."""
    qp = int(sch.get(sch.get_sblock("compute")).writes[0].source.shape[-1])
    lanes = vector_lanes(target)
    return lanes if qp % lanes == 0 else 8


def default_qt(sch: s_tir.Schedule, target: Target) -> int:
    qp = int(sch.get(sch.get_sblock("compute")).writes[0].source.shape[-1])
    return max(d for d in tile_divisors(qp // _lanes(sch, target)) if d <= 4)


class Int8Depthwise(KernelRule):
    """Default schedule of the ``int8_depthwise`` kernel (recognized by its block annotation)."""

    kernel = KERNEL

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, target, default_qt(sch, target))


@register_space(KERNEL)
def int8_depthwise_space(sch: s_tir.Schedule) -> None:
    """Tuning space: pixel vectors per register tile."""
    schedule(sch, Target.current())

