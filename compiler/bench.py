"""Benchmarks: squeezer and its peers timed side by side, same process, same threads.

Every implementation is timed the same way: warm-up calls, then ``repeat`` samples of the wall
time of one call with inputs already in the implementation's own tensor type; we report the
median, min and max in milliseconds. Ratios are only ever taken between rows of one run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from squeezer.errors import SqueezerError


@dataclass(frozen=True)
class Row:
    case: str
    impl: str
    median_ms: float
    min_ms: float
    max_ms: float
    threads: int
    note: str = ""


@dataclass
class Report:
    """What a suite hands back: measured rows, the tables to print and extra JSON fields."""

    rows: list[Row]
    tables: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def time_call(fn: Callable[[], object], repeat: int = 50, warmup: int = 5,
              number: int = 1) -> tuple[float, ...]:
    """Median, min and max milliseconds of ``fn()`` over ``repeat`` samples after ``warmup``
    calls; a sample is the mean of ``number`` back-to-back calls (for calls of microseconds)."""
    if repeat < 1:
        raise SqueezerError(f"--repeat must be >= 1, got {repeat}")
    if number < 1:
        raise SqueezerError(f"number must be >= 1, got {number}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / number)
    arr = np.asarray(samples)
    return float(np.median(arr)), float(arr.min()), float(arr.max())


def row(case: str, impl: str, fn: Callable[[], object], threads: int, repeat: int,
        warmup: int = 5, number: int = 1) -> Row:
    med, lo, hi = time_call(fn, repeat, warmup, number)
    return Row(case, impl, med, lo, hi, threads)


# -- peers ---------------------------------------------------------------------------------------
def onnxruntime_runner(model: str | os.PathLike | bytes, names: Sequence[str],
                       arrays: Sequence[np.ndarray], threads: int) -> Callable[[], object]:
    """A zero-argument callable running onnxruntime fp32 on fixed inputs with ``threads``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    feed = {n: np.ascontiguousarray(a) for n, a in zip(names, arrays, strict=True)}
    return lambda: sess.run(None, feed)


def torch_runner(module, arrays: Sequence[np.ndarray], threads: int) -> Callable[[], object]:
    """A zero-argument callable running torch eager (no grad) on fixed inputs with ``threads``."""
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]

    def run():
        with torch.inference_mode():
            return module(*tensors)

    return run


def squeezer_runner(module, arrays: Sequence[np.ndarray]) -> Callable[[], object]:
    prepared = module.prepare(*arrays)
    return lambda: module.run_prepared(prepared)


# -- reporting -----------------------------------------------------------------------------------
def cpu_seconds() -> tuple[float, float] | None:
    """``(busy CPU-seconds of the whole machine, CPU-seconds of this process)`` (Linux only):
    their growth over a benchmark run tells how much other processes ran beside it."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    t = os.times()
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    return busy, t.user + t.system + t.children_user + t.children_system


def others_cpu_seconds(start: tuple[float, float] | None, end: tuple[float, float] | None
                       ) -> float | None:
    """CPU-seconds other processes used between two :func:`cpu_seconds` readings."""
    if not start or not end:
        return None
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1]))


def write_json(rows: Sequence[Row], path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``{"rows": [...], **extra}`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"rows": [asdict(r) for r in rows], **(extra or {})}, indent=2))
    os.replace(tmp, path)


def table(rows: Sequence[Row], title: str = "benchmark", baseline: str = "squeezer"):
    """A rich table; ``vs {baseline}`` is each row's median over the baseline's in its case."""
    from rich.table import Table

    t = Table(title=f"{title} (median of repeats; ratio > 1: {baseline} is faster)")
    notes = any(r.note for r in rows)
    cols = ["case", "impl", "median ms", "min ms", "max ms", "threads", f"vs {baseline}"]
    for col in cols + (["note"] if notes else []):
        t.add_column(col, justify="left" if col in ("case", "impl", "note") else "right")
    base = {r.case: r.median_ms for r in rows if r.impl == baseline}
    for r in rows:
        ratio = f"{r.median_ms / base[r.case]:.2f}x" if r.case in base else "-"
        cells = [r.case, r.impl, f"{r.median_ms:.3f}", f"{r.min_ms:.3f}", f"{r.max_ms:.3f}",
                 str(r.threads), ratio]
        t.add_row(*cells, *([r.note] if notes else []))
    return t


# -- `squeezer bench MODEL.sqz` ------------------------------------------------------------------
def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file by name; a clear error for a missing or unreadable file."""
    from squeezer.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: inputs file not found")
    try:
        return dict(np.load(path, allow_pickle=False))
    except Exception as err:
        raise InputError(f"{path}: not a readable .npz file: {err}") from None


def load_npz_inputs(path: str | os.PathLike, specs) -> list[np.ndarray]:
    """Inputs from an ``.npz`` keyed by input name (a lone array fits a lone input)."""
    from squeezer.errors import InputError

    data = read_npz(path)
    if len(specs) == 1 and len(data) == 1:
        return [next(iter(data.values()))]
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InputError(f"{path}: missing input(s) {missing}; it holds {sorted(data)}")
    return [data[s.name] for s in specs]


def bench_artifact(path: str | os.PathLike, *, inputs: str | None = None, repeat: int = 50,
                   against: str | None = None, threads: int | None = None) -> list[Row]:
    """Time an artifact, and the ``against`` model (ONNX or .pt2) on the same inputs."""
    import squeezer
    from squeezer.verify import random_inputs

    mod = squeezer.load(path, threads=threads)
    arrays = load_npz_inputs(inputs, mod.inputs) if inputs else random_inputs(mod.inputs)
    case = Path(path).stem
    rows = [row(case, "squeezer", squeezer_runner(mod, arrays), mod.threads, repeat)]
    if against:
        peer = Path(against)
        if not peer.exists():
            raise SqueezerError(f"{peer}: --against model not found")
        if peer.suffix == ".onnx":
            names = [s.name for s in mod.inputs]
            fn = onnxruntime_runner(peer, names, arrays, mod.threads)
            rows.append(row(case, "onnxruntime", fn, mod.threads, repeat))
        elif peer.suffix == ".pt2":
            import torch

            eager = torch.export.load(str(peer)).module()
            rows.append(row(case, "torch", torch_runner(eager, arrays, mod.threads),
                            mod.threads, repeat))
        else:
            raise SqueezerError(f"{peer}: --against takes an .onnx or .pt2 file")
    return rows
