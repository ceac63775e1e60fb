"""Tuning VTA layers with MetaSchedule against the simulator's cycle count.

:func:`tune_layers` runs squeezer's search engine (:func:`squeezer.tune.run_search`:
MetaSchedule's evolutionary search, its XGBoost cost model, squeezer's gain scheduler and record
store) over the layers' design spaces (:mod:`.tune_measure`: tiles and virtual threads sampled by
``apply_knobs``, scratchpad overflows rejected by a postprocessor, candidates built to VTA programs
and timed by the timing model: latency = cycles / clock). Records are squeezer's record files under
``<records>/vta-<config>/``; the baseline of each task is the analytic model's default knobs.

:func:`knobs_from_records` is the lookup the compiler calls: the knobs of the best record of the
layer's workload, when it beats the default knobs (else ``None``: the default is kept).
:func:`compile_tuned` is ``compile_layer`` with that lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import VtaConfig, load_config
from .layer import ConvLayer, DenseLayer, Knobs, LayerProgram
from .tune_measure import LayerTask, VtaBuilder, VtaRunner, knobs_of_trace, layer_task, space

log = logging.getLogger("squeezer.tune")

Layer = ConvLayer | DenseLayer
# The design space's unoptimized point: one block of each loop per tile, one virtual thread
# (every load, GEMM and store waits for the previous module: no double buffering).
NAIVE = Knobs(tile_b=1, tile_h=1, tile_w=1, tile_co=1, tile_ci=1, virtual_threads=1)


def records_dir(config: VtaConfig | str, records: str | Path | None = None) -> Path:
    """``<records>/vta-<config name>/`` (``records`` default: the shipped ``tuning_logs/``);
    a ``records`` that already is that directory is returned as is."""
    from squeezer.tune import shipped_records_root

    name = f"vta-{load_config(config).name}"
    root = Path(records) if records is not None else shipped_records_root()
    return root if root.name == name else root / name


def _target():
    import tvm

    # MetaSchedule needs a target for its contexts and records; the candidates never reach it
    # (VtaBuilder compiles to VTA programs), so a one-core host target is only a label.
    return tvm.target.Target({"kind": "llvm", "num-cores": 1})


@dataclass
class VtaTuneResult:
    """Per distinct layer: task, default (analytic knobs) and best tuned seconds."""

    records_dir: Path
    tasks: list = field(default_factory=list)  # squeezer.tune.Task
    layer_tasks: list[LayerTask] = field(default_factory=list)
    trials_run: int = 0
    stop_reason: str = ""
    elapsed: float = 0.0


def _bound_seconds(t: LayerTask) -> float:
    """Lower bound: every nonzero weight block multiplies once per output pixel, one per cycle."""
    g = t.spec.geometry
    oh, ow = g.out_hw
    nonzero = int((t.spec.weight_blocks != 0).any(axis=(4, 5)).sum())
    return max(g.nb * oh * ow * nonzero, 1) / (t.config.clock_mhz * 1e6)


def measure(config: VtaConfig, lp: LayerProgram):
    """Timing-model counters of a compiled layer."""
    from .tune_measure import program_counters

    return program_counters(lp.program)


def _seed(store, lt: LayerTask, knobs: Knobs, seconds: float) -> None:
    """Record the default knobs' measurement as a candidate of the space: the evolutionary
    search starts from the database's best, so it searches around the analytic default."""
    import tvm.s_tir.meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from .tune_measure import trace_of

    workload = store.commit_workload(lt.mod)
    store.commit_tuning_record(TuningRecord(
        trace_of(lt, knobs), workload, [seconds], _target(),
        ms.arg_info.ArgInfo.from_prim_func(lt.mod["main"])))


