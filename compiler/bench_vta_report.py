"""Goals and tables of ``squeezer bench vta`` (figures of the simulator's timing model)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from squeezer.bench_sparse_report import _goal, _table

UTILIZATION = 0.70
SPARSE_SPEEDUP = 3.0
TUNED_SPEEDUP = 1.5


def _ratio(r, num: str, den: str) -> float | None:
    a, b = r.cycles(num), r.cycles(den)
    return None if a is None or b is None or b == 0 else a / b


def gemm_bound(r) -> bool:
    """The multiply array is the largest cost of the layer's tuned schedule: its GEMM block
    operations (one per cycle) are at least the busy cycles of the load module, of the store
    module and of the compute module's other work (ALU epilogue, resets, pipeline fill)."""
    f = r.figures.get("tuned")
    if f is None:
        return False
    busy, gemm = f["busy"], f["gemm_ops"]
    return gemm >= max(busy.get("load", 0), busy.get("store", 0), busy.get("compute", 0) - gemm)


def _speedup_goal(results: Sequence, den: str, text: str) -> dict:
    rows: list[tuple] = []
    for r in results:
        x = _ratio(r, den, "tuned")
        if x is not None:
            rows.append((r, x))
    if not rows:
        return _goal(text, "", f">= {TUNED_SPEEDUP:g}x", None, None, "no case measured both")
    worst, x = min(rows, key=lambda rx: rx[1])
    geo = math.exp(sum(math.log(v) for _, v in rows) / len(rows))
    best = max(v for _, v in rows)
    met = sum(1 for _, v in rows if v >= TUNED_SPEEDUP)
    return _goal(text, f"{worst.case} {worst.fmt}", f">= {TUNED_SPEEDUP:g}x", x,
                 x >= TUNED_SPEEDUP,
                 f"worst {worst.case} {worst.fmt}: {worst.cycles(den)} / "
                 f"{worst.cycles('tuned')} cycles; geomean {geo:.2f}x, best {best:.2f}x; "
                 f"{met} of {len(rows)} layer-formats meet it")


def evaluate_goals(results: Sequence) -> list[dict]:
    goals = []
    text = f"GEMM utilization >= {UTILIZATION:.0%} on ResNet-18 3x3 layers, tuned, int8"
    r3 = [r for r in results if r.model == "resnet18" and r.kernel == 3 and r.fmt == "int8"
          and "tuned" in r.figures]
    if r3:
        worst = min(r3, key=lambda r: r.figures["tuned"]["gemm_utilization"])
        u = worst.figures["tuned"]["gemm_utilization"]
        lowbit = [r for r in results if r.model == "resnet18" and r.kernel == 3
                  and r.fmt in ("int4w", "binary") and "tuned" in r.figures]
        extra = ""
        if lowbit:
            lw = min(lowbit, key=lambda r: r.figures["tuned"]["gemm_utilization"])
            extra = (f"; int4w/binary worst {lw.figures['tuned']['gemm_utilization']:.0%} "
                     f"({lw.case} {lw.fmt})")
        met = sum(1 for r in r3 if r.figures["tuned"]["gemm_utilization"] >= UTILIZATION)
        goals.append(_goal(text, worst.case, f">= {UTILIZATION:.0%}", u, u >= UTILIZATION,
                           f"worst {worst.case}; {met} of {len(r3)} layers meet it{extra}"))
    else:
        goals.append(_goal(text, "", f">= {UTILIZATION:.0%}", None, None,
                           "no ResNet-18 3x3 int8 layer in this suite"))
    text = (f"80% block sparsity cuts cycles >= {SPARSE_SPEEDUP:g}x on GEMM-bound layers "
            "(tuned int8 / tuned int8-sp80)")
    dense = {r.case: r for r in results if r.fmt == "int8"}
    pairs = []
    for r in results:
        d = dense.get(r.case)
        if r.fmt == "int8-sp80" and d is not None and gemm_bound(d):
            a, b = d.cycles("tuned"), r.cycles("tuned")
            if a and b:
                pairs.append((r, a / b))
    bound_cases = sum(1 for d in dense.values() if gemm_bound(d))
    if pairs:
        worst, x = min(pairs, key=lambda p: p[1])
        met = sum(1 for _, v in pairs if v >= SPARSE_SPEEDUP)
        goals.append(_goal(text, worst.case, f">= {SPARSE_SPEEDUP:g}x", x, x >= SPARSE_SPEEDUP,
                           f"worst {worst.case}; {met} of {len(pairs)} GEMM-bound layers meet "
                           f"it ({len(dense) - bound_cases} layers not GEMM-bound left out)"))
    else:
        goals.append(_goal(text, "", f">= {SPARSE_SPEEDUP:g}x", None, None,
                           "no GEMM-bound layer with both int8 and int8-sp80 in this suite"))
    goals.append(_speedup_goal(results, "naive", "tuned needs >= 1.5x fewer cycles than naive "
                                                 "(the space's one-block, no-overlap start)"))
    goals.append(_speedup_goal(results, "default", "tuned needs >= 1.5x fewer cycles than the "
                                                   "analytic default knobs"))
    return goals


def _knobs(f: dict) -> str:
    k = f["knobs"]
    return (f"b{k['tile_b']} h{k['tile_h']} w{k['tile_w']} co{k['tile_co']} ci{k['tile_ci']} "
            f"v{k['virtual_threads']}")


def tables(results: Sequence, goals: Sequence[dict], config: str) -> list:
    out = []
    fmts = list(dict.fromkeys(r.fmt for r in results))
    for fmt in fmts:
        rows = [r for r in results if r.fmt == fmt]
        t = _table(f"VTA {fmt} on {rows[0].config}: cycles in the timing model (batch 1)",
                   ["case", "naive", "default", "tuned", "GEMM util", "DMA MB", "us @clock",
                    "naive/tuned", "default/tuned", "tuned knobs", "note"],
                   "util, DMA and time of the tuned schedule; knobs: tiles of batch, rows, "
                   "columns, output / input channel blocks, virtual threads")
        for r in rows:
            tuned = r.figures.get("tuned")
            cells = [str(r.cycles(s)) if r.cycles(s) is not None else "-"
                     for s in ("naive", "default", "tuned")]
            ratios = [_ratio(r, s, "tuned") for s in ("naive", "default")]
            if tuned is None:
                t.add_row(r.case, *cells, "-", "-", "-", "-", "-", "-", r.source)
                continue
            t.add_row(r.case, *cells, f"{tuned['gemm_utilization']:.0%}",
                      f"{tuned['dma_bytes'] / 1e6:.2f}", f"{tuned['time_us']:.1f}",
                      *("-" if x is None else f"{x:.2f}x" for x in ratios), _knobs(tuned),
                      r.source)
        out.append(t)
    t = _table(f"goals (timing model; int8 core {config})",
               ["goal", "target", "measured", "status", "detail"])
    for g in goals:
        m = "-" if g["measured"] is None else (
            f"{g['measured']:.0%}" if "%" in g["target"] else f"{g['measured']:.2f}x")
        t.add_row(g["goal"], g["target"], m, g["status"], g["detail"])
    out.append(t)
    return out
