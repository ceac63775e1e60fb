"""The compile pipeline: a flat list of named stages from Relax to an executable.

``import`` (done by the frontend) -> ``graph`` -> ``legalize`` -> ``schedule`` -> ``build``.
Each stage maps an IRModule to an IRModule, except ``build``, whose lowered module is dumped
before it becomes an ``Executable``. ``--dump-ir DIR`` writes the module after each stage as
``NN-stage.py`` (TVMScript). The tuner extracts its tasks after ``legalize`` (see
``squeezer.tune.tasks``); the ``schedule`` stage applies tuning records that beat the default
schedule and gives every other PrimFunc squeezer's default schedule.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

StageFn = Callable[[tvm.IRModule, tvm.target.Target], tvm.IRModule]


@dataclass(frozen=True)
class Stage:
    """One named step of the pipeline."""

    name: str
    run: StageFn


def graph_stage(mod: tvm.IRModule, target: tvm.target.Target,
                float_fallback: list[dict] | None = None, requant: str = "int64",
                partition: tvm.transform.Pass | None = None) -> tvm.IRModule:
    """The graph passes; ``float_fallback`` receives the operators of a quantized model left
    in float (``fold_qdq``); ``requant`` and ``partition`` as in ``inference_passes``."""
    from squeezer.passes.graph import inference_passes

    with target:
        return tvm.transform.Sequential(inference_passes(float_fallback, requant, partition))(mod)


def tag_kernels() -> tvm.transform.Pass:
    """Give fused PrimFuncs the ``squeezer.kernel`` attribute of the kernel they contain.

    ``FuseTIR`` builds new functions without the attributes of the ones it merged; squeezer's
    kernels also annotate their main block, which survives, so the tuner still finds the
    kernel's design space.
    """

    from tvm_ffi.structural import structural_visit

    @tvm.transform.module_pass(opt_level=0, name="squeezer.TagKernels")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc) or (
                    func.attrs is not None and "squeezer.kernel" in func.attrs):
                continue
            kinds: list[str] = []

            def visit(block, visitor, kinds=kinds):
                if "squeezer.kernel" in block.annotations:
                    kinds.append(str(block.annotations["squeezer.kernel"]))
                return visitor.default_visit(block)

            structural_visit(func.body, [(tvm.s_tir.SBlock, visit)])
            if kinds:
                updates[gv] = func.with_attr("squeezer.kernel", kinds[0])
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def keep_kernel_layouts() -> tvm.transform.Pass:
    """Drop ``layout_free_buffers`` from squeezer's own kernels: their compressed arrays have
    the one layout the kernel reads (and ``SplitLayoutRewritePreproc`` rejects their nested
    blocks)."""

    @tvm.transform.module_pass(opt_level=0, name="squeezer.KeepKernelLayouts")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and \
                    "squeezer.kernel" in func.attrs and "layout_free_buffers" in func.attrs:
                mod[gv] = func.without_attr("layout_free_buffers")
        return mod

    return _pass


def legalize_stage(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    seq = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            tag_kernels(),
            relax.transform.DeadCodeElimination(),
            # Weights may be re-laid-out by tuned kernels (folded into the constants after the
            # records are applied); the attribute is part of the tuning workloads' identity.
            relax.transform.AttachAttrLayoutFreeBuffers(),
            keep_kernel_layouts(),
        ]
    )
    with target:
        return seq(mod)


def schedule_stage(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    from squeezer.schedules import default_schedule_pass

    with target:
        return default_schedule_pass(target)(mod)


def tuned_schedule_stage(store, coverage: list[dict]) -> StageFn:
    """The schedule stage with tuning records: ``coverage`` receives one row per kernel."""

    def run(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
        from squeezer.tune.tasks import apply_records

        mod, rows = apply_records(mod, target, store)
        coverage.extend(rows)
        return schedule_stage(mod, target)

    return run


def lower_stage(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

    with target:
        seq = tvm.transform.Sequential(dataflow_lower_passes(target) + finalize_passes(target))
        return seq(mod)


def default_stages(schedule: StageFn | None = None,
                   float_fallback: list[dict] | None = None, requant: str = "int64",
                   partition: tvm.transform.Pass | None = None) -> list[Stage]:
    """The CPU pipeline after import (``schedule`` replaces the default schedule stage;
    ``float_fallback`` receives the graph stage's list of operators left in float; ``requant``
    and ``partition``: the VTA target's requantization and accelerator partition)."""
    return [
        Stage("graph", functools.partial(graph_stage, float_fallback=float_fallback,
                                         requant=requant, partition=partition)),
        Stage("legalize", legalize_stage),
        Stage("schedule", schedule or schedule_stage),
        Stage("build", lower_stage),
    ]


@dataclass
class PipelineResult:
    executable: tvm.runtime.Executable
    module: tvm.IRModule  # the lowered module the executable was built from
    timings: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    *,
    stages: list[Stage] | None = None,
    dump_ir: str | Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    after_stage: Callable[[str, tvm.IRModule], None] | None = None,
) -> PipelineResult:
    """Run ``stages`` over ``mod`` (already imported) and build the executable.

    Parameters
    ----------
    dump_ir : path, optional
        Directory receiving ``00-import.py``, ``01-graph.py``, ... (TVMScript).
    on_stage : callable, optional
        Called with each stage name before it runs (progress display).
    after_stage : callable, optional
        Called with each stage name and the module it produced (analyses between stages).
    """
    stages = default_stages() if stages is None else stages
    dump_dir = Path(dump_ir) if dump_ir else None
    if dump_dir:
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump(dump_dir / "00-import.py", mod)
    timings: dict[str, float] = {}
    for i, stage in enumerate(stages, start=1):
        if on_stage:
            on_stage(stage.name)
        t0 = time.perf_counter()
        mod = stage.run(mod, target)
        timings[stage.name] = time.perf_counter() - t0
        if after_stage:
            after_stage(stage.name, mod)
        if dump_dir:
            _dump(dump_dir / f"{i:02d}-{stage.name}.py", mod)
    if on_stage:
        on_stage("codegen")
    t0 = time.perf_counter()
    # The stages above already lowered the Relax side: codegen only, no second pipeline.
    exe = tvm.compile(mod, target, relax_pipeline=None)
    timings["codegen"] = time.perf_counter() - t0
    return PipelineResult(exe, mod, timings)


def _dump(path: Path, mod: tvm.IRModule) -> None:
    path.write_text(mod.script(show_meta=False))
