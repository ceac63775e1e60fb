"""int8 direct convolution (regular, pointwise and grouped), NCHW in and out, int32 result.

``Y[n, o, oh, ow] = sum_{c, kh, kw} Xpad[n, g(o) * Cg + c, oh * sh + kh, ow * sw + kw] *
W[o, c, kh, kw]`` with ``X`` uint8 or int8 padded with a given value (the zero point), ``W``
int8 ``(O, C / groups, KH, KW)``.

Like old TVM's ``conv2d_NCHWc_int8``, the reduction runs over groups of ``g`` input channels
with one dot-product instruction (:mod:`squeezer.schedules.vnni`), but the vector lanes run
along output pixels instead of output channels: the output is then written in NCHW as it is
computed (no unpacking transpose), and the elementwise requantization fused after the kernel
vectorizes along the image rows. The stages of the PrimFunc:

- ``pad`` (strided only): the padded image, so that ``pack`` reads it at plain strides;
- ``pack``: ``X`` into ``X4[n, group, c / g, phase_h, phase_w, pixel, c % g]``: the padded
  phase planes of :mod:`~squeezer.schedules.int8_conv_geometry`, ``g`` channels interleaved
  so one instruction reads ``lanes`` consecutive pixels x ``g`` channels as one vector;
  signed input on VNNI is shifted to unsigned (``+128``);
- ``compute``: ``ACC[n, o, q]`` over the extended width, weights ``Wk[o, c / g, kh, kw, c %
  g]`` broadcast ``g`` bytes at a time (the ``"xvec"`` intrinsic);
- ``unpack``: ``Y = ACC - comp`` on the real pixels, ``comp[o] = 128 * sum W[o]`` when the
  input was shifted (else zeros). The fused epilogue is inlined into this write.

The schedule keeps ``ot`` output channels x ``qt`` pixel vectors in registers over all
channels and taps; each parallel task owns ``ot`` channels of one image. When every extended
pixel is real (no extra columns, whole vectors: 1x1 convolutions of most sizes) each register
tile is written out right after its reduction; otherwise the task's accumulator (``ot`` rows
of extended output) stays in L2 and the task unpacks it at the end.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._common import num_cores, pick_vector_tile
from .int8_common import KernelRule, inline_epilogue, inline_producers, tile_divisors
from .int8_conv_geometry import ConvGeometry
from .spaces import register_space
from .vnni import ISAS, DotIsa, _name

KERNEL = "int8_conv2d"


def pack_conv_weight(w: np.ndarray, isa: DotIsa, x_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``W[O, Cg, KH, KW]`` (int8) as ``Wk[O, ceil(Cg / g), KH, KW, g]`` and ``comp[O]``."""
    if w.ndim != 4 or w.dtype != np.int8:
        raise ValueError(f"int8 conv2d weight must be a 4-D int8 OIHW array, got {w.dtype} "
                         f"{w.shape}")
    o, cg, kh, kw = w.shape
    g = isa.group
    c4 = -(-cg // g)
    full = np.zeros((o, c4 * g, kh, kw), np.int8)
    full[:, :cg] = w
    packed = full.reshape(o, c4, g, kh, kw).transpose(0, 1, 3, 4, 2)
    shift = isa.shift and x_dtype == "int8"
    comp = 128 * w.astype(np.int32).sum(axis=(1, 2, 3)) if shift else np.zeros(o, np.int32)
    return np.ascontiguousarray(packed), comp.astype(np.int32)


def int8_conv2d_func(geo: ConvGeometry, x_dtype: str, pad_value: int,
                     isa: DotIsa) -> tirx.PrimFunc:
    """The kernel for ``geo`` (``geo.lanes`` must be ``isa.lanes``).

    Parameters ``(X, Wk, comp, Y)``: ``X (N, C, H, W)`` of ``x_dtype``, ``Wk`` from
    :func:`pack_conv_weight`, ``comp (O,)`` int32, ``Y (N, O, OH, OW)`` int32.
    """
    if geo.lanes != isa.lanes:
        raise ValueError(f"geometry for {geo.lanes} lanes, ISA {isa.name} has {isa.lanes}")
    act = isa.act_dtype(x_dtype)
    lo, hi = (0, 255) if x_dtype == "uint8" else (-128, 127)
    if not lo <= pad_value <= hi:
        raise ValueError(f"pad value {pad_value} outside the {x_dtype} range")
    shift = act != x_dtype
    g = isa.group
    n, c, h, w, o = geo.n, geo.c, geo.h, geo.w, geo.o
    groups, cg, og = geo.groups, geo.c // geo.groups, geo.o // geo.groups
    c4 = -(-cg // g)
    kh, kw, sh, sw = geo.kh, geo.kw, geo.sh, geo.sw
    wq, rows, qp = geo.wq, geo.rows, geo.qp
    oh, ow = geo.oh, geo.ow
    i64 = functools.partial(tirx.IntImm, "int64")
    x_shape = tuple(i64(d) for d in (n, c, h, w))
    y_shape = tuple(i64(d) for d in (n, o, oh, ow))
    pad_stored = pad_value + 128 if shift else pad_value

    strided = (sh, sw) != (1, 1)
    # every extended pixel is a real one (no extra columns, no padding vectors): the output
    # is written per register tile, straight from the accumulators
    dense = wq == ow and qp == geo.q

    def load(X, vn, vch, vr, vcol):
        """The (shifted) input at padded position ``(vr, vcol)``, the pad value outside."""
        r, col = vr - geo.pt, vcol - geo.pl
        inside = tirx.all(r >= 0, r < h, col >= 0, col < w)
        v = X[vn, vch, T.max(T.min(r, h - 1), 0), T.max(T.min(col, w - 1), 0)]
        v = T.Cast(act, T.Cast("int32", v) + 128) if shift else v
        return T.if_then_else(inside, v, T.Cast(act, pad_stored))

    def channel(vg, vc, vci):
        # channels past the group's count meet zero weights: any value in range will do
        return T.min(vg * cg + vc * g + vci, c - 1)

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, c_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_shape, x_dtype)
        Wk = T.match_buffer(w_h, (o, c4, kh, kw, g), "int8")
        C = T.match_buffer(c_h, (i64(o),), "int32")
        Y = T.match_buffer(y_h, y_shape, "int32")
        X4 = T.sblock_alloc_buffer((n, groups, c4, geo.ph, geo.pw, rows * wq, g), act)
        ACC = T.sblock_alloc_buffer((n, o, qp), "int32")
        if strided:
            # padded image first, then the phase split reads it at plain strides: both
            # loops vectorize (a clamped, strided gather does not)
            XP = T.sblock_alloc_buffer((n, c, rows * sh, wq * sw), act)
            for nn, ch, rr, cl in T.grid(n, c, rows * sh, wq * sw):
                with T.sblock("pad"):
                    vn, vch, vr, vcol = T.axis.remap("SSSS", [nn, ch, rr, cl])
                    XP[vn, vch, vr, vcol] = load(X, vn, vch, vr, vcol)
            for nn, gg, cc, pph, ppw, ii, jj, ci in T.grid(n, groups, c4, geo.ph, geo.pw,
                                                            rows, wq, g):
                with T.sblock("pack"):
                    vn, vg, vc, vph, vpw, vi, vj, vci = T.axis.remap(
                        "SSSSSSSS", [nn, gg, cc, pph, ppw, ii, jj, ci])
                    X4[vn, vg, vc, vph, vpw, vi * wq + vj, vci] = XP[
                        vn, channel(vg, vc, vci), vi * sh + vph, vj * sw + vpw]
        else:
            for nn, gg, cc, ii, jj, ci in T.grid(n, groups, c4, rows, wq, g):
                with T.sblock("pack"):
                    vn, vg, vc, vi, vj, vci = T.axis.remap("SSSSSS", [nn, gg, cc, ii, jj, ci])
                    X4[vn, vg, vc, 0, 0, vi * wq + vj, vci] = load(
                        X, vn, channel(vg, vc, vci), vi, vj)
        for nn, oo, qq, cc, rh, rw, ci in T.grid(n, o, qp, c4, kh, kw, g):
            with T.sblock("compute"):
                vn, vo, vq, vc, vrh, vrw, vci = T.axis.remap("SSSRRRR",
                                                             [nn, oo, qq, cc, rh, rw, ci])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.isa": isa.name})
                with T.init():
                    ACC[vn, vo, vq] = 0
                ACC[vn, vo, vq] = ACC[vn, vo, vq] + T.Cast(
                    "int32", X4[vn, vo // og, vc, vrh % sh, vrw % sw,
                                vq + vrh // sh * wq + vrw // sw, vci]) * T.Cast(
                    "int32", Wk[vo, vc, vrh, vrw, vci])
        if dense:
            for nn, oo, qq in T.grid(n, o, qp):
                with T.sblock("unpack"):
                    vn, vo, vq = T.axis.remap("SSS", [nn, oo, qq])
                    Y[vn, vo, vq // ow, vq % ow] = ACC[vn, vo, vq] - C[vo]
        else:
            for nn, oo, hh, ww in T.grid(n, o, oh, ow):
                with T.sblock("unpack"):
                    vn, vo, vh, vw = T.axis.remap("SSSS", [nn, oo, hh, ww])
                    # the whole extended row block: its flat index is no single loop's
                    # range, which compute-at's region analysis needs
                    T.reads(ACC[vn, vo, 0:qp], C[vo])
                    T.writes(Y[vn, vo, vh, vw])
                    Y[vn, vo, vh, vw] = ACC[vn, vo, vh * wq + vw] - C[vo]

    return kernel.without_attr("global_symbol")


@dataclass(frozen=True)
class Knobs:
    """``ot`` output channels x ``qt`` pixel vectors per register tile."""

    ot: int
    qt: int


def _isa(sch: s_tir.Schedule) -> DotIsa:
    stmt = sch.get(sch.get_sblock("compute"))
    return next(i for i in ISAS if i.name == str(stmt.annotations["squeezer.isa"]))


def _extents(sch: s_tir.Schedule) -> list[int]:
    return [int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock("compute"))]


def default_knobs(sch: s_tir.Schedule, target: Target) -> Knobs:
    isa = _isa(sch)
    n, o, qp, *_ = _extents(sch)
    qvec = qp // isa.lanes
    regs = 24 if isa.lanes == 16 else 12
    qt = max(d for d in tile_divisors(qvec) if d <= 4)
    ot = max(d for d in tile_divisors(o) if d * qt <= regs)
    # enough tasks for every core (each task: ot channels of one image)
    while ot > 1 and n * (o // ot) < 4 * num_cores(target):
        ot = max(d for d in tile_divisors(o) if d < ot)
    return Knobs(ot, qt)


def schedule(sch: s_tir.Schedule, target: Target, knobs: Knobs | None = None) -> None:
    """Tile, tensorize and parallelize in place; ``knobs=None`` samples the tile (tuning)."""
    isa = _isa(sch)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    inline_producers(sch, "pad" if "pad" in names else "pack", target)
    compute, unpack = sch.get_sblock("compute"), sch.get_sblock("unpack")
    act = str(sch.get(compute).reads[0].source.dtype)
    if len(sch.get_loops(unpack)) == 3:
        _schedule_dense(sch, compute, unpack, act, isa, target, knobs)
        return
    # The task loop is built on the unpack's loops and the product computed inside it: the
    # unpack reads a flat range of the accumulator that reverse-compute-at cannot solve.
    un, uo, *_ = sch.get_loops(unpack)
    of = sch.sample_perfect_tile(uo, n=2, max_innermost_factor=8) if knobs is None \
        else [None, knobs.ot]
    uo_out, _ = sch.split(uo, of)
    task = sch.fuse(un, uo_out)
    if num_cores(target) > 1:
        sch.parallel(task)
    sch.compute_at(compute, task, preserve_unit_loops=True)
    oo, qq, cc, rh, rw, ci = sch.get_loops(compute)[-6:]
    qv, ql = sch.split(qq, [None, isa.lanes])
    qf = sch.sample_perfect_tile(qv, n=2, max_innermost_factor=6) if knobs is None \
        else [None, knobs.qt]
    q_out, q_in = sch.split(qv, qf)
    sch.reorder(q_out, cc, rh, rw, oo, q_in, ql, ci)
    init = sch.decompose_reduction(compute, cc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(oo)
    sch.unroll(q_in)
    sch.unroll(rw)
    sch.tensorize(ql, _name(isa, act, "xvec"))
    inline_epilogue(sch, "unpack")  # after compute-at: it rewrites the unpack's reads
    _vectorize_row(sch, unpack, isa.lanes)
    _schedule_pack(sch, sch.get_sblock("pack"), target)


def _schedule_dense(sch: s_tir.Schedule, compute, unpack, act: str, isa: DotIsa,
                    target: Target, knobs: Knobs | None) -> None:
    """Every extended pixel is real: tasks of ``ot`` channels sweep the pixels, and each
    register tile is written out (epilogue included) as soon as its reduction ends."""
    nn, oo, qq, cc, rh, rw, ci = sch.get_loops(compute)
    qv, ql = sch.split(qq, [None, isa.lanes])
    if knobs is None:
        of = sch.sample_perfect_tile(oo, n=2, max_innermost_factor=8)
        qf = sch.sample_perfect_tile(qv, n=2, max_innermost_factor=6)
    else:
        of, qf = [None, knobs.ot], [None, knobs.qt]
    o_out, o_in = sch.split(oo, of)
    q_out, q_in = sch.split(qv, qf)
    sch.reorder(nn, o_out, q_out, cc, rh, rw, o_in, q_in, ql, ci)
    task = sch.fuse(nn, o_out)
    if num_cores(target) > 1:
        sch.parallel(task)
    sch.reverse_compute_at(unpack, q_out, preserve_unit_loops=True)
    init = sch.decompose_reduction(compute, cc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(o_in)
    sch.unroll(q_in)
    sch.unroll(rw)
    sch.tensorize(ql, _name(isa, act, "xvec"))
    inline_epilogue(sch, "unpack")
    pixels = sch.get_loops(sch.get_sblock("unpack"))[-1]
    sch.vectorize(sch.split(pixels, [None, isa.lanes])[1])
    _schedule_pack(sch, sch.get_sblock("pack"), target)


def _vectorize_row(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Vectorize the write along output columns (a divisor of the row, or the whole row)."""
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    tile = pick_vector_tile(extent, lanes)
    if tile > 1:
        sch.vectorize(loop if tile == extent else sch.split(loop, [None, tile])[1])


def _schedule_pack(sch: s_tir.Schedule, pack, target: Target) -> None:
    """Parallel over (image, group, channel group); the pixel loop is left serial with the
    channels (and, strided, the phases) unrolled inside it, which LLVM's loop vectorizer
    turns into interleaving shuffles. The padded image of a strided convolution: parallel
    over channels, rows left to the vectorizer."""
    cores = num_cores(target)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if "pad" in names:
        pn, pc, *_ = sch.get_loops(sch.get_sblock("pad"))
        outer = sch.fuse(pn, pc)
        if cores > 1:
            sch.parallel(outer)
        nn, gg, cc, pph, ppw, ii, jj, ci = sch.get_loops(pack)
        sch.reorder(pph, ii, jj, ppw, ci)
        sch.unroll(ppw)
    else:
        nn, gg, cc, *_, ci = sch.get_loops(pack)
    outer = sch.fuse(nn, gg, cc)
    if cores > 1:
        sch.parallel(outer)
    sch.unroll(ci)


class Int8Conv2d(KernelRule):
    """Default schedule of the ``int8_conv2d`` kernel (recognized by its block annotation)."""

    kernel = KERNEL

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, target, default_knobs(sch, target))


@register_space(KERNEL)
def int8_conv2d_space(sch: s_tir.Schedule) -> None:
    """Tuning space: output channels and pixel vectors per register tile (perfect tilings)."""
    schedule(sch, Target.current())
