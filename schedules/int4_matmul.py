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
from .int4_intrin import FLOAT, VNNI, nibble
from .int4_pack import GROUPS, ILV, LANES, STEP, Int4Weight
from .spaces import register_space

__all__ = ["GROUPS", "ILV", "KERNEL", "LANES", "STEP", "Int4Matmul", "Int4Weight", "has_vnni",
           "int4_matmul_func", "int4_matmul_space", "kernel_flops", "rows_padded"]

KERNEL = "int4_matmul"
ROW_MULTIPLE = 8  # rows past this are padded to a multiple of it (row tiles divide)
Act = Literal["int8", "int16", "float"]
QMAX = {"int8": 127, "int16": 127 * 128}  # largest activation code per mode
PLANES = {"int8": 1, "int16": 2, "float": 1}  # int8 planes (or float copies) per activation


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
    chunks, steps = w.packed.shape[:2]
    tiles = chunks * ILV
    ng = w.scales.shape[1]
    g, kp, spg = w.group, steps * STEP, w.group // STEP
    quant = act != "float"
    acc_t = "int32" if quant else "float32"
    planes = PLANES[act]
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

    def corrected(gs, asum, vm, vt, vg, vl):  # the group sum of sum_k w_q * a
        total = gs[vm, vt, vg, 0, vl]
        if planes == 2:
            total = total * 128 + gs[vm, vt, vg, 1, vl]
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
        WP = T.match_buffer(w_h, (chunks, steps, ILV, LANES, 4), "uint8")
        SW = T.match_buffer(s_h, (chunks, ng, ILV, LANES), "float32")
        Y = T.match_buffer(y_h, y_buf, acc_t if sums else "float32")
        AMAX = T.sblock_alloc_buffer((mp,), "float32")
        INV = T.sblock_alloc_buffer((mp,), "float32")
        SA = T.sblock_alloc_buffer((mp,), "float32")
        AQ = T.sblock_alloc_buffer((mp, planes, kp), "int8" if quant else "float32")
        ASUM = T.sblock_alloc_buffer((mp, ng), acc_t)
        GS = T.sblock_alloc_buffer((mp, tiles, ng, planes, LANES), acc_t)
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
        for mm, tt, gg, pp, ss, ll, jj in T.grid(mp, tiles, ng, planes, spg, LANES, STEP):
            with T.sblock("dot"):
                vm, vt, vg, vp, vs, vl, vj = T.axis.remap("SSSSRSR", [mm, tt, gg, pp, ss, ll, jj])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.act": act})
                with T.init():
                    GS[vm, vt, vg, vp, vl] = T.Cast(acc_t, 0)
                GS[vm, vt, vg, vp, vl] = GS[vm, vt, vg, vp, vl] + T.Cast(
                    acc_t, nibble(WP[vt // ILV, vg * spg + vs, vt % ILV, vl, vj % 4], vj)
                ) * T.Cast(acc_t, AQ[vm, vp, (vg * spg + vs) * STEP + vj])
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
                        ) * (SA[vm] * SW[vt // ILV, vg, vt % ILV, vl])
                    else:
                        ACC[vm, vt, vl] = ACC[vm, vt, vl] + corrected(
                            GS, ASUM, vm, vt, vg, vl) * SW[vt // ILV, vg, vt % ILV, vl]
            for mm, nn in T.grid(m, n):
                with T.sblock("out"):
                    vm, vn = T.axis.remap("SS", [mm, nn])
                    Y[*rows(vm), vn] = ACC[vm, vn // LANES, vn % LANES]

    return kernel.without_attr("global_symbol")


def kernel_flops(func: tirx.PrimFunc) -> float:
    """Operations of the product, two per multiply-add (``k`` padded to whole groups), for a
    kernel alone or with what ``FuseOps`` fused around it. TVM's estimate rejects the vector
    intrinsics in the ``dot`` block."""
    packed = next(p for p in func.params if p.dtype == "uint8" and len(p.shape) == 5)
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
    """Matrix-vector (one or two rows): up to 8 tiles (whole chunks where possible), leaving 4
    tasks per core. Batched, integer modes: up to 4 tiles and 16 vector accumulators (4 x 4 for
    int8, 2 rows x 4 tiles for int16's two planes); float mode: 8 rows x 1 tile (the tile's 8
    unpacked float vectors take the other registers)."""
    mp, tiles = _sizes(sch)
    act = str(sch.get(sch.get_sblock("dot")).annotations["squeezer.act"])
    want = 4 * num_cores(target)
    if mp <= 2:  # whole chunks per task where possible: one stream of weights each
        ok = [d for d in _divisors(tiles) if d <= 8 and tiles // d >= want] or [1]
        return Knobs(mp, max([d for d in ok if d % ILV == 0] or ok))
    nt = 1 if act == "float" else max(d for d in _divisors(tiles) if d <= 4)
    mt = max(d for d in _divisors(mp) if d * nt * PLANES[act] <= (8 if act == "float" else 16))
    while nt > 1 and (tiles // nt) * (mp // mt) < want:
        nt = max(d for d in _divisors(tiles) if d < nt)
    return Knobs(mt, nt)


def schedule(sch: s_tir.Schedule, target: Target, knobs: Knobs | None = None) -> None:
    """Tile, unroll and parallelize in place; ``knobs=None`` samples the tile sizes (the tuning
    space), otherwise they are fixed (the default schedule).

    Tiles of ``mt`` rows x ``nt * 16`` outputs run in parallel (column tiles outermost, so the
    weight tiles of one column stay in L2 while the row tiles pass). Per group, the tile's
    ``dot`` sums are made right before ``scale`` consumes them: they live in registers.
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
    dot = sch.get_sblock("dot")
    macs = math.prod(int(iv.dom.extent) for iv in sch.get(dot).iter_vars)
    if worth_parallel(target, macs, macs=True):
        sch.parallel(tile)  # before decompose_reduction: parallel needs compact dataflow
    # each group's sums are made right before scale consumes them (they live in registers);
    # unit loops are kept so that the loop structure does not depend on the sampled sizes
    sch.compute_at(dot, gg, preserve_unit_loops=True)
    # below gg: rows, tiles, the group (one), planes, steps, 16 lanes, 8 reductions. The steps
    # go outside; tiles, rows and planes are unrolled around the intrinsic.
    dm, dt, _, dp, ds, dl, _ = sch.get_loops(dot)[-7:]
    sch.reorder(ds, dt, dm, dp)
    init = sch.decompose_reduction(dot, ds)
    sch.vectorize(sch.get_loops(init)[-1])
    for lp in (dt, dm, dp):
        sch.unroll(lp)
    act = str(sch.get(dot).annotations["squeezer.act"])
    sch.tensorize(dl, FLOAT if act == "float" else VNNI)
    sch.vectorize(ll)
    if "out" in blocks:
        init = sch.decompose_reduction(scale, gg)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.reverse_compute_at(sch.get_sblock("out"), tile)
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
