"""The Python API: ``squeezer.compile`` and ``squeezer.load``."""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tvm

from squeezer.module import CompiledModule

TARGETS = ("cpu", "vta")


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
    records: Sequence[str | os.PathLike] | None = None,
    use_records: bool = True,
    requant: str | None = None,
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
    target : str
        Where the module runs: ``"cpu"``, or ``"vta"`` / ``"vta:PRESET"`` /
        ``"vta:config.json"`` for the VTA accelerator (simulated; see ``squeezer.vta_compile``):
        int8 conv2d/dense layers on the accelerator, the rest on the CPU.
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
    records : list of paths, optional
        Extra tuning record roots (``squeezer tune --records``), searched before the user's
        record directory and the shipped ``tuning_logs/``; only ``<root>/<target-key>/`` is read.
    use_records : bool
        ``False`` compiles with default schedules only (``--no-records``).
    requant : {"int64", "vta32"}, optional
        Requantization of an int8 model: int64 fixed point (the CPU default) or the VTA
        accelerator's int32 form (the VTA target's, and on the CPU its bit-exact reference).

    Returns
    -------
    CompiledModule
        Callable on numpy arrays; ``.save(path)`` writes the ``.sqz`` artifact.
    """
    from squeezer import __version__
    from squeezer.frontend import import_model
    from squeezer.pipeline import default_stages, run_pipeline, tuned_schedule_stage
    from squeezer.summary import layer_table, summarize
    from squeezer.targets import check_threads, detect_host, make_target
    from squeezer.verify import quantization_steps, random_inputs
    from squeezer.verify import verify as run_verify
    from squeezer.vta_compile import check_requant, parse_target

    spec = parse_target(target)
    requant = check_requant(spec, requant)
    threads = check_threads(threads)
    with _Progress(progress) as prog:
        prog.stage("import")
        by_name = example_inputs if isinstance(example_inputs, Mapping) else None
        imported = import_model(model, None if by_name else example_inputs, input_shapes)
        if by_name is not None:
            example_inputs = _order_by_name(by_name, imported.inputs)
        tgt = make_target(threads)
        steps = quantization_steps(imported.mod)
        layers: list[dict] = []

        def summarize_graph(stage: str, mod: tvm.IRModule) -> None:
            if stage == "graph":  # after BN folding, before operators become PrimFuncs
                layers.extend(layer_table(mod))

        host = detect_host()
        coverage: list[dict] = []
        store = None
        if use_records:
            from squeezer.tune import records_for_compile

            store = records_for_compile(list(records or []), host.key)
        float_fallback: list[dict] = []
        schedule = tuned_schedule_stage(store, coverage) if store else None
        vta = _VtaParts(spec, list(records or []) if use_records else None)
        stages = default_stages(schedule, float_fallback=float_fallback, requant=requant,
                                partition=vta.partition)
        result = run_pipeline(imported.mod, tgt, stages=stages, dump_ir=dump_ir,
                              on_stage=prog.stage, after_stage=summarize_graph)
        runtime = vta.runtime()
        if vta.result is not None:
            from squeezer.vta_compile import layer_rows

            layers[:] = layer_rows(layers, vta.result)
        tuning = _tuning_summary(store, coverage, host.key, tgt)
        manifest = {
            "squeezer_version": __version__,
            "tvm_version": tvm.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "target": {"kind": spec.kind, "spec": target, "tvm": str(tgt), **host.to_dict()},
            "requant": requant,
            "threads": threads,
            "inputs": [s.to_dict() for s in imported.inputs],
            "outputs": [s.to_dict() for s in imported.outputs],
            "source": imported.source,
            "summary": summarize(layers),
            "layers": layers,
            "tuning": tuning,
            "float_fallback": float_fallback,
            "stage_seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "verified": None,
            **vta.manifest(runtime),
        }
        module = CompiledModule(result.executable.mod, manifest, threads=threads, vta=runtime)
        if verify:
            prog.stage("verify")
            if example_inputs is not None:
                inputs = [_as_numpy(a) for a in _as_tuple(example_inputs)]
            else:
                inputs = imported.example_inputs or random_inputs(imported.inputs)
            if spec.kind == "vta":
                from squeezer.vta_compile import verify_bit_exact

                cpu = default_stages(schedule, requant="vta32")
                ref = run_pipeline(imported.mod, tgt, stages=cpu)
                ref_module = CompiledModule(ref.executable.mod, manifest, threads=threads)
                manifest["vta"]["verified"] = verify_bit_exact(module, ref_module, inputs)
            run_check = run_verify
            if requant == "vta32":
                from squeezer.verify import VTA32_RTOL

                run_check = functools.partial(run_verify, rtol=VTA32_RTOL)
            checks, reference = _verify(run_check, module, imported, inputs, steps)
            if requant == "vta32":
                reference = {**reference, "rtol": VTA32_RTOL}
            manifest["verified"] = {c.name: {"max_abs": c.max_abs, "max_rel": c.max_rel,
                                             **reference} for c in checks}
    return module


def _vta_knobs(config, records: list | None):
    """Tuned knobs per layer from the VTA records (``records`` roots first, then the user's and
    the shipped ``tuning_logs/``); ``None`` (``--no-records``): the analytic defaults."""
    if records is None:
        return None
    from squeezer.targets.vta.tune import knobs_from_records
    from squeezer.tune import default_records_root, shipped_records_root

    roots = [*records, default_records_root(), shipped_records_root()]
    return lambda layer: knobs_from_records(layer, config, roots)


class _VtaParts:
    """The VTA pieces of a compile (none for a CPU target)."""

    def __init__(self, spec, records: list | None):
        self.spec = spec
        self.result = self.partition = None
        if spec.kind == "vta":
            from squeezer.passes.graph.vta_partition import PartitionResult, vta_partition

            self.result = PartitionResult()
            self.partition = vta_partition(spec.vta_config, self.result,
                                           _vta_knobs(spec.vta_config, records))

    def runtime(self):
        if self.result is None or not self.result.entries:
            return None
        from squeezer.targets.vta.runtime import VtaRuntime

        return VtaRuntime(self.result.entries)

    def manifest(self, runtime) -> dict:
        if self.result is None:
            return {}
        from squeezer.vta_compile import manifest_sections

        return manifest_sections(self.spec, self.result, runtime)


def _verify(run_verify, module, imported, inputs, steps) -> tuple[list, dict]:
    """Verify against the reference; when that fails and the frontend has a float64 reference,
    against it (binarized models: float32 rounding can flip a sign the compiled integer
    arithmetic gets exactly). A float64 reference that cannot run (quantize ops want float32)
    leaves the first error."""
    from squeezer.errors import VerificationError

    try:
        return run_verify(module, imported.reference, imported.outputs, inputs,
                          steps=steps), {}
    except VerificationError as err:
        if imported.reference64 is None:
            raise
        first = err
    try:
        checks = run_verify(module, imported.reference64, imported.outputs, inputs, steps=steps)
    except VerificationError as err:
        raise err from first
    except Exception:  # noqa: BLE001 - the float64 run is a second opinion only
        raise first from None
    return checks, {"reference": "float64"}


def _tuning_summary(store, rows: list[dict], key: str, target) -> dict:
    """What the records covered: share of estimated time, tuned and untuned kernels."""
    from squeezer.tune.tasks import memory_bandwidth, peak_flops

    peak, bw = peak_flops(target), memory_bandwidth()
    kernels = []
    for r in rows:
        est = r["tuned_seconds"] if r["tuned"] else r["default_seconds"]
        estimated_by = "measured" if est is not None else "roofline"
        if est is None:
            est = max(r["flops"] / peak, r["bytes"] / bw, 1e-7)
        kernels.append({"name": r["name"], "calls": r["weight"], "tuned": r["tuned"],
                        "seconds": est, "estimate": estimated_by,
                        "default_seconds": r["default_seconds"]})
    total = sum(k["calls"] * k["seconds"] for k in kernels) or 1.0
    covered = sum(k["calls"] * k["seconds"] for k in kernels if k["tuned"])
    return {
        "target_key": key,
        "record_dirs": [str(d) for d in store.dirs] if store else [],
        "records_found": len(store) if store else 0,
        "coverage": covered / total if kernels else 0.0,
        "kernels": sorted(kernels, key=lambda k: -k["calls"] * k["seconds"]),
    }


def load(path: str | os.PathLike, threads: int | None = None, driver=None) -> CompiledModule:
    """Load a ``.sqz`` artifact (checksums verified; needs neither torch nor onnx).

    A VTA artifact's layers run on ``driver`` (a ``squeezer.targets.vta.Driver``); the
    simulator for the artifact's config by default."""
    return CompiledModule.load(path, threads=threads, driver=driver)


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
