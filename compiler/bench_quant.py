"""``squeezer bench quant``: every quantization method on the digits, its accuracy in torch and
compiled, its compiled latency and its artifact size.

Per model (the MLP and a digits-size zoo CNN, ``squeezer.bench_quant_cases``) the fp32 model is
trained once (fixed seeds, one torch thread: deterministic), compiled once and saved once. Per
method row, ``squeezer.compress`` quantizes (and, with ``epochs``, fine-tunes) a copy with the
row's recipe; the quantized model is compiled by ``squeezer.compile`` (verified against torch),
run on every digits test image (batch 1, as compiled) for its own accuracy, timed against the
fp32 model at batch 1 in alternating rounds with the timer of the other suites, and saved as a
``.sqz`` artifact whose size on disk is reported. The row also counts the operators the compile
left in float (the manifest's ``float_fallback``). A method that fails gives a row with the
reason.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.bench import Report
from squeezer.bench_prune import (
    DenseModel,
    digits_run,
    error_reason,
    time_pair,
    train_dense,
    try_compile,
)
from squeezer.bench_quant_cases import QuantMethodCase, Suite, full_suite, quick_suite
from squeezer.bench_quant_report import evaluate_goals, tables
from squeezer.bench_sparse_peers import Bench

__all__ = ["QuantResult", "bench_quant", "compiled_predictions", "run_quant_suite"]


@dataclass
class QuantResult:
    """One row: a method on a model. ``None`` where the step that gives it did not run."""

    model: str
    method: str
    recipe: list[dict[str, Any]]
    bits_weights: str
    bits_activations: str
    ptq: bool
    acc_fp32: float | None = None
    acc_quant: float | None = None  # torch, after quantization (and fine-tuning)
    acc_compiled: float | None = None  # the compiled quantized model, batch 1, every test image
    compiled_disagree: int | None = None  # test images whose compiled and torch classes differ
    delta_points: float | None = None  # torch quantized - fp32, in points
    ms_fp32: float | None = None
    ms_quant: float | None = None
    ratio: float | None = None  # fp32 ms / quantized ms: > 1, the quantized model is faster
    bytes_fp32: int | None = None  # .sqz file sizes
    bytes_quant: int | None = None
    size_ratio: float | None = None  # fp32 bytes / quantized bytes: > 1, smaller
    param_bytes_fp32: int | None = None  # parameters as the method stores them (compress report)
    param_bytes_quant: int | None = None
    float_ops: int | None = None  # len(float_fallback) of the compiled manifest
    float_fallback: list[dict[str, str]] = field(default_factory=list)  # op, where, reason
    warnings: list[str] = field(default_factory=list)  # the method's warnings (compress log)
    compress_s: float | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Fp32Model:
    dense: DenseModel  # the trained model, its accuracy and compiled module (bench prune's)
    acc_compiled: float | None
    artifact_bytes: int | None


def compiled_predictions(compiled, x: np.ndarray) -> np.ndarray:
    """Class of every image of ``x`` by ``compiled`` (compiled for batch 1), one call each."""
    run = [np.asarray(compiled(x[i : i + 1])) for i in range(len(x))]
    return np.concatenate(run).argmax(1)


def _artifact_bytes(compiled, tmp: Path, name: str) -> int:
    return compiled.save(tmp / f"{name}.sqz").stat().st_size


def _warnings(log: tuple[str, ...]) -> list[str]:
    return [line.split("warning: ", 1)[1] for line in log if "warning: " in line]


def prepare_fp32(dense: DenseModel, digits, tmp: Path) -> Fp32Model:
    """The fp32 model's compiled accuracy and artifact size (None where it did not compile)."""
    if dense.compiled is None:
        return Fp32Model(dense, None, None)
    pred = compiled_predictions(dense.compiled, digits.x_test)
    acc = float((pred == digits.y_test).mean())
    return Fp32Model(dense, acc, _artifact_bytes(dense.compiled, tmp, "fp32"))


