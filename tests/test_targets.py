"""The CPU target: host detection, target classes, threads."""

from __future__ import annotations

import pytest
import tvm

from squeezer.errors import SqueezerError
from squeezer.targets import HostInfo, check_threads, detect_host, make_target
from squeezer.targets.cpu import set_runtime_threads


def test_detect_host_matches_llvm():
    from tvm.target import codegen

    host = detect_host()
    assert host.mcpu == str(codegen.llvm_get_system_cpu()) and host.cores >= 1
    target = make_target(2)
    assert target.attrs["mcpu"] == host.mcpu and int(target.attrs["num-cores"]) == 2
    assert int(make_target().attrs["num-cores"]) == host.cores


@pytest.mark.parametrize(("features", "key"), [
    (("avx512f", "avx512vnni", "avx2", "fma"), "x86-avx512-vnni"),
    (("avx512f", "avx2"), "x86-avx512"),
    (("avx2", "fma"), "x86-avx2"),
    ((), "x86-generic"),
])
def test_target_key(features, key):
    assert HostInfo("cpu", "x86_64-pc-linux-gnu", 2, features).key == key
    arm = HostInfo("neoverse-v1", "aarch64-unknown-linux-gnu", 4, ("neon",))
    assert arm.key == "aarch64-generic"


def test_threads():
    assert check_threads(None) == detect_host().cores
    for bad in (0, -1):
        with pytest.raises(SqueezerError, match="--threads must be a positive integer"):
            check_threads(bad)
    set_runtime_threads(1)
    assert tvm.runtime.num_threads() == 1
    set_runtime_threads(2)
    assert tvm.runtime.num_threads() == 2