def tune_layers(layers: Sequence[Layer], config: VtaConfig | str, trials: int,
                records: str | Path | None = None, *, per_iter: int = 16,
                time_budget: float | None = None, seed: int = 0, population: int = 64,
                on_event: Callable | None = None) -> VtaTuneResult:
    """Tune ``layers`` on ``config`` for ``trials`` measured candidates in all.

    Layers with the same workload (geometry, epilogue, config and block-sparsity pattern) are
    one task. Records go to :func:`records_dir`; a run resumes where the records stand (a task's
    earlier trials count towards its share). A new task's baseline (the analytic default knobs,
    measured) is also stored as its first record, so the search starts from it (and counts it).
    ``trials=0`` only measures the baselines.
    ``population``: the evolutionary search's population (each member is a trace replay with a
    tensorization, the search's main cost here; the measurement itself takes milliseconds).
    """
    import datetime as dt

    from squeezer.errors import TuningError
    from squeezer.tune import Task, run_search
    from squeezer.tune.records import RecordStore

    from .lower import compile_layer

    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise TuningError(f"trials must be a non-negative integer, got {trials!r}")
    if not layers:
        raise TuningError("tune_layers: no layers given")
    from squeezer.tune._fastimport import import_tensor_intrinsics

    import_tensor_intrinsics()  # MetaSchedule imports them; fast_stack makes it take seconds
    from .lower.intrin import gemm_intrin

    cfg = load_config(config)
    gemm_intrin(cfg)  # stored traces name the config's tensor intrinsics: register them first
    out = records_dir(cfg, records)
    emit = on_event or (lambda kind, **info: None)
    store = RecordStore(write_dir=out)
    by_digest: dict[str, tuple[LayerTask, Task]] = {}
    for layer in layers:
        lt = layer_task(layer, cfg)
        if lt.digest in by_digest:
            by_digest[lt.digest][1].weight += 1
            continue
        g = lt.spec.geometry
        oh, ow = g.out_hw
        macs = g.nb * oh * ow * g.ob * g.cb * g.kh * g.kw * cfg.batch * cfg.block_in * \
            cfg.block_out
        task = Task(f"vta {layer.name}", lt.mod, 1, 2.0 * macs,
                    float(lt.spec.input_layout.nbytes + lt.spec.output_layout.nbytes),
                    kernel="vta_layer")
        key = store.commit_task(task.mod, task.name)
        task.trials = sum(1 for m in store.measurements if m.workload == key and m.source == out)
        task.best_seconds = store.best_seconds(task.mod) if task.trials else None
        if key in store.baselines:
            task.default_seconds = store.baselines[key]
        else:
            lp = compile_layer(layer, cfg)
            task.default_seconds = measure(cfg, lp).time_s
            store.commit_baseline(task.mod, task.default_seconds)
            _seed(store, lt, lp.knobs, task.default_seconds)
            task.trials += 1
            task.best_seconds = store.best_seconds(task.mod)
        by_digest[lt.digest] = (lt, task)
    lts = [v[0] for v in by_digest.values()]
    tasks = [v[1] for v in by_digest.values()]
    result = VtaTuneResult(out, tasks, lts)
    emit("tasks", tasks=tasks, target_key=out.name, records_dir=out, rpc=None)
    store.commit_run({
        "model": f"vta layers ({len(layers)})", "config": cfg.name,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threads": 1, "trials": trials, "rpc": None,
        "tasks": [{"workload": store.commit_key(t.mod), "name": t.name, "calls": t.weight,
                   "flops": t.flops} for t in tasks],
    })
    if trials == 0:
        result.stop_reason = "trials 0"
        emit("done", result=result)
        return result
    budget, _ = run_search(
        tasks, _target(), store, VtaBuilder(), VtaRunner(), trials=trials, per_iter=per_iter,
        time_budget=time_budget, warm_start=False, seed=seed, threads=1,
        bounds=[_bound_seconds(lt) for lt in lts], already=[t.trials for t in tasks],
        emit=emit, spaces=[space(cfg) for _ in tasks], population=population)
    result.trials_run = budget.done
    result.elapsed = budget.elapsed()
    result.stop_reason = budget.stop_reason or "search finished"
    emit("done", result=result)
    return result


_STORES: dict[tuple[str, ...], tuple[tuple, object]] = {}


