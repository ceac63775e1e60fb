"""``squeezer bench vta``: VTA conv layers in the simulator's timing model, per weight format and
schedule.

For each layer of the suite (:mod:`squeezer.bench_vta_cases`: ResNet-18 3x3 / 1x1 and
MobileNetV2 pointwise convolutions, full size, batch 1) and each weight format (int8, int8 with
80% zero blocks, int4 weights, binary) the layer is compiled three ways and run in the timing
model (``SimDriver(functional=False)``; the figures are deterministic):

``naive``    the design space's unoptimized point (``squeezer.targets.vta.tune.NAIVE``): one
             block of every loop per tile (1 output row x 1 column x 1 output-channel block x
             1 input-channel block per step) and one virtual thread (no double buffering);
``default``  the analytic model's knobs (``compile_layer`` without records);
``tuned``    the best MetaSchedule record (``make tune-vta``) when it beats the default, else the
             default knobs again (what ``compile_layer`` with records gives; the row says so).

Reported: cycles, GEMM utilization, DMA bytes, time at the core's clock; goals with met/missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from squeezer.bench import Report, Row
from squeezer.bench_vta_cases import VtaSuite, config_for, full_suite, quick_suite, suite_layers
from squeezer.bench_vta_report import evaluate_goals, tables

SCHEDULES = ("naive", "default", "tuned")


@dataclass
class VtaResult:
    """One layer in one weight format: figures per schedule."""

    case: str
    model: str
    kernel: int
    stride: int
    fmt: str
    config: str
    figures: dict[str, dict] = field(default_factory=dict)  # schedule -> counters + knobs
    source: str = ""  # where the tuned knobs came from

    def cycles(self, schedule: str) -> int | None:
        f = self.figures.get(schedule)
        return None if f is None else int(f["cycles"])


def figures(lp) -> dict:
    """Counters of a compiled layer in the timing model, as JSON-able figures."""
    from squeezer.targets.vta.tune_measure import program_counters

    c = program_counters(lp.program)
    return {"cycles": c.cycles, "gemm_utilization": c.gemm_utilization,
            "gemm_ops": c.gemm_ops, "dma_bytes": sum(c.dma_bytes.values()),
            "dma_by_buffer": dict(c.dma_bytes), "busy": dict(c.busy), "time_s": c.time_s,
            "time_us": c.time_s * 1e6,
            "instructions": sum(c.insn_counts.values()), "knobs": asdict(lp.knobs)}


def measure_layer(case, fmt: str, layer, config: str, records, schedules=SCHEDULES
                  ) -> VtaResult:
    from squeezer.targets.vta.lower import compile_layer
    from squeezer.targets.vta.tune import NAIVE, best_record

    r = VtaResult(case.name, case.model, case.kernel, case.stride, fmt, config)
    if "naive" in schedules:
        r.figures["naive"] = figures(compile_layer(layer, config, NAIVE))
    default = figures(compile_layer(layer, config))
    if "default" in schedules:
        r.figures["default"] = default
    if "tuned" in schedules:
        best = best_record(layer, config, records)
        if best is None:
            r.figures["tuned"], r.source = default, "default knobs: no record"
        elif best.cycles >= default["cycles"]:
            r.figures["tuned"] = default
            r.source = f"default knobs: best of {best.trials} records not faster"
        else:
            r.figures["tuned"] = figures(compile_layer(layer, config, best.knobs))
            r.source = f"record (best of {best.trials})"
    return r


def bench_vta(suite: VtaSuite, config: str = "1x16x16", records: str | Path | None = None,
              log: Callable[[str], None] = lambda msg: None) -> Report:
    """Run ``suite``; the report holds rows (time at the clock, per schedule), the rich tables
    and the JSON fields (every case's figures and the goals)."""
    wall0 = time.perf_counter()
    results = []
    for cfg, items in suite_layers(suite, config).items():
        for case, fmt, layer in items:
            log(f"{case.name} {fmt} on {cfg}")
            results.append(measure_layer(case, fmt, layer, cfg, records))
    rows = [Row(f"{r.case} {r.fmt}", s, f["time_us"] / 1e3, f["time_us"] / 1e3,
                f["time_us"] / 1e3, 1,
                f"{f['cycles']} cycles, {f['gemm_utilization']:.0%} GEMM, {r.config}")
            for r in results for s, f in r.figures.items()]
    goals = evaluate_goals(results)
    wall = time.perf_counter() - wall0
    extra = {"suite": "vta", "config": config, "wall_s": wall,
             "cases": [asdict(r) for r in results], "goals": goals}
    return Report(rows, tables(results, goals, config), extra)


def run_vta_suite(args, console) -> Report:
    """The CLI entry: ``--quick``, ``--config NAME`` (the int8 core; default 1x16x16)."""
    config = getattr(args, "config", None) or "1x16x16"
    suite = quick_suite() if getattr(args, "quick", False) else full_suite()
    with console.status("vta suite") as status:
        return bench_vta(suite, config, log=status.update)


__all__ = ["SCHEDULES", "VtaResult", "bench_vta", "config_for", "measure_layer", "run_vta_suite"]
