"""``squeezer bench lowbit``: squeezer's int8, int4 and binary paths against fp32 and int8 peers.

Every squeezer row is ``squeezer.compile`` of a model as a user brings it (shipped tuning
records apply), timed in this process with the same thread count as every peer:

- ``gemm``: a 1024^3 linear layer quantized by squeezer's ``int8`` method, against onnxruntime
  ``MatMulInteger`` on the same integers, squeezer fp32 and torch fp32.
- ``conv``: ResNet-18 and MobileNetV2 convolutions (full size, batch 1): int8 (squeezer's
  ``int8`` method) and binary (XNOR-Net form: binarized input, per-filter ``alpha * sign(w)``;
  depthwise excluded) against squeezer fp32 and torch fp32.
- ``gemv``: int4 weights (per-group values) at batch 1: GB/s of the packed bytes against the
  measured memory bandwidth.
- ``e2e``: MobileNetV2 quantized by ``onnxruntime.quantization.quantize_static`` (QDQ) through
  squeezer and through onnxruntime, squeezer's own int8 model, and both runtimes in fp32.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from squeezer.bench import Report, onnxruntime_runner, squeezer_runner, torch_runner
from squeezer.bench_lowbit_cases import (
    BinaryConv,
    ConvCase,
    EndToEndCase,
    GemmCase,
    GemvCase,
    Suite,
    conv,
    conv_arrays,
    full_suite,
    int4_weight,
    int8_model,
    linear,
    matmul_integer_onnx,
    ort_quantize_static,
    quick_suite,
    rng_for,
)
from squeezer.bench_lowbit_report import evaluate_goals, tables
from squeezer.bench_sparse_peers import Bench, CaseResult, compile_model, torch_dense


def _fallbacks(mod) -> int:
    return len(mod.manifest.get("float_fallback") or [])


def _kernels(mod) -> list[str]:
    """The compiled model's kernel names (``fused_int8_matmul...``, ``bitserial...``)."""
    return [k["name"] for k in (mod.manifest.get("tuning") or {}).get("kernels", [])]


def gemm_case(b: Bench, c: GemmCase) -> CaseResult:
    rng = rng_for(c.m, c.n, c.k)
    w = (rng.standard_normal((c.n, c.k)) / np.sqrt(c.k)).astype(np.float32)
    x = rng.standard_normal((c.m, c.k)).astype(np.float32)
    res = CaseResult("gemm", c.name, c.name, info={"m": c.m, "n": c.n, "k": c.k})
    scale_w = np.abs(w).max(axis=1) / 127
    w_q = np.round(w / scale_w[:, None]).astype(np.int8)
    a_q = rng.integers(0, 256, (c.m, c.k), dtype=np.uint8)
    notes = {}

    def int8():
        mod, notes["int8"] = compile_model(int8_model(linear(w), x[:256]), x, b.threads)
        res.info.update(float_fallback=_fallbacks(mod), int8_kernels=_kernels(mod))
        return squeezer_runner(mod, [x])

    b.put(res, "squeezer-int8", b.measure(c.name, "squeezer-int8", int8))
    b.put(res, "onnxruntime-int8", b.measure(c.name, "onnxruntime-int8", lambda: (
        onnxruntime_runner(matmul_integer_onnx(np.ascontiguousarray(w_q.T), c.m, 128), ["A"],
                           [a_q], b.threads))))
    b.put(res, "squeezer-fp32", b.measure(c.name, "squeezer-fp32", lambda: squeezer_runner(
        compile_model(linear(w), x, b.threads)[0], [x])))
    b.put(res, "torch-fp32", b.measure(c.name, "torch-fp32", lambda: torch_dense(w, x)))
    res.note = "; ".join(f"{k}: {v}" for k, v in notes.items())
    return res


def conv_case(b: Bench, c: ConvCase) -> CaseResult:
    w, x = conv_arrays(c)
    groups = c.cin if c.depthwise else 1
    float_mod = conv(w, c.stride, groups)
    res = CaseResult("conv", c.name, c.name, info=asdict(c))
    b.put(res, "squeezer-fp32", b.measure(c.name, "squeezer-fp32", lambda: squeezer_runner(
        compile_model(float_mod, x, b.threads)[0], [x])))
    b.put(res, "torch-fp32", b.measure(c.name, "torch-fp32",
                                       lambda: torch_runner(float_mod, [x], b.threads)))

    def int8():
        mod, note = compile_model(int8_model(float_mod, x), x, b.threads)
        res.info.update(float_fallback=_fallbacks(mod), int8_kernels=_kernels(mod))
        return squeezer_runner(mod, [x])

    b.put(res, "squeezer-int8", b.measure(c.name, "squeezer-int8", int8))
    if c.depthwise:
        res.missing["squeezer-binary"] = "depthwise stays int8/fp32 (the brief excludes it)"
    else:
        b.put(res, "squeezer-binary", b.measure(c.name, "squeezer-binary", lambda: (
            squeezer_runner(compile_model(BinaryConv.build(w, c.stride), x, b.threads)[0],
                            [x]))))
    return res


