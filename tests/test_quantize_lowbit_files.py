"""Low-bit methods on ``.pt2`` files: ``compress_file`` with YAML recipes quantizes an exported
graph (binarized inputs inserted as graph calls) and writes a program whose weights and binary
inputs the compiler recognizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lowbit_util import weight_formats

from squeezer import data
from squeezer.compression import compress_file
from squeezer.passes.compress import load_exported

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, digits: data.Digits) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.Hardtanh(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.BatchNorm2d(32),
        torch.nn.Hardtanh(), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 64),
        torch.nn.BatchNorm1d(64), torch.nn.Hardtanh(), torch.nn.Linear(64, 10),
    )  # fmt: skip
    data.train(model, 5, data=digits)
    program = torch.export.export(model.eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    path = tmp_path_factory.mktemp("lowbit") / "m.pt2"
    torch.export.save(program, path)
    return path


def ops(program: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("recipe,kinds,binary_inputs,floor", [
    ("- {method: xnor, epochs: 2}\n", {"3.weight": "binary", "7.weight": "binary"}, 2, 0.85),
    ("- {method: horq, order: 2, epochs: 2}\n", {"3.weight": "residual"}, 4, 0.85),
    # Frozen batch norm costs BNN most (0.6 here, 0.94 as an nn.Module; prepare warns).
    ("- {method: bnn, epochs: 2}\n", {"0.weight": "binary", "10.weight": "binary"}, 3, 0.5),
    ("- {method: inq, epochs: 3}\n", {"3.weight": "pow2", "10.weight": "pow2"}, 0, 0.9),
])  # fmt: skip
def test_compress_file_quantizes_an_exported_graph(
    tmp_path: Path, model_file: Path, digits: data.Digits, recipe: str,
    kinds: dict[str, str], binary_inputs: int, floor: float,
) -> None:  # fmt: skip
    (tmp_path / "r.yaml").write_text(recipe)
    report = compress_file(model_file, tmp_path / "r.yaml", tmp_path / "out.pt2", progress=False)
    print(recipe.strip(), f"{report.accuracy_before:.4f} -> {report.accuracy_after:.4f}")
    assert report.accuracy_after >= floor
    assert any("batch norm is frozen" in line for line in report.log) == ("bnn" in recipe)
    program = torch.export.load(tmp_path / "out.pt2")
    names = ops(program)
    assert names.count("aten.where.Scalar") == binary_inputs
    assert names.count("aten.ge.Scalar") == binary_inputs
    out = load_exported(tmp_path / "out.pt2")
    state = out.state_dict()
    for name, kind in kinds.items():
        w = state[name].numpy()
        found = weight_formats.detect(w)
        assert found is not None and found.kind == kind, (name, found)
        tol = weight_formats.RTOL * float(np.abs(w).max())
        np.testing.assert_allclose(found.reconstruct(), w, rtol=0, atol=tol)
    x = torch.from_numpy(digits.x_test[:5])  # the batch stays dynamic
    assert tuple(out(x).shape) == (5, 10)