def _store(dirs: list[Path]):
    """A read-only record store over ``dirs``, read again only when a file changed."""
    from squeezer.tune.records import RecordStore

    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns)
                  for d in dirs if d.is_dir() for f in sorted(d.glob("*.jsonl*")))
    key = tuple(map(str, dirs))
    cached = _STORES.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    store = RecordStore(read_dirs=dirs)
    _STORES[key] = (stamp, store)
    return store


@dataclass(frozen=True)
class BestRecord:
    """The best stored record of a layer: its knobs, measured seconds, the stored baseline
    (default knobs' seconds, if stored), how many candidates were measured, and the clock.

    MetaSchedule keeps run times as float32: ``cycles`` rounds them back to whole cycles
    (exact below 2**24 cycles, within a cycle or two above)."""

    knobs: Knobs
    seconds: float
    baseline: float | None
    trials: int
    clock_mhz: float

    @property
    def cycles(self) -> int:
        return round(self.seconds * self.clock_mhz * 1e6)

    @property
    def baseline_cycles(self) -> int | None:
        return None if self.baseline is None else round(self.baseline * self.clock_mhz * 1e6)

    @property
    def beats_default(self) -> bool:
        base = self.baseline_cycles
        return base is None or self.cycles < base


def best_record(layer: Layer, config: VtaConfig | str,
                records: str | Path | Sequence[str | Path] | None = None) -> BestRecord | None:
    """The best working record of ``layer``'s workload on ``config`` (``None``: none stored).

    ``records``: record roots or ``vta-<config>`` directories; default: the user's record root
    (``$SQUEEZER_RECORDS`` or the platform data dir) and the shipped ``tuning_logs/``. The
    workload is the layer's geometry, epilogue, config and zero-block pattern.
    """
    from squeezer.tune import default_records_root, shipped_records_root
    from squeezer.tune.records import FAILED_SECS

    from .lower.intrin import gemm_intrin

    cfg = load_config(config)
    gemm_intrin(cfg)  # a record's trace names the config's tensor intrinsics: register them
    if records is None:
        roots: list[str | Path] = [default_records_root(), shipped_records_root()]
    elif isinstance(records, str | Path):
        roots = [records]
    else:
        roots = list(records)
    dirs = list(dict.fromkeys(records_dir(cfg, r) for r in roots))
    store = _store(dirs)
    lt = layer_task(layer, cfg)
    key = store.key_of(lt.mod)
    if key is None:
        return None
    workload = store.commit_workload(lt.mod)  # read-only store: loads, writes nothing
    top = store.get_top_k(workload, 1)
    if not top or not top[0].run_secs:
        return None
    secs = sum(float(s) for s in top[0].run_secs) / len(top[0].run_secs)
    if secs >= FAILED_SECS:
        return None
    try:
        knobs = knobs_of_trace(top[0].trace)
    except ValueError as e:
        log.warning("vta records %s: the best record of %s is not a layer-space trace (%s)",
                    dirs, layer.name, e)
        return None
    return BestRecord(knobs, secs, store.baselines.get(key), store.trials_of(key), cfg.clock_mhz)


def knobs_from_records(layer: Layer, config: VtaConfig | str,
                       records: str | Path | Sequence[str | Path] | None = None
                       ) -> Knobs | None:
    """The tuned knobs of ``layer`` on ``config``, or ``None`` when no record applies: none is
    stored for its workload (see :func:`best_record`), or the best one does not beat the stored
    baseline (the analytic default knobs, which ``compile_layer`` then uses)."""
    best = best_record(layer, config, records)
    return best.knobs if best is not None and best.beats_default else None


def compile_tuned(layer: Layer, config: VtaConfig | str,
                  records: str | Path | Sequence[str | Path] | None = None) -> LayerProgram:
    """``compile_layer`` with the tuned knobs when a record applies, else the default knobs."""
    from .lower import compile_layer

    return compile_layer(layer, config, knobs_from_records(layer, config, records))
