"""Design spaces for MetaSchedule, per kernel family.

A PrimFunc that squeezer's graph passes create for its own operators (sparse, low-bit, ...)
carries the attribute ``squeezer.kernel = "<family>"``. A family registers the space the tuner
searches for it::

    @register_space("bsr_dense")
    def bsr_dense_space(sch: s_tir.Schedule) -> None:
        ...  # sample_perfect_tile / split / reorder / parallel / vectorize

The function receives a fresh schedule of the task and applies sampling instructions;
MetaSchedule's evolutionary search then explores their decisions. A family without a registered
space, and every PrimFunc without the attribute, gets MetaSchedule's generic CPU space
(post-order apply of its default rules: multi-level tiling, auto-inline, parallel-vectorize-unroll).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm.s_tir.meta_schedule as ms
from tvm import s_tir

SpaceFn = Callable[[s_tir.Schedule], None]

_SPACES: dict[str, SpaceFn] = {}


def register_space(kernel: str) -> Callable[[SpaceFn], SpaceFn]:
    """Register ``fn`` as the design space of PrimFuncs whose ``squeezer.kernel`` is ``kernel``."""

    def deco(fn: SpaceFn) -> SpaceFn:
        if kernel in _SPACES and _SPACES[kernel] is not fn:
            raise ValueError(f"a design space is already registered for kernel {kernel!r}")
        _SPACES[kernel] = fn
        return fn

    return deco


def registered() -> dict[str, SpaceFn]:
    return dict(_SPACES)


def space_for(kernel: str | None) -> ms.space_generator.SpaceGenerator | str:
    """The space generator for a task of the given kernel family (``None``: generic)."""
    fn = _SPACES.get(kernel) if kernel else None
    if fn is None:
        return "post-order-apply"
    return ms.space_generator.ScheduleFn(fn, sch_rules=[], postprocs="from-target",
                                         mutator_probs="from-target")
