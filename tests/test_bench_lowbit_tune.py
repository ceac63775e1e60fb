"""``squeezer.bench_lowbit_tune``: the gathered models hold every kernel ``squeezer bench lowbit``
compiles (so the shipped records apply to the bench), the plan skips what is tuned, and the
tuner's build limit is a parameter that holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeezer.bench_lowbit_cases import GemvCase, Suite, full_suite, quick_suite
from squeezer.bench_lowbit_tune import plan, rest_of, suite_models

THREADS = 2
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _target():
    from squeezer.targets import make_target

    return make_target(THREADS)


def _tasks(model, example) -> dict[str, str | None]:
    """Workload key -> kernel family of every task of ``model`` (a module or an .onnx path)."""
    from squeezer.frontend import import_model
    from squeezer.tune.records import workload_key
    from squeezer.tune.tasks import extract, prepare_for_tuning

    target = _target()
    mod = prepare_for_tuning(import_model(model, example_inputs=example).mod, target)
    return {workload_key(t.mod): t.kernel for t in extract(mod, target)}


class _Stop(Exception):
    pass


def _bench_kernels(suite: Suite, tmp: Path, monkeypatch) -> dict[str, str | None]:
    """The tasks of every model the bench's own case functions hand to ``squeezer.compile``
    (squeezer rows only; compiling is replaced by recording the model's tasks)."""
    import torch

    import squeezer
    from squeezer import bench_lowbit as bl

    seen: dict[str, str | None] = {}

    def record_model(model, x, threads):  # bench_sparse_peers.compile_model
        seen.update(_tasks(model, (torch.from_numpy(x),)))
        raise _Stop

    def record_compile(model, inputs, **kwargs):  # squeezer.compile of the QDQ .onnx path
        assert isinstance(model, str)
        seen.update(_tasks(model, None))
        raise _Stop

    monkeypatch.setattr(bl, "compile_model", record_model)
    monkeypatch.setattr(squeezer, "compile", record_compile)

    class Recorder(bl.Bench):
        def measure(self, case, impl, make, threads=None):
            if impl.startswith("squeezer"):
                with pytest.raises(_Stop):
                    make()
            return "not timed"

    b = Recorder(THREADS)
    for c in suite.gemms:
        bl.gemm_case(b, c)
    for c in suite.convs:
        bl.conv_case(b, c)
    for c in suite.gemvs:
        bl.gemv_case(b, c, 1e10)
    for c in suite.e2e:
        bl.e2e_case(b, c, tmp)
    return seen


def test_gathered_models_hold_every_kernel_of_the_bench(tmp_path, monkeypatch):
    """Records tuned on the gathered models apply to the models the bench compiles: every
    task of every squeezer row of the tiny suite is a task of a gathered model, and the low-bit
    rows run squeezer's int8, bit-serial and int4 kernels."""
    tiny = quick_suite(tiny=True)
    (tmp_path / "bench").mkdir()
    wanted = _bench_kernels(tiny, tmp_path / "bench", monkeypatch)
    gathered: dict[str, str | None] = {}
    models = suite_models(tiny, tmp_path)
    for m in models:
        gathered.update(_tasks(m.model, None if isinstance(m.model, str) else m.example))
    assert set(wanted) <= set(gathered), sorted(set(wanted) - set(gathered))
    families = set(wanted.values())
    assert {"int8_matmul", "int8_conv2d", "int8_depthwise", "bitserial_conv2d",
            "int4_matmul"} <= families
    names = [m.name for m in models]
    assert names[:3] == ["bench-lowbit-gemm", "bench-lowbit-conv", "bench-lowbit-gemv"]
    assert len(names) == 6  # + the QDQ .onnx, squeezer's own int8 and the fp32 MobileNetV2


def test_rest_of_leaves_the_quick_cases_out():
    full, quick = full_suite(), quick_suite()
    rest = rest_of(full, quick)
    assert rest.gemms == () and rest.gemvs == () and rest.e2e == ()
    assert set(rest.convs) | set(quick.convs) == set(full.convs)
    assert not set(rest.convs) & set(quick.convs)


def test_plan_skips_models_whose_every_task_has_records(tmp_path):
    suite = Suite((), (), (GemvCase(24, 64, 32),), ())

    class Store:
        def __init__(self, tuned: bool):
            self.tuned = tuned

        def best_seconds(self, mod):
            return 1e-3 if self.tuned else None

    lines: list[str] = []
    todo = plan([suite], tmp_path, Store(False), _target(), lines.append)
    assert [(m.name, n) for m, n in todo] == [("bench-lowbit-gemv", 2)]
    assert "int4_matmul" in lines[0]
    assert plan([suite], tmp_path, Store(True), _target(), lines.append) == []


def test_build_timeout_is_the_builders_limit():
    """``tune(build_timeout=...)`` reaches the builder's workers: a build that outlives it
    comes back as a timeout (no build takes a millisecond), and a limit must be positive."""
    import tvm
    import tvm.s_tir.meta_schedule as ms
    from tvm.script import tirx as T

    from squeezer.errors import TuningError
    from squeezer.tune import _make_builder_runner

    @T.prim_func(s_tir=True)
    def add(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            with T.sblock("b"):
                vi = T.axis.spatial(64, i)
                b[vi] = a[vi] + T.float32(1)

    builder, _, _ = _make_builder_runner(1, None, None, 10.0, build_timeout=1e-3)
    assert builder.timeout_sec == 1e-3
    try:
        (res,) = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": add}),
                                                        _target())])
    finally:
        builder.close()
    assert res.artifact_path is None and "timed out" in res.error_msg
    with pytest.raises(TuningError, match="positive"):
        _make_builder_runner(1, None, None, 10.0, build_timeout=0)
