"""int8 depthwise convolution, NCHW in and out, int32 result, without dot-product instructions.

``Y[n, o, oh, ow] = sum_{kh, kw} Xpad[n, o // mult, oh * sh + kh, ow * sw + kw] * W[o, 0, kh,
kw]`` (``groups == C``, ``O = C * mult``). A depthwise layer has no reduction over channels to
feed a dot-product instruction, so each tap is a vector multiply along the output row: the
input is widened to int16, each product is formed in int16 (exact: ``|x * w| <= 255 * 128 <
2^15``) and summed in int32 lanes.

Stages, all per (image, channel) task so the planes stay in L1:

- ``pad``: the channel's padded image ``XP`` in int16 (the zero point outside the input);
- ``pack`` (strides above 1): ``XP`` split into phase planes ``X2[phase_h, phase_w, i, j] =
  XP[i * sh + phase_h, j * sw + phase_w]``, so every tap reads consecutive plane pixels;
- ``compute``: ``ACC[n, o, oh, owp]`` over output rows padded to whole vectors (``owp``);
- ``unpack``: the real pixels into ``Y``, with the fused epilogue inlined.
"""

from __future__ import annotations

import functools

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._common import num_cores
from .int8_common import KernelRule, inline_epilogue, inline_producers, tile_divisors
from .int8_conv2d import _vectorize_row
from .int8_conv_geometry import ConvGeometry
from .spaces import register_space

KERNEL = "int8_depthwise"


