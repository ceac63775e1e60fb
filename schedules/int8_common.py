"""Helpers shared by the int8 kernels: padding rules, tile divisors, fused-op inlining."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from ._common import schedule_block_generic

ROW_MULTIPLE = 8  # rows of an int8 GEMM are padded to this past one tile


def rows_padded(m: int) -> int:
    """Rows the GEMM computes: ``m`` up to 8, else ``m`` rounded up to a multiple of 8."""
    return m if m <= ROW_MULTIPLE else -(-m // ROW_MULTIPLE) * ROW_MULTIPLE


def tile_divisors(extent: int) -> list[int]:
    """All divisors of ``extent``, ascending."""
    return [d for d in range(1, extent + 1) if extent % d == 0]


def inline_around(sch: s_tir.Schedule, first: str, last: str, target: Target) -> None:
    """Inline what ``FuseOps`` put around a kernel: producers before block ``first`` into it
    (a producer that does not inline gets the generic parallel schedule), and the
    elementwise epilogue after block ``last`` into that block's write.

    Raises
    ------
    ValueError
        When an epilogue block does not inline (a non-elementwise op fused after the kernel).
    """
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    head, tail = blocks.index(first), blocks.index(last)
    for name in reversed(blocks[:head]):
        block = sch.get_sblock(name)
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - keep it as its own stage
            schedule_block_generic(sch, block, target)
    for name in blocks[tail + 1:]:
        try:
            sch.reverse_compute_inline(sch.get_sblock(name))
        except Exception as err:  # noqa: BLE001 - re-raised with the block's name
            raise ValueError(f"epilogue block {name!r} does not inline into {last!r}: "
                             f"{err}") from err
