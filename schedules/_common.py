"""Helpers shared by the CPU default schedule rules: loop facts, tile choices, fallbacks."""

from __future__ import annotations

import logging
import math
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width
from tvm_ffi import get_global_func

_log = logging.getLogger("squeezer.schedules")


class AnalyzedRule(CPUScheduleRule):
    """A rule in two steps: ``analyze`` recognizes the operator (None: not applicable), then
    ``schedule`` transforms it. A schedule that fails on an unforeseen shape makes the rule not
    applicable, so the next rule (ending in the fallback) takes the function; the failure is
    logged at debug level on ``squeezer.schedules`` so a broken fast path can be found."""

    def analyze(self, sch: s_tir.Schedule) -> Any | None:
        raise NotImplementedError

    def schedule(self, sch: s_tir.Schedule, found: Any, target: Target) -> None:
        raise NotImplementedError

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        found = self.analyze(sch)
        if found is None:
            return None
        try:
            self.schedule(sch, found, target)
        except Exception as err:  # noqa: BLE001 - an unforeseen shape: let the next rule try
            _log.debug("%s failed, next rule applies: %s", type(self).__name__, err)
            return None
        return sch


_get_realize = get_global_func("s_tir.schedule.GetSBlockRealize")
_has_if_then_else = get_global_func("s_tir.schedule.HasIfThenElse")

# Below this many scalar operations (elementwise, pooling, copies) a parallel region costs
# more than it saves: waking the pool and joining is a few microseconds on this class of
# machine, about what 30k memory-bound operations take on one core.
MIN_PARALLEL_WORK = 32768
# The same for multiply-adds of the register-tiled rules (conv2d, matmul), which run about
# ten times as many per second: measured crossovers on 2 cores were 300k-450k MACs.
MIN_PARALLEL_MACS = 12 * MIN_PARALLEL_WORK
# Vector accumulators kept in registers by the tiled rules (AVX-512 has 32, AVX2 16).
MAX_ACC_REGS = 24


def vector_lanes(target: Target, bits: int = 32) -> int:
    """Number of `bits`-wide lanes in one native vector register of `target`."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else 128) // bits, 4)


def num_cores(target: Target) -> int:
    """Cores the target was declared with (``num-cores``), at least 1."""
    return max(int(target.attrs.get("num-cores", 1) or 1), 1)


def const_extent(sch: s_tir.Schedule, loop: LoopRV) -> int | None:
    """The loop's extent if it is a constant, else None."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def iter_kinds(sch: s_tir.Schedule, block: SBlockRV) -> str:
    """Block iter kinds as a string like ``SSSSRRR`` (``O`` for anything else)."""
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def pick_vector_tile(extent: int, lanes: int, limit: int = 64) -> int:
    """Choose an inner tile of `extent` to vectorize: a divisor, so no tail predicate.

    Prefers tiles that fill whole registers (112 -> 16) and accepts odd whole rows
    (7, 14, 28, 49) since LLVM widens those vectors instead of scalarizing them.
    """
    if extent % lanes == 0:
        return lanes
    if extent <= limit:
        return extent
    best, best_score = 1, 0.0
    for d in range(2, limit + 1):
        if extent % d == 0:
            score = d / (lanes * math.ceil(d / lanes)) + d / (1000 * limit)
            if score > best_score:
                best, best_score = d, score
    return best


def largest_divisor(extent: int, cap: int, prefer: tuple[int, ...] = ()) -> int:
    """Largest divisor of `extent` not above `cap`; `prefer` entries win if they divide."""
    for p in prefer:
        if p <= cap and extent % p == 0:
            return p
    for d in range(min(cap, extent), 0, -1):
        if extent % d == 0:
            return d
    return 1


def inline_injective_chain(sch: s_tir.Schedule, blocks: list[SBlockRV]) -> list[SBlockRV]:
    """Inline each injective block into its consumer when possible; return the rest."""
    rest = []
    for block in blocks:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - schedule errors mean "keep this block"
            rest.append(block)
    return rest


