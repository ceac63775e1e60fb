"""Tuning records for every case of ``squeezer bench lowbit``, so the benchmark runs tuned with
zero tuning on the user's side (``make tune-lowbit`` regenerates the shipped ones).

Each section's cases are gathered into one multi-input model holding every layer the bench
compiles for them: the GEMM's int8 and fp32 linear layers, each convolution in fp32, int8 and
binary (XNOR-Net form; not depthwise), the int4 GEMV and its fp32 peer. The MobileNetV2 end to
end models are tuned as themselves: the onnxruntime QDQ ``.onnx`` (compiled from the path, as the
bench does), squeezer's own int8 model and fp32. A record is keyed by its kernel's structure,
constants folded into it included (an int8 kernel's requantization multipliers), so every
weight, input and calibration set comes from the bench's own functions
(:mod:`squeezer.bench_lowbit_cases`): the records then apply to the one-layer models the bench
compiles. A model whose every kernel already has records in the read directories (the fp32 zoo
models, tuned by ``make tune-zoo``) is skipped.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squeezer.bench_lowbit_cases import (
    BinaryConv,
    EndToEndCase,
    Suite,
    conv,
    conv_arrays,
    full_suite,
    int4_weight,
    int8_model,
    linear,
    ort_quantize_static,
    quick_suite,
    rng_for,
)
from squeezer.bench_sparse_tune import _layers_model


@dataclass
class TuneModel:
    """One model to tune: a torch module with its example inputs, or an ``.onnx`` path."""

    name: str
    model: object
    example: tuple


def gemm_arrays(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, input)`` of the bench's GEMM case (same generator and draws as the bench)."""
    rng = rng_for(m, n, k)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return w, x


