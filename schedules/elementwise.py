"""Fallback CPU rule: every block gets parallel outer loops and a vectorized inner loop."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from ._common import (
    MIN_PARALLEL_WORK,
    inline_injective_chain,
    iter_kinds,
    schedule_block_generic,
)


class ParallelVectorize(CPUScheduleRule):
    """Inline injective chains, then parallelize + vectorize each remaining block.

    Always applies to a PrimFunc on an LLVM target: blocks it cannot transform (opaque
    iters, imperfect nests) are left as they are rather than failing the whole function.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        injective = [b for b in blocks[:-1] if set(iter_kinds(sch, b)) <= {"S"}]
        inline_injective_chain(sch, injective)
        for block in sch.get_child_blocks(root):
            trial = sch.copy()
            try:
                schedule_block_generic(trial, block, target)
            except Exception:  # noqa: BLE001 - leave this block serial, keep the others
                continue
            sch = trial
        return sch


class SerialTiny(ParallelVectorize):
    """Tiny PrimFuncs (below MIN_PARALLEL_WORK in total): the fallback, hence serial.

    Sits before dlight's GEMV / Reduction rules, which parallelize unconditionally: a
    128-channel global mean took 2.8 us in a parallel loop and 0.06 us serially.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        work = 0
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            size = 1
            for iv in sch.get(block).iter_vars:
                if not isinstance(iv.dom.extent, tirx.IntImm):
                    return None
                size *= int(iv.dom.extent)
            work += size
        if work >= MIN_PARALLEL_WORK:
            return None
        return super().apply(func, target, tunable)