def vectorize_innermost(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorize the block's innermost loop, split to a divisor so no tail is predicated."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extent = const_extent(sch, loops[-1])
    if extent is None or extent < 2:
        return
    tile = pick_vector_tile(extent, lanes)
    if tile < 2:
        return
    inner = loops[-1] if tile == extent else sch.split(loops[-1], [None, tile])[1]
    sch.vectorize(inner)


def parallel_outer(sch: s_tir.Schedule, loops: list[LoopRV], target: Target, work: int) -> LoopRV:
    """Fuse leading loops until there is enough parallelism, and parallelize that loop.

    `loops` must be spatial and perfectly nested. Returns the fused loop (serial when the
    whole region is too small to pay for threads).
    """
    want = num_cores(target) * 8
    count, extent = 0, 1
    for loop in loops:
        e = const_extent(sch, loop)
        if e is None:
            break
        count, extent = count + 1, extent * e
        if extent >= want:
            break
    count = max(count, 1)
    fused = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    if worth_parallel(target, work, extent):
        sch.parallel(fused)
    return fused


def worth_parallel(
    target: Target, work: int, extent: int | None = None, *, macs: bool = False
) -> bool:
    """True when a region of `work` operations should be split across threads.

    `work` counts scalar operations, or multiply-adds of a register-tiled kernel when
    `macs` is set (those are cheaper, so more of them are needed). `extent` is the trip
    count of the loop that would be parallelized (None: unknown, assumed enough). Tiny
    kernels (a digits-sized net's layers take 0.1-2 us) stay serial: a parallel region
    would cost them several times their own run time.
    """
    if num_cores(target) < 2 or work < (MIN_PARALLEL_MACS if macs else MIN_PARALLEL_WORK):
        return False
    return extent is None or extent > 1


def schedule_block_generic(sch: s_tir.Schedule, block: SBlockRV, target: Target) -> None:
    """Parallel over outer spatial loops, vectorize the innermost spatial loop.

    Reduction loops (pooling windows, means) are moved outside the innermost spatial loop
    so that loop can still be vectorized; the init is decomposed in front of them.
    Raises if the block's loops are not one loop per block iter, in order.
    """
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if not loops or not is_trivial_binding(sch, block, loops):
        raise ValueError("block is not in normal form")
    work = math.prod(const_extent(sch, lp) or 1 for lp in loops)
    spatial = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
    reduce = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
    if not spatial:
        return
    lanes = vector_lanes(target, _out_bits(sch, block))
    extent = const_extent(sch, spatial[-1]) or 1
    tile = pick_vector_tile(extent, lanes) if extent > 1 else 1
    vec = None
    if tile > 1:
        if tile == extent:
            vec = spatial.pop()
        else:
            outer, vec = sch.split(spatial[-1], [None, tile])
            spatial[-1] = outer
        sch.reorder(*spatial, *reduce, vec)
    if spatial:
        parallel_outer(sch, spatial, target, work)
    # TVM scalarizes a vectorized if_then_else lane by lane (padding); LLVM's own loop
    # vectorizer turns the same serial loop into masked loads, so leave it serial.
    if vec is not None and not has_if_then_else(sch, block):
        sch.vectorize(vec)
        if reduce:
            # The init must sit outside the window loops, or it could not be vectorized.
            sch.decompose_reduction(block, reduce[0])


def has_if_then_else(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """True when the block's body selects with if_then_else (typically zero padding)."""
    return bool(_has_if_then_else(sch.get(block)))


def is_trivial_binding(sch: s_tir.Schedule, block: SBlockRV, loops: list[LoopRV]) -> bool:
    """True when block iter i is bound to exactly loop i's variable, for every i."""
    values = _get_realize(sch, block).iter_values
    if len(values) != len(loops):
        return False
    return all(v.same_as(sch.get(lp).loop_var) for v, lp in zip(values, loops, strict=True))


def _out_bits(sch: s_tir.Schedule, block: SBlockRV) -> int:
    writes = sch.get(block).writes
    return writes[0].source.dtype.bits if writes else 32
