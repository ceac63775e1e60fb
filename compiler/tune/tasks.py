"""Tuning tasks: the PrimFuncs a model compiles to, after squeezer's own graph passes.

Tasks are extracted from the module exactly as the compile pipeline builds it (graph passes,
legalization, fusion, then ``AttachAttrLayoutFreeBuffers`` so a tuned kernel may choose its weight
layout, which ``compile`` then folds into the constants). So a fused conv + bias + ReLU, or a
sparse or low-bit kernel that a graph pass introduced, is one task, and the records found while
tuning are keyed exactly as ``compile`` looks them up.

Each task carries an estimate of its time: the default schedule's measured latency once the
tuner has measured it, and before that a roofline bound from FLOPs and bytes moved.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm.s_tir.meta_schedule as ms
from tvm import relax
from tvm.s_tir.analysis import estimate_tir_flops


@dataclass
class Task:
    """One distinct PrimFunc of the model and how often the model calls it."""

    name: str
    mod: tvm.IRModule  # normalized one-function module ("main"), the workload MetaSchedule keys
    weight: int
    flops: float
    bytes: float
    kernel: str | None = None  # squeezer kernel family for a registered design space
    default_seconds: float | None = None  # measured latency of squeezer's default schedule
    best_seconds: float | None = None  # best tuned latency so far
    trials: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failure (first ... last line) -> count
    curve: list[tuple[int, float]] = field(default_factory=list)  # (trials, best seconds)

    @property
    def func(self) -> tvm.tirx.PrimFunc:
        return self.mod["main"]

    def signature(self) -> str:
        """``float32[1,32,112,112], float32[32,1,3,3] -> float32[1,32,112,112]`` style."""
        shapes = []
        for p in self.func.params:
            buf = self.func.buffer_map.get(p) if hasattr(self.func, "buffer_map") else None
            buf = buf if buf is not None else p
            shape = getattr(buf, "shape", None)
            if shape is None:
                continue
            dims = ",".join(str(int(d)) if isinstance(d, tvm.tirx.IntImm) else str(d)
                            for d in shape)
            shapes.append(f"{buf.dtype}[{dims}]")
        if not shapes:
            return ""
        return ", ".join(shapes[:-1]) + " -> " + shapes[-1]

    def roofline_seconds(self, peak_flops: float, bandwidth: float) -> float:
        return max(self.flops / peak_flops, self.bytes / bandwidth, 1e-7)

    def estimated_seconds(self, peak_flops: float, bandwidth: float) -> float:
        """Per-call time: measured default latency if known, else the roofline bound."""
        if self.default_seconds is not None:
            return self.default_seconds
        return self.roofline_seconds(peak_flops, bandwidth)


def prepare_for_tuning(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The compile pipeline's ``graph`` and ``legalize`` stages (fused, weights layout-free)."""
    from squeezer.pipeline import graph_stage, legalize_stage

    return legalize_stage(graph_stage(mod, target), target)


def extract(mod: tvm.IRModule, target: tvm.target.Target) -> list[Task]:
    """Distinct PrimFuncs of an already prepared module (see :func:`prepare_for_tuning`)."""
    tasks = []
    for ext in ms.relax_integration.extract_tasks(mod, target):
        norm = ext.dispatched[0]
        func = norm["main"]
        kernel = func.attrs.get("squeezer.kernel") if func.attrs else None
        tasks.append(
            Task(
                name=str(ext.task_name),
                mod=norm,
                weight=int(ext.weight),
                flops=float(_flops(norm)),
                bytes=float(_bytes(func)),
                kernel=str(kernel) if kernel is not None else None,
            )
        )
    return tasks


def _flops(mod: tvm.IRModule) -> float:
    func = mod["main"] if "main" in [gv.name_hint for gv in mod.get_global_vars()] else None
    if func is not None and func.attrs is not None and "squeezer.kernel" in func.attrs:
        if str(func.attrs["squeezer.kernel"]) == "int4_matmul":
            from squeezer.schedules.int4_matmul import kernel_flops as int4_flops

            return int4_flops(func)
        # data-dependent loops: TVM's estimate multiplies symbolic bounds into nonsense
        from squeezer.schedules.sparse_matmul import KERNEL as SPARSE
        from squeezer.schedules.sparse_matmul import kernel_flops

        if str(func.attrs["squeezer.kernel"]) == SPARSE:
            return kernel_flops(func)
    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001 - opaque kernels (extern calls) have no estimate
        return 0.0


def _bytes(func: tvm.tirx.PrimFunc) -> float:
    """Bytes of every parameter buffer: each is read or written at least once."""
    total = 0
    for p in func.params:
        buf = func.buffer_map.get(p) if hasattr(func, "buffer_map") else None
        buf = buf if buf is not None else p
        shape = getattr(buf, "shape", None)
        if shape is None:
            continue
        n = 1
        for d in shape:
            n *= int(d) if isinstance(d, tvm.tirx.IntImm) else 1
        total += n * tvm.DataType(buf.dtype).bits // 8
    return float(total)


