"""int4-weight dense: ``Y[..., n] = sum_k X[..., k] * W[n, k]`` with ``W`` in int4 per group.

``W[n, k] = s_w[n, k // g] * w_q[n, k]``, ``w_q`` in ``[-8, 7]``, one float32 scale per group of
``g`` (32, 64 or 128) consecutive ``k``. The codes are stored as unsigned nibbles ``u = w_q + 8``
(:class:`Int4Weight`), two per byte, in tiles of 16 outputs x 8 reductions = 64 bytes: byte
``4 * i + j`` of the tile holds ``u[i, j]`` in its low nibble and ``u[i, 4 + j]`` in its high one.
One 64-byte load then unpacks with ``& 0x0F`` and ``>> 4`` alone (no shuffles) into two
16 x 4 operands, each exactly what one ``vpdpbusd`` multiplies lane by lane.

Two ways to compute (``act``):

- ``"int8"`` (AVX512-VNNI): the float input is quantized per row inside the kernel
  (``s_a = max|x| / 127``, ``a_q = round(x / s_a)``) and the products run in int32 with
  ``vpdpbusd`` (unsigned nibbles x signed activations broadcast 4 at a time). Since
  ``sum u * a = sum w_q * a + 8 * sum a``, the group sum is corrected by ``8 * sum_{k in g} a_q``
  (one number per row and group, shared by every output): exact. Then
  ``Y = s_a * sum_g s_w[n, g] * float(group sum)``.
- ``"float"`` (any CPU with vectors): the nibbles of one output lane are shifted out of its
  int32 lane, converted to float and multiplied with the float input broadcast; the group sum is
  corrected by ``8 * sum_{k in g} x`` and scaled. No activation rounding: results differ from a
  float matmul with the dequantized weights by float rounding only.

The PrimFunc's stages (blocks): ``amax`` / ``ascale`` / ``quant`` / ``asum`` (the activation
prologue; ``float`` mode keeps only ``asum``), ``dot`` (per row, tile of 16 outputs and group:
the int32 or float group sum ``GS``), ``scale`` (``ACC += (GS - 8 * asum) * s_w``, over groups),
``out`` (``Y = ACC * s_a``). The kernel is output-elementwise-fusable: ``FuseOps`` appends the bias
add and activation, which the schedule inlines into ``out``. The schedule keeps ``mt x nt`` group
sums in registers: each unpacked tile serves ``mt`` rows, each broadcast activation ``nt`` tiles.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target, codegen

from ._common import AnalyzedRule, num_cores, schedule_block_generic
from .spaces import register_space

KERNEL = "int4_matmul"
LANES = 16  # outputs per tile: one 512-bit vector of int32 / float32
STEP = 8  # reductions per tile: 4 in the low nibbles, 4 in the high ones
GROUPS = (32, 64, 128)
ROW_MULTIPLE = 8  # rows past this are padded to a multiple of it (row tiles divide)
Act = Literal["int8", "float"]
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def has_vnni(target: Target | None = None) -> bool:
    """Whether ``target`` (default: the current one) has AVX512-VNNI and AVX512BW."""
    target = target or Target.current()
    return all(bool(codegen.llvm_cpu_has_features(f, target)) for f in ("avx512vnni", "avx512bw"))


def rows_padded(m: int) -> int:
    """Rows the kernel computes: ``m`` up to 8, else ``m`` rounded up to a multiple of 8."""
    return m if m <= ROW_MULTIPLE else -(-m // ROW_MULTIPLE) * ROW_MULTIPLE


@dataclass(frozen=True)
class Int4Weight:
    """An ``(n, k)`` weight as the kernel reads it.

    Attributes
    ----------
    shape : ``(n, k)`` of the weight (padding not included).
    group : reductions per scale.
    packed : uint8 ``(Np / 16, Kp / 8, 16, 4)``; ``Np`` is ``n`` up to whole tiles, ``Kp`` is
        ``k`` up to whole groups (padding holds ``u = 8``, i.e. zero).
    scales : float32 ``(Np / 16, Kp / group, 16)``; zero on padded outputs.
    """

    shape: tuple[int, int]
    group: int
    packed: np.ndarray
    scales: np.ndarray

    @classmethod
    def from_codes(cls, codes: np.ndarray, scales: np.ndarray, group: int) -> Int4Weight:
        """Pack int codes ``(n, k)`` in ``[-8, 7]`` with scales ``(n, ceil(k / group))``.

        Raises
        ------
        ValueError
            On a group size outside :data:`GROUPS`, codes out of range, or shapes that disagree.
        """
        if group not in GROUPS:
            raise ValueError(f"int4 group size must be one of {GROUPS}, got {group}")
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.size == 0:
            raise ValueError(f"int4 codes must be a non-empty 2-D (n, k) array, got {codes.shape}")
        n, k = codes.shape
        ng = -(-k // group)
        scales = np.asarray(scales, np.float32)
        if scales.shape != (n, ng):
            raise ValueError(f"int4 scales must have shape {(n, ng)} for codes {codes.shape} "
                             f"and group {group}, got {scales.shape}")
        if codes.min() < -8 or codes.max() > 7:
            raise ValueError(f"int4 codes must lie in [-8, 7], got [{codes.min()}, {codes.max()}]")
        np_, kp = -(-n // LANES) * LANES, ng * group
        u = np.full((np_, kp), 8, np.uint8)
        u[:n, :k] = codes.astype(np.int16) + 8
        # (tile, lane, step, half, j) -> (tile, step, lane, j): low half | high half << 4
        t = u.reshape(np_ // LANES, LANES, kp // STEP, 2, 4).transpose(0, 2, 1, 3, 4)
        packed = t[..., 0, :] | (t[..., 1, :] << 4)
        s = np.zeros((np_, ng), np.float32)
        s[:n] = scales
        s = s.reshape(np_ // LANES, LANES, ng).transpose(0, 2, 1)
        return cls((n, k), group, np.ascontiguousarray(packed, np.uint8),
                   np.ascontiguousarray(s))

    def codes(self) -> np.ndarray:
        """The int8 codes ``(n, k)`` back from the packed nibbles."""
        n, k = self.shape
        lo, hi = self.packed & 15, self.packed >> 4
        t = np.stack([lo, hi], axis=3)  # (tile, step, lane, half, j)
        u = t.transpose(0, 2, 1, 3, 4).reshape(t.shape[0] * LANES, -1)
        return (u[:n, :k].astype(np.int16) - 8).astype(np.int8)

    def group_scales(self) -> np.ndarray:
        """The float32 scales ``(n, ceil(k / group))``."""
        n, k = self.shape
        s = self.scales.transpose(0, 2, 1).reshape(-1, self.scales.shape[1])
        return s[:n, : -(-k // self.group)]

    def to_dense(self) -> np.ndarray:
        """The float32 weight ``(n, k)``: code times its group's scale."""
        s = np.repeat(self.group_scales(), self.group, axis=1)[:, : self.shape[1]]
        return (self.codes().astype(np.float32) * s).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes


