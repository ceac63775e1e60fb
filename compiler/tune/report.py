"""Tuning reports: the per-task table, tuning curves and JSON, rebuilt from a record directory.

``squeezer tune-report DIR`` reads a record directory (see :mod:`squeezer.tune.records`) without
tuning anything: one :class:`~squeezer.tune.tasks.Task` per workload in it, with its calls per
inference and FLOPs from the newest run that listed it (``runs.jsonl``), its default-schedule
latency (``baselines.jsonl``) and, from the measured candidates in file (= trial) order, its
trials, failures, best latency and tuning curve.

The estimated model latency is the sum over the tasks of the newest run of ``calls x min(default,
best so far)``; :func:`plot_curves` draws it against the trials spent, next to each heavy task's
best latency relative to its default schedule. ``squeezer tune`` calls :func:`plot_curves` too,
with the tasks it has just tuned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from squeezer.errors import TuningError
from squeezer.tune.records import (
    BASELINES,
    FAILED_SECS,
    RECORDS,
    RUNS,
    WORKLOADS,
    RecordStore,
    read_lines,
)
from squeezer.tune.tasks import Task, _bytes, _flops

log = logging.getLogger("squeezer.tune")

TOP_TASKS = 10  # tasks drawn in the relative-latency panel


@dataclass
class TuneReport:
    """What a record directory says about its tuning.

    Attributes
    ----------
    directory : the key directory the report was read from.
    tasks : one task per workload in the directory.
    model : the model of the newest run in ``runs.jsonl`` (``None`` without one).
    model_tasks : the tasks that run listed (all tasks without a run); the model latency sums them.
    timeline : ``(trials, estimated model seconds)`` after each measurement of a model task that
        changed the estimate, in trial order, starting at ``(0, default latency)`` and ending at
        the last trial; ``None`` where a model task has no measured default latency.
    """

    directory: Path
    tasks: list[Task]
    model: str | None
    model_tasks: list[Task]
    timeline: list[tuple[int, float]] | None

    def model_seconds(self, tuned: bool) -> float | None:
        """Estimated model latency from :attr:`model_tasks`; ``None`` if a default is unknown."""
        return model_seconds(self.model_tasks, tuned)


def model_seconds(tasks: Sequence[Task], tuned: bool) -> float | None:
    """Sum over ``tasks`` of calls x latency (default, or the best record where it is faster).

    Returns ``None`` when there are no tasks or one has no measured default latency.
    """
    if not tasks:
        return None
    total = 0.0
    for t in tasks:
        if t.default_seconds is None:
            return None
        lat = t.default_seconds
        if tuned and t.best_seconds is not None:
            lat = min(lat, t.best_seconds)
        total += t.weight * lat
    return total


# --- loading ------------------------------------------------------------------------------------
def _is_key_dir(directory: Path) -> bool:
    return (directory / RECORDS).is_file() or (directory / (RECORDS + ".gz")).is_file()


def resolve_dir(directory: str | Path) -> Path:
    """:func:`resolve_key_dir` (the name the CLI commands use)."""
    return resolve_key_dir(directory)


def resolve_key_dir(directory: str | Path) -> Path:
    """The key directory ``directory`` names: itself, or the one key directory under a root.

    Raises
    ------
    TuningError
        if ``directory`` does not exist, holds no ``records.jsonl`` itself or in a subdirectory,
        or is a root holding several key directories (the message lists them).
    """
    path = Path(directory)
    if not path.exists():
        raise TuningError(f"{path}: no such record directory")
    if not path.is_dir():
        raise TuningError(f"{path}: not a directory (give a record directory)")
    if _is_key_dir(path):
        return path
    subs = sorted(p for p in path.iterdir() if p.is_dir() and _is_key_dir(p))
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise TuningError(f"{path}: no tuning records ({RECORDS}) here or in a subdirectory")
    names = ", ".join(p.name for p in subs)
    raise TuningError(f"{path} holds records for {len(subs)} targets ({names}); "
                      f"give one of them, e.g. {subs[0]}")


def _workload_json(path: Path) -> dict[str, list]:
    """Workload JSON by key, first line wins; corrupt lines were already warned about."""
    out: dict[str, list] = {}
    with _quiet():
        for _, obj in read_lines(path):  # also the packed .gz
            try:
                out.setdefault(str(obj["key"]), obj["workload"])
            except (KeyError, TypeError):
                continue
    return out


@contextlib.contextmanager
def _quiet():
    """Silence ``squeezer.tune`` warnings for a second pass over lines already warned about."""
    logger = logging.getLogger("squeezer.tune")
    old = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old


def _run_tasks(runs: list[dict]) -> dict[str, dict]:
    """For each workload, its entry in the newest run (last in file order) that lists it."""
    info: dict[str, dict] = {}
    for run in runs:
        tasks = run.get("tasks")
        if not isinstance(tasks, list):
            continue
        for t in tasks:
            if isinstance(t, dict) and "workload" in t:
                info[str(t["workload"])] = t
    return info


def _number(value, cast: Callable, default):
    try:
        return cast(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def load_report(directory: str | Path) -> TuneReport:
    """Rebuild the tasks, the newest run's model and its latency timeline from ``directory``.

    ``directory`` is a key directory (``tuning_logs/<target-key>/``) or a root holding exactly
    one. Corrupt lines are skipped with a warning naming file and line, and records of another
    squeezer or TVM version are ignored, as :class:`RecordStore` does.
    """
    from tvm.s_tir.meta_schedule.database import Workload

    key_dir = resolve_key_dir(directory)
    store = RecordStore(read_dirs=[key_dir])
    raw = _workload_json(key_dir / WORKLOADS)
    runs = [obj for _, obj in read_lines(key_dir / RUNS)]
    in_run = _run_tasks(runs)

    keys = list(dict.fromkeys([*raw, *store._keys, *(m.workload for m in store.measurements),
                               *store.baselines]))
    tasks: dict[str, Task] = {}
    for key in keys:
        if key in store._keys:
            mod = store._keys[key].mod
        elif key in raw:
            try:
                mod = Workload.from_json(raw[key]).mod
            except Exception as e:  # noqa: BLE001 - an unreadable workload is skipped, not fatal
                log.warning("%s: skipped workload %s: cannot read it (%s)", key_dir / WORKLOADS,
                            key, str(e).strip().splitlines()[-1] if str(e).strip() else e)
                continue
        else:
            log.warning("%s: workload %s has baselines but is not in %s; skipped",
                        key_dir / BASELINES, key, WORKLOADS)
            continue
        run = in_run.get(key, {})
        name = str(run.get("name") or store.task_names.get(key) or key)
        flops = _number(run.get("flops"), float, None)
        func = mod["main"]
        kernel = func.attrs.get("squeezer.kernel") if func.attrs else None
        tasks[key] = Task(
            name=name,
            mod=mod,
            weight=max(_number(run.get("calls"), int, 1), 0),
            flops=flops if flops is not None else _flops(mod),
            bytes=_bytes(func),
            kernel=str(kernel) if kernel is not None else None,
            default_seconds=store.baselines.get(key),
        )

    for m in store.measurements:
        task = tasks.get(m.workload)
        if task is None:
            continue
        task.trials += 1
        if m.failed:
            task.failures += 1
        elif task.best_seconds is None or m.seconds < task.best_seconds:
            task.best_seconds = m.seconds
            task.curve.append((task.trials, m.seconds))
    for task in tasks.values():
        if task.best_seconds is not None and task.curve[-1][0] != task.trials:
            task.curve.append((task.trials, task.best_seconds))

    model = None
    model_keys = list(tasks)
    if runs:
        newest = runs[-1]
        model = str(newest.get("model")) if newest.get("model") is not None else None
        listed = [str(t["workload"]) for t in newest.get("tasks") or []
                  if isinstance(t, dict) and "workload" in t]
        if listed:
            model_keys = [k for k in dict.fromkeys(listed) if k in tasks]
    timeline = _timeline({k: tasks[k] for k in model_keys},
                         [(m.workload, m.seconds) for m in store.measurements])
    return TuneReport(key_dir, list(tasks.values()), model, [tasks[k] for k in model_keys],
                      timeline)


def load_tasks(directory: str | Path) -> list[Task]:
    """One :class:`Task` per workload in a record directory, rebuilt from its records.

    Parameters
    ----------
    directory : a key directory (``tuning_logs/<target-key>/``) or a root holding exactly one.

    Returns
    -------
    list of Task
        name, module, calls and FLOPs (newest run listing the workload; 1 call and estimated
        FLOPs without one), default latency (baselines), and trials, failures, best latency and
        curve (``(trials, best seconds)`` after each improvement and at the last trial) from the
        measurements in file order.

    Raises
    ------
    TuningError
        for a missing directory, one without records, or a root with several key directories.
    """
    return load_report(directory).tasks


def _timeline(tasks: dict[str, Task],
              measurements: Sequence[tuple[str, float]]) -> list[tuple[int, float]] | None:
    """Estimated model latency after each measurement of one of ``tasks`` (file order)."""
    if not tasks or any(t.default_seconds is None for t in tasks.values()):
        return None
    current = {k: float(t.default_seconds or 0.0) for k, t in tasks.items()}
    total = sum(tasks[k].weight * s for k, s in current.items())
    points = [(0, total)]
    n = 0
    for key, secs in measurements:
        if key not in tasks:
            continue
        n += 1
        if secs < FAILED_SECS and secs < current[key]:
            total += tasks[key].weight * (secs - current[key])
            current[key] = secs
            points.append((n, total))
    if points[-1][0] != n:
        points.append((n, total))
    return points


def _approx_timeline(tasks: Sequence[Task]) -> list[tuple[int, float]] | None:
    """Model latency against trials when only per-task curves are known.

    The order between tasks is unknown, so the tasks are taken as tuned side by side, each at
    the same fraction of its own trials; the start and end points are exact.
    """
    if not tasks or any(t.default_seconds is None for t in tasks):
        return None
    total_trials = sum(t.trials for t in tasks)
    current = [float(t.default_seconds or 0.0) for t in tasks]
    events = sorted((n / t.trials, i, best) for i, t in enumerate(tasks)
                    for n, best in t.curve if t.trials)
    total = sum(t.weight * c for t, c in zip(tasks, current, strict=True))
    points = [(0, total)]
    for frac, i, best in events:
        if best < current[i]:
            total += tasks[i].weight * (best - current[i])
            current[i] = best
            points.append((round(frac * total_trials), total))
    if points[-1][0] != total_trials:
        points.append((total_trials, total))
    return points


# --- output -------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _heavy(tasks: Sequence[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: -(t.weight * (t.default_seconds or 0.0)))


def plot_curves(tasks: Sequence[Task], path: str | Path, title: str = "",
                timeline: Sequence[tuple[int, float]] | None = None) -> Path:
    """Write a PNG of the tuning curves.

    Parameters
    ----------
    tasks : the tasks, with ``curve``, ``trials`` and ``default_seconds`` filled in.
    path : the PNG to write (atomically: a temporary file in the same directory, then renamed).
    title : figure title.
    timeline : ``(trials, estimated model seconds)`` in trial order, as
        :attr:`TuneReport.timeline`. Without it the order between tasks is unknown and is
        approximated (each task at the same fraction of its trials); the axis label says so.

    Returns
    -------
    Path
        ``path``.

    Left: best latency relative to the default schedule against the task's trials, for the
    :data:`TOP_TASKS` tasks with the most time (calls x default latency). Right: estimated model
    latency (sum of calls x min(default, best so far)) against the trials of all tasks.
    """
    try:
        import matplotlib
    except ImportError:
        raise TuningError("writing the tuning-curve PNG needs matplotlib "
                          "(pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig, (ax_rel, ax_model) = plt.subplots(1, 2, figsize=(13, 5.2))
    try:
        drawn = 0
        for task in _heavy(tasks):
            if drawn >= TOP_TASKS:
                break
            if not task.curve or not task.default_seconds:
                continue
            xs = [n for n, _ in task.curve]
            ys = [best / task.default_seconds for _, best in task.curve]
            ax_rel.plot(xs, ys, drawstyle="steps-post", marker=".", label=task.name)
            drawn += 1
        ax_rel.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax_rel.set_yscale("log")
        ax_rel.set_xlabel("trials of the task")
        ax_rel.set_ylabel("best / default schedule latency")
        ax_rel.set_title(f"heaviest {drawn} task(s)" if drawn else "no task with a measured "
                         "default and a working candidate")
        if drawn:
            ax_rel.legend(fontsize="small", loc="best")
        ax_rel.grid(True, which="both", alpha=0.3)
        ax_rel.xaxis.set_major_locator(MaxNLocator(integer=True))

        label = "trials of these tasks"
        if timeline is None:
            timeline = _approx_timeline(tasks)
            label += " (order between tasks approximated)"
        if timeline:
            xs = [n for n, _ in timeline]
            ys = [s * 1e3 for _, s in timeline]
            ax_model.plot(xs, ys, drawstyle="steps-post", marker=".")
            ax_model.set_xlabel(label)
            ax_model.set_ylabel("estimated model latency (ms)")
            ax_model.set_title(f"model: {ys[0]:.3f} ms -> {ys[-1]:.3f} ms")
            ax_model.set_ylim(bottom=0)
            ax_model.grid(True, alpha=0.3)
            ax_model.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            missing = sum(1 for t in tasks if t.default_seconds is None)
            ax_model.text(0.5, 0.5, f"no model estimate: default latency not measured for "
                          f"{missing} task(s)", ha="center", va="center", wrap=True,
                          transform=ax_model.transAxes)
            ax_model.set_axis_off()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def report_rows(tasks: Sequence[Task]) -> list[dict]:
    """Per-task rows for ``--json``, heaviest (calls x default latency) first.

    Each row has ``name``, ``shapes``, ``calls``, ``default_us``, ``tuned_us`` (best working
    candidate), ``speedup`` (default / tuned), ``trials`` and ``failures``; unknown values are
    ``None``.
    """
    rows = []
    for t in _heavy(tasks):
        speedup = None
        if t.best_seconds and t.default_seconds:
            speedup = t.default_seconds / t.best_seconds
        rows.append({
            "name": t.name,
            "shapes": t.signature(),
            "calls": t.weight,
            "default_us": None if t.default_seconds is None else t.default_seconds * 1e6,
            "tuned_us": None if t.best_seconds is None else t.best_seconds * 1e6,
            "speedup": speedup,
            "trials": t.trials,
            "failures": t.failures,
        })
    return rows


def _summary(report: TuneReport) -> str:
    trials = sum(t.trials for t in report.tasks)
    failures = sum(t.failures for t in report.tasks)
    text = f"{len(report.tasks)} task(s), {trials} trial(s) ({failures} failed)"
    before, after = report.model_seconds(False), report.model_seconds(True)
    who = f"{report.model} ({len(report.model_tasks)} tasks)" if report.model else "all tasks"
    if before and after:
        text += (f"; estimated latency of {who}: default {before * 1e3:.3f} ms -> tuned "
                 f"{after * 1e3:.3f} ms ({before / after:.2f}x)")
    else:
        missing = sum(1 for t in report.model_tasks if t.default_seconds is None)
        text += f"; no latency estimate for {who}: {missing} task(s) without a default latency"
    return text


def cmd_tune_report(args, console) -> int:
    """``squeezer tune-report DIR [--png FILE] [--json FILE]``.

    Prints the task table and a summary (unless ``--quiet``), writes the PNG (default
    ``tune-report-<key dir name>.png`` in the current directory, not next to the records, which
    may be shipped) and, with ``--json``, the summary and per-task rows.
    """
    report = load_report(args.records)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        from squeezer.tune.progress import task_table

        console.print(task_table(report.tasks, f"tuning records in {report.directory}"))
        console.print(_summary(report))
    png = Path(getattr(args, "png", None) or f"tune-report-{report.directory.name}.png")
    title = f"{report.model} ({report.directory.name})" if report.model else report.directory.name
    plot_curves(report.tasks, png, title=title, timeline=report.timeline)
    out = [f"curves in {png}"]
    if getattr(args, "json", None):
        before, after = report.model_seconds(False), report.model_seconds(True)
        doc = {
            "records": str(report.directory),
            "model": report.model,
            "trials": sum(t.trials for t in report.tasks),
            "failures": sum(t.failures for t in report.tasks),
            "model_default_ms": None if before is None else before * 1e3,
            "model_tuned_ms": None if after is None else after * 1e3,
            "tasks": report_rows(report.tasks),
        }
        text = json.dumps(doc, indent=2) + "\n"
        _atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        out.append(f"rows in {args.json}")
    if not quiet:
        console.print("; ".join(out))
    return 0
