"""Frontends: torch module, .pt2 and ONNX to Relax, and their errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.errors import ModelLoadError, SqueezerError, UnsupportedOperatorError
from squeezer.frontend import import_model, parse_input_shapes


def _has_op(mod, name):
    return f"R.{name}(" in mod.script(show_meta=False)


def test_torch_module(tiny, tiny_input):
    im = import_model(tiny, (tiny_input,))
    assert [s.shape for s in im.inputs] == [(1, 3, 16, 16)]
    assert [(s.name, s.shape, s.dtype) for s in im.outputs] == [("output", (1, 5), "float32")]
    assert _has_op(im.mod, "nn.conv2d")
    # weights are constants, not parameters of main
    assert len(im.mod["main"].params) == 1
    ref = im.reference([tiny_input])[0]
    np.testing.assert_allclose(ref, tiny(__import__("torch").from_numpy(tiny_input)).detach())


def test_pt2_and_onnx(tiny_files):
    pt2 = import_model(tiny_files["pt2"])
    assert pt2.source["format"] == "pt2" and pt2.inputs[0].shape == (1, 3, 16, 16)
    onnx = import_model(tiny_files["onnx"])
    assert [s.name for s in onnx.inputs] == ["input"]
    assert [s.name for s in onnx.outputs] == ["logits"]
    assert len(onnx.mod["main"].params) == 1


def test_onnx_dynamic_dims_need_input_shape(tmp_path, tiny, tiny_input):
    import torch

    path = tmp_path / "dyn.onnx"
    torch.onnx.export(tiny, (torch.from_numpy(tiny_input),), str(path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    with pytest.raises(SqueezerError, match=r"input 'input' has dynamic dimension 0 \(batch\)"):
        import_model(path)
    im = import_model(path, input_shapes={"input": (4, 3, 16, 16)})
    assert im.inputs[0].shape == (4, 3, 16, 16) and im.outputs[0].shape == (4, 5)
    with pytest.raises(SqueezerError, match="unknown input"):
        import_model(path, input_shapes={"nope": (1, 3, 16, 16), "input": (1, 3, 16, 16)})
    with pytest.raises(SqueezerError, match="rank"):
        import_model(path, input_shapes={"input": (1, 3, 16)})


def test_parse_input_shapes():
    assert parse_input_shapes(["input:1x3x224x224", "a:b:2x2"]) == {
        "input": (1, 3, 224, 224), "a:b": (2, 2)}
    for bad in ["input", "input:1xax2", ":1x2", "input:0x3"]:
        with pytest.raises(SqueezerError, match="--input-shape"):
            parse_input_shapes([bad])


def unsupported_model(path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu0"),
        helper.make_node("NoSuchOp", ["a"], ["b"], name="mystery1"),
        helper.make_node("Relu", ["b"], ["c"], name="relu1"),
        helper.make_node("AlsoMissing", ["c"], ["y"], name="mystery2", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_unsupported_operators_all_listed(tmp_path):
    path = unsupported_model(tmp_path / "unsup.onnx")
    with pytest.raises(UnsupportedOperatorError) as err:
        import_model(path)
    msg = str(err.value)
    assert str(path) in msg and "2 node(s)" in msg
    assert "mystery1 (NoSuchOp)" in msg and "mystery2 (AlsoMissing, com.example)" in msg
    assert "relu0" not in msg


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_garbage_and_truncated_files(tmp_path, tiny_files, suffix):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match=str(junk)):
        import_model(junk)
    good = tiny_files["onnx" if suffix == ".onnx" else "pt2"].read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=str(cut)):
        import_model(cut)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        import_model(tmp_path / "nope.onnx")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        import_model(other)
    with pytest.raises(SqueezerError, match="example_inputs"):
        import_model(__import__("torch").nn.Linear(2, 2))


def test_torch_unsupported_operators_all_listed():
    import torch

    class Exotic(torch.nn.Module):
        def forward(self, x):
            a = torch.special.erfcx(x)
            return torch.cummax(torch.relu(a), 1)[0]

    with pytest.raises(UnsupportedOperatorError) as err:
        import_model(Exotic(), (np.ones((2, 3), np.float32),))
    msg = str(err.value)
    assert msg.startswith("Exotic: 2 node(s)")
    assert "special_erfcx.default" in msg and "cummax.default" in msg and "relu" not in msg
