"""Measurement inputs for kernels that cannot run on random data.

MetaSchedule's runners fill every argument with random values. A sparse kernel's index arrays
(block columns, row pointers) must instead describe a valid matrix, or the candidate reads out
of bounds and crashes the measuring process. Before tuning, :func:`save_kernel_args` stores the
constant arguments of every squeezer kernel call in the model, keyed by the kernel's argument
signature (dtypes and shapes of all its parameters), in a directory named by
``$SQUEEZER_TUNE_ARGS``; the runners' allocation functions (:func:`alloc_local`,
:func:`alloc_rpc`) fill those arguments with the stored arrays and everything else at random.
The measured kernel then runs on the model's own sparsity pattern.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

ENV = "SQUEEZER_TUNE_ARGS"


def signature(args_info: list) -> str:
    """A file-name-safe key of an argument list given as MetaSchedule ``ArgInfo`` JSON."""
    text = json.dumps([[str(x) if not isinstance(x, list) else [int(d) for d in x]
                        for x in info] for info in args_info])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _args_info(func: tvm.tirx.PrimFunc) -> list:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [a.as_json() for a in ArgInfo.from_prim_func(func)]


def save_kernel_args(mod: tvm.IRModule, directory: str | Path) -> int:
    """Store the constant arguments of each call to a squeezer kernel in ``mod``.

    Returns the number of argument sets written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr) -> None:
        nonlocal written
        if not (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)):
            return
        callee = mod[expr.args[0]]
        if not isinstance(callee, tvm.tirx.PrimFunc) or callee.attrs is None or \
                "squeezer.kernel" not in callee.attrs:
            return
        consts = {i: a.value.numpy() for i, a in enumerate(expr.args[1].fields)
                  if isinstance(a, tvm.ir.expr.GenericConst)}
        if not consts:
            return
        path = directory / f"{signature(_args_info(callee))}.npz"
        if not path.exists():
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **{f"a{i}": v for i, v in consts.items()})
            os.replace(tmp, path)
            written += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return written


def _stored(args_info: list) -> dict[int, np.ndarray]:
    root = os.environ.get(ENV)
    if not root:
        return {}
    path = Path(root) / f"{signature(args_info)}.npz"
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {int(k[1:]): data[k] for k in data.files}


def alloc_local(device, args_info: list, alloc_repeat: int) -> list:
    """``LocalRunner`` allocation: stored constants where known, random values elsewhere."""
    from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

    repeated = default_alloc_argument(device, args_info, alloc_repeat)
    stored = _stored(args_info)
    for args in repeated:
        for i, value in stored.items():
            args[i] = tvm.runtime.tensor(value, device)
    return repeated


def alloc_rpc(session, device, args_info: list, alloc_repeat: int) -> list:
    """``RPCRunner`` allocation: the same, uploaded through the session."""
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_alloc_argument

    repeated = default_alloc_argument(session, device, args_info, alloc_repeat)
    stored = _stored(args_info)
    for args in repeated:
        for i, value in stored.items():
            args[i] = tvm.runtime.tensor(value, device)
    return repeated
