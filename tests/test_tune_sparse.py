"""Tuning squeezer's sparse kernel: its registered space, measured on the model's own indices."""

from __future__ import annotations

import numpy as np
import torch

import squeezer
from squeezer.frontend import import_model
from squeezer.schedules.sparse_matmul import KERNEL
from squeezer.targets import make_target
from squeezer.tune import kernel_args_dir, tune
from squeezer.tune.args import _args_info, alloc_local, save_kernel_args
from squeezer.tune.tasks import extract, prepare_for_tuning

THREADS = 2


def sparse_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(),
                                torch.nn.Linear(384, 10)).eval()
    keep = torch.rand(384, 256, generator=torch.Generator().manual_seed(0)) < 0.1
    model[0].weight.data *= keep
    return model


def test_measurement_arguments_are_the_models_constants():
    x = torch.randn(16, 256)
    target = make_target(THREADS)
    prepared = prepare_for_tuning(import_model(sparse_mlp(), (x,)).mod, target)
    (task,) = [t for t in extract(prepared, target) if t.kernel == KERNEL]
    func = task.mod["main"]
    with kernel_args_dir() as d:
        assert save_kernel_args(prepared, d) == 1
        (args,) = alloc_local(squeezer_device(), _args_info(func), 1)
    indptr = args[3].numpy()
    indices = args[2].numpy()
    assert indptr[0] == 0 and np.all(np.diff(indptr) >= 0) and indptr[-1] == indices.size
    assert indices.max() < 256 and indptr.size == 385
    # the same arrays the layer holds: its non-zeros in CSR order
    weight = sparse_mlp()[0].weight.detach().numpy()
    np.testing.assert_array_equal(np.flatnonzero(weight[0]), indices[indptr[0]:indptr[1]])


def squeezer_device():
    import tvm

    return tvm.cpu()


def test_sparse_kernel_is_tuned_and_the_record_applied(tmp_path):
    x = torch.randn(16, 256)
    model = sparse_mlp()
    result = tune(model, example_inputs=(x,), trials=8, per_iter=4, threads=THREADS,
                  records=tmp_path, warm_start=False)
    (task,) = [t for t in result.tasks if t.kernel == KERNEL]
    assert task.trials > 0
    # measured on valid indices: the candidates ran (a crash would be recorded as failed)
    assert task.best_seconds is not None and task.best_seconds < 1.0
    assert task.default_seconds is not None and task.default_seconds < 1.0
    compiled = squeezer.compile(model, (x.numpy(),), threads=THREADS, records=[tmp_path])
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, list | tuple) else got
    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_layout_rewrite_split_leaves_sparse_kernels_alone():
    """Applying records runs SplitLayoutRewritePreproc over the whole model; it must neither
    trip over nor change the sparse kernels (it rejects their nested blocks on its own)."""
    import tvm_ffi

    from squeezer.tune.tasks import _split_layout_rewrites

    target = make_target(THREADS)
    prepared = prepare_for_tuning(import_model(sparse_mlp(), (torch.randn(16, 256),)).mod, target)
    kernels = {gv.name_hint: f for gv, f in prepared.functions_items()
               if f.attrs is not None and "squeezer.kernel" in f.attrs}
    assert kernels
    with target:
        out = _split_layout_rewrites(prepared)
    for name, func in kernels.items():
        assert tvm_ffi.structural_equal(out[out.get_global_var(name)], func)
