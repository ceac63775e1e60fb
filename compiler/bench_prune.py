"""``squeezer bench prune``: every pruning method on the digits, its accuracy and its compiled
latency.

Per model (an MLP and digits-size zoo CNNs, ``squeezer.bench_prune_cases``) the dense model is
trained once (fixed seeds, one torch thread: deterministic) and compiled once. Per method row,
``squeezer.compress`` prunes and fine-tunes a copy with the row's recipe; the row records the
test accuracy before and after, the sparsity reached over the tensors the method prunes, the
stored parameter bytes, and the pruned model compiled by ``squeezer.compile`` (verified against
torch) and timed against the dense one at batch 1 in alternating rounds, with the timer of the
other suites. A method that fails (refuses the model, does not compile) gives a row with the
reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from squeezer.bench import Report, others_cpu_seconds, squeezer_runner
from squeezer.bench import cpu_seconds as _cpu_seconds
from squeezer.bench_prune_cases import (
    MethodCase,
    ModelCase,
    Suite,
    achieved,
    full_suite,
    pruned_tensors,
    quick_suite,
)
from squeezer.bench_prune_report import evaluate_goals, tables
from squeezer.bench_sparse_peers import Bench

__all__ = ["PruneResult", "bench_prune", "run_prune_suite"]


@dataclass
class PruneResult:
    """One row: a method on a model. ``None`` where the step that gives it did not run."""

    model: str
    method: str
    recipe: list[dict[str, Any]]
    requested: float
    unit: str
    achieved: float | None = None
    achieved_weights: float | None = None  # share of zero weights, whatever the unit
    acc_dense: float | None = None
    acc_pruned: float | None = None
    delta_points: float | None = None
    ms_dense: float | None = None
    ms_pruned: float | None = None
    ratio: float | None = None  # dense ms / pruned ms: > 1, the pruned model is faster
    bytes_dense: int | None = None
    bytes_pruned: int | None = None
    sparse_layers: int | None = None
    compress_s: float | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class DenseModel:
    case: ModelCase
    module: Any
    accuracy: float
    compiled: Any  # None when compiling failed
    note: str  # record coverage, or why it did not compile
    train_s: float




def error_reason(err: BaseException) -> str:
    """``Type: first line of the message``, for a row that failed."""
    first = (str(err).strip().splitlines() or ["(no message)"])[0]
    return f"{type(err).__name__}: {first}"


def try_compile(model, x, threads: int) -> tuple[Any, str]:
    """``squeezer.compile`` at batch ``x`` (verified): ``(module, note)``, or ``(None, reason)``
    when it fails."""
    from squeezer.bench_sparse_peers import compile_model

    try:
        return compile_model(model, x, threads)
    except Exception as err:  # noqa: BLE001 - reported in the row
        return None, error_reason(err)


def train_dense(case: ModelCase, digits, threads: int,
                log: Callable[[str], None] = lambda msg: None) -> DenseModel:
    """Train ``case`` on the digits and compile it (batch 1)."""
    from squeezer import data

    log(f"{case.name}: training the dense model ({case.epochs} epochs)")
    t0 = time.perf_counter()
    module = data.train(case.build(), case.epochs, data=digits)
    train_s = time.perf_counter() - t0
    log(f"{case.name}: compiling the dense model")
    compiled, note = try_compile(module, digits.x_test[:1], threads)
    return DenseModel(case, module, data.evaluate(module, data=digits), compiled, note, train_s)


def prune_row(b: Bench, dense: DenseModel, method: MethodCase, digits) -> PruneResult:
    """Prune and fine-tune a copy of ``dense`` with ``method``'s recipe, compile and time it."""
    from squeezer.bench_sparse_peers import sparse_layers
    from squeezer.compression import compress

    mc = dense.case
    recipe = method.recipe_for(mc)
    res = PruneResult(mc.name, method.label, recipe, method.requested_for(mc), method.unit,
                      acc_dense=dense.accuracy)
    b.log(f"{mc.name}: {method.label}: pruning and fine-tuning")
    t0 = time.perf_counter()
    try:  # compress works on its own copy: the cached dense model stays as trained
        out, report = compress(dense.module, recipe, train_data=digits, eval_data=digits,
                               progress=False)
    except Exception as err:  # noqa: BLE001 - reported in the row
        res.error = f"compress: {error_reason(err)}"
        return res
    res.compress_s = time.perf_counter() - t0
    res.acc_dense, res.acc_pruned = report.accuracy_before, report.accuracy_after
    res.delta_points = 100 * (report.accuracy_after - report.accuracy_before)
    res.bytes_dense, res.bytes_pruned = report.bytes_before, report.bytes_after
    try:
        res.achieved, res.achieved_weights = achieved(
            out, pruned_tensors(dense.module, recipe[0]), method.unit)
    except Exception as err:  # noqa: BLE001 - reported in the row
        res.notes.append(f"achieved sparsity: {error_reason(err)}")
    if method.unit != "weights" and res.achieved_weights is not None:
        res.notes.append(f"{res.achieved_weights:.1%} of their weights")
    if dense.compiled is None:
        res.error = f"compile dense: {dense.note}"
        return res
    b.log(f"{mc.name}: {method.label}: compiling")
    x = digits.x_test[:1]
    compiled, note = try_compile(out, x, b.threads)
    if compiled is None:
        res.error = f"compile: {note}"
        return res
    res.sparse_layers = sparse_layers(compiled)
    if "failed" in note:
        res.notes.append(note)
    timed = time_pair(b, f"{mc.name} {method.label}", ("squeezer-dense", dense.compiled),
                      ("squeezer-pruned", compiled), x)
    if isinstance(timed, str):
        res.error = timed
    else:
        res.ms_dense, res.ms_pruned = timed
        res.ratio = res.ms_dense / res.ms_pruned
    return res