def quant_row(b: Bench, fp32: Fp32Model, method: QuantMethodCase, digits, tmp: Path) -> QuantResult:
    """Quantize a copy of the fp32 model with ``method``'s recipe; measure, compile, time."""
    import torch

    from squeezer.compression import compress

    dense = fp32.dense
    mc = dense.case
    recipe = method.recipe_for(mc)
    res = QuantResult(mc.name, method.label, recipe, method.weights, method.activations,
                      method.ptq, acc_fp32=dense.accuracy, bytes_fp32=fp32.artifact_bytes)
    b.log(f"{mc.name}: {method.label}: quantizing")
    t0 = time.perf_counter()
    try:  # compress works on its own copy: the cached fp32 model stays as trained
        out, report = compress(dense.module, recipe, train_data=digits, eval_data=digits,
                               progress=False)
    except Exception as err:  # noqa: BLE001 - reported in the row
        res.error = f"compress: {error_reason(err)}"
        return res
    res.compress_s = time.perf_counter() - t0
    res.acc_quant = report.accuracy_after
    res.delta_points = 100 * (report.accuracy_after - report.accuracy_before)
    res.param_bytes_fp32, res.param_bytes_quant = report.bytes_before, report.bytes_after
    res.warnings = _warnings(report.log)
    b.log(f"{mc.name}: {method.label}: compiling")
    x = digits.x_test[:1]
    compiled, note = try_compile(out, x, b.threads)
    if compiled is None:
        res.error = f"compile: {note}"
        return res
    if "failed" in note:
        res.notes.append(note)
    res.float_fallback = list(compiled.manifest.get("float_fallback") or [])
    res.float_ops = len(res.float_fallback)
    try:
        pred = compiled_predictions(compiled, digits.x_test)
        with torch.no_grad():
            want = out(torch.from_numpy(digits.x_test)).argmax(1).numpy()
        res.acc_compiled = float((pred == digits.y_test).mean())
        res.compiled_disagree = int((pred != want).sum())
        res.bytes_quant = _artifact_bytes(compiled, tmp, "quant")
    except Exception as err:  # noqa: BLE001 - reported in the row
        res.error = f"compiled model: {error_reason(err)}"
        return res
    if res.bytes_fp32:
        res.size_ratio = res.bytes_fp32 / res.bytes_quant
    if dense.compiled is None:
        res.error = f"compile fp32: {dense.note}"
        return res
    timed = time_pair(b, f"{mc.name} {method.label}", ("squeezer-fp32", dense.compiled),
                      ("squeezer-quant", compiled), x)
    if isinstance(timed, str):
        res.error = timed
    else:
        res.ms_fp32, res.ms_quant = timed
        res.ratio = res.ms_fp32 / res.ms_quant
    return res


def bench_quant(suite: Suite, threads: int = 2, *, repeat: int = 50, budget_s: float = 0.6,
                log: Callable[[str], None] = lambda msg: None) -> Report:
    """Run ``suite``; the report holds the timing rows, the tables and the JSON fields.

    Parameters
    ----------
    suite : Suite
        Models and method rows (:func:`~squeezer.bench_quant_cases.full_suite` or
        ``quick_suite``).
    threads : int
        Runtime threads of the compiled models (training uses one torch thread: the digits
        models gain nothing from more, and the results stay deterministic).
    repeat : int
        Most samples per timing round; fewer when ``budget_s`` is spent first (at least 5).
    budget_s : float
        Seconds of timing per fp32/quantized pair, warm-up excluded.
    log : callable
        Receives a progress line before each step.

    Returns
    -------
    Report
        ``rows`` (the fp32 and quantized timings of every row), ``tables`` (rich), ``extra``:
        ``results`` (one dict per row, see :class:`QuantResult`), ``models`` (fp32 accuracy in
        torch and compiled, artifact bytes, training epochs and seconds) and ``goals``.
    """
    results: list[QuantResult] = []
    models: dict[str, dict[str, Any]] = {}
    with digits_run(threads, repeat, budget_s, log) as run, \
            tempfile.TemporaryDirectory(prefix="squeezer-bench-quant-") as tmp:
        for mc in suite.models:
            fp32 = prepare_fp32(train_dense(mc, run.digits, run.threads, log), run.digits,
                                Path(tmp))
            d = fp32.dense
            models[mc.name] = {"model": mc.description, "epochs": mc.epochs,
                               "accuracy": d.accuracy, "accuracy_compiled": fp32.acc_compiled,
                               "artifact_bytes": fp32.artifact_bytes, "train_s": d.train_s,
                               "compile": d.note,
                               "params": sum(p.numel() for p in d.module.parameters())}
            results += [quant_row(run.bench, fp32, m, run.digits, Path(tmp))
                        for m in suite.methods]
    goals = evaluate_goals(results)
    described = {mc.name: mc.description for mc in suite.models}
    return Report(run.bench.rows, tables(results, goals, run.threads, described,
                                         run.others_cpu_s, run.wall_s),
                  run.extra("quant", models, results, goals))


def run_quant_suite(args, console) -> Report:
    """The CLI entry: ``--quick``, ``--threads`` (default 2), ``--repeat``."""
    from squeezer.targets import check_threads

    threads = check_threads(args.threads or 2)
    suite = quick_suite() if getattr(args, "quick", False) else full_suite()
    with console.status("quant suite") as status:
        return bench_quant(suite, threads, repeat=args.repeat, log=status.update)