def apply_records(
    mod: tvm.IRModule, target: tvm.target.Target, store
) -> tuple[tvm.IRModule, list[dict]]:
    """Replace each PrimFunc that has a record beating the default schedule with the record.

    ``mod`` is the prepared module (:func:`prepare_for_tuning`). Returns the module (tuned
    functions marked ``tirx.is_scheduled``, weight layout transforms split out and folded into the
    constants) and one entry per distinct function: name, weight, whether a record was applied,
    and the estimate of its time used for coverage.
    """
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    out = {}
    rows = []
    seen: dict[str, dict] = {}
    weights: dict[str, int] = {}
    main = mod["main"] if "main" in [g.name_hint for g in mod.get_global_vars()] else None
    if main is not None:
        for call_name in _call_tir_targets(main):
            weights[call_name] = weights.get(call_name, 0) + 1
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        norm = _normalize_mod(func)
        key = store.key_of(norm) if store is not None else None
        row = seen.get(key) if key else None
        if row is None:
            row = {
                "name": gv.name_hint,
                "weight": 0,
                "tuned": False,
                "flops": _flops(norm),
                "bytes": _bytes(func),
                "default_seconds": store.baselines.get(key) if key else None,
                "tuned_seconds": None,
            }
            rows.append(row)
            if key:
                seen[key] = row
        row["weight"] += weights.get(gv.name_hint, 1)
        if store is None or key is None:
            continue
        best = store.best_seconds(norm)
        base = store.baselines.get(key)
        if best is None or (base is not None and best >= base):
            continue  # no working record, or the default schedule is at least as fast
        sch = store.best_schedule(norm, target)
        if sch is None:
            continue
        new = sch.mod["main"]
        attrs = dict(func.attrs) if func.attrs else {}
        if "global_symbol" not in attrs:
            new = new.without_attr("global_symbol")
        for k, v in attrs.items():
            new = new.with_attr(k, v)
        out[gv] = new.with_attr("tirx.is_scheduled", True)
        row["tuned"] = True
        row["tuned_seconds"] = best
    if out:
        mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else tvm.IRModule(mod.functions)
        for gv, new in out.items():
            mod[gv] = new
        with target:
            mod = _split_layout_rewrites(mod)
            mod = relax.transform.FoldConstant()(mod)
            mod = relax.transform.DeadCodeElimination()(mod)
    return mod, rows


def _split_layout_rewrites(mod: tvm.IRModule) -> tvm.IRModule:
    """``SplitLayoutRewritePreproc``, with squeezer's own kernels set aside meanwhile.

    The pass rejects their nested blocks (a block per sparse row), and they never carry a
    layout rewrite: each is swapped for a stub of the same signature while the pass runs and
    put back afterwards.
    """
    kernels = {gv.name_hint: f for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
               and "squeezer.kernel" in f.attrs}
    if kernels:
        mod = tvm.IRModule(dict(mod.functions), attrs=mod.attrs, global_infos=mod.global_infos)
        for name, func in kernels.items():
            mod[mod.get_global_var(name)] = _stub_like(func)
    mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    for name, func in kernels.items():
        mod[mod.get_global_var(name)] = func
    return mod


def _stub_like(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """A one-block PrimFunc with ``func``'s parameters (the last one written with zeros)."""
    from tvm import te

    *inputs, out = func.params
    args = [te.placeholder([int(d) for d in p.shape], p.dtype, name=f"a{i}")
            for i, p in enumerate(inputs)]
    y = te.compute([int(d) for d in out.shape], lambda *_: tvm.tirx.const(0, out.dtype),
                   name="stub")
    return te.create_prim_func([*args, y]).with_attrs(dict(func.attrs))


def _call_tir_targets(func: relax.Function) -> list[str]:
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            if expr.op.name == "relax.call_tir" and isinstance(expr.args[0], tvm.ir.GlobalVar):
                names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(func, visit)
    return names


@functools.cache
def memory_bandwidth(seconds: float = 0.2) -> float:
    """Measured copy bandwidth in bytes/s (read + write), numpy on 64 MiB; once per process."""
    import time

    a = np.ones(16 << 20, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or best == float("inf"):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def peak_flops(target: tvm.target.Target) -> float:
    """Nominal fp32 peak: cores x SIMD lanes x 2 (FMA) x 2 ports x clock."""
    import psutil

    from squeezer.schedules._common import num_cores, vector_lanes

    freq = psutil.cpu_freq()
    ghz = (freq.max or freq.current) / 1000 if freq and (freq.max or freq.current) else 3.0
    return num_cores(target) * vector_lanes(target) * 2 * 2 * ghz * 1e9
