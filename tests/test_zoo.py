"""Tests of the model zoo: shapes, paper parameter counts, digits accuracy, exports, CondenseNet."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from squeezer import data, zoo
from squeezer.zoo._layers import channel_shuffle, make_divisible
from squeezer.zoo.condensenet import CondensedGroupConv, CondenseNet, LearnedGroupConv
from squeezer.zoo.highway import HighwayLayer

NAMES = zoo.names()

# Parameter counts of the papers' ImageNet models (CondenseNet: G = C = 4, once condensed).
PAPER_PARAMS = {
    "mobilenet": 4.2e6,
    "mobilenetv2": 3.5e6,
    "shufflenet": 1.9e6,  # g = 3, 1x
    "shufflenetv2": 2.3e6,  # 1x
    "squeezenet": 1.24e6,  # v1.1
    "resnext": 25.0e6,  # 50 (32x4d)
    "densenet": 8.0e6,  # 121
    "condensenet": 4.8e6,
    "resnet18": 11.7e6,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def digits(resolution: int) -> data.Digits:
    return data.load_digits(resolution)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # These models are tiny: on 2 shared cores, two OpenMP threads made a training step up to
    # 100x slower than one (threads spin-waiting on each other).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_names() -> None:
    assert NAMES == [
        "mobilenet", "mobilenetv2", "shufflenet", "shufflenetv2", "squeezenet",
        "resnext", "densenet", "condensenet", "highway", "resnet18",
    ]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_spec(name: str) -> None:
    small, full = zoo.spec(name, "small"), zoo.spec(name, "full")
    assert (small.name, small.size, full.size) == (name, "small", "full")
    assert small.input_shape[:2] == (1, 1) and small.input_shape[2] in (8, 16)
    assert small.input_shape[2] == small.input_shape[3] == small.knobs["resolution"]
    assert small.num_classes == 10 and small.epochs is not None
    assert full.input_shape == (1, 3, 224, 224) and full.num_classes == 1000
    assert full.epochs is None
    assert {"width", "resolution", "num_classes", "in_channels", "seed"} <= set(full.knobs)
    assert set(small.knobs) == set(full.knobs)
    full.knobs["width"] = 99.0  # a caller's copy: the next spec is unchanged
    assert zoo.spec(name, "full").knobs["width"] != 99.0


@pytest.mark.parametrize("name", NAMES)
def test_small_forward_shape(name: str) -> None:
    s = zoo.spec(name)
    model = zoo.create(name)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(2, *s.input_shape[1:]))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_full_forward_shape_cheap(name: str) -> None:
    # The full architecture at a 64x64 input: same layers, 12x fewer FLOPs than 224x224.
    model = zoo.create(name, "full")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_forward_shape(name: str) -> None:
    model = zoo.create(name, "full")
    with torch.no_grad():
        assert model(torch.randn(zoo.spec(name, "full").input_shape)).shape == (1, 1000)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_full_param_count_matches_paper(name: str) -> None:
    model = zoo.create(name, "full")
    if isinstance(model, CondenseNet):
        model.condense()
    assert n_params(model) == pytest.approx(PAPER_PARAMS[name], rel=0.10)


def test_create_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = zoo.create("resnet18"), zoo.create("resnet18")
    assert torch.equal(torch.rand(3), expected)
    c = zoo.create("resnet18", seed=1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_knob_overrides() -> None:
    s = zoo.spec("mobilenetv2", resolution=16, num_classes=7, in_channels=3)
    assert s.input_shape == (1, 3, 16, 16) and s.num_classes == 7
    model = zoo.create("mobilenetv2", resolution=16, num_classes=7, in_channels=3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    wide, narrow = zoo.create("mobilenet", "full"), zoo.create("mobilenet", "full", width=0.5)
    assert n_params(narrow) < 0.4 * n_params(wide)
    resnext = zoo.create("resnext", cardinality=4)
    assert {m.groups for m in resnext.modules() if isinstance(m, nn.Conv2d)} == {1, 4}
    dense = zoo.create("densenet", growth_rate=4, blocks=(2,))
    assert dense(torch.randn(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_shufflenet_groups(groups: int) -> None:
    model = zoo.create("shufflenet", groups=groups)
    grouped = {
        m.groups for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    }
    assert grouped == {1, groups}
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"'lenet'.*mobilenetv2"):
        zoo.create("lenet")
    with pytest.raises(ValueError, match=r"'lenet'.*resnet18"):
        zoo.spec("lenet")


def test_unknown_knob_and_size() -> None:
    with pytest.raises(ValueError, match=r"\['depth'\].*'resnext'.*cardinality"):
        zoo.create("resnext", depth=50)
    with pytest.raises(ValueError, match=r"'cardinality'.*'resnet18'.*blocks"):
        zoo.spec("resnet18", cardinality=32)
    with pytest.raises(ValueError, match=r"'medium'.*small"):
        zoo.spec("mobilenet", size="medium")  # type: ignore[arg-type]


def test_bad_knob_values() -> None:
    with pytest.raises(ValueError, match="width"):
        zoo.create("mobilenet", width=0)
    with pytest.raises(ValueError, match="groups"):
        zoo.create("shufflenet", groups=5)
    with pytest.raises(ValueError, match="stem"):
        zoo.create("resnet18", stem="cifar")
    with pytest.raises(ValueError, match="resolution"):
        zoo.spec("densenet", resolution=0)


@pytest.mark.parametrize("name", NAMES)
def test_small_trains_on_digits(name: str) -> None:
    s = zoo.spec(name)
    model = zoo.create(name)
    split = digits(s.input_shape[-1])
    hook = model.condensing_schedule(s.epochs) if isinstance(model, CondenseNet) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # data.train calls float() on the loss
        data.train(model, epochs=s.epochs, data=split, on_epoch=hook)
    if isinstance(model, CondenseNet):
        assert model.stages_left == 0
        model.condense()
    assert data.evaluate(model, data=split) >= 0.90


def _export_all(model: nn.Module, x: torch.Tensor, path: str) -> None:
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.export(model, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
    from_exported_program(program)


@pytest.mark.parametrize("name", NAMES)
def test_small_exports(name: str, tmp_path) -> None:
    model = zoo.create(name)
    x = torch.randn(zoo.spec(name).input_shape)
    _export_all(model, x, str(tmp_path / "model.onnx"))
    if isinstance(model, CondenseNet):
        _export_all(model.condense(), x, str(tmp_path / "condensed.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_exports(name: str, tmp_path) -> None:
    model = zoo.create(name, "full")
    x = torch.randn(zoo.spec(name, "full").input_shape)
    _export_all(model, x, str(tmp_path / "model.onnx"))
    if isinstance(model, CondenseNet):
        _export_all(model.condense(), x, str(tmp_path / "condensed.onnx"))


def _randomize_norms(model: nn.Module) -> None:
    # Fresh BN layers are identities in eval mode; random statistics make the check meaningful.
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("knobs", [{}, {"groups": 2, "condense_factor": 8, "fc_drop": 0.0}])
def test_condense_equals_masked_forward(knobs: dict) -> None:
    model = zoo.create("condensenet", **knobs)
    assert isinstance(model, CondenseNet)
    _randomize_norms(model)
    x = torch.from_numpy(digits(8).x_test[:32])
    while model.stages_left:
        model.condense_step()
    with torch.no_grad():
        masked = model(x)
        dense_params = n_params(model)
        model.condense()
        condensed = model(x)
    torch.testing.assert_close(condensed, masked, atol=1e-5, rtol=1e-5)
    assert not model.learned_convs()
    assert n_params(model) < dense_params
    factor = knobs.get("condense_factor", 4)
    for m in model.modules():
        if isinstance(m, CondensedGroupConv):
            cin = m.norm.num_features
            assert m.conv.groups == knobs.get("groups", 4)
            assert m.conv.in_channels == m.conv.groups * (cin - (factor - 1) * (cin // factor))


def test_condense_finishes_pending_stages() -> None:
    model = zoo.create("condensenet")
    assert isinstance(model, CondenseNet)
    _randomize_norms(model)
    model.condense_step()
    reference = copy.deepcopy(model)
    while reference.stages_left:
        reference.condense_step()
    x = torch.from_numpy(digits(8).x_test[:8])
    with torch.no_grad():
        torch.testing.assert_close(model.condense()(x), reference(x), atol=1e-5, rtol=1e-5)


def test_learned_group_conv_masks() -> None:
    torch.manual_seed(0)
    lgc = LearnedGroupConv(cin=16, cout=8, groups=4, condense_factor=4)
    nn.init.normal_(lgc.weight)
    assert lgc.stages_left == 3
    for left in (2, 1, 0, 0):
        lgc.drop_stage()
        assert lgc.stages_left == left
    mask = lgc.mask[:, :, 0, 0]
    for g in range(4):
        rows = mask[g::4]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # a group shares its inputs
        assert int(rows[0].sum()) == 4
    # The dropped inputs of a group are the ones with the smallest L1 norm over its rows.
    norms = lgc.weight[0::4, :, 0, 0].abs().sum(0)
    kept = mask[0] > 0
    assert norms[kept].min() >= norms[~kept].max()


def test_condensing_schedule_spreads_stages_over_first_half() -> None:
    model = zoo.create("condensenet")
    assert isinstance(model, CondenseNet)
    hook = model.condensing_schedule(12)
    left = []
    for epoch in range(12):
        hook(epoch, 0.0, 0.0)
        left.append(model.stages_left)
    assert left == [3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_highway_gate_limits() -> None:
    layer = HighwayLayer(4).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        nn.init.constant_(layer.gate.bias, -50.0)
        nn.init.zeros_(layer.gate.weight)
        torch.testing.assert_close(layer(x), x)  # gate closed: carry
        nn.init.constant_(layer.gate.bias, 50.0)
        torch.testing.assert_close(layer(x), layer.transform(x))  # gate open: transform


def test_channel_shuffle_is_the_transpose_permutation() -> None:
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    out = channel_shuffle(x, 3).flatten().tolist()
    assert out == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    torch.testing.assert_close(channel_shuffle(channel_shuffle(x, 3), 4), x)


def test_make_divisible() -> None:
    assert [make_divisible(v) for v in (32, 12, 3, 20, 100)] == [32, 16, 8, 24, 104]
