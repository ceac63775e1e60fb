"""The auto-tuner: MetaSchedule search over a model's kernels, records that persist and ship.

``tune(model)`` extracts the model's tasks after squeezer's graph passes, measures squeezer's
default schedule of each (the baseline), then runs MetaSchedule (evolutionary search, XGBoost
cost model) with squeezer's :class:`~squeezer.tune.search.GainScheduler`, measuring locally or
through a TVM RPC tracker. Records go to ``<records>/<target-key>/`` as they are measured; a run
that is stopped (Ctrl-C, SIGKILL, ``--time-budget``) resumes when started again with the same
arguments. ``compile`` applies matching records (see :func:`records_for_compile`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm.s_tir.meta_schedule as ms

from squeezer.errors import TuningError
from squeezer.tune.records import RecordStore
from squeezer.tune.tasks import Task, extract, memory_bandwidth, peak_flops, prepare_for_tuning

log = logging.getLogger("squeezer.tune")

__all__ = ["TuneResult", "tune", "records_for_compile", "default_records_root",
           "shipped_records_root", "Task", "RecordStore"]


def shipped_records_root() -> Path:
    """``tuning_logs/`` of the source tree: the records squeezer ships."""
    import squeezer

    return Path(squeezer.__file__).resolve().parent.parent / "tuning_logs"


def default_records_root() -> Path:
    """Where ``squeezer tune`` writes unless ``--records`` says otherwise."""
    env = os.environ.get("SQUEEZER_RECORDS")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("squeezer")) / "tuning_logs"


def records_for_compile(extra: list[str | Path] | None, key: str) -> RecordStore:
    """Read-only store over the records that apply to the CPU class ``key``.

    Looks in each ``extra`` root (``--records``), the user's record root and the shipped one,
    always in the ``<root>/<key>/`` subdirectory: records of other CPU classes are never applied.
    """
    roots = [Path(p) for p in (extra or [])] + [default_records_root(), shipped_records_root()]
    dirs = []
    for root in roots:
        d = _key_dir(root, key)
        if d not in dirs:
            dirs.append(d)
    # Reading the lines costs seconds for thousands of records: a process compiling several
    # models reads them once, and again only when a file changed.
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns)
                  for d in dirs if d.is_dir() for f in sorted(d.glob("*.jsonl*")))
    cached = _COMPILE_STORES.get(tuple(map(str, dirs)))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    store = RecordStore(read_dirs=dirs)
    _COMPILE_STORES[tuple(map(str, dirs))] = (stamp, store)
    return store


_COMPILE_STORES: dict[tuple[str, ...], tuple[tuple, RecordStore]] = {}


def _key_dir(root: Path, key: str) -> Path:
    """``root/key`` unless ``root`` already is a key directory (holds records itself)."""
    if (root / "records.jsonl").exists() or (root / "records.jsonl.gz").exists() \
            or root.name == key:
        return root
    return root / key


@dataclass
class TuneResult:
    tasks: list[Task]
    records_dir: Path
    target_key: str
    trials_run: int
    stop_reason: str
    warm_samples: int = 0
    elapsed: float = 0.0
    bounds: list[float] = field(default_factory=list)

    def model_seconds(self, tuned: bool) -> float | None:
        """Estimated model latency (sum over tasks of calls x latency)."""
        total = 0.0
        for t in self.tasks:
            lat = t.default_seconds
            if tuned and t.best_seconds is not None and (lat is None or t.best_seconds < lat):
                lat = t.best_seconds
            if lat is None:
                return None
            total += t.weight * lat
        return total


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h`` or ``1h30m`` -> seconds."""
    import re

    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
    if not s or not m or not any(m.groups()):
        raise TuningError(f"--time-budget: cannot read {text!r} (use e.g. 90s, 30m, 2h, 1h30m)")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + se


