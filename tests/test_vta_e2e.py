"""The issue's done-when test: a digits CNN trained briefly, int8-quantized by squeezer's int8
method and compiled for the VTA target runs its int8 conv2d/dense layers on the simulator, bit-exact
with the CPU vta32 compile, at the CPU int8 accuracy; its depthwise conv stays on the CPU and the
report says so. The artifact round trip (programs as checksummed members), ``squeezer run`` and
``squeezer info`` on it, and bad targets."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import squeezer
from squeezer import data
from squeezer.artifact import read_artifact, write_artifact
from squeezer.cli import main
from squeezer.compression import compress
from squeezer.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 90  # images per compiled batch; the fast tests use the first batch of the test split


def cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise: stays on the CPU
        torch.nn.Conv2d(16, 24, 3, padding=1, stride=2),  # 24: not a multiple of the block
        torch.nn.ReLU(),
        torch.nn.Conv2d(24, 32, 4),  # 4x4 -> 1x1, output quantized: the flatten moves int8
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()


@pytest.fixture(scope="module")
def quantized(digits):
    model = data.train(cnn(), 4, data=digits)
    # Output quantizers after the 4x4 conv (fold_qdq moves a flatten on int8 tensors only) and on
    # the logits, so the last two layers are requantized (to VTA) too.
    recipe = [{"method": "int8", "tensors": {"6.weight": {"outputs": True},
                                              "8.weight": {"outputs": True}}}]
    out, report = compress(model, recipe, train_data=digits, eval_data=digits, progress=False)
    return out, report


@pytest.fixture(scope="module")
def compiled(quantized, digits):
    model, _ = quantized
    x = (torch.from_numpy(digits.x_test[:BATCH]),)
    common = {"threads": 2, "use_records": False}
    return {
        "int64": squeezer.compile(model, x, verify=False, **common),
        "vta32": squeezer.compile(model, x, requant="vta32", verify=False, **common),
        # verified: bit-exact against the CPU vta32 compile, within a step of torch
        "vta": squeezer.compile(model, x, target="vta", **common),
    }


def batches(digits, n: int):
    for i in range(n):
        x = digits.x_test[i * BATCH:(i + 1) * BATCH]
        yield x, digits.y_test[i * BATCH:(i + 1) * BATCH]


def accuracies(compiled, digits, n_batches: int) -> dict[str, float]:
    right = dict.fromkeys(compiled, 0)
    total = 0
    for x, y in batches(digits, n_batches):
        outs = {k: m(x) for k, m in compiled.items()}
        if "vta32" in outs:
            np.testing.assert_array_equal(outs["vta"], outs["vta32"])
        for k, o in outs.items():
            right[k] += int((o.argmax(1) == y).sum())
        total += len(y)
    return {k: v / total for k, v in right.items()}


def test_vta_bit_exact_with_cpu_vta32_at_the_cpu_int8_accuracy(compiled, quantized, digits):
    acc = accuracies(compiled, digits, 1)
    _, report = quantized
    print(f"\ndigits (first {BATCH} test images): VTA {acc['vta']:.4f}, CPU vta32 "
          f"{acc['vta32']:.4f}, CPU int64 {acc['int64']:.4f}; torch int8 (full split) "
          f"{report.accuracy_after:.4f}")
    assert acc["vta"] == acc["vta32"]
    assert acc["vta32"] == pytest.approx(acc["int64"], abs=1.0 / BATCH + 1e-9)
    assert acc["vta"] >= 0.9
    vta = compiled["vta"]
    assert vta.manifest["vta"]["verified"] == {"reference": "cpu-vta32", "bit_exact": True,
                                                "outputs": 1}
    assert vta.manifest["verified"]  # and within a step of torch
    cycles = vta.vta.total_cycles()
    print(f"simulated VTA cycles for {BATCH} images: {cycles:,} "
          f"({cycles / BATCH:,.0f} per image; {vta.vta.config.name})")
    assert cycles > 0


@pytest.mark.slow
def test_full_split_accuracy(compiled, digits):
    acc = accuracies(compiled, digits, len(digits.y_test) // BATCH)
    print(f"\ndigits full test split: {acc}")
    assert acc["vta"] == acc["vta32"]
    assert acc["vta32"] == pytest.approx(acc["int64"], abs=0.005)


def test_layers_on_vta_and_the_depthwise_conv_on_cpu(compiled):
    m = compiled["vta"].manifest
    assert m["target"]["kind"] == "vta" and m["requant"] == "vta32"
    assert [row["kind"] for row in m["vta"]["layers"]] == ["conv", "conv", "conv", "dense"]
    assert m["vta"]["config"]["NAME"] == "1x16x16"
    assert {row["knobs_from"] for row in m["vta"]["layers"]} <= {"records", "default"}
    grouped = [e for e in m["cpu_fallback"] if e["reason"].startswith("grouped conv2d")]
    assert len(grouped) == 1 and grouped[0]["op"] == "nn.conv2d"
    assert "cpu_fallback" not in compiled["vta32"].manifest


def test_artifact_round_trip_run_and_info(compiled, digits, tmp_path, capsys):
    vta = compiled["vta"]
    path = vta.save(tmp_path / "digits-vta.sqz")
    with zipfile.ZipFile(path) as zf:
        members = [n for n in zf.namelist() if n.startswith("vta/")]
    assert len(members) == 4
    loaded = squeezer.load(path)
    x = digits.x_test[:BATCH]
    np.testing.assert_array_equal(loaded(x), compiled["vta32"](x))
    assert loaded.vta.total_cycles() == vta.vta.total_cycles()

    np.savez(tmp_path / "in.npz", **{loaded.inputs[0].name: x})
    assert main(["run", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    out = capsys.readouterr().out
    assert "VTA (1x16x16, SimDriver): 4 layer(s)" in out and "cycles" in out
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_array_equal(got[loaded.outputs[0].name], compiled["vta32"](x))

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 layer(s) on the VTA accelerator" in out and "stayed on the CPU" in out
    assert "grouped conv2d" in out


def test_a_program_that_does_not_match_its_layer_is_refused(compiled, tmp_path):
    path = compiled["vta"].save(tmp_path / "a.sqz")
    contents = read_artifact(path)
    first, second = (r["member"] for r in contents.manifest["vta"]["layers"][:2])
    members = dict(contents.members)
    members[first], members[second] = members[second], members[first]
    manifest = {k: v for k, v in contents.manifest.items() if k not in ("members",
                                                                        "format_version")}
    write_artifact(tmp_path / "b.sqz", manifest, members)
    with pytest.raises(ArtifactError, match="does not match the key of layer"):
        squeezer.load(tmp_path / "b.sqz")


def test_bad_targets(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.sqz"),
                 "--target", "vta:nope"]) == 2
    assert "unknown VTA config 'nope'" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.sqz"),
                 "--target", "gpu"]) == 2
    assert "unknown target 'gpu'" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.sqz"),
                 "--target", "vta", "--requant", "int64"]) == 2
    assert "vta32" in capsys.readouterr().err


@pytest.mark.slow
def test_zoo_mobilenetv2_small_on_vta(digits):
    """Zoo MobileNetV2 (digits size): the stem and the pointwise convs without a residual add
    run on the accelerator, depthwise convs, residual adds and the float classifier on the CPU;
    the test split's accuracy equals the CPU int8 (int64) compile's."""
    from squeezer import zoo

    model = data.train(zoo.create("mobilenetv2", size="small"), 3, data=digits)
    out, _ = compress(model, [{"method": "int8"}], train_data=digits, eval_data=digits,
                      progress=False)
    x = (torch.from_numpy(digits.x_test[:BATCH]),)
    vta = squeezer.compile(out, x, target="vta", threads=2, use_records=False)
    cpu = squeezer.compile(out, x, threads=2, use_records=False, verify=False)
    reasons = " ".join(e["reason"] for e in vta.manifest["cpu_fallback"])
    assert len(vta.manifest["vta"]["layers"]) >= 5
    assert "grouped conv2d" in reasons and "no VTA form for add" in reasons
    assert vta.manifest["vta"]["verified"]["bit_exact"]  # against the CPU vta32 compile
    acc = accuracies({"vta": vta, "int64": cpu}, digits, len(digits.y_test) // BATCH)
    print(f"\nMobileNetV2-small digits: {acc}; VTA cycles per {BATCH} images "
          f"{vta.vta.total_cycles():,}")
    assert acc["vta"] == pytest.approx(acc["int64"], abs=0.005)
