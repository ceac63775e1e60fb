"""Direct sparse convolution (Park et al. 2017, "Faster CNNs with Direct Sparse Convolutions
and Guided Pruning"): sparse weights against the dense input, no im2col.

Each stored weight ``W[o, c, kh, kw]`` is kept with its *offset* into the padded input, so the
contribution of one weight to a whole output row is ``w * XP[offset + t]`` for consecutive
``t``: a sparse row times a shifted window of the input. The output is computed on an
extended width (the padded input's), which makes ``t`` run contiguously over output rows; the
few extra columns are dropped by the epilogue. Stride 2 first splits the padded input into its
four phase planes (space-to-depth), after which the same stride-1 form applies.

The kernel has the blocks of :mod:`squeezer.schedules.sparse_matmul` (``pack``, ``row``,
``update``, ``epilogue``) and shares its default schedule and tuning space: only the operand
access differs.
"""

from __future__ import annotations

import functools

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from .sparse_matmul import KERNEL, SparseWeight, index_dtype, panel_width


def conv_geometry(in_shape: tuple[int, int, int], kernel: tuple[int, int], stride: int,
                  padding: tuple[int, int]) -> dict[str, int]:
    """Sizes of the phase planes and the extended output of a padded, strided convolution."""
    c, h, w = in_shape
    kh, kw = kernel
    ph, pw_ = padding
    hp, wp = h + 2 * ph, w + 2 * pw_
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    h2, w2 = -(-hp // stride), -(-wp // stride)
    t = oh * w2  # the extended output: w2 columns per row, ow of them real
    tw = -(-t // 16) * 16 if t > 16 else t
    plane = c * h2 * w2
    max_off = (stride * stride - 1) * plane + (c - 1) * h2 * w2 + (kh - 1) // stride * w2 \
        + (kw - 1) // stride
    return {"c": c, "h": h, "w": w, "kh": kh, "kw": kw, "ph": ph, "pw": pw_, "s": stride,
            "oh": oh, "ow": ow, "h2": h2, "w2": w2, "t": t, "tw": tw, "plane": plane,
            "len": max_off + tw}


def conv_offsets(weight: np.ndarray, block: tuple[int, int], geo: dict[str, int]
                 ) -> SparseWeight:
    """``weight`` (O, C, KH, KW) as BSR over (O, C*KH*KW) with column indices replaced by
    offsets into the phase planes (blocks must be ``br x 1``)."""
    if block[1] != 1:
        raise ValueError(f"direct sparse convolution needs blocks of shape (br, 1), got {block}")
    o = weight.shape[0]
    sw = SparseWeight.from_dense(weight.reshape(o, -1), block)
    q = sw.indices.astype(np.int64)
    kk = geo["kh"] * geo["kw"]
    c, r = q // kk, q % kk
    kh, kw = r // geo["kw"], r % geo["kw"]
    s = geo["s"]
    off = ((kh % s) * s + kw % s) * geo["plane"] + c * geo["h2"] * geo["w2"] \
        + (kh // s) * geo["w2"] + kw // s
    idx = off.astype(index_dtype(geo["len"]))
    return SparseWeight(sw.shape, sw.block, sw.data, idx, sw.indptr)


def sparse_conv2d_func(sw: SparseWeight, geo: dict[str, int]) -> tirx.PrimFunc:
    """The kernel for one convolution: parameters ``(X, data, offsets, indptr, bias, Y)`` with
    ``X`` of shape (1, C, H, W) and ``Y`` of shape (1, O, OH, OW)."""
    n = sw.shape[0]
    br, _ = sw.block
    nb, nnzb, idt = sw.indptr.shape[0] - 1, sw.nnzb, str(sw.indices.dtype)
    g = geo
    c, h, w, s, ph, pw_ = g["c"], g["h"], g["w"], g["s"], g["ph"], g["pw"]
    h2, w2, oh, ow, tw, plane, length = g["h2"], g["w2"], g["oh"], g["ow"], g["tw"], \
        g["plane"], g["len"]
    panel = panel_width(1, tw)  # rows of B are windows of XP, which stays in cache
    i64 = functools.partial(tirx.IntImm, "int64")

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, d_h: T.handle, i_h: T.handle, r_h: T.handle, bias_h: T.handle,
               y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, (i64(1), i64(c), i64(h), i64(w)), "float32")
        D = T.match_buffer(d_h, (nnzb, br, 1), "float32")
        IND = T.match_buffer(i_h, (nnzb,), idt)
        PTR = T.match_buffer(r_h, (nb + 1,), "int32")
        BIAS = T.match_buffer(bias_h, (i64(n),), "float32")
        Y = T.match_buffer(y_h, (i64(1), i64(n), i64(oh), i64(ow)), "float32")
        XP = T.alloc_buffer((length,), "float32")
        ACC = T.alloc_buffer((nb * br, tw), "float32")
        for v in range(length):
            with T.sblock("pack"):
                vv = T.axis.spatial(length, v)
                # vv -> phase plane (a, b), channel, row, column of the padded input
                XP[vv] = T.if_then_else(
                    vv < s * s * plane
                    and (vv % (h2 * w2)) // w2 * s + (vv // plane) // s - ph >= 0
                    and (vv % (h2 * w2)) // w2 * s + (vv // plane) // s - ph < h
                    and vv % w2 * s + (vv // plane) % s - pw_ >= 0
                    and vv % w2 * s + (vv // plane) % s - pw_ < w,
                    X[0, T.min(vv % plane // (h2 * w2), c - 1),
                      T.min(T.max((vv % (h2 * w2)) // w2 * s + (vv // plane) // s - ph, 0),
                            h - 1),
                      T.min(T.max(vv % w2 * s + (vv // plane) % s - pw_, 0), w - 1)],
                    T.float32(0))
        for po, i in T.grid(tw // panel, nb):
            with T.sblock("row"):
                vpo, vi = T.axis.remap("SS", [po, i])
                T.reads(PTR[vi:vi + 2], D[0:nnzb, 0:br, 0:1], IND[0:nnzb], XP[0:length])
                T.writes(ACC[vi * br:vi * br + br, vpo * panel:vpo * panel + panel])
                T.sblock_attr({"squeezer.kernel": KERNEL})
                for jj, r, cc, pp in T.grid(PTR[vi + 1] - PTR[vi], br, 1, panel):
                    with T.sblock("update"):
                        vr, vp = T.axis.remap("SS", [r, pp])
                        vj = T.axis.reduce(nnzb, jj)
                        vc = T.axis.reduce(1, cc)
                        T.reads(PTR[vi], D[PTR[vi] + vj, vr, vc], IND[PTR[vi] + vj],
                                XP[T.Cast("int32", IND[PTR[vi] + vj]) + vpo * panel + vp])
                        T.writes(ACC[vi * br + vr, vpo * panel + vp])
                        with T.init():
                            ACC[vi * br + vr, vpo * panel + vp] = T.float32(0)
                        ACC[vi * br + vr, vpo * panel + vp] = ACC[
                            vi * br + vr, vpo * panel + vp] + D[PTR[vi] + vj, vr, vc] * XP[
                            T.Cast("int32", IND[PTR[vi] + vj]) + vpo * panel + vp]
        for o, y, xx in T.grid(n, oh, ow):
            with T.sblock("epilogue"):
                vo, vy, vx = T.axis.remap("SSS", [o, y, xx])
                Y[0, vo, vy, vx] = ACC[vo, vy * w2 + vx] + BIAS[vo]

    return kernel.without_attr("global_symbol")