def tune(
    model,
    *,
    example_inputs=None,
    input_shapes=None,
    trials: int = 2000,
    threads: int | None = None,
    records: str | Path | None = None,
    rpc: str | None = None,
    key: str | None = None,
    time_budget: float | None = None,
    warm_start: bool = True,
    per_iter: int = 32,
    seed: int = 0,
    runner_timeout: float = 10.0,
    build_timeout: float = 600.0,
    on_event=None,
    model_name: str | None = None,
    remeasure_defaults: bool = False,
) -> TuneResult:
    """Tune ``model`` and write its records; returns per-task results.

    Parameters
    ----------
    model : nn.Module, ExportedProgram or path (.onnx / .pt2), as for ``compile``.
    trials : total measured candidates for this run, over all tasks. ``0`` lists the tasks and
        measures their default schedules only.
    records : record root; records go to ``<records>/<target-key>/``.
    rpc, key : ``HOST:PORT`` of a TVM RPC tracker and the device key to measure on.
    time_budget : seconds; the run stops after the batch in flight when it is spent.
    warm_start : pre-train the cost model on the shipped records (other workloads).
    runner_timeout : seconds one candidate may take to load, receive its arguments and be timed
        (the local runner's worker, or the RPC session); a slower one is recorded as failed.
    build_timeout : seconds one candidate may take to compile (the builder's worker). LLVM on
        unrolled int8 / bit-serial kernels takes seconds per candidate, and far longer while
        other processes share the cores: MetaSchedule's own ``LocalBuilder`` default (30 s) is
        too short there, hence the generous default.
    on_event : callable(kind, **info) for progress display ("tasks", "baseline", "update", "done").
    remeasure_defaults : measure the default schedules again even where a baseline is stored
        (the newest baseline wins; use on a quiet machine if the stored ones were disturbed).
    """
    from squeezer.frontend import import_model
    from squeezer.targets.cpu import check_threads, detect_host, make_target
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise TuningError(f"--trials must be a non-negative integer, got {trials!r}")
    if per_iter < 1:
        raise TuningError(f"trials per batch must be at least 1, got {per_iter}")
    if time_budget is not None and time_budget <= 0:
        raise TuningError(f"--time-budget must be positive, got {time_budget!r}")
    emit = on_event or (lambda kind, **info: None)
    from squeezer.tune._fastimport import import_tensor_intrinsics

    import_tensor_intrinsics()
    threads = check_threads(threads)
    with kernel_args_dir() as args_dir:
        host = detect_host()
        target = make_target(threads, host)
        target_key = host.key
        root = Path(records) if records is not None else default_records_root()
        out_dir = _key_dir(root, target_key)

        builder, runner, rpc_info = _make_builder_runner(threads, rpc, key, runner_timeout,
                                                         build_timeout)

        imported = import_model(model, example_inputs=example_inputs, input_shapes=input_shapes)
        prepared = prepare_for_tuning(imported.mod, target)
        from squeezer.tune.args import save_kernel_args

        save_kernel_args(prepared, args_dir)
        tasks = extract(prepared, target)
        if not tasks:
            raise TuningError("the model has no kernels to tune")
        read = [_key_dir(shipped_records_root(), target_key)] if warm_start else []
        store = RecordStore(read_dirs=read, write_dir=out_dir)
        already = []
        for t in tasks:
            k = store.commit_task(t.mod, t.name)
            t.trials = sum(1 for m in store.measurements if m.workload == k and m.source == out_dir)
            t.best_seconds = store.best_seconds(t.mod) if t.trials else None
            already.append(t.trials)
        peak, bw = peak_flops(target), memory_bandwidth()
        bounds = [t.roofline_seconds(peak, bw) for t in tasks]
        emit("tasks", tasks=tasks, target_key=target_key, records_dir=out_dir, rpc=rpc_info)
        import datetime as _dt

        store.commit_run({
            "model": model_name or _model_name(model),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "threads": threads, "trials": trials, "rpc": rpc,
            "tasks": [{"workload": store.commit_key(t.mod), "name": t.name, "calls": t.weight,
                       "flops": t.flops} for t in tasks],
        })

        _measure_defaults(tasks, target, builder, runner, store, emit, again=remeasure_defaults)
        result = TuneResult(tasks, out_dir, target_key, 0, "trials 0" if trials == 0 else "",
                            bounds=bounds)
        if trials == 0:
            emit("done", result=result)
            return result
        budget, result.warm_samples = run_search(
            tasks, target, store, builder, runner, trials=trials, per_iter=per_iter,
            time_budget=time_budget, warm_start=warm_start, seed=seed, threads=threads,
            bounds=bounds, already=already, emit=emit,
        )
        result.trials_run = budget.done
        result.elapsed = budget.elapsed()
        result.stop_reason = budget.stop_reason or "search finished"
        emit("done", result=result)
        return result


