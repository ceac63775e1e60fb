"""The CPU target: host detection, the TVM target for it, and the runtime thread pool.

``mcpu`` is read from the running CPU (LLVM's own detection), never hard-coded: with a generic
``x86-64`` LLVM emits no AVX-512, VNNI or vector popcount at all (TVM_NOTES.md).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import tvm
import tvm_ffi

from squeezer.errors import SqueezerError

# Features that change which kernels are fast; they name the target class in ``key``.
_KEY_FEATURES = ("avx512f", "avx512vnni", "avx512vpopcntdq", "avx2", "fma", "neon", "dotprod")


@dataclass(frozen=True)
class HostInfo:
    """What squeezer knows about a CPU: LLVM cpu name, triple, core count and ISA features."""

    mcpu: str
    triple: str
    cores: int
    features: tuple[str, ...]

    @property
    def arch(self) -> str:
        return self.triple.split("-")[0]

    @property
    def key(self) -> str:
        """The CPU class, e.g. ``x86-avx512-vnni``: records tuned on one class apply to it only."""
        arch = "x86" if self.arch in ("x86_64", "i686") else self.arch
        feats = set(self.features)
        if "avx512f" in feats:
            parts = [arch, "avx512"]
            parts += ["vnni"] if "avx512vnni" in feats else []
        elif "avx2" in feats:
            parts = [arch, "avx2"]
        else:
            parts = [arch, "generic"]
        return "-".join(parts)

    def to_dict(self) -> dict:
        return {"mcpu": self.mcpu, "triple": self.triple, "cores": self.cores,
                "features": list(self.features), "key": self.key}


def _physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@functools.cache
def detect_host() -> HostInfo:
    """Detect the running CPU through LLVM (the same detection ``-mcpu=native`` uses)."""
    from tvm.target import codegen

    mcpu = str(codegen.llvm_get_system_cpu())
    triple = str(codegen.llvm_get_system_triple())
    probe = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": triple})
    feats = tuple(
        f for f in _KEY_FEATURES
        if codegen.llvm_cpu_has_features(f, probe)
    )
    return HostInfo(mcpu=mcpu, triple=triple, cores=_physical_cores(), features=feats)


def check_threads(threads: int | None) -> int:
    """Validate a ``--threads`` value; ``None`` means all cores of the host."""
    if threads is None:
        return detect_host().cores
    if not isinstance(threads, int) or threads < 1:
        raise SqueezerError(f"--threads must be a positive integer, got {threads!r}")
    return threads


def make_target(threads: int | None = None, host: HostInfo | None = None) -> tvm.target.Target:
    """The LLVM target for ``host`` (the running CPU by default) with ``threads`` cores."""
    host = host or detect_host()
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": host.mcpu, "num-cores": check_threads(threads)}
    )


def set_runtime_threads(threads: int | None) -> int:
    """Size TVM's runtime thread pool and return the number of threads in use.

    TVM builds its pool once per process, at first use, with ``TVM_NUM_THREADS`` workers (half
    the logical cores when unset: one thread on a 2-core machine, TVM_NOTES.md); afterwards
    ``config_threadpool`` can only use fewer. So the pool is built with every core (or more, if
    asked before first use) and then restricted to ``threads``.
    """
    n = check_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(max(n, detect_host().cores))
    tvm_ffi.get_global_func("runtime.config_threadpool")(0, n)
    used = int(tvm.runtime.num_threads())
    if used != n:
        raise SqueezerError(
            f"cannot run {n} threads: TVM's thread pool was already built with {used} in this "
            "process (start a new process, or set TVM_NUM_THREADS before the first run)"
        )
    return n
