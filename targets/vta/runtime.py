"""The VTA side of a compiled model at run time: the packed function ``squeezer.vta.run`` that
the Relax VM calls for each accelerator layer, bound to a :class:`~.sim.Driver` holding the
layers' programs.

``vta_partition`` replaces each layer by
``R.call_dps_packed("squeezer.vta.run", [x_packed, R.prim_value(key)], out_sinfo)``: ``key``
identifies the layer's program (a digest of its instructions and DRAM images, so two models
loaded in one process never mix their layers up). The packed input tensor is written to the
program's input segment byte for byte, the program runs on the driver, and the output segment
is the packed result. A :class:`VtaRuntime` registers its layers under their keys for as long as
it lives (a compiled module holds its runtime; the newest live registration of a key answers);
the driver (the simulator by default) is the seam where a board would plug in.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VtaError
from .isa import encode_program, layout
from .program import Program
from .sim import Driver, SimDriver
from .timing import Counters

PACKED_FUNC = "squeezer.vta.run"
MEMBER_DIR = "vta"

_LOCK = threading.Lock()
# key -> (entry, runtime) registrations, newest last; weak, so a dropped model frees its programs
_LAYERS: dict[int, list[tuple[LayerEntry, weakref.ref]]] = {}


@dataclass(frozen=True)
class LayerEntry:
    """One accelerator layer as the runtime sees it: its program, which segment takes the packed
    input and which holds the packed output (shape and dtype of the Relax tensors)."""

    name: str
    program: Program
    input_segment: str
    output_segment: str
    in_shape: tuple[int, ...]
    in_dtype: str
    out_shape: tuple[int, ...]
    out_dtype: str

    @property
    def key(self) -> int:
        return program_key(self.program)

    def describe(self) -> dict:
        """The JSON-able fields (the manifest's row; the program is a separate member)."""
        return {"name": self.name, "key": self.key, "input_segment": self.input_segment,
                "output_segment": self.output_segment, "in_shape": list(self.in_shape),
                "in_dtype": self.in_dtype, "out_shape": list(self.out_shape),
                "out_dtype": self.out_dtype, "member": f"{MEMBER_DIR}/{self.name}.npz"}


def program_key(program: Program) -> int:
    """A 62-bit digest of the program's config, instructions and segment images."""
    h = hashlib.sha256(json.dumps(program.config.to_json(), sort_keys=True).encode())
    h.update(encode_program(program.instructions, layout(program.config)).tobytes())
    for s in program.segments.values():
        h.update(f"{s.name}:{s.kind}:{s.offset}:{s.nbytes}".encode())
        if s.data is not None:
            h.update(np.ascontiguousarray(s.data).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 2


def program_bytes(program: Program) -> bytes:
    """The bytes of ``program.save`` (an artifact member)."""
    with tempfile.TemporaryDirectory(prefix="squeezer-vta-") as tmp:
        path = Path(tmp) / "program.npz"
        program.save(path)
        return path.read_bytes()


def program_from_bytes(data: bytes, name: str) -> Program:
    with tempfile.TemporaryDirectory(prefix="squeezer-vta-") as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        return Program.load(path)


class VtaRuntime:
    """The programs of one compiled model, bound to a driver and registered for the VM.

    Parameters
    ----------
    layers : list of LayerEntry
        Every accelerator layer of the model (one config for all).
    driver : Driver, optional
        Where the programs run; a :class:`~.sim.SimDriver` for the layers' config by default.

    Attributes
    ----------
    counters : dict
        Layer name -> :class:`~.timing.Counters` of its last run.
    """

    def __init__(self, layers: list[LayerEntry], driver: Driver | None = None):
        if not layers:
            raise VtaError("a VTA runtime needs at least one layer")
        configs = {e.program.config for e in layers}
        if len(configs) != 1:
            raise VtaError(f"layers are for several configs: {sorted(c.name for c in configs)}")
        config = configs.pop()
        self.driver = driver if driver is not None else SimDriver(config)
        if self.driver.config != config:
            raise VtaError(f"the driver runs config {self.driver.config.name}, the programs "
                           f"are for {config.name}")
        self.layers = list(layers)
        self.counters: dict[str, Counters] = {}
        _register()
        with _LOCK:
            for e in self.layers:
                alive = [r for r in _LAYERS.get(e.key, []) if r[1]() is not None]
                _LAYERS[e.key] = [*alive, (e, weakref.ref(self))]

    @property
    def config(self):
        return self.driver.config

    def total_cycles(self) -> int:
        """Cycles of the last run of every layer, summed (one model run, layers in sequence)."""
        return sum(c.cycles for c in self.counters.values())

    def manifest(self) -> dict:
        return {"config": self.config.to_json(), "driver": type(self.driver).__name__,
                "layers": [e.describe() for e in self.layers]}

    def members(self) -> dict[str, bytes]:
        return {e.describe()["member"]: program_bytes(e.program) for e in self.layers}

    @classmethod
    def from_artifact(cls, vta: dict, members: dict[str, bytes],
                      driver: Driver | None = None) -> VtaRuntime:
        """Rebuild from the manifest's ``vta`` section and the artifact's members."""
        layers = []
        for row in vta["layers"]:
            member = row["member"]
            if member not in members:
                raise VtaError(f"artifact misses the program {member} of layer {row['name']}")
            program = program_from_bytes(members[member], member)
            entry = LayerEntry(row["name"], program, row["input_segment"],
                               row["output_segment"], tuple(row["in_shape"]), row["in_dtype"],
                               tuple(row["out_shape"]), row["out_dtype"])
            if entry.key != row["key"]:
                raise VtaError(f"program {member} does not match the key of layer "
                               f"{row['name']} (the graph calls it by that key)")
            layers.append(entry)
        return cls(layers, driver)

    def run_layer(self, entry: LayerEntry, packed: np.ndarray) -> np.ndarray:
        """Run one layer on its packed input; returns the packed output."""
        if packed.shape != entry.in_shape or str(packed.dtype) != entry.in_dtype:
            raise VtaError(f"layer {entry.name}: input {packed.dtype}{list(packed.shape)}, "
                           f"expected {entry.in_dtype}{list(entry.in_shape)}")
        res = self.driver.run_program(entry.program, {entry.input_segment: packed})
        self.counters[entry.name] = res.counters
        raw = res.outputs[entry.output_segment]
        return raw.view(entry.out_dtype).reshape(entry.out_shape)


def _run(x, key, out) -> None:
    """The packed function: ``out[...] = layer(key)(x)``."""
    with _LOCK:
        refs = [(e, r()) for e, r in _LAYERS.get(int(key), [])]
    found = [(e, rt) for e, rt in refs if rt is not None]
    if not found:
        raise VtaError(f"{PACKED_FUNC}: no VTA layer with key {int(key)} is loaded")
    entry, runtime = found[-1]
    out.copyfrom(np.ascontiguousarray(runtime.run_layer(entry, x.numpy())))


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        import tvm_ffi

        tvm_ffi.register_global_func(PACKED_FUNC, _run, override=True)
        _REGISTERED = True


__all__ = ["LayerEntry", "PACKED_FUNC", "VtaRuntime", "program_bytes", "program_key"]
