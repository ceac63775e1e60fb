"""What ``squeezer bench sparse`` times, and how: squeezer's sparse kernel on its own, one-layer
models for the peers (torch dense and CSR, scipy CSR, onnxruntime, squeezer's own dense path),
and the timer that turns each into a row or, when it fails, into a reason.

Each builder returns a zero-argument callable on fixed inputs, already in the implementation's
own tensor type, so that only the call is timed. The sparse peers get their preferred layout
(``X^T`` contiguous); squeezer's kernel takes ``X`` as a linear layer receives it and packs it.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from squeezer.bench import Row, row


@dataclass
class CaseResult:
    """One case: median ms per peer, or the reason a peer has no time."""

    section: str
    case: str
    group: str
    ms: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class Bench:
    """Times implementations into rows; a failure becomes an explicit reason, not a crash."""

    threads: int
    repeat: int = 50  # most samples per measurement
    budget_s: float = 0.3  # time per measurement, before the sample count is capped
    min_sample_s: float = 2e-3  # calls faster than this are batched into one sample
    log: Callable[[str], None] = lambda msg: None
    rows: list[Row] = field(default_factory=list)
    shared: dict[str, dict[str, float | str]] = field(default_factory=dict)

    def time(self, case: str, impl: str, fn: Callable[[], object], threads: int) -> Row:
        fn()  # cold call: lazy initialization, first-touch page faults
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        number = min(1000, max(1, int(self.min_sample_s / once)))
        repeat = int(np.clip(self.budget_s / (once * number), min(5, self.repeat), self.repeat))
        warmup = max(1, min(5 * number, int(0.05 / once)))
        r = row(case, impl, fn, threads, repeat, warmup=warmup, number=number)
        self.rows.append(r)
        return r

    def measure(self, case: str, impl: str, make: Callable[[], Callable[[], object]],
                threads: int | None = None) -> float | str:
        """Median ms of the callable ``make()`` builds, or why there is none."""
        self.log(f"{case}: {impl}")
        try:
            return self.time(case, impl, make(), threads or self.threads).median_ms
        except Exception as err:  # noqa: BLE001 - reported in the table and the JSON
            first = (str(err).strip().splitlines() or ["(no message)"])[0]
            return f"{type(err).__name__}: {first[:160]}"

    def measure_rounds(self, case: str, makers: dict[str, Callable[[], Callable[[], object]]],
                       rounds: int = 3) -> dict[str, float | str]:
        """Build every callable, then time them in alternating rounds (A B A B ...) with a
        share of the budget each: a transient load on the machine then hits every peer alike.
        A peer's median is the median of its rounds' medians."""
        built: dict[str, Callable[[], object]] = {}
        out: dict[str, float | str] = {}
        for impl, make in makers.items():
            self.log(f"{case}: building {impl}")
            try:
                built[impl] = make()
            except Exception as err:  # noqa: BLE001 - reported in the table and the JSON
                first = (str(err).strip().splitlines() or ["(no message)"])[0]
                out[impl] = f"{type(err).__name__}: {first[:160]}"
        per: dict[str, list[Row]] = {impl: [] for impl in built}
        budget, self.budget_s = self.budget_s, self.budget_s / rounds
        try:
            for r in range(rounds):
                for impl, fn in built.items():
                    self.log(f"{case}: {impl} (round {r + 1} of {rounds})")
                    per[impl].append(self.time(case, impl, fn, self.threads))
                    self.rows.pop()  # one row per peer, below
        finally:
            self.budget_s = budget
        for impl, rows in per.items():
            med = float(np.median([x.median_ms for x in rows]))
            self.rows.append(Row(case, impl, med, min(x.min_ms for x in rows),
                                 max(x.max_ms for x in rows), self.threads,
                                 f"median of {rounds} alternating rounds"))
            out[impl] = med
        return out

    def put(self, res: CaseResult, impl: str, value: float | str) -> None:
        if isinstance(value, str):
            res.missing[impl] = value
        else:
            res.ms[impl] = value

    def dense_group(self, res: CaseResult, peers: dict[str, Callable]) -> None:
        """Time the dense peers of ``res.group`` once; every case of the group shares them."""
        if res.group not in self.shared:
            self.shared[res.group] = {impl: self.measure(res.group, impl, make)
                                      for impl, make in peers.items()}
        for impl, value in self.shared[res.group].items():
            self.put(res, impl, value)


@dataclass
class KernelRun:
    """A compiled ``sparse_matmul`` with its arguments bound: ``call()`` runs it once."""

    call: Callable[[], object]
    output: Callable[[], np.ndarray]
    nbytes: int  # the stored weight: BSR data, indices and row pointers


def squeezer_kernel(w: np.ndarray, x: np.ndarray, block: tuple[int, int],
                    threads: int) -> KernelRun:
    """``x @ w.T`` by squeezer's ``sparse_matmul`` on ``w`` stored in ``block``s.

    The kernel has its default schedule: tuning records apply only inside ``squeezer.compile``.
    """
    import tvm

    from squeezer.schedules import default_schedule_pass
    from squeezer.schedules.sparse_matmul import SparseWeight, sparse_matmul_func
    from squeezer.targets import make_target

    target = make_target(threads)
    sw = SparseWeight.for_product(w, block, x.shape[0])
    func = sparse_matmul_func(sw, x.shape[0], b_layout="pk", y_layout="pn")
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    exe = tvm.compile(default_schedule_pass(target)(mod), target)
    dev = tvm.cpu()
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    arrays = (x, sw.data, sw.indices, sw.indptr, np.zeros(w.shape[0], np.float32), out)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    main = exe.mod["main"]
    return KernelRun(lambda: main(*args), lambda: args[-1].numpy(), sw.nbytes)


def checked_kernel(w: np.ndarray, x: np.ndarray, block: tuple[int, int],
                   threads: int) -> KernelRun:
    """:func:`squeezer_kernel`, run once and compared with float64 numpy before it is timed."""
    run = squeezer_kernel(w, x, block, threads)
    run.call()
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(run.output(), want, rtol=1e-4, atol=1e-3,
                               err_msg="squeezer sparse_matmul differs from numpy")
    return run


def _inference(fn: Callable[[], object]) -> Callable[[], object]:
    import torch

    def run():
        with torch.inference_mode():
            return fn()

    return run


def torch_dense(w: np.ndarray, x: np.ndarray) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    return _inference(lambda: F.linear(xt, wt))


def torch_csr(w: np.ndarray, x: np.ndarray) -> Callable[[], object]:
    """``W_csr @ X^T`` (``n x batch``): torch's sparse CSR times a dense matrix."""
    import torch

    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        wc = torch.from_numpy(w).to_sparse_csr()
    xt = torch.from_numpy(np.ascontiguousarray(x.T))
    return _inference(lambda: wc @ xt)


