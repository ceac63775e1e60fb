"""``CompiledModule``: a compiled model that takes numpy arrays and returns numpy arrays."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from squeezer.artifact import LIBRARY, read_artifact, write_artifact
from squeezer.errors import ArtifactError, InputError
from squeezer.frontend.common import TensorSpec

_TVM_NOISE = ("Scope Loaded:", "Scope Saving:")


@contextlib.contextmanager
def _filter_native_stderr(*noise: str):
    """Drop lines containing any of ``noise`` that native code writes to stderr in this block.

    TVM 0.27's VM executable logs a warning line per constant when saved or loaded ("Scope
    Saving:", "Scope Loaded:"), a leftover debug print: hundreds of lines for a real model.
    Other native output is passed through.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [ln for ln in capture.read().decode(errors="replace").splitlines(True)
                    if not any(n in ln for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))


class CompiledModule:
    """A model compiled by squeezer, ready to run on the CPU.

    Call it with numpy arrays (positionally, in the order of :attr:`inputs`): a single-output
    model returns an array, a multi-output model a tuple of arrays. Inputs are checked against the
    compiled signature; a wrong shape or dtype is an :class:`~squeezer.errors.InputError`.

    Parameters
    ----------
    library : tvm.runtime.Module or Executable
        The compiled Relax VM library.
    manifest : dict
        Signature, target and model summary (what ``manifest.json`` of the artifact holds).
    threads : int, optional
        Runtime threads; all cores by default.
    vta : squeezer.targets.vta.runtime.VtaRuntime, optional
        The accelerator layers of a VTA compile, registered for the VM (``.vta.counters``: the
        simulated cost of each layer's last run).
    """

    def __init__(self, library, manifest: dict, threads: int | None = None, vta=None):
        from squeezer.targets import set_runtime_threads

        self.manifest = manifest
        self.inputs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
        self.outputs = [TensorSpec.from_dict(d) for d in manifest["outputs"]]
        self.threads = set_runtime_threads(threads)
        self._library = library
        self.vta = vta
        self._device = tvm.cpu()
        self._vm = relax.VirtualMachine(library, self._device)

    # -- running ---------------------------------------------------------------------------
    def _check(self, arrays: Sequence) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            names = [s.name for s in self.inputs]
            raise InputError(f"expected {len(self.inputs)} input(s) {names}, got {len(arrays)}")
        checked = []
        for spec, arr in zip(self.inputs, arrays, strict=True):
            if hasattr(arr, "detach"):  # a torch tensor
                arr = arr.detach().cpu().numpy()
            arr = np.asarray(arr)
            if tuple(arr.shape) != spec.shape:
                raise InputError(
                    f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(arr.shape)}"
                )
            if str(arr.dtype) != spec.dtype:
                raise InputError(
                    f"input {spec.name!r}: expected dtype {spec.dtype}, got {arr.dtype}"
                )
            checked.append(np.ascontiguousarray(arr))
        return checked

    def prepare(self, *arrays) -> list:
        """Check inputs and copy them to device tensors (for timing :meth:`run_prepared`)."""
        return [tvm.runtime.tensor(a, self._device) for a in self._check(arrays)]

    def run_prepared(self, tensors: list):
        """Run on tensors from :meth:`prepare`; returns TVM tensors."""
        return self._vm["main"](*tensors)

    def __call__(self, *arrays):
        out = self.run_prepared(self.prepare(*arrays))
        if isinstance(out, tvm.runtime.Tensor):
            out = [out]
        results = tuple(o.numpy() for o in out)
        return results[0] if len(results) == 1 else results

    def run(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run with inputs by name (or in order) and return outputs by name."""
        if isinstance(feeds, Mapping):
            missing = [s.name for s in self.inputs if s.name not in feeds]
            extra = sorted(set(feeds) - {s.name for s in self.inputs})
            if missing or extra:
                raise InputError(f"inputs missing {missing}, unexpected {extra}; "
                                 f"the model takes {[s.name for s in self.inputs]}")
            feeds = [feeds[s.name] for s in self.inputs]
        res = self(*feeds)
        res = res if isinstance(res, tuple) else (res,)
        return {spec.name: r for spec, r in zip(self.outputs, res, strict=True)}

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.sqz`` artifact atomically and return its path."""
        with tempfile.TemporaryDirectory(prefix="squeezer-") as tmp:
            lib_path = Path(tmp) / LIBRARY
            with _filter_native_stderr(*_TVM_NOISE):
                self._library.export_library(str(lib_path))
            lib = lib_path.read_bytes()
        members = {LIBRARY: lib, **(self.vta.members() if self.vta is not None else {})}
        return write_artifact(path, self.manifest, members)

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None,
             driver=None) -> CompiledModule:
        """Load and check an artifact written by :meth:`save`; a VTA artifact's programs are
        bound to ``driver`` (the simulator by default)."""
        contents = read_artifact(path)
        if LIBRARY not in contents.members:
            raise ArtifactError(f"{path}: artifact holds no {LIBRARY}")
        with tempfile.TemporaryDirectory(prefix="squeezer-") as tmp:
            lib_path = Path(tmp) / LIBRARY
            lib_path.write_bytes(contents.members[LIBRARY])
            try:
                with _filter_native_stderr(*_TVM_NOISE):
                    library = tvm.runtime.load_module(str(lib_path))
            except Exception as err:
                raise ArtifactError(f"{path}: the compiled library does not load: {err}") from None
        manifest = contents.manifest
        threads = manifest.get("threads") if threads is None else threads
        vta = None
        if (manifest.get("vta") or {}).get("layers"):
            from squeezer.targets.vta.errors import VtaError
            from squeezer.targets.vta.runtime import VtaRuntime

            try:
                vta = VtaRuntime.from_artifact(manifest["vta"], contents.members, driver)
            except VtaError as err:
                raise ArtifactError(f"{path}: {err}") from None
        return cls(library, manifest, threads=threads, vta=vta)

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.inputs)
        return f"CompiledModule({sig}; target={self.manifest.get('target', {}).get('key')})"
