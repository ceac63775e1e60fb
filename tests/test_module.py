"""CompiledModule: calling conventions and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.errors import InputError


def test_call_and_run(tiny_compiled, tiny, tiny_input):
    import torch

    want = tiny(torch.from_numpy(tiny_input)).detach().numpy()
    np.testing.assert_allclose(tiny_compiled(tiny_input), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tiny_compiled(torch.from_numpy(tiny_input)), want,
                               rtol=1e-4, atol=1e-5)
    name = tiny_compiled.inputs[0].name
    out = tiny_compiled.run({name: tiny_input})
    assert list(out) == ["output"]


def test_wrong_inputs(tiny_compiled, tiny_input):
    name = tiny_compiled.inputs[0].name
    with pytest.raises(InputError, match=rf"input '{name}': expected shape \[1, 3, 16, 16\], "
                                         r"got \[1, 3, 8, 8\]"):
        tiny_compiled(tiny_input[:, :, :8, :8])
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        tiny_compiled(tiny_input.astype(np.float64))
    with pytest.raises(InputError, match="expected 1 input"):
        tiny_compiled(tiny_input, tiny_input)
    with pytest.raises(InputError, match="missing"):
        tiny_compiled.run({"other": tiny_input})


def test_threads(tiny_artifact):
    import squeezer

    assert squeezer.load(tiny_artifact, threads=1).threads == 1
    with pytest.raises(squeezer.SqueezerError, match="--threads"):
        squeezer.load(tiny_artifact, threads=0)
