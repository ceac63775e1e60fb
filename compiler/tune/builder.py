"""A MetaSchedule builder whose worker processes live across batches.

MetaSchedule's ``LocalBuilder`` starts a fresh process pool for every batch (a guard against a
slow memory leak in long-lived workers); each worker then imports TVM again, about 3 s of CPU per
worker per batch, which on a 2-core machine is a large share of a small batch. This builder keeps
its pool for ``recycle_after`` batches and then replaces it, which bounds the leak the same way.
Builds run in separate processes with a timeout, exactly as in ``LocalBuilder``.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import (
    _serialize_params,
    _worker_func,
)
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind


@derived_object
class PooledBuilder(PyBuilder):
    def __init__(self, max_workers: int, timeout_sec: float = 600.0,
                 initializer: Callable[[], None] | None = None, recycle_after: int = 20):
        super().__init__()
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.initializer = initializer
        self.recycle_after = recycle_after
        self._pool: PopenPoolExecutor | None = None
        self._uses = 0

    def _get_pool(self) -> PopenPoolExecutor:
        if self._pool is None or self._uses >= self.recycle_after:
            self.close()
            self._pool = PopenPoolExecutor(max_workers=self.max_workers,
                                           timeout=self.timeout_sec,
                                           initializer=self.initializer)
            self._uses = 0
        self._uses += 1
        return self._pool

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        pool = self._get_pool()
        results: list[BuilderResult] = []
        args = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
        for res in pool.map_with_error_catching(lambda x: _worker_func(*x), args):
            if res.status == StatusKind.COMPLETE:
                results.append(BuilderResult(res.value, None))
            elif res.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(
                    None, f"build timed out, killed after {self.timeout_sec:.0f} s"))
            else:
                results.append(BuilderResult(None, f"build failed:\n{res.value}"))
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
