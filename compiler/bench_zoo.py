"""``squeezer bench zoo``: every full-size zoo model, compiled from torch and from its ONNX export,
verified against torch and onnxruntime, then timed against both peers at the same thread count."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from squeezer.bench import Row, onnxruntime_runner, row, squeezer_runner, torch_runner


def export_onnx(model, x, path: Path, input_name: str = "input") -> Path:
    """Export ``model`` to ONNX (opset 17) with fixed shapes, for onnxruntime and the ONNX path."""
    import torch

    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False,
                          opset_version=17, input_names=[input_name], output_names=["output"])
    return path


def bench_zoo_model(name: str, size: str, threads: int, repeat: int, workdir: Path,
                    log=lambda msg: None) -> list[Row]:
    """Compile ``name`` both ways (verified), then time squeezer, onnxruntime and torch."""
    import torch

    import squeezer
    from squeezer import zoo

    model = zoo.create(name, size=size)
    if hasattr(model, "condense"):  # CondenseNet deploys in its condensed (group conv) form
        model = model.condense().eval()
    shape = zoo.spec(name, size).input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    log(f"{name}: compiling from torch")
    compiled = squeezer.compile(model, (torch.from_numpy(x),), threads=threads)
    log(f"{name}: compiling from torch without tuning records")
    untuned = squeezer.compile(model, (torch.from_numpy(x),), threads=threads, use_records=False)
    coverage = (compiled.manifest.get("tuning") or {}).get("coverage", 0.0)
    onnx_path = export_onnx(model, x, workdir / f"{name}.onnx")
    log(f"{name}: compiling from ONNX")
    squeezer.compile(onnx_path, (x,), threads=threads)
    log(f"{name}: timing")
    case = f"{name}-{size}"
    tuned_row = row(case, "squeezer", squeezer_runner(compiled, [x]), threads, repeat)
    return [
        dataclasses.replace(tuned_row, note=f"tuning records cover {coverage:.0%}"),
        row(case, "squeezer-untuned", squeezer_runner(untuned, [x]), threads, repeat),
        row(case, "onnxruntime", onnxruntime_runner(onnx_path, ["input"], [x], threads),
            threads, repeat),
        row(case, "torch", torch_runner(model, [x], threads), threads, repeat),
    ]


def run_zoo_suite(args, console) -> list[Row]:
    """The CLI entry: ``--models`` (default all), ``--threads``, ``--repeat``."""
    from squeezer import zoo
    from squeezer.targets import check_threads

    threads = check_threads(args.threads)
    names = args.models or zoo.names()
    unknown = sorted(set(names) - set(zoo.names()))
    if unknown:
        from squeezer.errors import SqueezerError

        raise SqueezerError(f"unknown zoo model(s) {unknown}; known: {', '.join(zoo.names())}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
        for name in names:
            with console.status(f"{name}") as status:
                rows += bench_zoo_model(name, "full", threads, args.repeat, Path(tmp),
                                        log=lambda m, s=status: s.update(m))
            r = {x.impl: x.median_ms for x in rows if x.case == f"{name}-full"}
            console.print(f"{name}: verified (torch and ONNX paths); squeezer "
                          f"{r['squeezer']:.2f} ms (default schedules "
                          f"{r['squeezer-untuned']:.2f} ms), onnxruntime "
                          f"{r['onnxruntime']:.2f} ms, torch {r['torch']:.2f} ms")
    return rows
