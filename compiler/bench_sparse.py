"""``squeezer bench sparse``: squeezer's sparse kernels against dense and sparse peers.

Three sections, all timed in this process with the same thread count for every peer (torch
``set_num_threads``, onnxruntime intra-op threads, TVM's runtime pool; scipy has no threads):

- ``kernel``: BERT-base linear layers, pruned unstructured or in 16x1 blocks. ``squeezer`` is
  the pruned ``torch.nn.Linear`` through ``squeezer.compile``, as a user gets it: the cost
  model picks the format, the shipped tuning records apply (``tune_sparse_records`` makes
  them). ``squeezer-kernel`` is ``sparse_matmul`` alone in the case's block shape with its
  default schedule. Peers: squeezer dense (the unpruned layer through ``squeezer.compile``),
  torch ``F.linear``, torch CSR, scipy CSR and onnxruntime MatMul. The bound is the bytes that
  must move (stored weight, activations in and out) over the measured memory bandwidth.
- ``conv``: zoo convolutions as one-layer models through ``squeezer.compile`` (1x1 and 3x3
  layers go sparse where the cost model says so; the note says which kernel ran), against
  squeezer dense, torch and onnxruntime.
- ``e2e``: a zoo model with its 1x1 convolutions and linear layer magnitude-pruned.

Dense peers do not depend on the zeros: they are timed once per shape (their rows' case is the
shape without sparsity) and shared by that shape's sparse cases. Ratios are taken between
medians of this run only.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from squeezer.bench import (
    Report,
    onnxruntime_runner,
    others_cpu_seconds,
    squeezer_runner,
    torch_runner,
)
from squeezer.bench import cpu_seconds as _cpu_seconds
from squeezer.bench_sparse_cases import (
    ConvCase,
    EndToEndCase,
    KernelCase,
    Suite,
    conv_arrays,
    full_suite,
    kernel_arrays,
    prune_model_,
    quick_suite,
)
from squeezer.bench_sparse_peers import Bench, CaseResult
from squeezer.bench_sparse_report import evaluate_goals, tables

KERNEL_PEERS = ("squeezer", "squeezer-kernel", "squeezer-dense", "torch", "torch-csr",
                "scipy-csr", "onnxruntime")
CONV_PEERS = ("squeezer", "squeezer-dense", "torch", "onnxruntime")
E2E_PEERS = ("squeezer", "squeezer-dense", "onnxruntime", "torch")
PEERS = {"kernel": KERNEL_PEERS, "conv": CONV_PEERS, "e2e": E2E_PEERS}


# -- sections: one function per case, so the builders' closures see only that case ----------------
def kernel_case(b: Bench, c: KernelCase, bandwidth: float, target) -> CaseResult:
    """A linear layer: squeezer.compile of the pruned layer (with the tuning records, the
    format the cost model picks), sparse_matmul alone in the case's block shape (default
    schedule), the sparse peers, and the dense peers once per shape."""
    from squeezer.bench_sparse_peers import (
        checked_kernel,
        compile_model,
        linear_module,
        matmul_onnx,
        scipy_csr,
        torch_csr,
        torch_dense,
    )
    from squeezer.schedules.sparse_cost import choose_format

    dense, x, w = kernel_arrays(c)
    res = CaseResult("kernel", c.name, c.group, info={
        "n": c.n, "k": c.k, "batch": c.batch, "sparsity": c.sparsity, "block": list(c.block),
        "density": float(np.count_nonzero(w)) / w.size})
    b.dense_group(res, {
        "squeezer-dense": lambda: squeezer_runner(
            compile_model(linear_module(dense), x, b.threads)[0], [x]),
        "torch": lambda: torch_dense(dense, x),
        "onnxruntime": lambda: onnxruntime_runner(matmul_onnx(dense, c.batch), ["X"], [x],
                                                  b.threads),
    })
    runs, notes = [], []

    def compiled():
        mod, note = compile_model(linear_module(w), x, b.threads)
        notes.append(note)  # compile verified it against torch
        return squeezer_runner(mod, [x])

    def kernel():
        runs.append(checked_kernel(w, x, c.block, b.threads))
        return runs[-1].call

    b.put(res, "squeezer", b.measure(c.name, "squeezer", compiled))
    b.put(res, "squeezer-kernel", b.measure(c.name, "squeezer-kernel", kernel))
    b.put(res, "torch-csr", b.measure(c.name, "torch-csr", lambda: torch_csr(w, x)))
    b.put(res, "scipy-csr", b.measure(c.name, "scipy-csr", lambda: scipy_csr(w, x), 1))
    if runs:
        moved = runs[-1].nbytes + x.nbytes + c.batch * c.n * 4
        res.info.update(stored_bytes=runs[-1].nbytes, moved_bytes=moved,
                        bound_ms=moved / bandwidth * 1e3)
    fmt = choose_format(w, c.batch, target)
    res.info["compile_format"] = "dense" if fmt is None else f"bsr{fmt[0]}x{fmt[1]}"
    res.note = f"compile picks {res.info['compile_format']}"
    if notes:
        res.note += f", {notes[-1]}"
    if {"squeezer-kernel", "squeezer-dense"} <= set(res.ms) and fmt in (None, c.block):
        # the cost model's choice against the two kernels just measured
        dense_faster = res.ms["squeezer-dense"] < res.ms["squeezer-kernel"]
        res.info["cost_model_right"] = (fmt is None) == dense_faster
        if not res.info["cost_model_right"]:
            res.note += f" ({'dense' if dense_faster else 'sparse'} measured faster)"
    return res


def conv_case(b: Bench, c: ConvCase, onnx_path: Path) -> CaseResult:
    """A one-conv model: squeezer on the pruned weight, the dense peers once per shape."""
    from squeezer.bench_sparse_peers import (
        compile_model,
        conv_module,
        has_sparse_conv_kernel,
        sparse_kernels,
        sparse_layers,
    )
    from squeezer.bench_zoo import export_onnx

    dense, x, w = conv_arrays(c)
    dense_mod = conv_module(dense, c.stride)
    res = CaseResult("conv", c.name, c.group, info={
        "model": c.model, "layer": c.layer, "cin": c.cin, "cout": c.cout, "kernel": c.kernel,
        "stride": c.stride, "size": list(c.size), "sparsity": c.sparsity})
    b.dense_group(res, {
        "squeezer-dense": lambda: squeezer_runner(compile_model(dense_mod, x, b.threads)[0], [x]),
        "torch": lambda: torch_runner(dense_mod, [x], b.threads),
        "onnxruntime": lambda: onnxruntime_runner(
            export_onnx(dense_mod, x, onnx_path), ["input"], [x], b.threads),
    })
    pruned = conv_module(w, c.stride)
    compiled = []

    def sparse():
        compiled.append(compile_model(pruned, x, b.threads))
        return squeezer_runner(compiled[-1][0], [x])

    b.put(res, "squeezer", b.measure(c.name, "squeezer", sparse))
    if compiled:
        mod, records = compiled[-1]
        res.info["sparse_layers"] = sparse_layers(mod)
        res.info["sparse_kernels"] = sparse_kernels(mod)
        if res.info["sparse_layers"]:
            res.note = "sparse: " + (", ".join(res.info["sparse_kernels"]) or "call_tir")
        elif c.kernel != 1 and not has_sparse_conv_kernel():
            res.note = f"sparse {c.kernel}x{c.kernel}: not implemented (squeezer runs it dense)"
        else:
            res.note = "the cost model kept it dense"
        if "failed" in records:
            res.note += f"; {records}"
    return res


def e2e_case(b: Bench, c: EndToEndCase, onnx_path: Path) -> CaseResult:
    """A whole zoo model: squeezer pruned and unpruned; onnxruntime and torch on the pruned."""
    from squeezer import zoo
    from squeezer.bench_sparse_peers import compile_model, sparse_layers
    from squeezer.bench_zoo import export_onnx

    model = zoo.create(c.model, c.size)
    x = np.random.default_rng(0).standard_normal(zoo.spec(c.model, c.size).input_shape)
    x = x.astype(np.float32)
    pruned = copy.deepcopy(model)
    count = prune_model_(pruned, c.sparsity)
    res = CaseResult("e2e", c.name, c.name, info={
        "model": c.model, "size": c.size, "sparsity": c.sparsity, "pruned_layers": count})
    notes = {}

    def compiled(m, impl):
        mod, notes[impl] = compile_model(m, x, b.threads)
        res.info[f"{impl}_sparse_layers"] = sparse_layers(mod)
        return squeezer_runner(mod, [x])

    # The goal's two rows are timed in alternating rounds; the other runtimes' thread pools are
    # not kept alive beside them.
    squeezers = b.measure_rounds(c.name, {"squeezer": lambda: compiled(pruned, "squeezer"),
                                          "squeezer-dense": lambda: compiled(model,
                                                                             "squeezer-dense")})
    for impl, value in squeezers.items():
        b.put(res, impl, value)
    b.put(res, "onnxruntime", b.measure(c.name, "onnxruntime", lambda: onnxruntime_runner(
        export_onnx(pruned, x, onnx_path), ["input"], [x], b.threads)))
    b.put(res, "torch", b.measure(c.name, "torch", lambda: torch_runner(pruned, [x], b.threads)))
    sparse_n = res.info.get("squeezer_sparse_layers", "?")
    res.note = (f"{sparse_n} of {count} pruned layers sparse; "
                + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    return res


# -- entry points --------------------------------------------------------------------------------



def bench_sparse(suite: Suite, threads: int = 2, *, repeat: int = 50, budget_s: float = 0.3,
                 log: Callable[[str], None] = lambda msg: None) -> Report:
    """Run ``suite``; the report holds the measured rows, the tables and the JSON fields.

    Parameters
    ----------
    suite : Suite
        The cases (:func:`~squeezer.bench_sparse_cases.full_suite` or ``quick_suite``).
    threads : int
        Threads for every peer (scipy runs on one: it has no threads).
    repeat : int
        Most samples per measurement; fewer when ``budget_s`` is spent first (at least 5).
    budget_s : float
        Seconds of timing per measurement, warm-up excluded.
    log : callable
        Receives a progress line before each measurement.

    Returns
    -------
    Report
        ``rows`` (one per measurement), ``tables`` (rich), ``extra``: ``cases`` (every case
        with its medians and, per peer without a time, the reason), ``goals`` and the
        measured memory bandwidth.
    """
    import torch

    from squeezer.targets import make_target, set_runtime_threads
    from squeezer.tune.tasks import memory_bandwidth

    threads = set_runtime_threads(threads)
    torch.set_num_threads(threads)
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    bandwidth = memory_bandwidth()
    b = Bench(threads, repeat=repeat, budget_s=budget_s, log=log)
    target = make_target(threads)
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-sparse-") as tmp:
        cases = [kernel_case(b, c, bandwidth, target) for c in suite.kernels]
        cases += [conv_case(b, c, Path(tmp) / f"conv{i}.onnx") for i, c in enumerate(suite.convs)]
        cases += [e2e_case(b, c, Path(tmp) / f"e2e{i}.onnx") for i, c in enumerate(suite.e2e)]
    for res in cases:
        bound = res.info.get("bound_ms")
        if bound and "squeezer" in res.ms:
            res.info["squeezer_over_bound"] = res.ms["squeezer"] / bound
    goals = evaluate_goals(cases)
    cpu_end, wall = _cpu_seconds(), time.perf_counter() - wall_start
    others = others_cpu_seconds(cpu_start, cpu_end)
    extra = {
        "suite": "sparse",
        "threads": threads,
        "memory_bandwidth_gbps": bandwidth / 1e9,
        # other processes on the machine skew every peer: the CPU time they used in this run
        "wall_s": wall,
        "other_processes_cpu_s": others,
        "kernel_schedule": ("squeezer: squeezer.compile with the tuning records; "
                            "squeezer-kernel: sparse_matmul in the case's block, default schedule"),
        "peers": {k: list(v) for k, v in PEERS.items()},
        "cases": [asdict(r) for r in cases],
        "goals": goals,
    }
    return Report(b.rows, tables(cases, goals, threads, bandwidth, others, wall), extra)


def run_sparse_suite(args, console) -> Report:
    """The CLI entry: ``--quick``, ``--threads`` (default 2), ``--repeat``."""
    from squeezer.targets import check_threads

    threads = check_threads(args.threads or 2)
    suite = quick_suite() if getattr(args, "quick", False) else full_suite()
    with console.status("sparse suite") as status:
        return bench_sparse(suite, threads, repeat=args.repeat, log=status.update)