def int4_matmul_func(x_shape: tuple[int, ...], w: Int4Weight, act: Act = "int8", *,
                     sums: bool = False) -> tirx.PrimFunc:
    """The kernel for ``X`` of ``x_shape`` (float32, last dim ``k``) times ``w.T``.

    Parameters ``(X, packed, scales, Y)``, ``Y`` float32 of shape ``(*x_shape[:-1], n)``. With
    ``sums=True`` (a test variant) ``Y`` is instead the corrected group sums
    ``GS - 8 * asum``, ``(Mp, Np / 16, Kp / group, 16)`` (int32 for ``act="int8"``), and the
    scaling stages are left out. The function carries ``squeezer.kernel = "int4_matmul"``.
    """
    n, k = w.shape
    if int(x_shape[-1]) != k:
        raise ValueError(f"int4 matmul: input's last dim {x_shape[-1]} != weight's k {k}")
    if act not in ("int8", "float"):
        raise ValueError(f"int4 matmul act must be 'int8' or 'float', got {act!r}")
    lead = tuple(int(d) for d in x_shape[:-1])
    m = math.prod(lead)
    mp = rows_padded(m)
    tiles, steps, _, _ = w.packed.shape
    ng = w.scales.shape[1]
    g, kp, spg = w.group, steps * STEP, w.group // STEP
    acc_t = "int32" if act == "int8" else "float32"
    i64 = functools.partial(tirx.IntImm, "int64")
    x_buf = tuple(i64(d) for d in (*lead, k))
    y_buf = ((mp, tiles, ng, LANES) if sums else tuple(i64(d) for d in (*lead, n)))
    y_dtype = acc_t if sums else "float32"
    strides = [math.prod(lead[i + 1:]) for i in range(len(lead))]
    quant = act == "int8"

    def rows(flat):  # flat row index -> the leading indices of X / Y
        return [flat // s % d for s, d in zip(strides, lead, strict=True)]

    def dot_int8(acc, wp, a, vm, vt, vs):
        raw = wp.vload([vt, vs, 0, 0], "uint8x64")
        lo = raw & T.broadcast(T.uint8(15), 64)
        hi = raw >> T.broadcast(T.uint8(4), 64)
        a0 = T.reinterpret("int32", a.vload([vm, vs * STEP], "int8x4"))
        a1 = T.reinterpret("int32", a.vload([vm, vs * STEP + 4], "int8x4"))
        vid = T.llvm_lookup_intrinsic_id(_VPDPBUSD)
        first = T.call_llvm_pure_intrin("int32x16", vid, acc, lo,
                                        T.reinterpret("int8x64", T.broadcast(a0, 16)))
        return T.call_llvm_pure_intrin("int32x16", vid, first, hi,
                                       T.reinterpret("int8x64", T.broadcast(a1, 16)))

    def dot_float(acc, wp, xf, vm, vt, vs):
        raw = T.reinterpret("int32x16", wp.vload([vt, vs, 0, 0], "uint8x64"))
        for h in range(2):
            for j in range(4):
                u = (raw >> T.broadcast(8 * j + 4 * h, 16)) & T.broadcast(15, 16)
                acc = acc + T.Cast("float32x16", u) * T.broadcast(
                    xf[vm, vs * STEP + 4 * h + j], 16)
        return acc

    dot = dot_int8 if quant else dot_float

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_buf, "float32")
        WP = T.match_buffer(w_h, (tiles, steps, LANES, 4), "uint8")
        SW = T.match_buffer(s_h, (tiles, ng, LANES), "float32")
        Y = T.match_buffer(y_h, y_buf, y_dtype)
        AMAX = T.sblock_alloc_buffer((mp,), "float32")
        INV = T.sblock_alloc_buffer((mp,), "float32")
        SA = T.sblock_alloc_buffer((mp,), "float32")
        AQ = T.sblock_alloc_buffer((mp, kp), "int8" if quant else "float32")
        ASUM = T.sblock_alloc_buffer((mp, ng), acc_t)
        GS = T.sblock_alloc_buffer((mp, tiles, ng, LANES), acc_t)
        ACC = T.sblock_alloc_buffer((mp, tiles, LANES), "float32")
        if quant:
            for mm, kk in T.grid(mp, k):
                with T.sblock("amax"):
                    vm, vk = T.axis.remap("SR", [mm, kk])
                    with T.init():
                        AMAX[vm] = T.float32(0)
                    AMAX[vm] = T.max(AMAX[vm], T.if_then_else(
                        vm < m, T.fabs(X[*rows(T.min(vm, m - 1)), vk]), T.float32(0)))
            for mm in range(mp):
                with T.sblock("ascale"):
                    vm = T.axis.spatial(mp, mm)
                    INV[vm] = T.if_then_else(AMAX[vm] > T.float32(0),
                                             T.float32(127) / AMAX[vm], T.float32(0))
                    SA[vm] = AMAX[vm] / T.float32(127)
        for mm, kk in T.grid(mp, kp):
            with T.sblock("quant"):
                vm, vk = T.axis.remap("SS", [mm, kk])
                if quant:
                    AQ[vm, vk] = T.Cast("int8", T.max(T.min(T.round(T.if_then_else(
                        vm < m and vk < k, X[*rows(T.min(vm, m - 1)), T.min(vk, k - 1)],
                        T.float32(0)) * INV[vm]), T.float32(127)), T.float32(-127)))
                else:
                    AQ[vm, vk] = T.if_then_else(
                        vm < m and vk < k, X[*rows(T.min(vm, m - 1)), T.min(vk, k - 1)],
                        T.float32(0))
        for mm, gg, jj in T.grid(mp, ng, g):
            with T.sblock("asum"):
                vm, vg, vj = T.axis.remap("SSR", [mm, gg, jj])
                with T.init():
                    ASUM[vm, vg] = T.Cast(acc_t, 0)
                ASUM[vm, vg] = ASUM[vm, vg] + T.Cast(acc_t, AQ[vm, vg * g + vj])
        for mm, tt, gg, ll, ss in T.grid(mp, tiles, ng, 1, spg):
            with T.sblock("dot"):
                # vl (always 0) names the 16 lanes: compute_at needs a block var per dimension
                vm, vt, vg, vl, vs = T.axis.remap("SSSSR", [mm, tt, gg, ll, ss])
                T.reads(GS[vm, vt, vg, vl * LANES:vl * LANES + LANES],
                        WP[vt, vg * spg + vs, 0:LANES, 0:4],
                        AQ[vm, (vg * spg + vs) * STEP:(vg * spg + vs) * STEP + STEP])
                T.writes(GS[vm, vt, vg, vl * LANES:vl * LANES + LANES])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.act": act})
                with T.init():
                    GS[vm, vt, vg, T.ramp(vl * LANES, 1, LANES)] = T.broadcast(
                        T.Cast(acc_t, 0), LANES)
                GS[vm, vt, vg, T.ramp(vl * LANES, 1, LANES)] = dot(
                    GS.vload([vm, vt, vg, vl * LANES], f"{acc_t}x16"), WP, AQ, vm, vt,
                    vg * spg + vs)
        if sums:
            for mm, tt, gg, ll in T.grid(mp, tiles, ng, LANES):
                with T.sblock("scale"):
                    vm, vt, vg, vl = T.axis.remap("SSSS", [mm, tt, gg, ll])
                    Y[vm, vt, vg, vl] = GS[vm, vt, vg, vl] - T.Cast(acc_t, 8) * ASUM[vm, vg]
        else:
            for mm, tt, gg, ll in T.grid(mp, tiles, ng, LANES):
                with T.sblock("scale"):
                    vm, vt, vg, vl = T.axis.remap("SSRS", [mm, tt, gg, ll])
                    with T.init():
                        ACC[vm, vt, vl] = T.float32(0)
                    if quant:
                        ACC[vm, vt, vl] = ACC[vm, vt, vl] + T.Cast(
                            "float32", GS[vm, vt, vg, vl] - 8 * ASUM[vm, vg]
                        ) * (SA[vm] * SW[vt, vg, vl])
                    else:
                        ACC[vm, vt, vl] = ACC[vm, vt, vl] + (
                            GS[vm, vt, vg, vl] - T.float32(8) * ASUM[vm, vg]) * SW[vt, vg, vl]
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
    if num_cores(target) > 1:
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