def time_pair(b: Bench, case: str, first: tuple[str, Any], second: tuple[str, Any],
              x: np.ndarray) -> tuple[float, float] | str:
    """Median ms of two compiled modules ``(impl name, module)`` on ``x``, timed in
    alternating rounds; or the first timing error."""
    times = b.measure_rounds(case, {name: (lambda m=module: squeezer_runner(m, [x]))
                                    for name, module in (first, second)})
    for impl, value in times.items():
        if isinstance(value, str):
            return f"timing {impl}: {value}"
    return times[first[0]], times[second[0]]


@dataclass
class DigitsRun:
    """A digits benchmark in progress (:func:`digits_run`): runtime threads, the digits at 8x8,
    the timing bench; ``wall_s`` and ``others_cpu_s`` are set when the run ends."""

    threads: int
    digits: Any
    bench: Bench
    wall_s: float = 0.0
    others_cpu_s: float | None = None  # other processes skew the timings (not the accuracies)

    def extra(self, suite: str, models: dict, results: list, goals: list) -> dict[str, Any]:
        """The JSON fields every digits suite reports."""
        return {"suite": suite, "threads": self.threads,
                "data": "digits 8x8, fixed split; accuracy on the 450 test images",
                "wall_s": self.wall_s, "other_processes_cpu_s": self.others_cpu_s,
                "models": models, "results": [asdict(r) for r in results], "goals": goals}


@contextlib.contextmanager
def digits_run(threads: int, repeat: int, budget_s: float,
               log: Callable[[str], None]) -> Iterator[DigitsRun]:
    """Set the runtime threads, train with one torch thread (the digits models gain nothing from
    more, and results stay deterministic), load the digits; time the run and other processes'
    CPU use."""
    import torch

    from squeezer import data
    from squeezer.targets import set_runtime_threads

    threads = set_runtime_threads(threads)
    run = DigitsRun(threads, data.load_digits(8),
                    Bench(threads, repeat=repeat, budget_s=budget_s, log=log))
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        yield run
    finally:
        torch.set_num_threads(saved)
        run.wall_s = time.perf_counter() - t0
        run.others_cpu_s = others_cpu_seconds(cpu0, _cpu_seconds())


def bench_prune(suite: Suite, threads: int = 2, *, repeat: int = 50, budget_s: float = 0.6,
                log: Callable[[str], None] = lambda msg: None) -> Report:
    """Run ``suite``; the report holds the timing rows, the tables and the JSON fields.

    Parameters
    ----------
    suite : Suite
        Models and method rows (:func:`~squeezer.bench_prune_cases.full_suite` or
        ``quick_suite``).
    threads : int
        Runtime threads of the compiled models (training uses one torch thread: the digits
        models gain nothing from more, and the results stay deterministic).
    repeat : int
        Most samples per timing round; fewer when ``budget_s`` is spent first (at least 5).
    budget_s : float
        Seconds of timing per dense/pruned pair, warm-up excluded.
    log : callable
        Receives a progress line before each step.

    Returns
    -------
    Report
        ``rows`` (the dense and pruned timings of every row), ``tables`` (rich), ``extra``:
        ``results`` (one dict per row, see :class:`PruneResult`), ``models`` (dense accuracy,
        training epochs and seconds) and ``goals``.
    """
    results: list[PruneResult] = []
    models: dict[str, dict[str, Any]] = {}
    with digits_run(threads, repeat, budget_s, log) as run:
        for mc in suite.models:
            methods = [m for m in suite.methods if m.applies_to(mc.name)]
            if not methods:
                continue
            dense = train_dense(mc, run.digits, run.threads, log)
            models[mc.name] = {"model": mc.description, "epochs": mc.epochs,
                               "accuracy": dense.accuracy, "train_s": dense.train_s,
                               "compile": dense.note,
                               "params": sum(p.numel() for p in dense.module.parameters())}
            results += [prune_row(run.bench, dense, m, run.digits) for m in methods]
    goals = evaluate_goals(results)
    described = {mc.name: mc.description for mc in suite.models if mc.name in models}
    return Report(run.bench.rows, tables(results, goals, run.threads, described,
                                         run.others_cpu_s, run.wall_s),
                  run.extra("prune", models, results, goals))


def run_prune_suite(args, console) -> Report:
    """The CLI entry: ``--quick``, ``--threads`` (default 2), ``--repeat``."""
    from squeezer.targets import check_threads

    threads = check_threads(args.threads or 2)
    suite = quick_suite() if getattr(args, "quick", False) else full_suite()
    with console.status("prune suite") as status:
        return bench_prune(suite, threads, repeat=args.repeat, log=status.update)
