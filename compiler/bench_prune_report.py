"""Goals and tables of ``squeezer bench prune`` (issue 4): at 80% sparsity, at most 1 point of
test accuracy lost after fine-tuning; every method reaches the sparsity it was asked for."""

from __future__ import annotations

from collections.abc import Sequence

GOAL_SPARSITY = 0.8
MAX_LOSS_POINTS = 1.0
SPARSITY_TOLERANCE = 0.01  # achieved within this of the request (a fraction, not relative)


def _goal(text: str, target: str, ok: bool | None, measured: str, detail: str) -> dict:
    status = "not run" if ok is None else ("met" if ok else "missed")
    return {"goal": text, "target": target, "measured": measured, "status": status,
            "detail": detail}


def _name(r) -> str:
    return f"{r.model} {r.method}"


def evaluate_goals(results: Sequence) -> list[dict]:
    """One dict per goal: ``goal``, ``target``, ``measured``, ``status`` (met, missed, not run)
    and ``detail`` (the rows that miss, and the rows that did not run)."""
    goals = []
    at_goal = [r for r in results if abs(r.requested - GOAL_SPARSITY) < 1e-9]
    ran = [r for r in at_goal if r.delta_points is not None]
    worse = [r for r in ran if r.delta_points < -MAX_LOSS_POINTS - 1e-9]
    detail = [f"{_name(r)} {r.delta_points:+.2f}" for r in worse]
    detail += [f"{_name(r)}: not run" for r in at_goal if r.delta_points is None]
    worst = min((r.delta_points for r in ran), default=None)
    goals.append(_goal(
        f"every {GOAL_SPARSITY:.0%} row loses at most {MAX_LOSS_POINTS:g} point after "
        "fine-tuning", f">= -{MAX_LOSS_POINTS:g} pts",
        None if not ran else not worse,
        "-" if worst is None else f"worst {worst:+.2f} pts ({len(ran) - len(worse)} of "
        f"{len(at_goal)} rows within)", "; ".join(detail) or "all within"))
    reached = [r for r in results if r.achieved is not None]
    off = [r for r in reached if abs(r.achieved - r.requested) > SPARSITY_TOLERANCE + 1e-9]
    detail = [f"{_name(r)} {r.achieved:.1%} of {r.requested:.0%}" for r in off]
    detail += [f"{_name(r)}: not run" for r in results if r.achieved is None]
    goals.append(_goal(
        "every method reaches its requested sparsity", f"within {SPARSITY_TOLERANCE:.0%}",
        None if not reached else not off,
        f"{len(reached) - len(off)} of {len(results)} rows within",
        "; ".join(detail) or "all within"))
    return goals


def _table(title: str, cols: Sequence[str], caption: str = ""):
    from rich.table import Table

    t = Table(title=title, caption=caption or None)
    for col in cols:
        left = col in ("model", "method", "note", "goal", "detail")
        t.add_column(col, justify="left" if left else "right", overflow="fold")
    return t


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _pct(v: float | None, unit: str = "weights") -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" + (" n" if unit == "neurons" else "")


def _kb(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{before / 1024:.0f} -> {after / 1024:.0f}"


def _note(r) -> str:
    parts = []
    if r.sparse_layers is not None:
        parts.append(f"{r.sparse_layers} sparse layer{'s' if r.sparse_layers != 1 else ''}")
    parts += r.notes
    if r.error:
        parts.append(r.error if len(r.error) <= 100 else r.error[:97] + "...")
    return "; ".join(parts)


DISTURBED = 0.05  # other processes' CPU time over the run's wall time that marks it disturbed


def tables(results: Sequence, goals: Sequence[dict], threads: int,
           models: dict[str, str] | None = None, others_cpu_s: float | None = None,
           wall_s: float | None = None) -> list:
    """The rich tables: one row per method and model (``models`` describes the models in the
    caption), then the goals (with the CPU time other
    processes used during the run in the caption, and a warning when it is more than a few
    percent: it skews the timings, not the accuracies)."""
    t = _table(
        f"pruning on the digits: test accuracy dense -> pruned and fine-tuned; compiled "
        f"latency at batch 1, {threads} threads (median ms)",
        ["model", "method", "asked", "reached", "acc dense", "acc pruned", "delta pts",
         "dense ms", "pruned ms", "ratio", "KB stored", "note"],
        "; ".join(f"{k}: {v}" for k, v in (models or {}).items())
        + "\nsparsity over the tensors the method prunes (n: share of neurons, datafree); "
        "ratio = dense ms / pruned ms (> 1: the pruned model is faster); KB stored: parameters, "
        "pruned tensors in CSR/BSR where smaller; sparse layers: run by a sparse kernel")
    for r in results:
        t.add_row(r.model, r.method, _pct(r.requested, r.unit), _pct(r.achieved, r.unit),
                  _pct(r.acc_dense), _pct(r.acc_pruned),
                  "-" if r.delta_points is None else f"{r.delta_points:+.2f}",
                  _ms(r.ms_dense), _ms(r.ms_pruned),
                  "-" if r.ratio is None else f"{r.ratio:.2f}x",
                  _kb(r.bytes_dense, r.bytes_pruned), _note(r))
    caption = ""
    if others_cpu_s is not None and wall_s:
        caption = f"other processes used {others_cpu_s:.1f} CPU-s during this {wall_s:.0f} s run"
        if others_cpu_s > DISTURBED * wall_s:
            caption += ": the machine was not quiet, the timings are disturbed"
    g = _table("goals (issue 4)", ["goal", "target", "measured", "status", "detail"], caption)
    for goal in goals:
        g.add_row(goal["goal"], goal["target"], goal["measured"], goal["status"], goal["detail"])
    return [t, g]
