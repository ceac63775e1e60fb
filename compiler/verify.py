"""Verification: the compiled module against the reference (torch eager or onnxruntime)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from squeezer.errors import VerificationError
from squeezer.frontend.common import TensorSpec

RTOL = 1e-3  # relative to the largest reference magnitude of each output
# A vta32 compile (the VTA accelerator's int32 requantization) rounds half up with multipliers of
# limited precision: about 1% of the requantized values land one step from the float QDQ value,
# and in a deep model such steps reach a float output (MobileNetV2-small logits: 1.4%).
VTA32_RTOL = 0.05
ATOL = 1e-4


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> list[np.ndarray]:
    """Inputs for verification when the user gave none: normal floats, small integers."""
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            arrays.append(rng.standard_normal(s.shape).astype(s.dtype))
        elif s.dtype == "bool":
            arrays.append(rng.integers(0, 2, s.shape).astype(bool))
        else:
            arrays.append(rng.integers(0, 10, s.shape).astype(s.dtype))
    return arrays


def quantization_steps(mod) -> list[float | None]:
    """Per output of ``main``: the scale of the per-tensor ``dequantize`` producing it, if any.

    The integer kernels of a quantized model round differently from the reference's float
    arithmetic between quantize/dequantize pairs (fixed-point requantization, ties): such an
    output may differ from the reference by one quantization step.
    """
    from tvm import relax

    func = mod["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def resolve(expr):
        while isinstance(expr, relax.Var) and expr in bindings:
            expr = bindings[expr]
        return expr

    out = resolve(func.body.body)
    fields = list(out.fields) if isinstance(out, relax.Tuple) else [out]
    steps: list[float | None] = []
    for f in fields:
        f = resolve(f)
        step = None
        if isinstance(f, relax.Call) and getattr(f.op, "name", "") == "relax.dequantize":
            scale = resolve(f.args[1])
            numpy = getattr(getattr(scale, "value", None), "numpy", None)
            array = numpy() if numpy is not None else None
            if array is not None and array.size == 1:
                step = float(array.reshape(-1)[0])
        steps.append(step)
    return steps


def compare(name: str, got: np.ndarray, want: np.ndarray, step: float | None = None,
            rtol: float = RTOL) -> OutputCheck:
    """``step``: the output's quantization step, allowed as absolute error (one step)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return OutputCheck(name, float("inf"), float("inf"), False)
    if np.issubdtype(want.dtype, np.floating):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(want).max()) if want.size else 0.0
        max_rel = max_abs / scale if scale > 0 else max_abs
        tol = max(ATOL + rtol * scale, ATOL + step * 1.001 if step else 0.0)
        ok = bool(np.isfinite(got).all() == np.isfinite(want).all()) and max_abs <= tol
    else:
        max_abs = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
        max_rel, ok = max_abs, max_abs == 0
    return OutputCheck(name, max_abs, max_rel, ok)


def verify(
    run: Callable[..., object],
    reference: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    outputs: Sequence[TensorSpec],
    inputs: Sequence[np.ndarray],
    steps: Sequence[float | None] | None = None,
    rtol: float = RTOL,
) -> list[OutputCheck]:
    """Run both on ``inputs``; raise :class:`VerificationError` naming the first bad output.

    ``steps`` (from :func:`quantization_steps`) allows quantized outputs one step of error;
    ``rtol``: float outputs' tolerance relative to their largest magnitude.
    """
    got = run(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    want = reference(inputs)
    if len(got) != len(want):
        raise VerificationError(
            f"compiled module returns {len(got)} output(s), the reference {len(want)}"
        )
    steps = list(steps) if steps is not None and len(steps) == len(want) else [None] * len(want)
    checks = [compare(spec.name, g, w, s, rtol)
              for spec, g, w, s in zip(outputs, got, want, steps, strict=True)]
    for c, step in zip(checks, steps, strict=True):
        if not c.ok:
            extra = f", or one quantization step {step:.3g}" if step else ""
            raise VerificationError(
                f"output {c.name!r} differs from the reference: max abs error {c.max_abs:.3g}, "
                f"max rel error {c.max_rel:.3g} (tolerance atol={ATOL}, rtol={rtol} of the "
                f"output's largest magnitude{extra})"
            )
    return checks
