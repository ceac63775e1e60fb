"""Tuning records for every case of ``squeezer bench sparse``, so the benchmark runs tuned with
zero tuning on the user's side (``make tune-sparse`` regenerates the shipped ones).

The cases are gathered into a few multi-input models (one per kernel batch size, one for the
convolutions), each holding every pruned layer of its cases next to the unpruned layer of
each shape, and those models go through ``squeezer.tune``. A record is keyed by its kernel's
structure, so it applies to the one-layer models the benchmark compiles: the weights are
made by the same functions (:func:`~squeezer.bench_sparse_cases.kernel_arrays`,
``conv_arrays``), and a sparse kernel's shapes depend on the exact zeros. The end-to-end
model is tuned as itself.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np

from squeezer.bench_sparse_cases import (
    Suite,
    conv_arrays,
    full_suite,
    kernel_arrays,
    prune_model_,
    quick_suite,
)


def _layers_model(branches: list[tuple[int, object]], inputs: int):
    """A module with ``inputs`` inputs whose outputs are ``layer(x[i])`` for every
    ``(i, layer)`` branch, in order."""
    import torch

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.which = [i for i, _ in branches]
            self.layers = torch.nn.ModuleList([layer for _, layer in branches])
            self.inputs = inputs

        def forward(self, *xs):
            return tuple(layer(xs[i]) for i, layer in zip(self.which, self.layers, strict=True))

    return Layers().eval()


def suite_models(suite: Suite) -> list[tuple[str, object, tuple]]:
    """``(name, torch module, example inputs)`` covering every case of ``suite``."""
    import torch

    from squeezer import zoo
    from squeezer.bench_sparse_peers import conv_module, linear_module

    models = []
    for batch in sorted({c.batch for c in suite.kernels}):
        xs: dict[int, np.ndarray] = {}  # one input per width
        branches, dense_done = [], set()
        for c in (c for c in suite.kernels if c.batch == batch):
            dense, x, w = kernel_arrays(c)
            i = list(xs).index(c.k) if c.k in xs else len(xs)
            xs.setdefault(c.k, x)
            if (c.n, c.k) not in dense_done:
                dense_done.add((c.n, c.k))
                branches.append((i, linear_module(dense)))
            branches.append((i, linear_module(w)))
        models.append((f"bench-sparse-linear-b{batch}", _layers_model(branches, len(xs)),
                       tuple(torch.from_numpy(x) for x in xs.values())))
    if suite.convs:
        xs_c: dict[tuple, np.ndarray] = {}
        branches, dense_done = [], set()
        for c in suite.convs:
            dense, x, w = conv_arrays(c)
            key = x.shape
            i = list(xs_c).index(key) if key in xs_c else len(xs_c)
            xs_c.setdefault(key, x)
            if c.group not in dense_done:
                dense_done.add(c.group)
                branches.append((i, conv_module(dense, c.stride)))
            branches.append((i, conv_module(w, c.stride)))
        models.append(("bench-sparse-conv", _layers_model(branches, len(xs_c)),
                       tuple(torch.from_numpy(x) for x in xs_c.values())))
    for e in suite.e2e:
        model = zoo.create(e.model, e.size)
        pruned = copy.deepcopy(model)
        prune_model_(pruned, e.sparsity)
        x = np.random.default_rng(0).standard_normal(zoo.spec(e.model, e.size).input_shape)
        example = (torch.from_numpy(x.astype(np.float32)),)
        models.append((f"bench-sparse-{e.name}", pruned.eval(), example))
        models.append((f"bench-sparse-{e.model}-{e.size} dense", model.eval(), example))
    return models


def tune_suite(suite: Suite, records: str | Path, *, trials: int, time_budget: float,
               threads: int = 2, log: Callable[[str], None] = print) -> list:
    """Tune every model of :func:`suite_models` into ``records``; ``trials`` and
    ``time_budget`` (seconds) are per model. Returns the ``TuneResult`` of each."""
    from squeezer.tune import tune

    results = []
    for name, model, example in suite_models(suite):
        log(f"tuning {name} ({len(example)} inputs)")
        results.append(tune(model, example_inputs=example, trials=trials, threads=threads,
                            records=records, time_budget=time_budget, model_name=name))
        r = results[-1]
        log(f"  {len(r.tasks)} tasks, {r.trials_run} trials, {r.stop_reason}")
    return results


def main(argv: list[str] | None = None) -> int:
    from squeezer.tune import parse_duration

    p = argparse.ArgumentParser(prog="python -m squeezer.bench_sparse_tune",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--records", default="tuning_logs", help="record root (default: %(default)s)")
    p.add_argument("--trials", type=int, default=2000, help="most trials per model")
    p.add_argument("--time-budget", default="5m", help="time per model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the quick suite's cases only")
    p.add_argument("--skip-e2e", action="store_true", help="leave the end-to-end model out")
    args = p.parse_args(argv)
    suite = quick_suite() if args.quick else full_suite()
    if args.skip_e2e:
        suite = Suite(suite.kernels, suite.convs, ())
    tune_suite(suite, args.records, trials=args.trials,
               time_budget=parse_duration(args.time_budget), threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
