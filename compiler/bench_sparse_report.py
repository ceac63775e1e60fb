"""Goals and tables of ``squeezer bench sparse``: ratios of medians from one run, never across
runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """``ms[peer] / ms["squeezer"] >= at_least`` in ``case``."""

    text: str
    case: str
    peer: str
    at_least: float


GOAL_CASE = "linear 768x3072 b128 90%"
GOALS = (
    Goal("768x3072 b128 90% unstructured: >= 3.5x faster than torch dense",
         f"{GOAL_CASE} 1x1", "torch", 3.5),
    Goal("768x3072 b128 90% 16x1 blocks: >= 5x faster than torch dense",
         f"{GOAL_CASE} 16x1", "torch", 5.0),
    Goal("768x3072 b128 90% unstructured: >= 2x faster than torch CSR",
         f"{GOAL_CASE} 1x1", "torch-csr", 2.0),
    Goal("MobileNetV2 90% end to end: >= 1.5x faster than squeezer dense",
         "mobilenetv2-full 90% 1x1+linear", "squeezer-dense", 1.5),
)
BOUND_FACTOR = 2.0  # batch-1 cases at 90%: squeezer within this factor of the bandwidth bound


def evaluate_goals(cases: Sequence) -> list[dict]:
    """One dict per goal: ``goal``, ``target``, ``measured`` (a ratio or None), ``status``
    (met, missed, not run) and ``detail``."""
    by_name = {c.case: c for c in cases}
    goals = []
    for g in GOALS:
        c = by_name.get(g.case)
        ratio = None
        if c is None:
            detail = f"case {g.case!r} not in this suite"
        elif g.peer not in c.ms or "squeezer" not in c.ms:
            detail = "; ".join(f"{k}: {v}" for k, v in c.missing.items()) or "no time"
        else:
            ratio = c.ms[g.peer] / c.ms["squeezer"]
            detail = f"{g.peer} {c.ms[g.peer]:.3f} ms / squeezer {c.ms['squeezer']:.3f} ms"
        goals.append(_goal(g.text, g.case, f">= {g.at_least:g}x", ratio,
                           None if ratio is None else ratio >= g.at_least, detail))
    bound = [c for c in cases if c.section == "kernel" and c.info["batch"] == 1
             and c.info["sparsity"] == 0.9 and "squeezer_over_bound" in c.info]
    text = f"batch 1 at 90%: within {BOUND_FACTOR:g}x of the bandwidth bound (worst case)"
    if bound:
        worst = max(bound, key=lambda c: c.info["squeezer_over_bound"])
        r = worst.info["squeezer_over_bound"]
        goals.append(_goal(text, worst.case, f"<= {BOUND_FACTOR:g}x", r, r <= BOUND_FACTOR,
                           f"squeezer {worst.ms['squeezer']:.4f} ms, bound "
                           f"{worst.info['bound_ms']:.4f} ms ({len(bound)} cases)"))
    else:
        goals.append(_goal(text, "", f"<= {BOUND_FACTOR:g}x", None, None,
                           "no batch-1 90% kernel case with a squeezer time"))
    return goals


def _goal(text: str, case: str, target: str, ratio: float | None, ok: bool | None,
          detail: str) -> dict:
    status = "not run" if ok is None else ("met" if ok else "missed")
    return {"goal": text, "case": case, "target": target, "measured": ratio, "status": status,
            "detail": detail}


# -- tables --------------------------------------------------------------------------------------
def _ms(c, impl: str) -> str:
    if impl not in c.ms:
        return "n/a"
    v = c.ms[impl]
    return f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _ratio(c, num: str, den: str = "squeezer") -> str:
    if num in c.ms and den in c.ms:
        return f"{c.ms[num] / c.ms[den]:.2f}x"
    return "-"


def _note(c) -> str:
    missing = "; ".join(f"{k}: {v}" for k, v in c.missing.items())
    return "; ".join(x for x in (c.note, missing) if x)


def _table(title: str, cols: Sequence[str], caption: str = ""):
    from rich.table import Table

    t = Table(title=title, caption=caption or None)
    for col in cols:
        left = col in ("case", "note", "goal", "detail")
        t.add_column(col, justify="left" if left else "right", overflow="fold")
    return t


DISTURBED = 0.05  # other processes' CPU time over the run's wall time that marks it disturbed


def tables(cases: Sequence, goals: Sequence[dict], threads: int, bandwidth: float,
           others_cpu_s: float | None = None, wall_s: float | None = None) -> list:
    """The rich tables: kernels, convolutions, end to end, goals (empty sections left out).

    ``others_cpu_s`` (CPU-seconds other processes used during the ``wall_s`` run) goes into
    the goals table's caption, with a warning when it is more than a few percent."""
    out = []
    kernel = [c for c in cases if c.section == "kernel"]
    if kernel:
        t = _table(f"sparse kernels: Y = X W^T, median ms, {threads} threads (scipy: 1); "
                   "squeezer = squeezer.compile of the pruned layer (tuning records), "
                   "sq kernel = sparse_matmul in the case's blocks, default schedule",
                   ["case", "squeezer", "sq kernel", "sq dense", "torch", "torch csr", "scipy csr",
                    "onnxrt", "torch/sq", "csr/sq", "bound", "sq/bound", "note"],
                   f"bound = (stored weight + X + Y bytes) / {bandwidth / 1e9:.1f} GB/s "
                   "measured copy bandwidth; ratio > 1: squeezer is faster")
        for c in kernel:
            bound = c.info.get("bound_ms")
            over = c.info.get("squeezer_over_bound") if c.info["batch"] == 1 else None
            t.add_row(c.case, *(_ms(c, i) for i in ("squeezer", "squeezer-kernel",
                                                    "squeezer-dense", "torch",
                                                    "torch-csr", "scipy-csr", "onnxruntime")),
                      _ratio(c, "torch"), _ratio(c, "torch-csr"),
                      "-" if bound is None else f"{bound:.4f}",
                      "-" if over is None else f"{over:.2f}x", _note(c))
        out.append(t)
    for section, title in (("conv", "sparse convolutions (one-layer models, batch 1)"),
                           ("e2e", "end to end")):
        rows = [c for c in cases if c.section == section]
        if not rows:
            continue
        t = _table(f"{title}: median ms, {threads} threads; squeezer = squeezer.compile of "
                   "the pruned model", ["case", "squeezer", "sq dense", "torch", "onnxrt",
                                        "dense/sq", "torch/sq", "onnxrt/sq", "note"],
                   "ratio > 1: squeezer is faster")
        for c in rows:
            t.add_row(c.case, *(_ms(c, i) for i in ("squeezer", "squeezer-dense", "torch",
                                                    "onnxruntime")),
                      _ratio(c, "squeezer-dense"), _ratio(c, "torch"),
                      _ratio(c, "onnxruntime"), _note(c))
        out.append(t)
    caption = ""
    if others_cpu_s is not None and wall_s:
        caption = f"other processes used {others_cpu_s:.1f} CPU-s during this {wall_s:.0f} s run"
        if others_cpu_s > DISTURBED * wall_s:
            caption += ": the machine was not quiet, these numbers are disturbed"
    t = _table("goals (ratios of medians in this run)",
               ["goal", "target", "measured", "status", "detail"], caption)
    for g in goals:
        m = "-" if g["measured"] is None else f"{g['measured']:.2f}x"
        t.add_row(g["goal"], g["target"], m, g["status"], g["detail"])
    out.append(t)
    return out
