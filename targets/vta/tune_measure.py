"""MetaSchedule plug-ins for VTA layers: design space, postprocessor, builder and runner.

A VTA tuning task is the layer's PrimFunc (:func:`.lower.layer_primfunc`) with the attribute
``vta.task``: a digest of the config, the geometry and the layer's block-sparsity pattern (the
cycles depend on which weight blocks are zero, not on the weight values). The task's constants
(weights, requantization vectors, the analytic model's view) live in this process's registry
under that digest (:func:`register_task`), so the builder and postprocessor find them from the
scheduled module alone; everything runs in the tuning process (the simulator is fast, no RPC).

- space: :func:`.lower.apply_knobs` with ``knobs=None`` (``sample_perfect_tile`` per tile
  split, ``sample_categorical`` over 1 and 2 virtual threads);
- :class:`ScratchpadFits` (postprocessor): a candidate whose tiles overflow the INP, WGT or ACC
  scratchpad (:func:`.lower.footprint`) is rejected before it is built or measured, and so is
  one the analytic model estimates at more than :data:`PRUNE` times its best (search pruning,
  :func:`worth_measuring`);
- :class:`VtaBuilder`: walk + generate the scheduled TIR into a :class:`~.program.Program`, saved
  as ``.npz``; any compile error (an overflow the footprint missed, an instruction field) is the
  candidate's build error;
- :class:`VtaRunner`: the timing model (``SimDriver(functional=False)``) on the saved program;
  the latency is ``cycles / clock``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass

import tvm
import tvm.s_tir.meta_schedule as ms
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.postproc import PyPostproc
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from .config import VtaConfig
from .layer import ConvLayer, DenseLayer, Knobs
from .lower import (
    LayerSpec,
    Shape,
    default_knobs,
    estimate,
    footprint,
    layer_primfunc,
    prepare,
    shape_of,
)
from .lower.codegen import CodegenInput, generate
from .lower.walk import walk
from .program import Program
from .sim import SimDriver

TASK_ATTR = "vta.task"
SCRATCHPADS = ("INP", "WGT", "ACC")
PRUNE = 4.0  # candidates the analytic model puts beyond this factor of its best are not measured


@dataclass
class LayerTask:
    """A layer prepared for tuning on one config: its workload module and constants."""

    name: str
    layer: ConvLayer | DenseLayer
    config: VtaConfig
    spec: LayerSpec
    shape: Shape
    digest: str
    mod: tvm.IRModule  # one function "main": the workload MetaSchedule keys records by
    default_knobs: Knobs
    best_estimate: float  # the analytic model's estimate of its default knobs (cycles)

    def codegen_input(self, knobs: str = "tuned knobs") -> CodegenInput:
        s = self.spec
        return CodegenInput(f"{s.where} with {knobs}", s.weight_blocks, s.par, s.pad_min,
                            s.input_layout.nbytes, s.output_layout.nbytes)


_TASKS: dict[str, LayerTask] = {}


def layer_task(layer: ConvLayer | DenseLayer, config: VtaConfig) -> LayerTask:
    """Prepare ``layer`` for ``config`` and register it (see the module docstring)."""
    spec = prepare(layer, config)
    mask = (spec.weight_blocks != 0).any(axis=(4, 5))
    h = hashlib.sha1()
    h.update(repr(config.to_json()).encode())
    h.update(repr((spec.geometry, spec.stages, spec.pad_value, spec.pad_min)).encode())
    h.update(repr(mask.shape).encode() + mask.tobytes())
    digest = h.hexdigest()[:20]
    func = layer_primfunc(config, spec.geometry, spec.stages, spec.pad_value)
    func = func.with_attr(TASK_ATTR, digest)
    shape = shape_of(spec)
    knobs = default_knobs(config, shape, spec.where)
    task = LayerTask(layer.name, layer, config, spec, shape, digest,
                     tvm.IRModule({"main": func}), knobs, estimate(config, shape, knobs))
    _TASKS[digest] = task
    return task


def task_of(mod: tvm.IRModule) -> LayerTask | None:
    """The registered task of a (scheduled) workload module, if this process registered it."""
    attrs = mod["main"].attrs
    if attrs is None or TASK_ATTR not in attrs:
        return None
    return _TASKS.get(str(attrs[TASK_ATTR]))


def knobs_of_trace(trace) -> Knobs:
    """The knobs a trace of the space drew: the inner factor of each ``SamplePerfectTile``
    (batch, output channels, rows, columns, input channels: the order of ``apply_knobs``) and
    the candidate ``SampleCategorical`` picked (virtual threads)."""
    tiles: list[int] = []
    threads = None
    for inst in trace.insts:
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            tiles.append(int(trace.decisions[inst][-1]))
        elif kind == "SampleCategorical":
            choices = [int(c) for c in inst.attrs[0]]
            threads = choices[int(trace.decisions[inst])]
    if len(tiles) != 5 or threads is None:
        raise ValueError(f"not a trace of the VTA layer space: {len(tiles)} tile samples, "
                         f"virtual threads {'missing' if threads is None else 'found'}")
    tb, tco, th, tw, tci = tiles
    return Knobs(tb, th, tw, tco, tci, threads)


def trace_of(task: LayerTask, knobs: Knobs):
    """A trace of the space whose decisions are ``knobs`` (replays to that schedule)."""
    from tvm.s_tir import Schedule

    from .lower import apply_knobs

    sch = Schedule(task.mod, seed=1)
    apply_knobs(sch, task.config, None)
    trace = sch.trace
    inner = iter((knobs.tile_b, knobs.tile_co, knobs.tile_h, knobs.tile_w, knobs.tile_ci))
    for inst in list(trace.insts):
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            extent = math.prod(int(d) for d in trace.decisions[inst])
            f = next(inner)
            trace = trace.with_decision(inst, [extent // f, f], remove_postproc=True)
        elif kind == "SampleCategorical":
            choices = [int(c) for c in inst.attrs[0]]
            trace = trace.with_decision(inst, choices.index(knobs.virtual_threads),
                                        remove_postproc=True)
    if knobs_of_trace(trace) != knobs:
        raise ValueError(f"{task.name}: knobs {knobs} are not a point of the layer's space")
    return trace


def fits(task: LayerTask, knobs: Knobs) -> bool:
    """Whether the knobs' tiles fit the INP, WGT and ACC scratchpads."""
    need = footprint(task.config, task.shape, knobs)
    return all(need[b] <= task.config.depths[b] for b in SCRATCHPADS)


