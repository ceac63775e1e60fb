"""Helpers shared by the int8 kernels: padding rules, tile divisors, fused-op inlining."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ._common import AnalyzedRule, schedule_block_generic

ROW_MULTIPLE = 8  # rows of an int8 GEMM are padded to this past one tile


def rows_padded(m: int) -> int:
    """Rows the GEMM computes: ``m`` up to 8, else ``m`` rounded up to a multiple of 8."""
    return m if m <= ROW_MULTIPLE else -(-m // ROW_MULTIPLE) * ROW_MULTIPLE


def tile_divisors(extent: int) -> list[int]:
    """All divisors of ``extent``, ascending."""
    return [d for d in range(1, extent + 1) if extent % d == 0]


def inline_producers(sch: s_tir.Schedule, first: str, target: Target) -> None:
    """Inline what ``FuseOps`` put before a kernel into its block ``first`` (a producer that
    does not inline gets the generic parallel schedule)."""
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in reversed(blocks[:blocks.index(first)]):
        block = sch.get_sblock(name)
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - keep it as its own stage
            schedule_block_generic(sch, block, target)


def inline_epilogue(sch: s_tir.Schedule, last: str) -> None:
    """Inline the elementwise ops ``FuseOps`` put after a kernel into its block ``last``.

    The epilogue may be a DAG (a requantization reads its int64 sum twice): every block but
    the final one is inlined forward into its consumers first, then the final one is inlined
    backward into ``last`` (reverse-inlining a block whose producer has other consumers
    leaves a dangling buffer behind in TVM 0.27).

    Raises
    ------
    ValueError
        When an epilogue block does not inline (a non-elementwise op fused after the kernel).
    """
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    after = blocks[blocks.index(last) + 1:]
    for i, name in enumerate(after):
        try:
            if i < len(after) - 1:
                sch.compute_inline(sch.get_sblock(name))
            else:
                sch.reverse_compute_inline(sch.get_sblock(name))
        except Exception as err:  # noqa: BLE001 - re-raised with the block's name
            raise ValueError(f"epilogue block {name!r} does not inline into {last!r}: "
                             f"{err}") from err


class KernelRule(AnalyzedRule):
    """The default schedule of one int8 kernel, recognized by the ``squeezer.kernel``
    annotation of its ``compute`` block.

    Unlike other rules, a failure is an error, not a hand-over to the next rule: the generic
    rules' compute-at cannot invert the kernels' flat plane indices and would schedule them
    into wrong results.
    """

    kernel = ""

    def analyze(self, sch: s_tir.Schedule):
        try:
            block = sch.get(sch.get_sblock("compute"))
        except Exception:  # noqa: BLE001 - no such block: another kernel
            return None
        return True if block.annotations.get("squeezer.kernel") == self.kernel else None

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        if self.analyze(sch) is None:
            return None
        try:
            self.schedule(sch, True, target)
        except Exception as err:
            raise RuntimeError(f"the default schedule of squeezer's {self.kernel} kernel "
                               f"failed: {err}") from err
        return sch
