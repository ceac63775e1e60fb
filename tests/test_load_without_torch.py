"""A deployed artifact loads and runs with neither torch nor onnx importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np


def test_load_and_run_without_torch_or_onnx(tiny_artifact, tiny_compiled, tiny_input, tmp_path):
    np.save(tmp_path / "x.npy", tiny_input)
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "onnx", "onnxruntime", "onnxscript", "sklearn"):
            sys.modules[blocked] = None  # any import of these now raises ImportError
        import numpy as np
        import squeezer
        mod = squeezer.load({str(tiny_artifact)!r})
        np.save({str(tmp_path / "y.npy")!r}, mod(np.load({str(tmp_path / "x.npy")!r})))
        assert not any(m in sys.modules and sys.modules[m] is not None
                       for m in ("torch", "onnx", "onnxruntime"))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), tiny_compiled(tiny_input))
