"""VTA configuration: presets, derived sizes, validation errors naming the field."""

from __future__ import annotations

import json

import pytest

from squeezer.targets.vta.config import VtaConfig, from_json, load_config, preset_names
from squeezer.targets.vta.errors import VtaConfigError


def _base() -> dict:
    return load_config("1x16x16").to_json()


def test_presets_load_with_derived_sizes():
    assert preset_names() == ["1x16x16", "1x16x16-binary", "1x16x16-int4w", "1x32x32"]
    c = load_config("1x16x16")
    assert isinstance(c, VtaConfig) and c.name == "1x16x16"
    assert (c.batch, c.block_in, c.block_out) == (1, 16, 16)
    assert (c.inp_block_bytes, c.wgt_block_bytes, c.acc_block_bytes, c.out_block_bytes) == \
        (16, 256, 64, 16)
    # VTA's default: inp 32 KiB, wgt 256 KiB, acc 128 KiB, uop 32 KiB
    assert c.depths == {"UOP": 8192, "WGT": 1024, "INP": 2048, "ACC": 2048}
    c4 = load_config("1x16x16-int4w")
    assert c4.wgt_bits == 4 and c4.wgt_block_bytes == 128 and c4.wgt_depth == 1024
    cb = load_config("1x16x16-binary")
    assert cb.binary_gemm and cb.inp_block_bytes == 2 and cb.wgt_block_bytes == 32
    c32 = load_config("1x32x32")
    assert c32.wgt_block == (32, 32) and c32.wgt_depth == 256 and c32.acc_depth == 1024


def test_round_trip_and_file(tmp_path):
    c = load_config("1x32x32")
    assert from_json(c.to_json()) == c
    path = tmp_path / "mine.json"
    obj = c.to_json()
    del obj["NAME"]
    path.write_text(json.dumps(obj))
    mine = load_config(path)
    assert mine.name == "mine" and mine.block_in == 32
    with pytest.raises(AttributeError):
        mine.log_batch = 1  # frozen


@pytest.mark.parametrize("edit, match", [
    ({"LOG_WGT_WIDTH": 1}, r"field LOG_WGT_WIDTH: expected one of \[0, 2, 3\], got 1"),
    ({"LOG_INP_WIDTH": 2}, r"field LOG_INP_WIDTH: expected one of \[0, 3\], got 2"),
    ({"LOG_ACC_WIDTH": 4}, r"field LOG_ACC_WIDTH: expected one of \[5\], got 4"),
    ({"LOG_BATCH": "0"}, r"field LOG_BATCH: expected an integer, got '0'"),
    ({"COLOR": 1}, r"unknown field COLOR"),
    ({"LOG_BLOCK": 4}, r"field LOG_BLOCK: give either LOG_BLOCK or"),
    ({"CLOCK_MHZ": 0}, r"field CLOCK_MHZ: expected a positive number, got 0"),
    ({"LOG_INP_WIDTH": 0}, r"field LOG_WGT_WIDTH: binary inputs .*expected 0, got 3"),
    # 1x16x16 int8 weight block = 256 bytes = 2^8: a 128-byte buffer cannot hold one
    ({"LOG_WGT_BUFF_SIZE": 8, "LOG_BLOCK_IN": 5},
     r"field LOG_WGT_BUFF_SIZE: the buffer cannot hold one block \(expected at least 9 "
     r"\(512 bytes per block\), got 8"),
    ({"LOG_ACC_BUFF_SIZE": 18}, r"GEMM instruction needs 129 bits"),
    ({"LOG_WGT_BUFF_SIZE": 19, "LOG_UOP_BUFF_SIZE": 13}, r"a micro-op needs 33 bits"),
])
def test_validation_errors_name_the_field(edit, match):
    obj = _base()
    obj.update(edit)
    with pytest.raises(VtaConfigError, match=match):
        from_json(obj, source="cfg.json")


def test_missing_field_and_unknown_preset(tmp_path):
    obj = _base()
    del obj["DMA_BYTES_PER_CYCLE"]
    with pytest.raises(VtaConfigError, match="cfg.json: missing field DMA_BYTES_PER_CYCLE"):
        from_json(obj, source="cfg.json")
    obj = _base()
    del obj["LOG_BLOCK_OUT"]
    with pytest.raises(VtaConfigError, match="missing field LOG_BLOCK_OUT"):
        from_json(obj)
    with pytest.raises(VtaConfigError, match="unknown VTA config 'nope'.*1x16x16"):
        load_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(VtaConfigError, match="bad.json: not JSON"):
        load_config(bad)
