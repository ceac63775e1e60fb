"""Live tuning progress and the end-of-run table (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from squeezer.tune.tasks import Task


def fmt_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f}"


def gflops(task: Task) -> str:
    if task.best_seconds is None or not task.flops:
        return "-"
    return f"{task.flops / task.best_seconds / 1e9:.1f}"


def task_table(tasks: list[Task], title: str, limit: int | None = None,
               current: Task | None = None) -> Table:
    """One row per task: operator, shapes, calls, default and tuned latency, trials."""
    t = Table(title=title, title_justify="left")
    for col, just in (("task", "left"), ("shapes", "left"), ("calls", "right"),
                      ("default us", "right"), ("tuned us", "right"), ("speedup", "right"),
                      ("GFLOP/s", "right"), ("trials", "right"), ("failed", "right")):
        t.add_column(col, justify=just, overflow="fold" if col == "shapes" else "ellipsis")
    order = sorted(tasks, key=lambda x: -(x.weight * (x.default_seconds or 0.0)))
    if limit is not None and len(order) > limit:
        keep = order[:limit]
        if current is not None and current not in keep:
            keep[-1] = current
        order = keep
    for task in order:
        best = task.best_seconds
        speed = "-"
        if best is not None and task.default_seconds:
            speed = f"{task.default_seconds / best:.2f}x"
        style = "bold" if task is current else None
        t.add_row(task.name, task.signature(), str(task.weight), fmt_us(task.default_seconds),
                  fmt_us(best), speed, gflops(task), str(task.trials), str(task.failures),
                  style=style)
    return t


class TuneDisplay:
    """``on_event`` for :func:`squeezer.tune.tune`: a live table while tuning, quiet if asked."""

    def __init__(self, console: Console | None = None, quiet: bool = False, rows: int = 12):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.rows = rows
        self.live: Live | None = None
        self.tasks: list[Task] = []
        self.total = 0

    def __call__(self, kind: str, **info) -> None:
        if self.quiet:
            return
        if kind == "tasks":
            self.tasks = info["tasks"]
            where = info["records_dir"]
            via = info.get("rpc")
            dev = f" via RPC {via['host']}:{via['port']} key {via['key']} " \
                  f"({via['servers']} server(s))" if via else " locally"
            self.console.print(f"{len(self.tasks)} tasks for {info['target_key']}, measured{dev}; "
                               f"records -> {where}")
        elif kind == "baseline":
            self.console.print(f"measuring the default schedule of {info['count']} task(s)")
        elif kind == "update":
            budget = info["budget"]
            view = Group(
                Text(f"trials {budget.done}/{budget.trials}  elapsed {budget.elapsed():.0f}s"
                     + (f" of {budget.seconds:.0f}s" if budget.seconds else "")),
                task_table(self.tasks, "tuning", limit=self.rows, current=info["task"]),
            )
            if self.live is None:
                self.live = Live(view, console=self.console, refresh_per_second=2,
                                 transient=True)
                self.live.__enter__()
            else:
                self.live.update(view)
        elif kind == "done":
            self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None
