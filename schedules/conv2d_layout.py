"""Conv2d schedule pieces that change data layouts: channels-last depthwise, weight packing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from ._common import (
    MAX_ACC_REGS,
    const_extent,
    largest_divisor,
    vectorize_innermost,
    worth_parallel,
)

if TYPE_CHECKING:
    from .conv2d import ConvInfo

# Weights above this many bytes do not stay in L2 while every output tile sweeps them;
# such layers (deep ResNet stages, 7x7 and 14x14 maps) tile by output channels first, and
# each task packs only its own slice of the weight, which then stays hot for all its pixels.
SLAB_MIN_WEIGHT_BYTES = 1 << 20


def depthwise_channel_vec(info: ConvInfo, lanes: int) -> bool:
    """Narrow maps (width below one vector) of a padded, multiplier-1 depthwise conv."""
    _, f, _, ow, rc, _, _ = info.extents
    return (
        info.depthwise
        and info.padded
        and info.pad is not None
        and info.out_per_group == 1
        and rc == 1
        and f % lanes == 0
        and info.strides == (1, 1)  # strided: the copy costs more than the vectors win
        and ow < lanes
    )


def schedule_depthwise_channel_vec(
    sch: s_tir.Schedule, info: ConvInfo, target: Target, lanes: int, out: SBlockRV
) -> None:
    """Depthwise conv on maps narrower than a vector: vectors run along channels.

    Along the width a 7-, 4- or 2-wide map fills a fraction of a register and each channel
    plane pays for its own loop nest. Instead each task takes `lanes` channels: it builds
    their padded input channels-last ([h, w, c]), so one contiguous vector load feeds
    `lanes` output channels per tap, with the weight transposed to [kh, kw, c] to match.
    """
    _, _, oh, ow, _, _, _ = info.extents
    block = info.block
    reads = sch.get(block).reads
    data_idx = next(
        i
        for i, r in enumerate(reads)
        if any(w.source.same_as(r.source) for w in sch.get(info.pad).writes)
    )
    sch.transform_layout(block, ("read", data_idx), lambda a, b, c, d: (a, c, d, b))
    pack_weight(sch, block, info.weight, target, lanes)
    sch.transform_layout(block, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    n, f, y, x, rc, ry, rx = sch.get_loops(block)
    yi = largest_divisor(oh, cap=max(MAX_ACC_REGS // ow, 1))
    fo, fi = sch.split(f, [None, lanes])
    yo, yi_l = sch.split(y, [None, yi])
    sch.reorder(n, fo, yo, x, rc, ry, rx, yi_l, fi)
    task = sch.fuse(n, fo)
    if worth_parallel(target, math.prod(info.extents), const_extent(sch, task), macs=True):
        sch.parallel(task)
    sch.reverse_compute_at(out, yo)
    sch.compute_at(info.pad, task)
    for loop in (ry, rx, x, yi_l):
        sch.unroll(loop)
    sch.vectorize(fi)
    sch.decompose_reduction(block, rc)
    vectorize_innermost(sch, out, lanes)


def weight_slabs(info: ConvInfo, fi: int, cores: int) -> bool:
    """Pack the weight per output-channel task (see SLAB_MIN_WEIGHT_BYTES)?"""
    weight_bytes = math.prod(int(s) for s in info.weight.shape) * info.weight.dtype.bits // 8
    return weight_bytes >= SLAB_MIN_WEIGHT_BYTES and info.extents[1] // fi >= 2 * cores


def pack_weight(
    sch: s_tir.Schedule,
    block: SBlockRV,
    weight: tirx.Buffer,
    target: Target,
    fi: int,
    at: LoopRV | None = None,
) -> SBlockRV:
    """Copy the weight as [f // fi, rc, kh, kw, fi]: a vector of output channels is contiguous.

    With `at`, the copy is computed under that loop (one output-channel task: only its
    [rc, kh, kw, fi] slab, read row by row from the OIHW weight and kept in cache);
    otherwise the whole weight is packed up front. The copy costs 1/(OH*OW) of the
    convolution; a PrimFunc cannot change its parameters' layout.
    """
    reads = sch.get(block).reads
    idx = next(i for i, r in enumerate(reads) if r.source.same_as(weight))
    cache = sch.cache_read(block, idx, "global")
    sch.transform_layout(block, ("read", idx), lambda f, c, r, s: (f // fi, c, r, s, f % fi))
    if at is not None:
        sch.compute_at(cache, at)
        loops = sch.get_loops(cache)
        depth = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at)))
        loops = loops[depth + 1 :]
        # Output channels innermost: `fi` rows read in step, contiguous vector writes.
        if len(loops) > 1:
            sch.reorder(*loops[1:], loops[0])
        return cache
    loops = sch.get_loops(cache)
    fo, fi_l = sch.split(loops[0], [None, fi])
    # Read whole OIHW rows (contiguous); the writes stride by `fi` inside one block.
    sch.reorder(fo, fi_l, *loops[1:])
    fused = sch.fuse(fo, fi_l)
    # A plain copy: worth threads only for the large weights of full-size layers.
    if worth_parallel(target, math.prod(int(s) for s in weight.shape), const_extent(sch, fused)):
        sch.parallel(fused)
    return cache
