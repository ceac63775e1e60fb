"""MetaSchedule plug-ins: squeezer's task scheduler, progress callback and cost-model warm start.

:class:`GainScheduler` gives each task trials in proportion to its expected gain, i.e. its share of
the model's time (calls x latency) times its headroom (current latency over the roofline bound),
recomputed after every batch as latencies improve. Every task first gets one batch, so that each
has a record. The scheduler joins the running measurement before the next batch is built: on a
small machine the builder would otherwise steal the cores the measurement runs on.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import tvm.s_tir.meta_schedule as ms
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from squeezer.tune.records import FAILED_SECS
from squeezer.tune.tasks import Task


class Budget:
    """Trials, wall-clock budget and a stop flag shared by the scheduler and the callback."""

    def __init__(self, trials: int, seconds: float | None, per_iter: int):
        self.trials = trials
        self.seconds = seconds
        self.per_iter = per_iter
        self.started = time.monotonic()
        self.stop_reason: str | None = None
        self.done = 0  # trials measured in this run

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def exhausted(self) -> bool:
        if self.stop_reason:
            return True
        if self.seconds is not None and self.elapsed() >= self.seconds:
            self.stop_reason = "time budget"
        elif self.done >= self.trials:
            self.stop_reason = "trials"
        return self.stop_reason is not None


def allocate(tasks: list[Task], total: int, per_iter: int, bounds: list[float]) -> list[int]:
    """Trials per task: one batch each (while the budget lasts), the rest by expected gain."""
    n = len(tasks)
    floor = [min(per_iter, total // max(n, 1)) if total >= n else (1 if i < total else 0)
             for i in range(n)]
    rest = max(total - sum(floor), 0)
    gains = []
    for t, bound in zip(tasks, bounds, strict=True):
        cur = t.best_seconds or t.default_seconds or bound * 4
        if t.default_seconds is not None and t.best_seconds is not None:
            cur = min(cur, t.default_seconds)
        gains.append(t.weight * max(cur - bound, 0.0))
    g = sum(gains)
    if g <= 0:
        gains, g = [float(t.weight) for t in tasks], float(sum(t.weight for t in tasks))
    alloc = [f + int(rest * gi / g) for f, gi in zip(floor, gains, strict=True)]
    # hand out what rounding left to the largest gains
    left = total - sum(alloc)
    for i in sorted(range(n), key=lambda i: -gains[i])[: max(left, 0)]:
        alloc[i] += 1
    return alloc


def pick_next(tasks: list[Task], alloc: list[int], per_iter: int,
              terminated: list[bool]) -> tuple[int, list[int]]:
    """The next task to measure (-1: none) and the tasks whose share is used up.

    Breadth first: every task gets its first batch (largest share first); after that the task
    furthest behind its share goes next, so a run stopped by ``--time-budget`` has spent its
    trials in proportion to the expected gains.
    """
    total = sum(alloc)
    floor = min(per_iter, max(total // max(len(tasks), 1), 1))
    best, best_key = -1, (2, 0.0)
    finished = []
    for tid, (task, a) in enumerate(zip(tasks, alloc, strict=True)):
        if terminated[tid]:
            continue
        if task.trials >= a:
            finished.append(tid)
            continue
        key = (0, float(-a)) if task.trials < floor else (1, task.trials / a)
        if key < best_key:
            best, best_key = tid, key
    return best, finished


@derived_object
class GainScheduler(PyTaskScheduler):
    """Picks the next task: first batches breadth first, then the one furthest below its share."""

    def __init__(self, tasks: list[Task], budget: Budget, bounds: list[float],
                 already: list[int]):
        super().__init__()
        self.tasks = tasks
        self.budget = budget
        self.bounds = bounds
        self.already = already  # trials each task had before this run (resume)
        self.running: set[int] = set()

    def next_task_id(self) -> int:
        outer = self._outer()
        for tid in sorted(self.running):
            if not outer.tasks_[tid].is_terminated:
                self.join_running_task(tid)
        self.running.clear()
        if self.budget.exhausted():
            return -1
        total = self.budget.trials + sum(self.already)
        alloc = allocate(self.tasks, total, self.budget.per_iter, self.bounds)
        done = [outer.tasks_[tid].is_terminated for tid in range(len(self.tasks))]
        best, finished = pick_next(self.tasks, alloc, self.budget.per_iter, done)
        for tid in finished:
            outer.terminate_task(tid)
        if best >= 0:
            self.running.add(best)
        return best


@derived_object
class ProgressCallback(PyMeasureCallback):
    """Counts trials, tracks the best latency per task and reports after each batch."""

    def __init__(self, tasks: list[Task], budget: Budget, on_update: Callable[[int], None]):
        super().__init__()
        self.tasks = tasks
        self.budget = budget
        self.on_update = on_update

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        task = self.tasks[task_id]
        for b, r in zip(builder_results, runner_results, strict=True):
            task.trials += 1
            self.budget.done += 1
            secs = [float(s) for s in (r.run_secs or [])]
            if b.error_msg or r.error_msg or not secs:
                task.failures += 1
                why = (b.error_msg or r.error_msg or "no run time").strip().splitlines()
                reason = (" ... ".join(dict.fromkeys([why[0], why[-1]])) if why
                          else "no message")[:160]
                task.errors[reason] = task.errors.get(reason, 0) + 1
                continue
            mean = sum(secs) / len(secs)
            if mean < FAILED_SECS and (task.best_seconds is None or mean < task.best_seconds):
                task.best_seconds = mean
        if task.best_seconds is not None:
            task.curve.append((task.trials, task.best_seconds))
        self.on_update(task_id)


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM ends the run after the batch in flight, keeping its records."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.signal: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum
        self.budget.stop_reason = "interrupted"

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def warm_start(cost_model, store, target, skip: set[str]) -> int:
    """Train ``cost_model`` on the stored records of other workloads; returns samples used.

    The XGBoost model predicts a candidate's throughput relative to the best one of its own
    workload from per-store features, so records of similar kernels (another model's convs)
    tell it which tilings and vectorizations pay on this CPU before the first measurement.
    """
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    by_workload: dict[str, list] = {}
    for rec in store.training_records(per_workload=32):
        key = str(rec.workload.as_json()[0])
        if key in skip or not rec.run_secs:
            continue
        if float(rec.run_secs[0]) >= FAILED_SECS:
            continue
        by_workload.setdefault(key, []).append(rec)
    used = 0
    for recs in by_workload.values():
        ctx = ms.TuneContext(mod=recs[0].workload.mod, target=target,
                             space_generator="post-order-apply", search_strategy="evolutionary",
                             num_threads=1)
        cands, results = [], []
        for rec in recs:
            try:
                cands.append(rec.as_measure_candidate())
            except Exception:  # noqa: BLE001 - a trace that no longer replays is skipped
                continue
            results.append(RunnerResult(rec.run_secs, None))
        if cands:
            cost_model.update(ctx, cands, results)
            used += len(cands)
    return used