@contextlib.contextmanager
def kernel_args_dir():
    """A temporary directory for :mod:`squeezer.tune.args`, named in ``$SQUEEZER_TUNE_ARGS``
    for the runners' worker processes while the block runs."""
    from squeezer.tune.args import ENV

    old = os.environ.get(ENV)
    with tempfile.TemporaryDirectory(prefix="squeezer-args-") as d:
        os.environ[ENV] = d
        try:
            yield Path(d)
        finally:
            if old is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = old


def _model_name(model) -> str:
    if isinstance(model, str | os.PathLike):
        return Path(model).stem
    return type(model).__name__


def run_search(tasks: list[Task], target, store: RecordStore, builder, runner, *, trials: int,
           per_iter: int = 32, time_budget: float | None = None, warm_start: bool = True,
           seed: int = 0, threads: int = 1, bounds: list[float] | None = None,
           already: list[int] | None = None, emit=None, spaces: list | None = None,
           population: int = 256):
    """Run MetaSchedule over ``tasks`` with squeezer's scheduler, callback and record store.

    ``spaces`` (one space generator per task) replaces the registered or generic CPU spaces:
    the VTA tuner (``squeezer.targets.vta.tune``) passes its own, with its postprocessor, and a
    smaller evolutionary ``population`` (its candidates are measured in milliseconds).
    Returns the :class:`~squeezer.tune.search.Budget` (trials done, stop reason) and the number
    of records the cost model was warm-started with.
    """
    from squeezer.tune.search import Budget, GainScheduler, ProgressCallback, StopOnSignal

    emit = emit or (lambda kind, **info: None)
    bounds = bounds if bounds is not None else [1e-7] * len(tasks)
    already = already if already is not None else [t.trials for t in tasks]
    budget = Budget(trials, time_budget, per_iter)
    warm = 0
    with tempfile.TemporaryDirectory(prefix="squeezer-tune-") as work_dir:
        ctxs = [
            ms.TuneContext(
                mod=t.mod, target=target,
                space_generator=spaces[i] if spaces else _space_for(t, target),
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
                task_name=t.name, num_threads=threads, rand_state=seed + i + 1,
            ).clone()
            for i, t in enumerate(tasks)
        ]
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=threads, num_warmup_samples=64)
        if warm_start:
            warm = warm_start_model(cost_model, store, target, tasks)
        scheduler = GainScheduler(tasks, budget, bounds, already)
        callback = ProgressCallback(tasks, budget, lambda tid: emit("update", task=tasks[tid],
                                                                     budget=budget))
        with StopOnSignal(budget):
            ms.tune_tasks(
                tasks=ctxs,
                task_weights=[float(t.weight) for t in tasks],
                work_dir=work_dir,
                max_trials_global=trials,
                max_trials_per_task=trials + max(already, default=0),
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                database=store,
                cost_model=cost_model,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   callback],
                task_scheduler=scheduler,
            )
    return budget, warm


def warm_start_model(cost_model, store: RecordStore, target, tasks: list[Task]) -> int:
    """Pre-train the cost model on every stored record: the shipped ones (other models' kernels
    on this CPU class) and, when resuming, this directory's own."""
    from squeezer.tune.search import warm_start

    return warm_start(cost_model, store, target, skip=set())


