"""squeezer.compress with the finetune and distill methods, on the digits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from squeezer import data
from squeezer.compression import CompressReport, compress, compress_file
from squeezer.errors import ModelLoadError, RecipeError
from squeezer.passes.compress import Method, MethodSettings, base, register_method
from squeezer.passes.compress.distill import distillation_loss

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, width: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(width * 64, 10),
    ).eval()


def export(model: torch.nn.Module, path: Path, dynamic: bool = True) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model.eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=shapes)
    torch.export.save(program, path)


def test_finetune_improves_a_badly_trained_model(digits: data.Digits) -> None:
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out, report = compress(model, [{"method": "finetune", "epochs": 3}], progress=False)
    assert report.accuracy_before < 0.3 <= 0.9 <= report.accuracy_after
    assert report.accuracy_after == data.evaluate(out, data=digits)
    assert report.params_before == report.params_after == sum(p.numel() for p in model.parameters())
    assert report.bytes_before == report.bytes_after == 4 * report.params_before
    assert report.log[0].startswith("recipe[0] (finetune): 3 epochs")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # input untouched
    assert not out.training


def test_kd_loss_matches_hand_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=gen) * 3, torch.randn(6, 10, generator=gen) * 3
    y = torch.randint(0, 10, (6,), generator=gen)
    T, alpha = 3.0, 0.7
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(1, keepdim=True)
    p_s = torch.exp(s / T) / torch.exp(s / T).sum(1, keepdim=True)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log(torch.exp(s) / torch.exp(s).sum(1, keepdim=True))[torch.arange(6), y].mean()
    want = alpha * T**2 * kl + (1 - alpha) * ce
    got = distillation_loss(s, t, y, temperature=T, alpha=alpha)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # alpha=1 is the pure soft term: scaled by T^2 and zero when the logits agree.
    soft = distillation_loss(s, t, y, temperature=T, alpha=1.0)
    torch.testing.assert_close(soft, T**2 * kl, rtol=1e-5, atol=1e-6)
    assert float(distillation_loss(t, t, y, temperature=T, alpha=1.0)) == pytest.approx(0, abs=1e-6)
    hard = distillation_loss(s, t, y, temperature=T, alpha=0.0)
    torch.testing.assert_close(hard, F.cross_entropy(s, y))


def test_distill_a_zoo_model_into_a_narrower_one(digits: data.Digits) -> None:
    from squeezer import zoo

    teacher = zoo.create("mobilenetv2", width=0.5)
    data.train(teacher, 6, data=digits)
    recipe = [{"method": "distill", "student": {"zoo": "mobilenetv2", "width": 0.25}, "epochs": 6}]
    student, report = compress(teacher, recipe, progress=False)
    assert student is not teacher and type(student) is type(teacher)
    assert report.params_after < report.params_before / 2
    assert report.accuracy_before >= 0.9
    assert report.accuracy_after >= 0.85
    assert "new student zoo mobilenetv2 (small, width 0.25)" in report.log[0]


def test_distill_from_a_pt2_teacher(tmp_path: Path, digits: data.Digits) -> None:
    teacher = tiny(seed=1, width=16)
    data.train(teacher, 2, data=digits)
    export(teacher, tmp_path / "teacher.pt2")
    (tmp_path / "r.yaml").write_text(
        "recipe:\n  - {method: distill, teacher: teacher.pt2, epochs: 2, temperature: 2.0}\n"
    )
    out, report = compress(tiny(), tmp_path / "r.yaml", progress=False)  # path is recipe-relative
    assert report.accuracy_before < 0.3 and report.accuracy_after >= 0.85
    assert report.log[0].startswith("recipe[0] (distill): 2 epochs")
    with pytest.raises(ModelLoadError, match=r"recipe\[0\] \(distill\): .*nope.pt2: no such"):
        compress(tiny(), [{"method": "distill", "teacher": "nope.pt2"}], progress=False)


def test_distill_from_a_zoo_teacher_trains_it_first() -> None:
    recipe = [
        {
            "method": "distill",
            "teacher": {"zoo": "mobilenet", "width": 0.125},
            "teacher_epochs": 1,
            "epochs": 1,
        }
    ]
    _, report = compress(tiny(), recipe, progress=False)
    assert "trained teacher zoo mobilenet (small, width 0.125), 1 epochs" in report.log[0]
    assert report.log[1].startswith("recipe[0] (distill): 1 epochs")


class _Penalty(MethodSettings):
    weight: float = 1e-3


def test_lifecycle_order_regularizer_and_stored_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    calls: list[Any] = []

    @register_method("toy_l2")
    class ToyL2(Method[_Penalty]):
        Settings = _Penalty

        def prepare(self, model: torch.nn.Module, ctx: base.CompressContext) -> torch.nn.Module:
            calls.append("prepare")
            return model

        def loss_term(self, model: torch.nn.Module, x: Any, y: Any) -> torch.Tensor:
            calls.append("loss")
            return self.settings.weight * sum(p.square().sum() for p in model.parameters())

        def step(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
            calls.append(("step", epoch, epochs))

        def squash(self, model: torch.nn.Module) -> torch.nn.Module:
            calls.append("squash")
            return model

        def stored_bytes(self, model: torch.nn.Module) -> dict[str, int]:
            return {"4.weight": 100}

    recipe = [{"method": "toy_l2", "weight": 0.01}, {"method": "finetune", "epochs": 2}]
    _, report = compress(tiny(), recipe, progress=False)
    batches = -(-len(data.load_digits().x_train) // 64)
    steps = [c for c in calls if c != "loss"]
    assert steps == ["prepare", ("step", 0, 2), ("step", 1, 2), "squash"]
    assert calls.count("loss") == 2 * batches
    dense = 4 * tiny()[4].weight.numel()
    assert report.bytes_after == report.bytes_before - dense + 100


def test_compress_file_round_trip(tmp_path: Path, digits: data.Digits) -> None:
    model = tiny()
    data.train(model, 1, data=digits, lr=1e-4)
    export(model, tmp_path / "in.pt2")
    (tmp_path / "r.yaml").write_text("- {method: finetune, epochs: 2, patience: 1}\n")
    out_path = tmp_path / "out.pt2"
    report = compress_file(tmp_path / "in.pt2", tmp_path / "r.yaml", out_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt2", "out.pt2", "r.yaml"]
    assert report.accuracy_after > report.accuracy_before
    loaded = base.load_exported(out_path)
    assert data.evaluate(loaded, data=digits) == pytest.approx(report.accuracy_after)
    assert loaded(torch.zeros(1, 1, 8, 8)).shape == (1, 10)  # batch stays dynamic
    # The exported graph trains with BatchNorm frozen in eval mode: running stats unchanged.
    before = torch.export.load(tmp_path / "in.pt2").module().state_dict()
    after = loaded.state_dict()
    assert torch.equal(before["1.running_mean"], after["1.running_mean"])
    assert not torch.equal(before["4.weight"], after["4.weight"])


def test_compress_file_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: finetune\n")
    out = tmp_path / "out.pt2"
    with pytest.raises(ModelLoadError, match="missing.pt2: no such model file"):
        compress_file(tmp_path / "missing.pt2", recipe, out, progress=False)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="junk.pt2: not a torch.export program"):
        compress_file(tmp_path / "junk.pt2", recipe, out, progress=False)
    export(tiny(), tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(ModelLoadError, match="static.pt2: the input has a static batch size 2"):
        compress_file(tmp_path / "static.pt2", recipe, out, progress=False)
    with pytest.raises(RecipeError, match="unknown data 'cifar10'"):
        compress_file(tmp_path / "static.pt2", recipe, out, data="cifar10", progress=False)
    assert not out.exists()


def test_report_table_dict_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    _, report = compress(tiny(), [{"method": "finetune", "epochs": 1}], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""  # progress goes to stderr, never stdout
    assert isinstance(report, CompressReport)
    assert json.loads(json.dumps(report.to_dict()))["log"] == list(report.log)
    console = Console(record=True, width=120)
    console.print(report.to_table())
    text = console.export_text()
    assert "accuracy" in text and "parameters" in text and "recipe[0] (finetune)" in text
    with pytest.raises(AttributeError):
        report.accuracy_after = 1.0  # type: ignore[misc]
