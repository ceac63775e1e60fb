"""An onnxruntime-quantized QDQ model (uint8 activations with zero points, per-channel int8
weights) compiled by the CLI for the VTA target: convs and the dense layer on the accelerator,
verified bit-exact against the CPU vta32 compile and within one step of onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qdq_models import export_onnx, output_step, quantize_onnx, run_ort

import squeezer
from squeezer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 20, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(20, 17, 3, stride=2, padding=1),  # no ReLU: zero point != 0
        torch.nn.Conv2d(17, 8, 1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, 6),
    ).eval()


def test_onnx_qdq_model_on_vta_via_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    f = export_onnx(model(), (1, 3, 8, 8), tmp_path / "f.onnx")
    q = quantize_onnx(f, tmp_path / "q.onnx", calibration, per_channel=True)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    out = tmp_path / "q.sqz"
    assert main(["compile", str(q), "-o", str(out), "--target", "vta:1x16x16", "--inputs",
                 str(tmp_path / "in.npz"), "--no-records", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "layer(s) on the VTA accelerator" in printed and "stayed on the CPU" in printed
    loaded = squeezer.load(out)
    m = loaded.manifest
    kinds = [r["kind"] for r in m["vta"]["layers"]]
    assert kinds == ["conv", "conv", "conv", "dense"], m["cpu_fallback"]
    assert m["vta"]["verified"]["bit_exact"] and m["verified"]
    cpu = squeezer.compile(str(q), {"input": x}, threads=2, use_records=False, verify=False,
                           requant="vta32")
    for seed in range(2):
        xs = np.random.default_rng(seed + 5).standard_normal((1, 3, 8, 8)).astype(np.float32)
        got = loaded(xs)
        np.testing.assert_array_equal(got, cpu(xs))
        # as every compile is verified: within one output quantization step of onnxruntime
        assert np.abs(got - run_ort(q, xs)).max() <= output_step(q) * (1 + 1e-5)


def test_a_float_model_compiles_for_vta_all_on_the_cpu(tiny, tiny_input, tmp_path):
    """Nothing quantized: no accelerator layer, every product listed as a float operator, the
    artifact saves and loads without programs."""
    m = squeezer.compile(tiny, (tiny_input,), target="vta", threads=2, use_records=False)
    assert m.vta is None and m.manifest["vta"]["layers"] == []
    convs = [e for e in m.manifest["cpu_fallback"] if e["op"] == "nn.conv2d"]
    assert len(convs) == 2 and all(e["reason"].startswith("float operator") for e in convs)
    loaded = squeezer.load(m.save(tmp_path / "f.sqz"))
    np.testing.assert_array_equal(loaded(tiny_input), m(tiny_input))


def test_tune_cli_for_vta_tunes_the_accelerator_layers(tmp_path, capsys):
    """`squeezer tune --target vta` finds the QDQ model's accelerator layers, searches their
    schedules on the simulator and writes records under vta-<config>/ that a compile applies."""
    from squeezer.targets.vta.tune import knobs_from_records
    from squeezer.vta_compile import model_layers

    rng = np.random.default_rng(1)
    f = export_onnx(model(), (1, 3, 8, 8), tmp_path / "f.onnx")
    q = quantize_onnx(f, tmp_path / "q.onnx", rng.standard_normal((8, 3, 8, 8)).astype(np.float32),
                      per_channel=True)
    records = tmp_path / "records"
    assert main(["tune", str(q), "--target", "vta", "--trials", "8", "--per-iter", "4",
                 "--records", str(records)]) == 0
    printed = capsys.readouterr().out
    assert "4 accelerator layer(s) on 1x16x16" in printed and "vta-1x16x16" in printed
    assert list((records / "vta-1x16x16").glob("*.jsonl"))
    config, layers = model_layers(str(q), "vta")
    assert [type(la).__name__ for la in layers] == ["ConvLayer"] * 3 + ["DenseLayer"]
    for layer in layers:  # a record applies only where it beat the default: None or knobs
        knobs = knobs_from_records(layer, config, [records])
        assert knobs is None or knobs.virtual_threads in (1, 2)
    assert main(["tune", str(q), "--target", "vta", "--rpc", "127.0.0.1:9190", "--key", "x"]) != 0
    assert "measured on its simulator" in capsys.readouterr().err