def _space_for(task: Task, target=None):
    """The task's design space: a registered one for squeezer's own kernels, else MetaSchedule's."""
    from squeezer.schedules.spaces import space_for

    return space_for(task.kernel, target)


def _make_builder_runner(threads: int, rpc: str | None, key: str | None, timeout: float,
                         build_timeout: float = 600.0):
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=40,
                                          enable_cpu_cache_flush=False)
    from squeezer.tune.args import alloc_local, alloc_rpc
    from squeezer.tune.builder import PooledBuilder

    if build_timeout <= 0 or timeout <= 0:
        raise TuningError(f"timeouts must be positive, got build {build_timeout!r}, "
                          f"run {timeout!r}")
    builder = PooledBuilder(max_workers=threads, timeout_sec=build_timeout,
                            initializer=_quiet_worker)
    if rpc is None:
        if key is not None:
            raise TuningError("--key names a device of an RPC tracker: give --rpc HOST:PORT too")
        runner = ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator,
                                       initializer=_runner_init(threads),
                                       f_alloc_argument=alloc_local)
        return builder, runner, None
    from squeezer.tune.farm import check_tracker, parse_hostport

    host, port = parse_hostport(rpc)
    if not key:
        raise TuningError("--rpc needs --key NAME: the device key the servers registered with")
    servers = check_tracker(host, port, key)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=timeout)
    runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                 max_workers=max(1, servers), f_alloc_argument=alloc_rpc)
    from tvm.support.popen_pool import PopenPoolExecutor

    # TVM's RPCRunner pool has no timeout: a request for a key whose servers all died would
    # wait in the tracker's queue forever. Bounded, it comes back as a failed measurement.
    runner.pool = PopenPoolExecutor(max_workers=max(1, servers), timeout=3 * timeout + 30)
    return builder, runner, {"host": host, "port": port, "key": key, "servers": servers}


def _quiet_worker() -> None:
    from squeezer.tune._fastimport import import_tensor_intrinsics

    logging.getLogger("tvm").setLevel(logging.ERROR)
    import_tensor_intrinsics()


class _runner_init:  # noqa: N801 - a picklable initializer for the popen worker
    def __init__(self, threads: int):
        self.threads = threads

    def __call__(self) -> None:
        os.environ["TVM_NUM_THREADS"] = str(self.threads)
        _quiet_worker()


def _measure_defaults(tasks, target, builder, runner, store: RecordStore, emit,
                      again: bool = False) -> None:
    """Measure squeezer's default schedule of every task not measured before (the baseline)."""
    from squeezer.schedules import default_schedule_pass

    todo, inputs = [], []
    for t in tasks:
        k = store.commit_key(t.mod)
        if k in store.baselines and not again:
            t.default_seconds = store.baselines[k]
            continue
        mod = default_schedule_pass(target)(t.mod)
        todo.append(t)
        inputs.append(ms.builder.BuilderInput(mod, target))
    if not todo:
        return
    emit("baseline", count=len(todo))
    built = builder.build(inputs)
    run_inputs, ran = [], []
    for t, b in zip(todo, built, strict=True):
        if b.error_msg:
            log.warning("task %s: the default schedule did not build: %s", t.name,
                        b.error_msg.strip().splitlines()[-1])
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(t.func)
        run_inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args))
        ran.append((t, b))
    futures = runner.run(run_inputs)
    for (t, b), fut in zip(ran, futures, strict=True):
        res = fut.result()
        shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        if res.error_msg or not res.run_secs:
            log.warning("task %s: the default schedule failed to run: %s", t.name,
                        (res.error_msg or "no result").strip().splitlines()[-1])
            continue
        secs = [float(s) for s in res.run_secs]
        t.default_seconds = sum(secs) / len(secs)
        store.commit_baseline(t.mod, t.default_seconds)


def target_key() -> str:
    from squeezer.targets.cpu import detect_host

    return detect_host().key


_ = tvm  # the module is imported for its side effects on MetaSchedule's registries
