"""Goals and tables of ``squeezer bench quant`` (issue 5): int8 post-training quantization within
half a point of fp32 on the digits; the compiled quantized model classifies the test images as
the torch model does (within one image)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from squeezer.bench_prune_report import DISTURBED, _goal, _kb, _ms, _pct, _table

MAX_PTQ_LOSS_POINTS = 0.5
MAX_DISAGREE = 1  # test images on which the compiled and the torch quantized model may differ


def _name(r) -> str:
    return f"{r.model} {r.method}"


def _worst_delta(r) -> float | None:
    """The larger loss of the torch and the compiled quantized model, in points."""
    if r.acc_fp32 is None or r.acc_quant is None:
        return None
    worst = min(r.acc_quant, r.acc_compiled if r.acc_compiled is not None else r.acc_quant)
    return 100 * (worst - r.acc_fp32)


def evaluate_goals(results: Sequence) -> list[dict]:
    """One dict per goal: ``goal``, ``target``, ``measured``, ``status`` (met, missed, not run)
    and ``detail`` (the rows that miss, and the rows that did not run)."""
    ptq = [r for r in results if r.ptq and r.method.startswith("int8")]
    ran = [(r, _worst_delta(r)) for r in ptq if r.acc_compiled is not None]
    worse = [(r, d) for r, d in ran if d is not None and d < -MAX_PTQ_LOSS_POINTS - 1e-9]
    detail = [f"{_name(r)} {d:+.2f}" for r, d in worse]
    detail += [f"{_name(r)}: not run" for r in ptq if r.acc_compiled is None]
    worst = min((d for _, d in ran if d is not None), default=None)
    goals = [_goal(
        f"int8 PTQ within {MAX_PTQ_LOSS_POINTS:g} point of fp32 (torch and compiled)",
        f">= -{MAX_PTQ_LOSS_POINTS:g} pts", None if not ran else not worse,
        "-" if worst is None else f"worst {worst:+.2f} pts ({len(ran) - len(worse)} of "
        f"{len(ptq)} rows)", "; ".join(detail) or "all within")]
    checked = [r for r in results if r.compiled_disagree is not None]
    off = [r for r in checked if r.compiled_disagree > MAX_DISAGREE]
    detail = [f"{_name(r)}: {r.compiled_disagree} images" for r in off]
    detail += [f"{_name(r)}: not run" for r in results if r.compiled_disagree is None]
    goals.append(_goal(
        "compiled model classifies as the torch quantized model",
        f"<= {MAX_DISAGREE} test image apart", None if not checked else not off,
        f"{len(checked) - len(off)} of {len(results)} rows", "; ".join(detail) or "all within"))
    return goals


def _note(r) -> str:
    """Operators left in float by kind, the method's first warning (layer names elided), the
    error: the JSON has every fallback with its node and reason, and every warning."""
    parts = []
    if r.float_fallback:
        ops = Counter(e.get("op", "?") for e in r.float_fallback)
        reasons = Counter(e.get("reason", "?") for e in r.float_fallback)
        top, count = reasons.most_common(1)[0]
        parts.append("left in float: " + ", ".join(f"{op} x{n}" for op, n in ops.items())
                     + f" (x{count}: {top})")
    if r.warnings:
        first = re.sub(r"'[^']*'", "'...'", r.warnings[0])
        parts.append(f"{len(r.warnings)} warning(s), first: {first}")
    parts += r.notes
    if r.error:
        parts.append(r.error)
    return "; ".join(p if len(p) <= 200 else p[:197] + "..." for p in parts)


def tables(results: Sequence, goals: Sequence[dict], threads: int,
           models: dict[str, str] | None = None, others_cpu_s: float | None = None,
           wall_s: float | None = None) -> list:
    """The rich tables: one row per method and model (``models`` describes the models in the
    caption); the rows' notes (operators left in float, the method's warnings, errors) when any
    row has one; the goals (with the CPU time other processes used during the run in the
    caption, and a warning when it is more than a few percent: it skews the timings, not the
    accuracies)."""
    t = _table(
        f"quantization on the digits: test accuracy fp32 -> quantized (torch, and compiled); "
        f"compiled latency at batch 1, {threads} threads (median ms); .sqz artifact size",
        ["model", "method", "bits w/a", "acc fp32", "acc quant", "acc compiled", "delta",
         "fp32 ms", "quant ms", "ratio", "sqz KB", "size", "float"],
        "; ".join(f"{k}: {v}" for k, v in (models or {}).items())
        + "\nbits: weights / activations of the quantized layers (32: float; 2x1: two residual "
        "binary planes; xnor and horq keep the first and last layer float, bnn the first "
        "layer's input, as in the papers); delta: torch quantized - fp32 in points; "
        "ratio = fp32 ms / quant ms (> 1: faster); size = fp32 bytes / quant bytes of the .sqz "
        "files; float: operators the compile left in float (manifest float_fallback)")
    notes = _table("notes", ["model", "method", "note"])
    for r in results:
        t.add_row(r.model, r.method, f"{r.bits_weights}/{r.bits_activations}",
                  _pct(r.acc_fp32), _pct(r.acc_quant), _pct(r.acc_compiled),
                  "-" if r.delta_points is None else f"{r.delta_points:+.2f}",
                  _ms(r.ms_fp32), _ms(r.ms_quant),
                  "-" if r.ratio is None else f"{r.ratio:.2f}x",
                  _kb(r.bytes_fp32, r.bytes_quant),
                  "-" if r.size_ratio is None else f"{r.size_ratio:.2f}x",
                  "-" if r.float_ops is None else str(r.float_ops))
        if note := _note(r):
            notes.add_row(r.model, r.method, note)
    caption = ""
    if others_cpu_s is not None and wall_s:
        caption = f"other processes used {others_cpu_s:.1f} CPU-s during this {wall_s:.0f} s run"
        if others_cpu_s > DISTURBED * wall_s:
            caption += ": the machine was not quiet, the timings are disturbed"
    g = _table("goals (issue 5)", ["goal", "target", "measured", "status", "detail"], caption)
    for goal in goals:
        g.add_row(goal["goal"], goal["target"], goal["measured"], goal["status"], goal["detail"])
    return [t, notes, g] if notes.row_count else [t, g]