def worth_measuring(task: LayerTask, knobs: Knobs) -> bool:
    """Whether the analytic model puts the knobs within :data:`PRUNE` times its best estimate.

    Search pruning: tiny tiles make programs of hundreds of thousands of instructions (seconds
    to generate and simulate each) whose per-step DMA latency alone makes them many times
    slower; the model's ranking of such candidates is not in doubt, so they are not measured.
    """
    return estimate(task.config, task.shape, knobs) <= PRUNE * task.best_estimate


def space(config: VtaConfig) -> ms.space_generator.ScheduleFn:
    """The design space of a layer on ``config`` (see the module docstring)."""
    from .lower import apply_knobs

    def fn(sch) -> None:
        apply_knobs(sch, config, None)

    return ms.space_generator.ScheduleFn(
        fn, sch_rules=[], postprocs=[ScratchpadFits()],
        mutator_probs={ms.mutator.MutateTileSize(): 1.0})


@derived_object
class ScratchpadFits(PyPostproc):
    """Rejects a candidate whose tiles overflow a scratchpad (before it is built)."""

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, sch) -> bool:
        task = task_of(sch.mod)
        if task is None:
            return True  # not ours to judge: the builder reports what does not compile
        try:
            knobs = knobs_of_trace(sch.trace)
        except ValueError:
            return False
        return fits(task, knobs) and worth_measuring(task, knobs)

    def clone(self) -> ScratchpadFits:
        return ScratchpadFits()


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@derived_object
class VtaBuilder(PyBuilder):
    """Compiles scheduled layer modules to VTA programs (``.npz`` in a temporary directory)."""

    def build(self, build_inputs) -> list:
        out = []
        for bi in build_inputs:
            try:
                task = task_of(bi.mod)
                if task is None:
                    raise ValueError("not a registered VTA layer task (no vta.task attribute, or "
                                     "a task of another process)")
                prog = generate(task.config, walk(bi.mod["main"]), task.codegen_input())
                d = tempfile.mkdtemp(prefix="squeezer-vta-build-")
                path = os.path.join(d, "program.npz")
                prog.save(path)
                out.append(BuilderResult(path, None))
            except Exception as e:  # noqa: BLE001 - any failure is this candidate's build error
                out.append(BuilderResult(None, _message(e)))
        return out


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, result: RunnerResult):
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return self._result


def program_counters(program: Program):
    """The timing model's counters of a program (no data is simulated)."""
    return SimDriver(program.config, functional=False).run(program.instructions).counters


@derived_object
class VtaRunner(PyRunner):
    """Times built programs on the simulator: latency = simulated cycles / configured clock."""

    def run(self, runner_inputs) -> list:
        futures = []
        for ri in runner_inputs:
            try:
                c = program_counters(Program.load(ri.artifact_path))
                futures.append(_Done(RunnerResult([c.time_s], None)))
            except Exception as e:  # noqa: BLE001 - reported as this candidate's run error
                futures.append(_Done(RunnerResult(None, _message(e))))
        return futures