def gemv_case(b: Bench, c: GemvCase, bandwidth: float) -> CaseResult:
    values, nbytes = int4_weight(c.n, c.k, c.group)
    x = rng_for(c.k).standard_normal((1, c.k)).astype(np.float32)
    dense = rng_for(c.n, c.k).standard_normal((c.n, c.k)).astype(np.float32)
    res = CaseResult("gemv", c.name, c.name, info={"n": c.n, "k": c.k, "group": c.group,
                                                   "packed_bytes": nbytes,
                                                   "bandwidth_gbps": bandwidth / 1e9})
    b.put(res, "squeezer-int4", b.measure(c.name, "squeezer-int4", lambda: squeezer_runner(
        compile_model(linear(values), x, b.threads)[0], [x])))
    b.put(res, "squeezer-fp32", b.measure(c.name, "squeezer-fp32", lambda: squeezer_runner(
        compile_model(linear(dense), x, b.threads)[0], [x])))
    b.put(res, "torch-fp32", b.measure(c.name, "torch-fp32", lambda: torch_dense(dense, x)))
    if "squeezer-int4" in res.ms:
        gbps = nbytes / (res.ms["squeezer-int4"] * 1e-3) / 1e9
        res.info.update(int4_gbps=gbps, bandwidth_share=gbps / (bandwidth / 1e9))
    return res


def e2e_case(b: Bench, c: EndToEndCase, tmp: Path) -> CaseResult:
    import squeezer
    from squeezer import zoo
    from squeezer.bench_zoo import export_onnx

    model = zoo.create(c.model, c.size).eval()
    shape = zoo.spec(c.model, c.size).input_shape
    rng = rng_for(len(c.model), shape[-1])
    x = rng.standard_normal(shape).astype(np.float32)
    calibration = rng.standard_normal((8, *shape[1:])).astype(np.float32)
    res = CaseResult("e2e", c.name, c.name, info={"model": c.model, "size": c.size,
                                                  "calibration": "8 random inputs, min-max"})
    fp32 = export_onnx(model, x, tmp / "fp32.onnx")
    qdq = ort_quantize_static(fp32, tmp / "qdq.onnx", calibration)

    def onnx_compiled():
        mod = squeezer.compile(str(qdq), [x], threads=b.threads)
        res.info["float_fallback"] = _fallbacks(mod)
        return squeezer_runner(mod, [x])

    def own():
        mod, _ = compile_model(int8_model(model, calibration), x, b.threads)
        res.info["own_float_fallback"] = _fallbacks(mod)
        return squeezer_runner(mod, [x])

    for impl, make in (
        ("squeezer-int8", onnx_compiled),
        ("onnxruntime-int8", lambda: onnxruntime_runner(qdq, ["input"], [x], b.threads)),
        ("squeezer-own-int8", own),
        ("squeezer-fp32", lambda: squeezer_runner(compile_model(model, x, b.threads)[0], [x])),
        ("onnxruntime-fp32", lambda: onnxruntime_runner(fp32, ["input"], [x], b.threads)),
    ):
        b.put(res, impl, b.measure(c.name, impl, make))
    return res


def bench_lowbit(suite: Suite, threads: int = 2, *, repeat: int = 50, budget_s: float = 0.3,
                 log: Callable[[str], None] = lambda msg: None) -> Report:
    """Run ``suite``; the report holds the rows, the rich tables and the JSON fields (every
    case with its medians, the goals, the measured bandwidth)."""
    import torch

    from squeezer.bench import cpu_seconds as _cpu_seconds
    from squeezer.bench import others_cpu_seconds
    from squeezer.targets import set_runtime_threads
    from squeezer.tune.tasks import memory_bandwidth

    threads = set_runtime_threads(threads)
    torch.set_num_threads(threads)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    bandwidth = memory_bandwidth()
    b = Bench(threads, repeat=repeat, budget_s=budget_s, log=log)
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-lowbit-") as tmp:
        cases = [gemm_case(b, c) for c in suite.gemms]
        cases += [conv_case(b, c) for c in suite.convs]
        cases += [gemv_case(b, c, bandwidth) for c in suite.gemvs]
        cases += [e2e_case(b, c, Path(tmp)) for c in suite.e2e]
    cpu1, wall = _cpu_seconds(), time.perf_counter() - wall0
    others = others_cpu_seconds(cpu0, cpu1)
    goals = evaluate_goals(cases)
    extra = {"suite": "lowbit", "threads": threads, "memory_bandwidth_gbps": bandwidth / 1e9,
             "wall_s": wall, "other_processes_cpu_s": others, "cases": [asdict(r) for r in cases],
             "goals": goals}
    return Report(b.rows, tables(cases, goals, threads, others, wall), extra)


def run_lowbit_suite(args, console) -> Report:
    """The CLI entry: ``--quick``, ``--threads`` (default 2), ``--repeat``."""
    from squeezer.targets import check_threads

    threads = check_threads(args.threads or 2)
    suite = quick_suite() if getattr(args, "quick", False) else full_suite()
    with console.status("low-bit suite") as status:
        return bench_lowbit(suite, threads, repeat=args.repeat, log=status.update)
