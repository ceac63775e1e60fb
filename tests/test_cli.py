"""The command line: the happy paths and every bad input the brief lists, each a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_frontend import unsupported_model


def squeezer(*args, ok=True):
    env = {**os.environ, "TVM_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "squeezer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def compiled_onnx(tmp_path_factory, tiny_files):
    d = tmp_path_factory.mktemp("cli")
    out = d / "tiny.sqz"
    dump = d / "ir"
    proc = squeezer("compile", tiny_files["onnx"], "-o", out, "--threads", 2, "--dump-ir", dump)
    assert "verified" in proc.stdout
    return out, dump


def test_compile_dump_run_info_bench(compiled_onnx, tiny_files, tiny_input, tmp_path, tiny):
    import torch

    art, dump = compiled_onnx
    assert sorted(p.name for p in dump.iterdir()) == [
        "00-import.py", "01-graph.py", "02-legalize.py", "03-schedule.py", "04-build.py"]
    assert "R.nn.batch_norm" not in (dump / "01-graph.py").read_text()
    np.savez(tmp_path / "in.npz", input=tiny_input)
    squeezer("run", art, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz")
    got = np.load(tmp_path / "out.npz")
    assert list(got) == ["logits"]
    want = tiny(torch.from_numpy(tiny_input)).detach().numpy()
    np.testing.assert_allclose(got["logits"], want, rtol=1e-4, atol=1e-5)

    info = squeezer("info", art).stdout
    assert "nn.conv2d" in info and "layers" in info
    manifest = json.loads(squeezer("info", art, "--json").stdout)
    assert manifest["inputs"][0]["name"] == "input"

    squeezer("bench", art, "--repeat", 3, "--against", tiny_files["onnx"],
             "--json", tmp_path / "b.json", "--threads", 1)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["squeezer", "onnxruntime"]
    assert set(rows[0]) == {"case", "impl", "median_ms", "min_ms", "max_ms", "threads", "note"}
    assert all(r["threads"] == 1 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in rows)
    table = squeezer("bench", art, "--repeat", 2, "--against", tiny_files["pt2"]).stdout
    assert "torch" in table and "vs squeezer" in table


def test_compile_pt2(tiny_files, tmp_path):
    out = tmp_path / "pt2.sqz"
    squeezer("compile", tiny_files["pt2"], "-o", out, "--no-verify", "--quiet")
    assert out.exists()


def test_missing_file(tmp_path):
    one_line_error(squeezer("compile", tmp_path / "nope.onnx", "-o", tmp_path / "x.sqz", ok=False),
                   "nope.onnx", "not found")


def test_random_bytes_onnx(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(3).bytes(2000))
    one_line_error(squeezer("compile", bad, "-o", tmp_path / "x.sqz", ok=False),
                   "random.onnx", "not a valid ONNX model")
    assert not (tmp_path / "x.sqz").exists()


def test_unsupported_operator(tmp_path):
    path = unsupported_model(tmp_path / "unsup.onnx")
    one_line_error(squeezer("compile", path, "-o", tmp_path / "x.sqz", ok=False),
                   "mystery1 (NoSuchOp)", "mystery2 (AlsoMissing")


def test_wrong_input_at_run(compiled_onnx, tiny_input, tmp_path):
    art, _ = compiled_onnx
    np.savez(tmp_path / "shape.npz", input=tiny_input[:, :, :8])
    one_line_error(squeezer("run", art, "--inputs", tmp_path / "shape.npz", "--output",
                            tmp_path / "o.npz", ok=False), "input 'input'", "expected shape")
    np.savez(tmp_path / "dtype.npz", input=tiny_input.astype(np.float16))
    one_line_error(squeezer("run", art, "--inputs", tmp_path / "dtype.npz", "--output",
                            tmp_path / "o.npz", ok=False), "expected dtype float32, got float16")
    np.savez(tmp_path / "name.npz", a=tiny_input, b=tiny_input)
    one_line_error(squeezer("run", art, "--inputs", tmp_path / "name.npz", "--output",
                            tmp_path / "o.npz", ok=False), "missing input(s) ['input']")
    assert not (tmp_path / "o.npz").exists()


def test_flipped_byte_artifact(compiled_onnx, tmp_path, tiny_input):
    art, _ = compiled_onnx
    raw = bytearray(art.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    bad = tmp_path / "flipped.sqz"
    bad.write_bytes(bytes(raw))
    np.savez(tmp_path / "in.npz", input=tiny_input)
    one_line_error(squeezer("run", bad, "--inputs", tmp_path / "in.npz", "--output",
                            tmp_path / "o.npz", ok=False), "flipped.sqz", "corrupt")


def test_newer_artifact(compiled_onnx, tmp_path):
    from squeezer.artifact import pack, read_artifact

    art, _ = compiled_onnx
    c = read_artifact(art)
    newer = tmp_path / "newer.sqz"
    newer.write_bytes(pack({**c.manifest, "squeezer_version": "2.0.0"}, c.members))
    one_line_error(squeezer("info", newer, ok=False), "squeezer 2.0.0", "upgrade")


def test_threads_zero(tiny_files, tmp_path):
    proc = squeezer("compile", tiny_files["onnx"], "-o", tmp_path / "x.sqz", "--threads", 0,
                    ok=False)
    one_line_error(proc, "--threads", "positive integer")


def test_debug_shows_traceback(tmp_path):
    proc = squeezer("--debug", "compile", tmp_path / "nope.onnx", "-o", tmp_path / "x.sqz",
                    ok=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_compress_command(tmp_path):
    import torch

    from squeezer import zoo

    model = zoo.create("mobilenetv2", size="small")
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "recipe.yaml").write_text("recipe:\n  - method: finetune\n    epochs: 2\n")
    proc = squeezer("compress", tmp_path / "m.pt2", "--recipe", tmp_path / "recipe.yaml",
                    "--data", "digits", "-o", tmp_path / "small.pt2")
    assert "accuracy" in proc.stdout and (tmp_path / "small.pt2").exists()
    small = torch.export.load(str(tmp_path / "small.pt2")).module()
    assert small(torch.zeros(3, 1, 8, 8)).shape == (3, 10)

    (tmp_path / "bad.yaml").write_text("recipe:\n  - method: finetune\n    epoch: 2\n")
    one_line_error(squeezer("compress", tmp_path / "m.pt2", "--recipe", tmp_path / "bad.yaml",
                            "-o", tmp_path / "x.pt2", ok=False), "recipe[0]", "epoch")


def test_compile_with_inputs_npz(tiny_files, tiny_input, tmp_path):
    np.savez(tmp_path / "in.npz", input=tiny_input)
    out = tmp_path / "v.sqz"
    proc = squeezer("compile", tiny_files["onnx"], "-o", out, "--inputs", tmp_path / "in.npz")
    assert "verified" in proc.stdout
    np.savez(tmp_path / "wrong.npz", input=tiny_input[:, :2])
    one_line_error(squeezer("compile", tiny_files["onnx"], "-o", out, "--inputs",
                            tmp_path / "wrong.npz", ok=False), "input 'input'", "expected shape")
