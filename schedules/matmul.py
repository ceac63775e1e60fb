"""Default CPU schedule for dense / matmul / batch matmul with a row-major (K, N) operand."""

from __future__ import annotations

from tvm import s_tir, tirx
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
    pick_vector_tile,
    vector_lanes,
    vectorize_innermost,
    worth_parallel,
)


def _find_matmul(sch: s_tir.Schedule) -> tuple[SBlockRV, list[SBlockRV], list[SBlockRV]] | None:
    """The single S..SR block reading B[..., k, j]; with its producers and epilogue."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [i for i, b in enumerate(blocks) if "R" in iter_kinds(sch, b)]
    if len(reductions) != 1:
        return None
    pos = reductions[0]
    block = blocks[pos]
    kinds = iter_kinds(sch, block)
    if len(kinds) < 2 or kinds[-1] != "R" or kinds[:-1] != "S" * (len(kinds) - 1):
        return None
    if not is_trivial_binding(sch, block, sch.get_loops(block)):
        return None
    stmt = sch.get(block)
    j, k = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    if len(stmt.reads) != 2 or not isinstance(stmt.body, tirx.BufferStore):
        return None
    if not isinstance(stmt.body.value, tirx.Add):
        return None
    last = [read.region[-1].min for read in stmt.reads]
    second_last = [read.region[-2].min if len(read.region) > 1 else None for read in stmt.reads]
    # One operand must be [..., k] (A) and the other [..., k, j] (B, vectorizable along j).
    has_b = any(
        lv.same_as(j) and sl is not None and sl.same_as(k)
        for lv, sl in zip(last, second_last, strict=True)
    )
    has_a = any(lv.same_as(k) for lv in last)
    out_last = stmt.writes[0].region[-1].min
    if not (has_a and has_b and out_last.same_as(j)):
        return None
    rest = blocks[:pos] + blocks[pos + 1 :]
    if any(set(iter_kinds(sch, b)) != {"S"} for b in rest):
        return None
    return block, blocks[:pos], blocks[pos + 1 :]


class Matmul(AnalyzedRule):
    """Register-tiled GEMM: `ii` rows x `ji` columns of C in vector accumulators.

    The k loop streams a row of A (broadcast) against a contiguous row of B. Tasks are
    ordered column-panel-major so one B panel stays in L2 across the row tiles.
    """

    def analyze(self, sch: s_tir.Schedule):
        return _find_matmul(sch)

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        _schedule(sch, *found, target)


def _schedule(
    sch: s_tir.Schedule,
    block: SBlockRV,
    producers: list[SBlockRV],
    epilogue: list[SBlockRV],
    target: Target,
) -> None:
    lanes = vector_lanes(target)
    if inline_injective_chain(sch, producers):
        raise ValueError("producer does not inline")
    if inline_injective_chain(sch, epilogue[:-1]):
        raise ValueError("epilogue does not inline")
    out = epilogue[-1] if epilogue else sch.cache_write(block, 0, "global")
    sch.set_scope(block, 0, "local")

    *batch, i, j, k = sch.get_loops(block)
    extents = [const_extent(sch, lp) for lp in (*batch, i, j, k)]
    if any(e is None for e in extents):
        raise ValueError("dynamic shape")
    m, n = extents[-3], extents[-2]
    if n % (4 * lanes) == 0 and m <= 2:
        ji = 4 * lanes
    elif n % (2 * lanes) == 0:
        ji = 2 * lanes
    else:
        ji = pick_vector_tile(n, lanes)
    nvec = -(-ji // lanes)
    ii = largest_divisor(m, cap=max(min(MAX_ACC_REGS // nvec, 8), 1), prefer=(8, 6, 4))
    io, ii_l = sch.split(i, [None, ii])
    jo, ji_l = sch.split(j, [None, ji])
    sch.reorder(*batch, jo, io, k, ii_l, ji_l)
    tile = sch.fuse(*batch, jo, io)
    work = 1
    for e in extents:
        work *= e or 1
    if worth_parallel(target, work, const_extent(sch, tile) or 1, macs=True):
        sch.parallel(tile)
    sch.reverse_compute_at(out, tile)
    sch.unroll(ii_l)
    sch.vectorize(ji_l)
    sch.annotate(k, "pragma_auto_unroll_max_step", 8)
    sch.annotate(k, "pragma_unroll_explicit", 0)
    sch.decompose_reduction(block, k)
    vectorize_innermost(sch, out, lanes)
