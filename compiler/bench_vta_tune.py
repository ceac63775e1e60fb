"""Tune every layer of ``squeezer bench vta`` (``make tune-vta``): records under
``<records>/vta-<config>/`` for the int8 core and the int4-weight and binary presets.

The layers are built exactly as the bench builds them (:mod:`squeezer.bench_vta_cases`, seeded),
so their workloads are the bench's. Each config's layers are one :func:`tune_layers` run with
``--trials-per-layer`` times its distinct layers as the budget (the gain scheduler spends it where
the simulated cycles are furthest above the GEMM bound) and a share of ``--time-budget`` in
proportion to its layers. A run resumes from the records already there.
"""

from __future__ import annotations

import argparse
import time

from squeezer.bench_vta_cases import full_suite, quick_suite, suite_layers


def tune_suite(quick: bool = False, config: str = "1x16x16", records: str = "tuning_logs",
               trials_per_layer: int = 32, time_budget: float | None = None,
               per_iter: int = 16, untuned_only: bool = False, log=print) -> list:
    """Tune the suite's layers; returns one :class:`~squeezer.targets.vta.tune.VtaTuneResult`
    per config. ``untuned_only``: only the layers whose records (under ``records``) hold no
    searched candidate yet (none, or only the default knobs' measurement)."""
    from squeezer.targets.vta.tune import best_record, tune_layers

    groups = suite_layers(quick_suite() if quick else full_suite(), config)
    if untuned_only:
        groups = {cfg: [it for it in items
                        if (b := best_record(it[2], cfg, records)) is None or b.trials <= 1]
                  for cfg, items in groups.items()}
        groups = {cfg: items for cfg, items in groups.items() if items}
    total = sum(len(v) for v in groups.values())
    results = []
    for cfg, items in groups.items():
        layers = [layer for _, _, layer in items]
        share = None if time_budget is None else time_budget * len(layers) / total
        t0 = time.perf_counter()
        res = tune_layers(layers, cfg, trials_per_layer * len(layers), records,
                          per_iter=per_iter, time_budget=share)
        log(f"{cfg}: {len(res.tasks)} tasks, {res.trials_run} trials in "
            f"{time.perf_counter() - t0:.0f} s ({res.stop_reason}) -> {res.records_dir}")
        for t in res.tasks:
            best = t.best_seconds
            gain = "-" if best is None or not t.default_seconds else \
                f"{t.default_seconds / best:.2f}x"
            log(f"  {t.name}: default {t.default_seconds * 1e6:.1f} us, best "
                f"{'-' if best is None else f'{best * 1e6:.1f} us'} ({gain}), "
                f"{t.trials} trials, {t.failures} failed")
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    from squeezer.tune import parse_duration

    p = argparse.ArgumentParser(prog="python -m squeezer.bench_vta_tune", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the quick suite's layers only")
    p.add_argument("--config", default="1x16x16", help="the int8 core (default 1x16x16)")
    p.add_argument("--records", default="tuning_logs", help="record root (default tuning_logs)")
    p.add_argument("--trials-per-layer", type=int, default=32)
    p.add_argument("--per-iter", type=int, default=16, help="candidates measured per batch")
    p.add_argument("--time-budget", help="e.g. 12m: the whole run (split by layers per config)")
    p.add_argument("--untuned-only", action="store_true",
                   help="only layers without searched records yet (a run cut short resumes)")
    a = p.parse_args(argv)
    budget = parse_duration(a.time_budget) if a.time_budget else None
    tune_suite(a.quick, a.config, a.records, a.trials_per_layer, budget, a.per_iter,
               a.untuned_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
