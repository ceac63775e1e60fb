"""The Python API: ``squeezer.compile`` and ``squeezer.load``."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tvm

from squeezer.errors import SqueezerError
from squeezer.module import CompiledModule

TARGETS = ("cpu",)


def compile(  # noqa: A001 - the public name the brief fixes
    model,
    example_inputs: Sequence | Mapping[str, np.ndarray] | None = None,
    target: str = "cpu",
    *,
    threads: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    dump_ir: str | os.PathLike | None = None,
    verify: bool = True,
    progress: bool = False,
) -> CompiledModule:
    """Compile a model for ``target`` and verify it against the reference.

    Parameters
    ----------
    model : torch.nn.Module | torch.export.ExportedProgram | str | os.PathLike
        A torch module (needs ``example_inputs``), or a path to an ``.onnx`` or ``.pt2`` file.
    example_inputs : sequence of arrays, or dict of arrays by input name, optional
        Inputs for ``torch.export`` and for verification; random inputs are used for
        verification when omitted. A dict (ONNX and ``.pt2`` only) is matched to the model's
        inputs by name.
    target : {"cpu"}
        Where the module runs.
    threads : int, optional
        Runtime threads (default: all cores); also the target's core count.
    input_shapes : dict, optional
        Static shapes for dynamic ONNX inputs, ``{"input": (1, 3, 224, 224)}``.
    dump_ir : path, optional
        Write the module after each pipeline stage to ``DIR/NN-stage.py``.
    verify : bool
        Run the compiled module and the reference on the same inputs and raise
        :class:`~squeezer.errors.VerificationError` when they differ.
    progress : bool
        Show the pipeline stages with rich.

    Returns
    -------
    CompiledModule
        Callable on numpy arrays; ``.save(path)`` writes the ``.sqz`` artifact.
    """
    from squeezer import __version__
    from squeezer.frontend import import_model
    from squeezer.pipeline import run_pipeline
    from squeezer.summary import layer_table, summarize
    from squeezer.targets import check_threads, detect_host, make_target
    from squeezer.verify import random_inputs
    from squeezer.verify import verify as run_verify

    if target not in TARGETS:
        raise SqueezerError(f"unknown target {target!r}; available: {', '.join(TARGETS)}")
    threads = check_threads(threads)
    with _Progress(progress) as prog:
        prog.stage("import")
        by_name = example_inputs if isinstance(example_inputs, Mapping) else None
        imported = import_model(model, None if by_name else example_inputs, input_shapes)
        if by_name is not None:
            example_inputs = _order_by_name(by_name, imported.inputs)
        tgt = make_target(threads)
        layers: list[dict] = []

        def summarize_graph(stage: str, mod: tvm.IRModule) -> None:
            if stage == "graph":  # after BN folding, before operators become PrimFuncs
                layers.extend(layer_table(mod))

        result = run_pipeline(imported.mod, tgt, dump_ir=dump_ir, on_stage=prog.stage,
                              after_stage=summarize_graph)
        host = detect_host()
        manifest = {
            "squeezer_version": __version__,
            "tvm_version": tvm.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "target": {"kind": target, "tvm": str(tgt), **host.to_dict()},
            "threads": threads,
            "inputs": [s.to_dict() for s in imported.inputs],
            "outputs": [s.to_dict() for s in imported.outputs],
            "source": imported.source,
            "summary": summarize(layers),
            "layers": layers,
            "tuning_records": [],
            "stage_seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "verified": None,
        }
        module = CompiledModule(result.executable.mod, manifest, threads=threads)
        if verify:
            prog.stage("verify")
            if example_inputs is not None:
                inputs = [_as_numpy(a) for a in _as_tuple(example_inputs)]
            else:
                inputs = imported.example_inputs or random_inputs(imported.inputs)
            checks = run_verify(module, imported.reference, imported.outputs, inputs)
            manifest["verified"] = {c.name: {"max_abs": c.max_abs, "max_rel": c.max_rel}
                                    for c in checks}
    return module


def load(path: str | os.PathLike, threads: int | None = None) -> CompiledModule:
    """Load a ``.sqz`` artifact (checksums verified; needs neither torch nor onnx)."""
    return CompiledModule.load(path, threads=threads)


def _order_by_name(arrays: Mapping[str, np.ndarray], specs) -> tuple:
    from squeezer.errors import InputError

    if len(specs) == 1 and len(arrays) == 1:
        return (next(iter(arrays.values())),)
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"example inputs miss input(s) {missing}; given {sorted(arrays)}")
    return tuple(arrays[s.name] for s in specs)


def _as_tuple(x):
    return x if isinstance(x, tuple | list) else (x,)


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


class _Progress:
    """A one-line rich status showing the current stage; silent when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._status = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console

            self._status = Console(stderr=True).status("compiling")
            self._status.__enter__()
        return self

    def stage(self, name: str) -> None:
        if self._status is not None:
            self._status.update(f"compiling: {name}")

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False