def gemv_arrays(n: int, k: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(int4 values, fp32 weight, input)`` of the bench's GEMV case."""
    values, _ = int4_weight(n, k, group)
    x = rng_for(k).standard_normal((1, k)).astype(np.float32)
    dense = rng_for(n, k).standard_normal((n, k)).astype(np.float32)
    return values, dense, x


def e2e_arrays(c: EndToEndCase):
    """``(fp32 model, input, calibration)`` of the bench's end-to-end case."""
    from squeezer import zoo

    model = zoo.create(c.model, c.size).eval()
    shape = zoo.spec(c.model, c.size).input_shape
    rng = rng_for(len(c.model), shape[-1])
    x = rng.standard_normal(shape).astype(np.float32)
    calibration = rng.standard_normal((8, *shape[1:])).astype(np.float32)
    return model, x, calibration


def _gathered(name: str, branches: list[tuple[np.ndarray, object]]) -> TuneModel:
    """One model whose inputs are the distinct arrays of ``branches`` (by identity) and whose
    outputs are each branch's layer on its input."""
    import torch

    inputs: list[np.ndarray] = []
    which = []
    for x, layer in branches:
        i = next((j for j, y in enumerate(inputs) if y is x), len(inputs))
        if i == len(inputs):
            inputs.append(x)
        which.append((i, layer))
    return TuneModel(name, _layers_model(which, len(inputs)),
                     tuple(torch.from_numpy(x) for x in inputs))


def suite_models(suite: Suite, workdir: Path, prefix: str = "bench-lowbit"
                 ) -> list[TuneModel]:
    """The models covering every case of ``suite``: one per section (cases gathered), then the
    end-to-end models. ``workdir`` receives the ONNX files of the end-to-end cases."""
    import torch

    from squeezer.bench_zoo import export_onnx

    models = []
    if suite.gemms:
        branches = []
        for c in suite.gemms:
            w, x = gemm_arrays(c.m, c.n, c.k)
            branches += [(x, int8_model(linear(w), x[:256])), (x, linear(w))]
        models.append(_gathered(f"{prefix}-gemm", branches))
    if suite.convs:
        branches = []
        for c in suite.convs:
            w, x = conv_arrays(c)
            float_mod = conv(w, c.stride, c.cin if c.depthwise else 1)
            branches += [(x, float_mod), (x, int8_model(float_mod, x))]
            if not c.depthwise:
                branches.append((x, BinaryConv.build(w, c.stride)))
        models.append(_gathered(f"{prefix}-conv", branches))
    if suite.gemvs:
        branches = []
        for c in suite.gemvs:
            values, dense, x = gemv_arrays(c.n, c.k, c.group)
            branches += [(x, linear(values)), (x, linear(dense))]
        models.append(_gathered(f"{prefix}-gemv", branches))
    for c in suite.e2e:
        model, x, calibration = e2e_arrays(c)
        stem = f"{c.model}-{c.size}"
        fp32 = export_onnx(model, x, Path(workdir) / f"{stem}-fp32.onnx")
        qdq = ort_quantize_static(fp32, Path(workdir) / f"{stem}-qdq.onnx", calibration)
        example = (torch.from_numpy(x),)
        models.append(TuneModel(f"{prefix}-{stem} ort-qdq", str(qdq), (x,)))
        models.append(TuneModel(f"{prefix}-{stem} own-int8", int8_model(model, calibration),
                                example))
        models.append(TuneModel(f"{prefix}-{stem} fp32", model, example))
    return models


def rest_of(suite: Suite, done: Suite) -> Suite:
    """The cases of ``suite`` that ``done`` does not hold, section by section."""
    return Suite(*(tuple(c for c in getattr(suite, f) if c not in getattr(done, f))
                   for f in ("gemms", "convs", "gemvs", "e2e")))


def model_tasks(m: TuneModel, target) -> list:
    """The tuning tasks of ``m`` exactly as ``squeezer.tune`` extracts them."""
    from squeezer.frontend import import_model
    from squeezer.tune.tasks import extract, prepare_for_tuning

    example = None if isinstance(m.model, str) else m.example
    return extract(prepare_for_tuning(import_model(m.model, example_inputs=example).mod, target),
                   target)


def untuned(tasks: list, store) -> list:
    """The tasks of ``tasks`` without a working record in ``store``."""
    return [t for t in tasks if store.best_seconds(t.mod) is None]


def plan(suites: list[Suite], workdir: Path, store, target,
         log: Callable[[str], None] = print) -> list[tuple[TuneModel, int]]:
    """``(model, tasks without records)`` for every model of ``suites``, in order; a model whose
    every task has a working record in ``store`` is left out."""
    out = []
    for i, suite in enumerate(suites):
        for m in suite_models(suite, workdir, "bench-lowbit" if i == 0 else "bench-lowbit-rest"):
            tasks = model_tasks(m, target)
            todo = untuned(tasks, store)
            families = sorted({t.kernel or "generic" for t in tasks})
            log(f"{m.name}: {len(tasks)} tasks, {len(todo)} without records "
                f"({', '.join(families)})")
            if todo:
                out.append((m, len(todo)))
    return out


def tune_suites(suites: list[Suite], records: str | Path, *, trials: int, time_budget: float,
                threads: int = 2, min_budget: float = 180.0, per_iter: int = 16,
                remeasure_defaults: bool = False, log: Callable[[str], None] = print) -> list:
    """Tune every model of :func:`suite_models` of each suite into ``records``, suite by suite.

    ``time_budget`` (seconds of search) is the whole run's: each model gets ``min_budget``
    (one batch of each kernel of the small models: a batch of a large fp32 GEMM's candidates
    took 2 min here) and a share of the rest in proportion to its number of tasks without
    records. Models whose
    every task already has records (in ``records`` or the shipped ones) are skipped. ``trials``
    caps each model; ``per_iter`` is the candidates per batch (every task gets one batch
    before any gets a second: small batches reach more tasks in a short run).
    ``remeasure_defaults`` measures the default schedules again (on a quiet machine: a baseline
    measured under load lets a slower record apply). Returns the ``TuneResult`` of each
    tuned model.
    """
    from squeezer.targets import make_target
    from squeezer.tune import records_for_compile, target_key, tune

    target = make_target(threads)
    store = records_for_compile([records], target_key())
    results = []
    with tempfile.TemporaryDirectory(prefix="squeezer-lowbit-tune-") as tmp:
        todo = plan(suites, Path(tmp), store, target, log)
        total = sum(n for _, n in todo)
        floor = min(min_budget, time_budget / max(len(todo), 1))
        rest = time_budget - floor * len(todo)
        for m, n in todo:
            budget = floor + rest * n / total
            log(f"tuning {m.name} for {budget / 60:.1f} min")
            example = None if isinstance(m.model, str) else m.example
            r = tune(m.model, example_inputs=example, trials=trials, threads=threads,
                     records=records, time_budget=budget, model_name=m.name,
                     per_iter=per_iter, remeasure_defaults=remeasure_defaults)
            results.append(r)
            better = sum(1 for t in r.tasks if t.best_seconds is not None
                         and t.default_seconds is not None and t.best_seconds < t.default_seconds)
            log(f"  {len(r.tasks)} tasks, {r.trials_run} trials, {better} beat the default, "
                f"{r.stop_reason}")
            for t in r.tasks:
                for why, count in t.errors.items():
                    log(f"  {t.name}: {count} failed: {why}")
    return results


def main(argv: list[str] | None = None) -> int:
    from squeezer.tune import parse_duration

    p = argparse.ArgumentParser(prog="python -m squeezer.bench_lowbit_tune",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--records", default="tuning_logs", help="record root (default: %(default)s)")
    p.add_argument("--trials", type=int, default=2000, help="most trials per model")
    p.add_argument("--time-budget", default="40m",
                   help="search time of the whole run, shared by the models "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-iter", type=int, default=16, help="candidates per batch")
    p.add_argument("--remeasure-defaults", action="store_true",
                   help="measure stored default-schedule baselines again (quiet machine)")
    p.add_argument("--quick", action="store_true", help="the quick suite's cases only")
    p.add_argument("--skip-e2e", action="store_true", help="leave the end-to-end models out")
    args = p.parse_args(argv)
    quick, full = quick_suite(), full_suite()
    if args.skip_e2e:
        quick, full = (Suite(s.gemms, s.convs, s.gemvs, ()) for s in (quick, full))
    # the quick suite's cases first: a stopped run has tuned what `bench lowbit --quick` times
    suites = [quick] if args.quick else [quick, rest_of(full, quick)]
    import time

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    tune_suites(suites, args.records, trials=args.trials, log=log,
                time_budget=parse_duration(args.time_budget), threads=args.threads,
                per_iter=args.per_iter, remeasure_defaults=args.remeasure_defaults)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
