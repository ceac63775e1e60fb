"""Fallback CPU rule: every block gets parallel outer loops and a vectorized inner loop."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from ._common import inline_injective_chain, iter_kinds, schedule_block_generic


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
