"""int4-weight dense: ``Y[..., n] = sum_k X[..., k] * W[n, k]`` with ``W`` in int4 per group.

The weight comes packed (:class:`~squeezer.schedules.int4_pack.Int4Weight`): unsigned nibbles
``u = w_q + 8`` in 64-byte tiles of 16 outputs x 8 reductions, one float32 scale per output and
group of ``g`` reductions. Three ways to compute (``act``):

- ``"int8"`` (AVX512-VNNI): the float input is quantized per row inside the kernel
  (``s_a = max|x| / 127``, ``a_q = round(x / s_a)``, half to even) and the products run in int32
  with ``vpdpbusd``: unsigned nibbles (``& 0x0F``, ``>> 4``) times signed activations broadcast
  4 at a time. Since ``sum u * a = sum w_q * a + 8 * sum a``, the group sum is corrected by
  ``8 * sum_{k in g} a_q`` (one number per row and group, shared by every output): exact.
  Then ``Y = sum_g float(group sum) * (s_a * s_w[n, g])``. The activation rounding moves the
  result by up to ``s_a / 2 * sum_k |W[n, k]|`` (typically 0.5 % of the largest output).
- ``"int16"`` (AVX512-VNNI): the same with 15-bit activations, ``s_a = max|x| / 16256``, each
  split into two int8 planes ``a_q = 128 * hi + lo`` (``hi`` in ``[-127, 127]``, ``lo`` in
  ``[-64, 63]``); twice the ``vpdpbusd`` on the same unpacked nibbles, group sum
  ``128 * sum(u * hi) + sum(u * lo) - 8 * sum a_q`` (exact in int32). The rounding error is
  128 times smaller than int8's.
- ``"float"`` (any CPU with vectors): the nibbles of one output are shifted out of its int32
  lane, converted to float and multiplied with the float input broadcast; the group sum is
  corrected by ``8 * sum_{k in g} x``. Float rounding only.

The PrimFunc's stages (blocks): ``amax`` / ``ascale`` (the row scale, quantized modes),
``quant`` (padded activations, quantized or copied), ``asum`` (per row and group), ``dot`` (per
row, tile of 16 outputs and group: the int32 or float group sums ``GS``), ``scale``
(``ACC += corrected GS * s_a * s_w``, over groups), ``out`` (``Y = ACC``). The kernel is
output-elementwise-fusable: ``FuseOps`` appends the bias add and activation, which the schedule
inlines into ``out``. The schedule keeps ``mt x nt`` group sums in registers: each unpacked tile
serves ``mt`` rows, each broadcast activation ``nt`` tiles.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target, codegen

from ._common import AnalyzedRule, num_cores, schedule_block_generic, worth_parallel
from .int4_pack import GROUPS, LANES, STEP, Int4Weight
from .spaces import register_space

__all__ = ["GROUPS", "KERNEL", "LANES", "STEP", "Int4Matmul", "Int4Weight", "has_vnni",
           "int4_matmul_func", "int4_matmul_space", "kernel_flops", "rows_padded"]

KERNEL = "int4_matmul"
ROW_MULTIPLE = 8  # rows past this are padded to a multiple of it (row tiles divide)
Act = Literal["int8", "int16", "float"]
QMAX = {"int8": 127, "int16": 127 * 128}  # largest activation code per mode
PLANES = {"int8": 1, "int16": 2, "float": 1}  # int8 planes (or float copies) per activation
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def has_vnni(target: Target | None = None) -> bool:
    """Whether ``target`` (default: the current one) has AVX512-VNNI and AVX512BW."""
    target = target or Target.current()
    return all(bool(codegen.llvm_cpu_has_features(f, target)) for f in ("avx512vnni", "avx512bw"))


def rows_padded(m: int) -> int:
    """Rows the kernel computes: ``m`` up to 8, else ``m`` rounded up to a multiple of 8."""
    return m if m <= ROW_MULTIPLE else -(-m // ROW_MULTIPLE) * ROW_MULTIPLE


def int4_matmul_func(x_shape: tuple[int, ...], w: Int4Weight, act: Act = "int8", *,
                     sums: bool = False) -> tirx.PrimFunc:
    """The kernel for ``X`` of ``x_shape`` (float32, last dim ``k``) times ``w.T``.

    Parameters ``(X, packed, scales, Y)``, ``Y`` float32 of shape ``(*x_shape[:-1], n)``. With
    ``sums=True`` (a test variant) ``Y`` is instead the corrected group sums, ``(Mp, Np / 16,
    Kp / group, 16)``, int32 (float32 for ``act="float"``), and the scaling stages are left out.
    The function carries ``squeezer.kernel = "int4_matmul"``.
    """
    n, k = w.shape
    if int(x_shape[-1]) != k:
        raise ValueError(f"int4 matmul: input's last dim {x_shape[-1]} != weight's k {k}")
    if act not in PLANES:
        raise ValueError(f"int4 matmul act must be one of {tuple(PLANES)}, got {act!r}")
    lead = tuple(int(d) for d in x_shape[:-1])
    m = math.prod(lead)
    mp = rows_padded(m)
    tiles, steps, _, _ = w.packed.shape
    ng = w.scales.shape[1]
    g, kp, spg = w.group, steps * STEP, w.group // STEP
    quant = act != "float"
    acc_t = "int32" if quant else "float32"
    planes = PLANES[act]
    width = LANES * planes  # GS lanes per row, tile and group: one vector per plane
    qmax = float(QMAX.get(act, 1))
    i64 = functools.partial(tirx.IntImm, "int64")
    x_buf = tuple(i64(d) for d in (*lead, k))
    y_buf = ((mp, tiles, ng, LANES) if sums else tuple(i64(d) for d in (*lead, n)))
    strides = [math.prod(lead[i + 1:]) for i in range(len(lead))]

    def rows(flat):  # flat row index -> the leading indices of X / Y
        return [flat // s % d for s, d in zip(strides, lead, strict=True)]

    def x_at(x, vm, vk):  # X padded with zero rows and columns
        return T.if_then_else(T.And(vm < m, vk < k), x[*rows(T.min(vm, m - 1)), T.min(vk, k - 1)],
                              T.float32(0))

    def dot_vnni(gs, wp, a, vm, vt, vg, vs):
        raw = wp.vload([vt, vs, 0, 0], "uint8x64")
        nibbles = (raw & T.broadcast(T.uint8(15), 64), raw >> T.broadcast(T.uint8(4), 64))
        vid = T.llvm_lookup_intrinsic_id(_VPDPBUSD)
        out = []
        for p in range(planes):
            acc = gs.vload([vm, vt, vg, p * LANES], "int32x16")
            for h in range(2):
                a4 = T.reinterpret("int32", a.vload([vm, p, vs * STEP + 4 * h], "int8x4"))
                acc = T.call_llvm_pure_intrin("int32x16", vid, acc, nibbles[h],
                                              T.reinterpret("int8x64", T.broadcast(a4, 16)))
            out.append(acc)
        return out

    def dot_float(gs, wp, xf, vm, vt, vg, vs):
        raw = T.reinterpret("int32x16", wp.vload([vt, vs, 0, 0], "uint8x64"))
        acc = gs.vload([vm, vt, vg, 0], "float32x16")
        for h in range(2):
            for j in range(4):
                u = (raw >> T.broadcast(8 * j + 4 * h, 16)) & T.broadcast(15, 16)
                acc = acc + T.Cast("float32x16", u) * T.broadcast(
                    xf[vm, 0, vs * STEP + 4 * h + j], 16)
        return [acc]

    dot = dot_vnni if quant else dot_float

    def corrected(gs, asum, vm, vt, vg, vl):  # the group sum of sum_k w_q * a
        total = gs[vm, vt, vg, vl]
        if planes == 2:
            total = total * 128 + gs[vm, vt, vg, LANES + vl]
        return total - T.Cast(acc_t, 8) * asum[vm, vg]

    def code(xv, inv, p):  # activation plane p (a block var) of x as int32, or x itself
        if not quant:
            return xv
        q = T.Cast("int32", T.max(T.min(T.round(xv * inv), T.float32(qmax)),
                                  T.float32(-qmax)))
        if planes == 1:
            return q
        lo = T.floormod(q + 64, 128) - 64
        return T.Select(p == 0, T.floordiv(q - lo, 128), lo)

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_buf, "float32")
        WP = T.match_buffer(w_h, (tiles, steps, LANES, 4), "uint8")
        SW = T.match_buffer(s_h, (tiles, ng, LANES), "float32")
        Y = T.match_buffer(y_h, y_buf, acc_t if sums else "float32")
        AMAX = T.sblock_alloc_buffer((mp,), "float32")
        INV = T.sblock_alloc_buffer((mp,), "float32")
        SA = T.sblock_alloc_buffer((mp,), "float32")
        AQ = T.sblock_alloc_buffer((mp, planes, kp), "int8" if quant else "float32")
        ASUM = T.sblock_alloc_buffer((mp, ng), acc_t)
        GS = T.sblock_alloc_buffer((mp, tiles, ng, width), acc_t)
        ACC = T.sblock_alloc_buffer((mp, tiles, LANES), "float32")
        if quant:
            for mm, kk in T.grid(mp, k):
                with T.sblock("amax"):
                    vm, vk = T.axis.remap("SR", [mm, kk])
                    with T.init():
                        AMAX[vm] = T.float32(0)
                    AMAX[vm] = T.max(AMAX[vm], T.fabs(x_at(X, vm, vk)))
            for mm in range(mp):
                with T.sblock("ascale"):
                    vm = T.axis.spatial(mp, mm)
                    INV[vm] = T.if_then_else(AMAX[vm] > T.float32(0),
                                             T.float32(qmax) / AMAX[vm], T.float32(0))
                    SA[vm] = AMAX[vm] / T.float32(qmax)
        for mm, pp, kk in T.grid(mp, planes, kp):
            with T.sblock("quant"):
                vm, vp, vk = T.axis.remap("SSS", [mm, pp, kk])
                AQ[vm, vp, vk] = T.Cast(AQ.dtype, code(x_at(X, vm, vk), INV[vm], vp))
        for mm, gg, jj in T.grid(mp, ng, g):
            with T.sblock("asum"):
                vm, vg, vj = T.axis.remap("SSR", [mm, gg, jj])
                with T.init():
                    ASUM[vm, vg] = T.Cast(acc_t, 0)
                if planes == 2:
                    ASUM[vm, vg] = ASUM[vm, vg] + T.Cast(acc_t, AQ[vm, 0, vg * g + vj]) * 128 \
                        + T.Cast(acc_t, AQ[vm, 1, vg * g + vj])
                else:
                    ASUM[vm, vg] = ASUM[vm, vg] + T.Cast(acc_t, AQ[vm, 0, vg * g + vj])
        for mm, tt, gg, ll, ss in T.grid(mp, tiles, ng, 1, spg):
            with T.sblock("dot"):
                # vl (always 0) names the lanes: compute_at needs a block var per dimension
                vm, vt, vg, vl, vs = T.axis.remap("SSSSR", [mm, tt, gg, ll, ss])
                T.reads(GS[vm, vt, vg, vl * width:vl * width + width],
                        WP[vt, vg * spg + vs, 0:LANES, 0:4],
                        AQ[vm, 0:planes, (vg * spg + vs) * STEP:(vg * spg + vs) * STEP + STEP])
                T.writes(GS[vm, vt, vg, vl * width:vl * width + width])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.act": act})
                with T.init():
                    GS[vm, vt, vg, T.ramp(vl * width, 1, width)] = T.broadcast(
                        T.Cast(acc_t, 0), width)
                if planes == 2:
                    new = dot(GS, WP, AQ, vm, vt, vg, vg * spg + vs)
                    GS[vm, vt, vg, T.ramp(vl * width, 1, LANES)] = new[0]
                    GS[vm, vt, vg, T.ramp(vl * width + LANES, 1, LANES)] = new[1]
                else:
                    GS[vm, vt, vg, T.ramp(vl * width, 1, LANES)] = dot(
                        GS, WP, AQ, vm, vt, vg, vg * spg + vs)[0]
        if sums:
            for mm, tt, gg, ll in T.grid(mp, tiles, ng, LANES):
                with T.sblock("scale"):
                    vm, vt, vg, vl = T.axis.remap("SSSS", [mm, tt, gg, ll])
                    Y[vm, vt, vg, vl] = corrected(GS, ASUM, vm, vt, vg, vl)
        else:
            for mm, tt, gg, ll in T.grid(mp, tiles, ng, LANES):
                with T.sblock("scale"):
                    vm, vt, vg, vl = T.axis.remap("SSRS", [mm, tt, gg, ll])
                    with T.init():
                        ACC[vm, vt, vl] = T.float32(0)
                    if quant:
                        ACC[vm, vt, vl] = ACC[vm, vt, vl] + T.Cast(
                            "float32", corrected(GS, ASUM, vm, vt, vg, vl)
                        ) * (SA[vm] * SW[vt, vg, vl])
                    else:
                        ACC[vm, vt, vl] = ACC[vm, vt, vl] + corrected(
                            GS, ASUM, vm, vt, vg, vl) * SW[vt, vg, vl]
            for mm, nn in T.grid(m, n):
                with T.sblock("out"):
                    vm, vn = T.axis.remap("SS", [mm, nn])
                    Y[*rows(vm), vn] = ACC[vm, vn // LANES, vn % LANES]

    return kernel.without_attr("global_symbol")


def kernel_flops(func: tirx.PrimFunc) -> float:
    """Operations of the product, two per multiply-add (``k`` padded to whole groups), for a
    kernel alone or with what ``FuseOps`` fused around it. TVM's estimate rejects the vector
    intrinsics in the ``dot`` block."""
    packed = next(p for p in func.params if p.dtype == "uint8" and len(p.shape) == 4)
    kp = int(packed.shape[1]) * STEP
    return 2.0 * math.prod(int(d) for d in func.params[-1].shape) * kp


@dataclass(frozen=True)
class Knobs:
    """Rows per tile ``mt`` (each unpacked weight tile serves them all) and 16-output tiles
    per tile ``nt`` (each broadcast activation serves them all)."""

    mt: int
    nt: int


def _sizes(sch: s_tir.Schedule) -> tuple[int, int]:
    """``(Mp, tiles)`` of the kernel being scheduled."""
    gs = sch.get(sch.get_sblock("dot")).writes[0].source
    return int(gs.shape[0]), int(gs.shape[1])


def _divisors(extent: int) -> list[int]:
    return [d for d in range(1, extent + 1) if extent % d == 0]


def default_knobs(sch: s_tir.Schedule, target: Target) -> Knobs:
    """Matrix-vector (one or two rows): up to 8 tiles, leaving 4 tasks per core. Batched: up to
    4 x 4 (16 accumulators; the float sums of the tile stay in L1)."""
    mp, tiles = _sizes(sch)
    want = 4 * num_cores(target)
    if mp <= 2:
        mt = mp
        ok = [d for d in _divisors(tiles) if d <= 8 and tiles // d >= want]
    else:
        mt = max(d for d in _divisors(mp) if d <= 4)
        ok = [d for d in _divisors(tiles) if d <= 4 and (tiles // d) * (mp // mt) >= want]
    return Knobs(mt, max(ok) if ok else 1)


def schedule(sch: s_tir.Schedule, target: Target, knobs: Knobs | None = None) -> None:
    """Tile, unroll and parallelize in place; ``knobs=None`` samples the tile sizes (the tuning
    space), otherwise they are fixed (the default schedule).

    Tiles of ``mt`` rows x ``nt * 16`` outputs run in parallel (column tiles outermost, so the
    weight tiles of one column stay in L2 while the row tiles pass). Per group, the ``dot``
    sums of the tile are computed right before ``scale`` consumes them: they live in registers.
    """
    blocks = _inline_around(sch, target)
    scale = sch.get_sblock("scale")
    mm, tt, gg, ll = sch.get_loops(scale)
    if knobs is None:
        mf = sch.sample_perfect_tile(mm, n=2, max_innermost_factor=8)
        tf = sch.sample_perfect_tile(tt, n=2, max_innermost_factor=8)
    else:
        mf, tf = [None, knobs.mt], [None, knobs.nt]
    mo, mi = sch.split(mm, mf)
    to, ti = sch.split(tt, tf)
    sch.reorder(to, mo, gg, mi, ti, ll)
    tile = sch.fuse(to, mo)
    mp, tiles = _sizes(sch)
    steps = int(sch.get(sch.get_sblock("dot")).reads[1].source.shape[1])
    if worth_parallel(target, mp * tiles * LANES * steps * STEP, macs=True):
        sch.parallel(tile)  # before decompose_reduction: parallel needs compact dataflow
    dot = sch.get_sblock("dot")
    sch.compute_at(dot, gg)
    # the loops compute_at made below gg (unit ones are left out): rows, tiles, steps
    loops = sch.get_loops(dot)
    below = loops[[sch.get(lp).same_as(sch.get(gg)) for lp in loops].index(True) + 1:]
    ds, spatial = below[-1], below[:-1]
    if spatial:
        sch.reorder(ds, *reversed(spatial))
    for lp in spatial:
        sch.unroll(lp)
    sch.decompose_reduction(dot, ds)
    sch.vectorize(ll)
    if "out" in blocks:
        init = sch.decompose_reduction(scale, gg)
        sch.vectorize(sch.get_loops(init)[-1])
        out = sch.get_sblock("out")
        sch.reverse_compute_at(out, tile)
    for name in ("amax", "ascale", "quant", "asum"):
        if name in blocks:
            schedule_block_generic(sch, sch.get_sblock(name), target)


def _inline_around(sch: s_tir.Schedule, target: Target) -> list[str]:
    """Inline what ``FuseOps`` put before the kernel into its reads (a producer that does not
    inline gets the generic parallel schedule) and the epilogue after ``out`` into its write.
    Returns the kernel's own block names."""
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    first = "amax" if "amax" in names else "quant"
    last = "out" if "out" in names else "scale"
    head, tail = names.index(first), names.index(last)
    for name in reversed(names[:head]):
        block = sch.get_sblock(name)
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - keep it as its own stage
            schedule_block_generic(sch, block, target)
    for name in names[tail + 1:]:
        try:
            sch.reverse_compute_inline(sch.get_sblock(name))
        except Exception as err:  # noqa: BLE001 - re-raised with the block's name
            raise ValueError(f"epilogue block {name!r} does not inline into {last!r}: "
                             f"{err}") from err
    return names[head:tail + 1]


class Int4Matmul(AnalyzedRule):
    """Default schedule of the ``int4_matmul`` kernel (recognized by its block annotation)."""

    def analyze(self, sch: s_tir.Schedule):
        try:
            block = sch.get(sch.get_sblock("dot"))
        except Exception:  # noqa: BLE001 - no such block: another kernel
            return None
        return True if block.annotations.get("squeezer.kernel") == KERNEL else None

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, target, default_knobs(sch, target))


@register_space(KERNEL)
def int4_matmul_space(sch: s_tir.Schedule) -> None:
    """Tuning space: rows per tile and 16-output tiles per tile (perfect tilings)."""
    schedule(sch, Target.current())
