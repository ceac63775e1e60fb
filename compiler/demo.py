"""``squeezer demo``: train a small zoo model on real digits, compress it, compile, verify, and
benchmark every variant against torch and onnxruntime at the same thread count.

Trained weights are cached in the user cache directory, so a second run skips training. Later
issues add their compressed variants as rows (``demo_variants``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEMO_MODEL = "mobilenetv2"
CACHE_VERSION = 1


@dataclass(frozen=True)
class DemoRow:
    variant: str
    params: int
    artifact_bytes: int
    accuracy_torch: float
    accuracy_squeezer: float
    squeezer_ms: float
    torch_ms: float
    onnxruntime_ms: float
    threads: int


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    path = Path(os.environ.get("SQUEEZER_CACHE", user_cache_dir("squeezer"))) / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(key: str, build, make_empty):
    """Load a model's state dict cached under ``key``, or build, save (atomically) and return it."""
    import torch

    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        model = make_empty()
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval(), True
        except (RuntimeError, OSError, EOFError):
            path.unlink(missing_ok=True)  # a stale or broken cache entry: rebuild
    model = build()
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval(), False


def demo_variants(console, data, resolution: int) -> list[tuple[str, object]]:
    """(label, trained torch module) pairs: the baseline, then compressed variants."""
    from squeezer import zoo
    from squeezer.compression import compress
    from squeezer.data import train

    spec = zoo.spec(DEMO_MODEL, "small")
    epochs = spec.epochs or 10
    student_width = spec.knobs["width"] / 2  # half the channels of the teacher
    base_key = f"v{CACHE_VERSION}-{spec}"

    def train_teacher():
        console.print(f"training {DEMO_MODEL} (small) on digits, {epochs} epochs")
        return train(zoo.create(DEMO_MODEL, size="small"), epochs, data=data)

    teacher, hit = _cached(base_key, train_teacher, lambda: zoo.create(DEMO_MODEL, size="small"))
    if hit:
        console.print(f"{DEMO_MODEL}: trained weights from the cache ({cache_dir()})")
    recipe = [{"method": "distill", "student": {"zoo": DEMO_MODEL, "width": student_width},
               "temperature": 4.0, "alpha": 0.7, "epochs": 2 * epochs}]

    def distill():
        console.print(f"distilling into {DEMO_MODEL} width {student_width}")
        student, _ = compress(teacher, recipe, train_data=data, eval_data=data,
                              resolution=resolution, progress=not console.quiet)
        return student

    student, _ = _cached(f"{base_key}-distill-{json.dumps(recipe, sort_keys=True)}", distill,
                         lambda: zoo.create(DEMO_MODEL, size="small", width=student_width))
    return [(f"{DEMO_MODEL} fp32", teacher),
            (f"{DEMO_MODEL} width/2 distilled", student)]


def measure(label: str, model, data, threads: int, repeat: int = 200) -> DemoRow:
    """Compile (verified), save, measure accuracy of the compiled module and time the peers."""
    import torch

    import squeezer
    from squeezer.bench import onnxruntime_runner, squeezer_runner, time_call, torch_runner
    from squeezer.bench_zoo import export_onnx
    from squeezer.data import evaluate

    x1 = data.x_test[:1]
    compiled = squeezer.compile(model, (torch.from_numpy(x1),), threads=threads)
    with tempfile.TemporaryDirectory(prefix="squeezer-demo-") as tmp:
        art = compiled.save(Path(tmp) / "model.sqz")
        size = art.stat().st_size
        onnx_path = export_onnx(model, x1, Path(tmp) / "model.onnx")
        ort_ms = time_call(onnxruntime_runner(onnx_path, ["input"], [x1], threads), repeat)[0]
    logits = np.concatenate([compiled(data.x_test[i : i + 1]) for i in range(len(data.x_test))])
    acc_sqz = float((logits.argmax(1) == data.y_test).mean())
    return DemoRow(
        variant=label,
        params=sum(p.numel() for p in model.parameters()),
        artifact_bytes=size,
        accuracy_torch=evaluate(model, data=data),
        accuracy_squeezer=acc_sqz,
        squeezer_ms=time_call(squeezer_runner(compiled, [x1]), repeat)[0],
        torch_ms=time_call(torch_runner(model, [x1], threads), repeat)[0],
        onnxruntime_ms=ort_ms,
        threads=threads,
    )


def demo_table(rows: list[DemoRow]):
    from rich.table import Table

    t = Table(title="squeezer demo: digits, batch 1, median latency "
                    "(ratio > 1: squeezer is faster)")
    cols = ("variant", "params", "artifact bytes", "acc torch", "acc squeezer", "squeezer ms",
            "torch ms", "onnxruntime ms", "vs torch", "vs onnxruntime")
    for c in cols:
        t.add_column(c, justify="left" if c == "variant" else "right")
    for r in rows:
        t.add_row(r.variant, f"{r.params:,}", f"{r.artifact_bytes:,}",
                  f"{r.accuracy_torch:.2%}", f"{r.accuracy_squeezer:.2%}",
                  f"{r.squeezer_ms:.3f}", f"{r.torch_ms:.3f}", f"{r.onnxruntime_ms:.3f}",
                  f"{r.torch_ms / r.squeezer_ms:.2f}x", f"{r.onnxruntime_ms / r.squeezer_ms:.2f}x")
    return t


def run_demo(console, threads: int | None = None, json_path: str | None = None) -> list[DemoRow]:
    from squeezer import zoo
    from squeezer.data import load_digits
    from squeezer.targets import check_threads

    threads = check_threads(threads)
    resolution = zoo.spec(DEMO_MODEL, "small").input_shape[-1]
    data = load_digits(resolution)
    rows = []
    for label, model in demo_variants(console, data, resolution):
        with console.status(f"compiling, verifying and timing: {label}"):
            rows.append(measure(label, model, data, threads))
    console.print(demo_table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2))
    return rows