def row_lanes(ow: int, lanes: int) -> int:
    """Vector width for output rows of ``ow`` pixels: ``lanes`` or half of it, whichever
    pads the row less (ties: the wider)."""
    return min((lanes, lanes // 2), key=lambda v: (-(-ow // v) * v, -v))


def int8_depthwise_func(geo: ConvGeometry, x_dtype: str, pad_value: int) -> tirx.PrimFunc:
    """The kernel for ``geo`` (``groups == c``). Parameters ``(X, W, Y)``: ``X (N, C, H, W)``
    of ``x_dtype``, ``W (O, 1, KH, KW)`` int8 as the model has it, ``Y (N, O, OH, OW)`` int32.
    ``geo.lanes`` is the target's int32 vector width."""
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
    kh, kw, sh, sw, ph, pw = geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw
    oh, ow = geo.oh, geo.ow
    owp = -(-ow // row_lanes(ow, geo.lanes)) * row_lanes(ow, geo.lanes)
    rows, cols = oh + (kh - 1) // sh, owp + (kw - 1) // sw  # plane pixels the taps read
    hp, wp = rows * sh, cols * sw
    strided = (sh, sw) != (1, 1)
    i64 = functools.partial(tirx.IntImm, "int64")
    x_shape = tuple(i64(d) for d in (n, c, h, w))
    w_shape = tuple(i64(d) for d in (o, 1, kh, kw))
    y_shape = tuple(i64(d) for d in (n, o, oh, ow))

    def load(X, vn, vc, vr, vcol):
        r, col = vr - geo.pt, vcol - geo.pl
        inside = tirx.all(r >= 0, r < h, col >= 0, col < w)
        v = X[vn, vc, T.max(T.min(r, h - 1), 0), T.max(T.min(col, w - 1), 0)]
        return T.Cast("int16", T.if_then_else(inside, v, T.Cast(x_dtype, pad_value)))

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_shape, x_dtype)
        W = T.match_buffer(w_h, w_shape, "int8")
        Y = T.match_buffer(y_h, y_shape, "int32")
        XP = T.sblock_alloc_buffer((n, c, hp, wp), "int16")
        X2 = T.sblock_alloc_buffer((n, c, ph, pw, rows, cols), "int16")
        ACC = T.sblock_alloc_buffer((n, o, oh, owp), "int32")
        for nn, cc, rr, ww in T.grid(n, c, hp, wp):
            with T.sblock("pad"):
                vn, vc, vr, vw = T.axis.remap("SSSS", [nn, cc, rr, ww])
                XP[vn, vc, vr, vw] = load(X, vn, vc, vr, vw)
        if strided:
            for nn, cc, pph, ppw, ii, jj in T.grid(n, c, ph, pw, rows, cols):
                with T.sblock("pack"):
                    vn, vc, vph, vpw, vi, vj = T.axis.remap("SSSSSS",
                                                            [nn, cc, pph, ppw, ii, jj])
                    X2[vn, vc, vph, vpw, vi, vj] = XP[vn, vc, vi * sh + vph, vj * sw + vpw]
        for nn, oo, hh, ww, rh, rw in T.grid(n, o, oh, owp, kh, kw):
            with T.sblock("compute"):
                vn, vo, vh, vw, vrh, vrw = T.axis.remap("SSSSRR", [nn, oo, hh, ww, rh, rw])
                T.sblock_attr({"squeezer.kernel": KERNEL})
                with T.init():
                    ACC[vn, vo, vh, vw] = 0
                if strided:
                    ACC[vn, vo, vh, vw] = ACC[vn, vo, vh, vw] + T.Cast("int32", X2[
                        vn, vo // mult, vrh % sh, vrw % sw, vh + vrh // sh, vw + vrw // sw
                    ] * T.Cast("int16", W[vo, 0, vrh, vrw]))
                else:
                    ACC[vn, vo, vh, vw] = ACC[vn, vo, vh, vw] + T.Cast("int32", XP[
                        vn, vo // mult, vh + vrh, vw + vrw] * T.Cast("int16", W[vo, 0, vrh, vrw]))
        for nn, oo, hh, ww in T.grid(n, o, oh, ow):
            with T.sblock("unpack"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [nn, oo, hh, ww])
                Y[vn, vo, vh, vw] = ACC[vn, vo, vh, vw]

    return kernel.without_attr("global_symbol")


def schedule(sch: s_tir.Schedule, target: Target, tile=None) -> None:
    """One task per (image, output channel): its padded planes built in L1, then ``rt`` rows
    x ``vt`` vectors of output in registers over the taps, each tile's output written while
    hot. ``tile=None`` samples ``(rt, vt)`` (tuning space)."""
    inline_producers(sch, "pad", target)
    compute, unpack = sch.get_sblock("compute"), sch.get_sblock("unpack")
    un, uo, uh, uw = sch.get_loops(unpack)
    task = sch.fuse(un, uo)
    work = 1
    for lp in sch.get_loops(compute):
        work *= int(sch.get(lp).extent)
    if num_cores(target) > 1 and work >= 4 * 32768:
        sch.parallel(task)
    sch.compute_at(compute, task, preserve_unit_loops=True)
    hh, ww, rh, rw = sch.get_loops(compute)[-4:]
    lanes = _lanes(sch)
    wv, wl = sch.split(ww, [None, lanes])
    if tile is None:
        hf = sch.sample_perfect_tile(hh, n=2, max_innermost_factor=4)
        wf = sch.sample_perfect_tile(wv, n=2, max_innermost_factor=8)
    else:
        hf, wf = [None, tile[0]], [None, tile[1]]
    ho, hi = sch.split(hh, hf)
    wo, wi = sch.split(wv, wf)
    sch.reorder(ho, wo, rh, rw, hi, wi, wl)
    # the tile's accumulators in a local buffer of its own size: registers after unrolling
    # (the task's accumulator is a workspace LLVM cannot keep in registers)
    local = sch.cache_write(compute, 0, "local")
    sch.reverse_compute_at(local, wo, preserve_unit_loops=True)
    sch.unroll(rw)
    sch.unroll(hi)
    sch.unroll(wi)
    sch.vectorize(wl)
    init = sch.decompose_reduction(compute, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    pad = sch.get_sblock("pad")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if "pack" in names:
        pack = sch.get_sblock("pack")
        sch.compute_at(pack, task, preserve_unit_loops=True)
        sch.compute_at(pad, task, preserve_unit_loops=True)
        *_, ii, jj = sch.get_loops(pack)
        # both phases of a column pair in one iteration: LLVM vectorizes the pair loads
        pph, ppw = sch.get_loops(pack)[-4:-2]
        sch.reorder(pph, ii, jj, ppw)
        sch.unroll(ppw)
    else:
        sch.compute_at(pad, task, preserve_unit_loops=True)
    inline_epilogue(sch, "unpack")  # after compute-at: it rewrites the unpack's reads
    # the output rows per register tile, while the accumulators are in L1
    sch.reverse_compute_at(unpack, wo, preserve_unit_loops=True)
    sch.compute_inline(local)
    _vectorize_row(sch, unpack, lanes)


def _lanes(sch: s_tir.Schedule) -> int:
    """The vector width the kernel's rows were padded for: the largest power of two up to 16
    dividing the padded row."""
    owp = int(sch.get(sch.get_sblock("compute")).writes[0].source.shape[-1])
    return max(v for v in (16, 8, 4, 2, 1) if owp % v == 0)


def default_tile(sch: s_tir.Schedule, target: Target) -> tuple[int, int]:
    acc = sch.get(sch.get_sblock("compute")).writes[0].source
    oh, owp = int(acc.shape[2]), int(acc.shape[3])
    vecs = owp // _lanes(sch)
    vt = max(d for d in tile_divisors(vecs) if d <= 4)
    rt = max(d for d in tile_divisors(oh) if d * vt <= 8)
    return rt, vt


class Int8Depthwise(KernelRule):
    """Default schedule of the ``int8_depthwise`` kernel (recognized by its block annotation)."""

    kernel = KERNEL

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, target, default_tile(sch, target))


@register_space(KERNEL)
def int8_depthwise_space(sch: s_tir.Schedule) -> None:
    """Tuning space: output rows and vectors per register tile."""
    schedule(sch, Target.current())

