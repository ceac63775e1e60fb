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

_SPACES: dict[str, tuple[SpaceFn, bool]] = {}


def register_space(kernel: str, *, target_postprocs: bool = True
                   ) -> Callable[[SpaceFn], SpaceFn]:
    """Register ``fn`` as the design space of PrimFuncs whose ``squeezer.kernel`` is ``kernel``.

    ``target_postprocs=False`` skips MetaSchedule's postprocessors for the target: a kernel
    whose loops have data-dependent bounds (sparse formats) would be rejected by
    ``DisallowDynamicLoop``; its space function must then produce a complete schedule itself.
    """

    def deco(fn: SpaceFn) -> SpaceFn:
        old = _SPACES.get(kernel)
        if old is not None and old[0] is not fn and old[0].__qualname__ != fn.__qualname__:
            raise ValueError(f"a design space is already registered for kernel {kernel!r}")
        _SPACES[kernel] = (fn, target_postprocs)
        return fn

    return deco


def registered() -> dict[str, SpaceFn]:
    return {k: fn for k, (fn, _) in _SPACES.items()}


def space_for(kernel: str | None, target=None) -> ms.space_generator.SpaceGenerator | str:
    """The space generator for a task of the given kernel family (``None``: generic).

    A registered space function runs inside ``with target:`` (MetaSchedule calls it with the
    schedule only), so it can read the vector width and core count from ``Target.current()``.
    """
    entry = _SPACES.get(kernel) if kernel else None
    if entry is None:
        return "post-order-apply"
    fn, target_postprocs = entry
    if target is not None:
        inner = fn

        def fn(sch: s_tir.Schedule) -> None:
            with target:
                inner(sch)

    return ms.space_generator.ScheduleFn(
        fn, sch_rules=[], postprocs="from-target" if target_postprocs else [],
        mutator_probs="from-target")
