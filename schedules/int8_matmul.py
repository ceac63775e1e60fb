"""int8 GEMM: ``Y[..., n] = sum_k X[..., k] * W[k, n]`` in int32, ``X`` uint8 or int8, ``W`` int8.

The weight is prepacked (:func:`pack_matmul_weight`) as ``(Np / L, Kp / g, L, g)``: one
instruction of the target's dot-product ISA (:mod:`squeezer.schedules.vnni`, ``L`` int32 lanes
times ``g`` products each) reads ``L x g`` contiguous bytes. ``K`` and ``N`` are padded with
zeros up to whole groups and vectors.

The PrimFunc has three stages:

- ``pack``: ``X`` (any rank, flattened to ``M`` rows) into ``AP[Mp, Kp]``, zero padded; signed
  activations on VNNI are shifted to unsigned (``+128``), compensated in ``unpack`` by the
  constant ``comp[n] = 128 * sum_k W[k, n]`` (zeros otherwise). A plain copy (unsigned 2-D
  ``X`` on whole tiles and groups, nothing fused before it) is inlined: ``X`` is read in place;
- ``compute``: the int32 product ``ACC[Mp, Np]``, annotated ``squeezer.kernel = "int8_matmul"``;
- ``unpack``: ``Y[..., n] = ACC[m, n] - comp[n]`` in ``X``'s leading shape. The kernel is
  output-elementwise-fusable (``op_pattern`` 4): ``FuseOps`` appends the requantization that
  follows, and the schedule inlines it into this write.

The schedule keeps an ``mt x (nt * L)`` tile of ``ACC`` in registers across all of ``K``
(tensorized with the ``"wvec"`` intrinsic: 4 bytes of a row of ``X`` broadcast against ``L``
columns of ``W``); tiles run in parallel, column chunks of ``nm`` tiles keep their part of
``W`` in L2 while every row tile passes. Batch 1 (``M == 1``) has one row per tile and up to 8
vectors of columns, parallel over column chunks: a matrix-vector product bound by ``W``'s
bandwidth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._common import num_cores
from .int8_common import KernelRule, inline_epilogue, inline_producers, rows_padded, tile_divisors
from .spaces import register_space
from .vnni import ISAS, DotIsa, _name

KERNEL = "int8_matmul"
L2_CHUNK_BYTES = 256 * 1024  # a column chunk of W kept in L2 while the row tiles pass


def padded_sizes(k: int, n: int, isa: DotIsa) -> tuple[int, int]:
    """``(Kp, Np)``: ``K`` up to whole groups; ``N`` up to whole vectors, an even number of
    them past one (so a tile of two vectors always divides)."""
    kp = -(-k // isa.group) * isa.group
    nvec = -(-n // isa.lanes)
    if nvec > 1 and nvec % 2:
        nvec += 1
    return kp, nvec * isa.lanes


def pack_matmul_weight(w: np.ndarray, isa: DotIsa, x_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``W[K, N]`` (int8) as the kernel reads it, and the int32 compensation ``comp[N]``.

    Returns
    -------
    packed : int8 ``(Np / L, Kp / g, L, g)``, ``packed[b, q, i, j] = W[q * g + j, b * L + i]``.
    comp : ``128 * sum_k W[k, n]`` when ``isa`` shifts signed activations, else zeros.
    """
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"int8 matmul weight must be a 2-D int8 [K, N] array, got "
                         f"{w.dtype} {w.shape}")
    k, n = w.shape
    kp, np_ = padded_sizes(k, n, isa)
    full = np.zeros((kp, np_), np.int8)
    full[:k, :n] = w
    lanes, g = isa.lanes, isa.group
    packed = full.reshape(kp // g, g, np_ // lanes, lanes).transpose(2, 0, 3, 1)
    shift = isa.shift and x_dtype == "int8"
    comp = 128 * w.astype(np.int32).sum(axis=0) if shift else np.zeros(n, np.int32)
    return np.ascontiguousarray(packed), comp.astype(np.int32)


def int8_matmul_func(x_shape: tuple[int, ...], x_dtype: str, n: int,
                     isa: DotIsa) -> tirx.PrimFunc:
    """The kernel for ``X`` of ``x_shape`` (last dim ``K``) times a ``[K, n]`` weight.

    Parameters ``(X, W_packed, comp, Y)``; ``Y`` is int32 of shape ``(*x_shape[:-1], n)``.
    """
    if len(x_shape) < 1:
        raise ValueError("int8 matmul needs an activation of rank >= 1")
    k = int(x_shape[-1])
    lead = tuple(int(d) for d in x_shape[:-1])
    m = math.prod(lead)
    mp = rows_padded(m)
    kp, np_ = padded_sizes(k, n, isa)
    lanes, g = isa.lanes, isa.group
    act = isa.act_dtype(x_dtype)
    shift = act != x_dtype
    # nothing to shift, pad or flatten: the schedule reads X in place of the pack
    copy = not shift and mp == m and kp == k and len(lead) == 1
    i64 = functools.partial(tirx.IntImm, "int64")
    x_buf_shape = tuple(i64(d) for d in (*lead, k))
    y_shape = tuple(i64(d) for d in (*lead, n))
    strides = [math.prod(lead[i + 1:]) for i in range(len(lead))]

    def rows(flat):  # flat row index -> the leading indices of X / Y
        return [flat // s % d for s, d in zip(strides, lead, strict=True)]

    @T.prim_func(s_tir=True)
    def kernel(x_h: T.handle, w_h: T.handle, c_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        X = T.match_buffer(x_h, x_buf_shape, x_dtype)
        W = T.match_buffer(w_h, (np_ // lanes, kp // g, lanes, g), "int8")
        C = T.match_buffer(c_h, (i64(n),), "int32")
        Y = T.match_buffer(y_h, y_shape, "int32")
        AP = T.sblock_alloc_buffer((mp, kp), act)
        ACC = T.sblock_alloc_buffer((mp, np_), "int32")
        for mm, kk in T.grid(mp, kp):
            with T.sblock("pack"):
                vm, vk = T.axis.remap("SS", [mm, kk])
                if copy:
                    T.sblock_attr({"squeezer.copy": 1})
                    AP[vm, vk] = X[vm, vk]
                elif shift:
                    AP[vm, vk] = T.if_then_else(
                        vm < m and vk < k,
                        T.Cast("uint8", T.Cast("int32", X[*rows(T.min(vm, m - 1)),
                                                          T.min(vk, k - 1)]) + 128),
                        T.uint8(128))
                else:
                    AP[vm, vk] = T.if_then_else(
                        vm < m and vk < k, X[*rows(T.min(vm, m - 1)), T.min(vk, k - 1)],
                        T.Cast(act, 0))
        for mm, nn, kk in T.grid(mp, np_, kp):
            with T.sblock("compute"):
                vm, vn, vk = T.axis.remap("SSR", [mm, nn, kk])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.isa": isa.name})
                with T.init():
                    ACC[vm, vn] = 0
                ACC[vm, vn] = ACC[vm, vn] + T.Cast("int32", AP[vm, vk]) * T.Cast(
                    "int32", W[vn // lanes, vk // g, vn % lanes, vk % g])
        for mm, nn in T.grid(m, n):
            with T.sblock("unpack"):
                vm, vn = T.axis.remap("SS", [mm, nn])
                Y[*rows(vm), vn] = ACC[vm, vn] - C[vn]

    return kernel.without_attr("global_symbol")


@dataclass(frozen=True)
class Knobs:
    """Row tile ``mt``, column tiles per L2 chunk ``nm``, vectors per tile ``nt``."""

    mt: int
    nm: int
    nt: int


def _sizes(sch: s_tir.Schedule) -> tuple[int, int, int, DotIsa]:
    """``(Mp, Np / L, Kp, isa)`` of the kernel being scheduled."""
    stmt = sch.get(sch.get_sblock("compute"))
    isa = next(i for i in ISAS if i.name == str(stmt.annotations["squeezer.isa"]))
    acc = stmt.writes[0].source
    mp, np_ = (int(d) for d in acc.shape)
    kp = int(sch.get(sch.get_loops(sch.get_sblock("compute"))[-1]).extent)
    return mp, np_ // isa.lanes, kp, isa


def default_knobs(sch: s_tir.Schedule, target: Target) -> Knobs:
    mp, nvec, kp, isa = _sizes(sch)
    regs = 24 if isa.lanes == 16 else 12  # accumulators; the rest hold operands
    if mp <= 2:  # matrix-vector: independent accumulators along N
        mt = mp
        nt = max(d for d in tile_divisors(nvec) if d * mt <= 8)
        while nt > 1 and nvec // nt < 2 * num_cores(target) and nvec % (nt // 2) == 0:
            nt //= 2
    else:
        mt = max(d for d in tile_divisors(mp) if d <= (8 if isa.lanes == 16 else 4))
        nt = max(d for d in tile_divisors(nvec) if d * mt <= regs and d <= 4)
    tiles = nvec // nt
    nm = max(d for d in tile_divisors(tiles)
             if d * nt * isa.lanes * kp <= L2_CHUNK_BYTES or d == 1)
    return Knobs(mt, nm, nt)


def schedule(sch: s_tir.Schedule, target: Target, knobs: Knobs | None = None) -> None:
    """Tile, tensorize and parallelize in place; ``knobs=None`` samples the tile sizes
    (the tuning space), otherwise they are fixed (the default schedule)."""
    _, _, _, isa = _sizes(sch)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    pack = sch.get_sblock("pack")
    in_place = names[0] == "pack" and int(sch.get(pack).annotations.get("squeezer.copy", 0))
    if in_place:
        sch.compute_inline(pack)
    else:
        inline_producers(sch, "pack", target)
    inline_epilogue(sch, "unpack")
    compute = sch.get_sblock("compute")
    act = sch.get(compute).reads[0].source.dtype
    mm, nn, kk = sch.get_loops(compute)
    nv, nl = sch.split(nn, [None, isa.lanes])
    if knobs is None:
        mf = sch.sample_perfect_tile(mm, n=2, max_innermost_factor=8)
        nf = sch.sample_perfect_tile(nv, n=3, max_innermost_factor=8)
    else:
        mf, nf = [None, knobs.mt], [None, knobs.nm, knobs.nt]
    mo, mi = sch.split(mm, mf)
    no, nmid, nti = sch.split(nv, nf)
    ko, kl = sch.split(kk, [None, isa.group])
    sch.reorder(no, mo, nmid, ko, mi, nti, nl, kl)
    tile = sch.fuse(no, mo)
    if num_cores(target) > 1:
        sch.parallel(tile)
    unpack = sch.get_sblock("unpack")
    sch.reverse_compute_at(unpack, nmid, preserve_unit_loops=True)
    init = sch.decompose_reduction(compute, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(mi)
    sch.unroll(nti)
    sch.tensorize(nl, _name(isa, str(act), "wvec"))
    _vectorize_tail(sch, sch.get_loops(unpack)[-1], isa.lanes)
    if not in_place:
        _schedule_pack(sch, sch.get_sblock("pack"), target)


def _vectorize_tail(sch: s_tir.Schedule, loop, lanes: int) -> None:
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _schedule_pack(sch: s_tir.Schedule, pack, target: Target) -> None:
    mm, kk = sch.get_loops(pack)
    kp = int(sch.get(kk).extent)
    if num_cores(target) > 1 and int(sch.get(mm).extent) > 1:
        sch.parallel(mm)
    if kp % 16 == 0:
        sch.vectorize(sch.split(kk, [None, 16])[1])


class Int8Matmul(KernelRule):
    """Default schedule of the ``int8_matmul`` kernel (recognized by its block annotation)."""

    kernel = KERNEL

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, target, default_knobs(sch, target))


@register_space(KERNEL)
def int8_matmul_space(sch: s_tir.Schedule) -> None:
    """Tuning space: rows per tile, and the column vectors split into (chunks, tiles per
    chunk, vectors per tile), each a perfect tiling so the intrinsic always applies."""
    schedule(sch, Target.current())