def scipy_csr(w: np.ndarray, x: np.ndarray) -> Callable[[], object]:
    """``W_csr @ X^T`` with scipy (single-threaded: scipy.sparse has no threads)."""
    import scipy.sparse as sp

    wc = sp.csr_matrix(w)
    xt = np.ascontiguousarray(x.T)
    return lambda: wc @ xt


def matmul_onnx(w: np.ndarray, batch: int) -> bytes:
    """A one-node ONNX model ``Y = X @ W^T`` (``W^T`` an initializer), serialized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "WT"], ["Y"])], "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "WT")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnxruntime releases read IR versions up to about 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_module(w: np.ndarray):
    """``torch.nn.Linear`` without bias holding ``w`` (``out x in``), in eval mode."""
    import torch

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    return layer.eval()


def conv_module(w: np.ndarray, stride: int):
    """``torch.nn.Conv2d`` without bias, 'same' padding, holding ``w`` (``O x I x kh x kw``)."""
    import torch

    cout, cin, kh, _ = w.shape
    conv = torch.nn.Conv2d(cin, cout, kh, stride, kh // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
    return conv.eval()


def sparse_layers(compiled) -> int:
    """How many layers a compiled model runs with a sparse kernel (from its layer table: at
    the graph stage, the only ``call_tir`` calls are the sparse layers)."""
    return sum(1 for r in compiled.manifest.get("layers", []) if r["op"] == "call_tir")


def sparse_kernels(compiled) -> list[str]:
    """The sparse kernels' names in a compiled model (``sparse_conv2d``, ``sparse_matmul``)."""
    kernels = (compiled.manifest.get("tuning") or {}).get("kernels", [])
    return sorted({re.sub(r"\d+$", "", k["name"]) for k in kernels if "sparse" in k["name"]})


def has_sparse_conv_kernel() -> bool:
    """Whether this squeezer has a sparse KxK convolution (``schedules/sparse_conv2d``)."""
    return importlib.util.find_spec("squeezer.schedules.sparse_conv2d") is not None


def records_note(compiled) -> str:
    coverage = (compiled.manifest.get("tuning") or {}).get("coverage", 0.0)
    return f"records cover {coverage:.0%}"


def compile_model(model, x: np.ndarray, threads: int):
    """``squeezer.compile`` with the tuning records, as a user gets it; where applying the
    records fails, the model is compiled again with default schedules and the note says why.

    Returns the compiled module and a note (record coverage, or the failure).
    """
    import torch

    import squeezer

    example = (torch.from_numpy(x),)
    try:
        mod = squeezer.compile(model, example, threads=threads)
        return mod, records_note(mod)
    except Exception as err:  # noqa: BLE001 - reported in the note
        first = (str(err).strip().splitlines() or ["(no message)"])[0]
        reason = f"{type(err).__name__}: {first[:100]}"
        mod = squeezer.compile(model, example, threads=threads, use_records=False)
        return mod, f"compiling with records failed ({reason}); default schedules"
