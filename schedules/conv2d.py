"""Default CPU schedule for NCHW conv2d (regular, pointwise, grouped, depthwise) + epilogue."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, sym, tirx
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from ._common import (
    MAX_ACC_REGS,
    AnalyzedRule,
    const_extent,
    inline_injective_chain,
    is_trivial_binding,
    iter_kinds,
    largest_divisor,
    num_cores,
    pick_vector_tile,
    schedule_block_generic,
    vector_lanes,
    vectorize_innermost,
    worth_parallel,
)
from .conv2d_layout import (
    depthwise_channel_vec,
    pack_weight,
    schedule_depthwise_channel_vec,
    weight_slabs,
)


@dataclass(frozen=True)
class ConvInfo:
    """What the schedule needs to know about one legalized NCHW conv2d block."""

    block: SBlockRV
    pad: SBlockRV | None  # producer of the data operand (padding or plain copy)
    padded: bool  # the producer has an if_then_else (real zero padding)
    epilogue: list[SBlockRV]  # injective blocks after the conv, in order
    extents: tuple[int, ...]  # n, f, oh, ow, rc, kh, kw
    strides: tuple[int, int]
    depthwise: bool  # one input channel per output channel: no reuse across f
    out_per_group: int  # output channels sharing one input-channel group
    weight: tirx.Buffer


def _same(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return bool(expr.same_as(var))


def analyze_conv2d(sch: s_tir.Schedule) -> ConvInfo | None:
    """Find the single NCHW conv2d reduction block; None if the function is something else."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if "R" in iter_kinds(sch, b)]
    if len(reductions) != 1 or iter_kinds(sch, reductions[0]) != "SSSSRRR":
        return None
    block = reductions[0]
    loops = sch.get_loops(block)
    if not is_trivial_binding(sch, block, loops):
        return None
    extents = tuple(const_extent(sch, lp) for lp in loops)
    if any(e is None for e in extents):
        return None
    stmt = sch.get(block)
    n, f, y, x, rc, ry, rx = (iv.var for iv in stmt.iter_vars)
    if len(stmt.reads) != 2 or len(stmt.writes) != 1:
        return None
    weight = data = None
    for read in stmt.reads:
        idx = [r.min for r in read.region]
        if len(idx) == 4 and all(_same(i, v) for i, v in zip(idx, (f, rc, ry, rx), strict=True)):
            weight = read
        elif len(idx) == 4:
            data = read
    out = [r.min for r in stmt.writes[0].region]
    if (
        weight is None
        or data is None
        or not all(_same(i, v) for i, v in zip(out, (n, f, y, x), strict=True))
    ):
        return None
    d_idx = [r.min for r in data.region]
    ys = sym.detect_linear_equation(d_idx[2], [y, ry])
    xs = sym.detect_linear_equation(d_idx[3], [x, rx])
    if len(ys) != 3 or len(xs) != 3 or not _same(d_idx[0], n):
        return None
    grouped = any(v.same_as(f) for v in tirx.analysis.undefined_vars(d_idx[1], []))
    in_channels = int(data.source.shape[1])
    groups = max(in_channels // extents[4], 1) if grouped else 1
    pos = _index(sch, blocks, block)
    pad = _producer(sch, blocks[:pos], data.source)
    padded = pad is not None and "if_then_else" in str(sch.get(pad).body)
    epilogue = [b for b in blocks[pos + 1 :]]
    if any(set(iter_kinds(sch, b)) != {"S"} for b in epilogue):
        return None
    return ConvInfo(
        block=block,
        pad=pad,
        padded=padded,
        epilogue=epilogue,
        extents=extents,  # type: ignore[arg-type]
        strides=(int(ys[0]), int(xs[0])),
        depthwise=grouped and extents[4] == 1,
        out_per_group=extents[1] // groups,
        weight=weight.source,
    )


def _index(sch: s_tir.Schedule, blocks: list[SBlockRV], block: SBlockRV) -> int:
    stmt = sch.get(block)
    return next(i for i, b in enumerate(blocks) if sch.get(b).same_as(stmt))


def _producer(sch: s_tir.Schedule, blocks: list[SBlockRV], buf: tirx.Buffer) -> SBlockRV | None:
    for b in blocks:
        if any(w.source.same_as(buf) for w in sch.get(b).writes):
            return b
    return None


class Conv2dNCHW(AnalyzedRule):
    """Register-tiled direct convolution, vectorized along output width.

    Each parallel task owns an output tile of `fi` channels x `yi` rows x `xi` columns kept
    in a local accumulator (vector registers after LLVM's SROA), and streams the reduction
    over input channels and the kernel window through it. Pointwise stride-1 convs fuse the
    rows and columns into one contiguous pixel axis, so 7x7 and 14x14 maps still fill vectors.
    The epilogue (bias, ReLU/clip, residual add) is computed on the tile while it is hot.
    Weights too large for L2 (deep stages, >= 1 MiB) are tiled by output channels first:
    each task packs its own weight slab and reuses it for every pixel (conv2d_layout).
    """

    def analyze(self, sch: s_tir.Schedule) -> ConvInfo | None:
        return analyze_conv2d(sch)

    def schedule(self, sch: s_tir.Schedule, found: ConvInfo, target: Target) -> None:
        _schedule(sch, found, target)


def _schedule(sch: s_tir.Schedule, info: ConvInfo, target: Target) -> None:
    lanes = vector_lanes(target)
    _, _, oh, ow, _, kh, kw = info.extents
    block = info.block
    n, f, y, x, rc, ry, rx = sch.get_loops(block)
    pointwise = kh == kw == 1 and info.strides == (1, 1) and not info.padded
    if info.pad is not None and not info.padded:
        sch.compute_inline(info.pad)
    rest = inline_injective_chain(sch, info.epilogue[:-1])
    out = info.epilogue[-1] if info.epilogue else None
    if rest or out is None:
        out = sch.cache_write(block, 0, "global")
        if rest:
            raise ValueError("epilogue does not inline")
    sch.set_scope(block, 0, "local")

    if pointwise:
        # A pixel tile may span rows; keep the accumulator and the epilogue in one flat
        # pixel space so the epilogue region is exactly the tile, not its row bounding box.
        sch.transform_layout(block, ("write", 0), lambda a, b, c, d: (a, b, c * ow + d))
        sch.transform_block_layout(out, lambda a, b, c, d: (a, b, c * ow + d))
        sch.transform_block_layout(block, lambda a, b, c, d, e, g, h: (a, b, c * ow + d, e, g, h))
        n, f, x, rc, ry, rx = sch.get_loops(block)
    width = oh * ow if pointwise else ow
    if depthwise_channel_vec(info, lanes):
        schedule_depthwise_channel_vec(sch, info, target, lanes, out)
        return
    yi, slabs = 1, False
    channel_vec = not info.depthwise and info.out_per_group % (lanes // 2) == 0
    if channel_vec:
        # Vectors run along output channels: the activations are broadcast scalars, so odd
        # widths (7, 14, 28) and strides cost nothing, and accumulators fill whole registers.
        fi = next(v for v in (2 * lanes, lanes, lanes // 2) if info.out_per_group % v == 0)
        cap = MAX_ACC_REGS // max(fi // lanes, 1)
        xi = largest_divisor(width, cap=min(cap, 14), prefer=(12, 8, 7, 6))
        if not pointwise:
            yi = largest_divisor(oh, cap=max(min(cap // xi, 2), 1))
        slabs = weight_slabs(info, fi, num_cores(target))
        # Channels innermost in the accumulator too, so its vectors are contiguous.
        if pointwise:
            sch.transform_layout(block, ("write", 0), lambda a, b, c: (a, c, b))
        else:
            sch.transform_layout(block, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    else:
        xi = pick_vector_tile(width, lanes)
        nvec = -(-xi // lanes)
        fi = 1
        if info.depthwise:
            yi = largest_divisor(oh, cap=max(min(8 // nvec, 4), 1))
        else:
            fi = largest_divisor(info.out_per_group, max(MAX_ACC_REGS // nvec, 1))

    fo, fi_l = sch.split(f, [None, fi])
    xo, xi_l = sch.split(x, [None, xi])
    if pointwise:
        spatial_outer, inner = [n, fo, xo] if slabs else [n, xo, fo], [fi_l, xi_l]
    else:
        yo, yi_l = sch.split(y, [None, yi])
        inner = [fi_l, yi_l, xi_l]
        per_f = info.depthwise or slabs
        spatial_outer = [n, fo, yo, xo] if per_f else [n, yo, xo, fo]
    if channel_vec:
        inner = inner[1:] + inner[:1]
    sch.reorder(*spatial_outer, rc, ry, rx, *inner)
    if slabs:
        # One task per output-channel tile: it packs its weight slab, then sweeps all pixels.
        task = sch.fuse(*spatial_outer[:2])
        tile = sch.fuse(*spatial_outer[2:])
    elif info.depthwise:
        # One task per channel plane: its padded copy is built once and stays in L2.
        task = sch.fuse(*spatial_outer[:2])
        tile = spatial_outer[-1]
    else:
        task = tile = sch.fuse(*spatial_outer)
    work = math.prod(info.extents)
    if worth_parallel(target, work, const_extent(sch, task), macs=True):
        sch.parallel(task)
    sch.reverse_compute_at(out, tile)
    if channel_vec:
        pack_weight(sch, block, info.weight, target, fi, at=task if slabs else None)
    if info.padded and info.depthwise:
        sch.compute_at(info.pad, task)
    elif info.padded:
        schedule_block_generic(sch, info.pad, target)
    if kh * kw <= 9:
        sch.unroll(ry)
        sch.unroll(rx)
    for loop in inner[:-1]:
        sch.unroll(loop)
    if channel_vec or info.strides[1] == 1 or not info.depthwise:
        sch.vectorize(inner[-1])
    # else: strided lanes would be gathered one by one; LLVM's loop vectorizer shuffles them.
    sch.decompose_reduction(block, rc)
    vectorize_innermost(sch, out, lanes)
