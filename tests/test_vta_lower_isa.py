"""The LOAD pad_min flag the layer compiler uses for uint8 inputs (stored shifted by -128)."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.targets.vta import isa
from squeezer.targets.vta.config import load_config
from squeezer.targets.vta.errors import IsaError
from squeezer.targets.vta.isa import Buffer, Finish, Load
from squeezer.targets.vta.program import Program, disasm
from squeezer.targets.vta.sim import SimDriver


def test_pad_min_encodes_and_decodes():
    lay = isa.layout(load_config("1x16x16"))
    for flag in (False, True):
        insn = Load(buffer=Buffer.INP, sram_base=3, dram_base=9, y_size=2, x_size=5, x_stride=7,
                    y_pad0=1, x_pad1=2, pad_min=flag)
        assert lay.decode(lay.encode(insn)) == insn
    with pytest.raises(IsaError, match="pad_min: expected 0..1"):
        lay.encode(Load(buffer=Buffer.INP, sram_base=0, dram_base=0, y_size=1, x_size=1,
                        x_stride=1, pad_min=2))


@pytest.mark.parametrize("flag,fill,preset", [(False, 0, "1x16x16"), (True, -128, "1x16x16"),
                                              (True, -128, "1x16x16-int4w")])
def test_pad_min_fills_padding_with_minimum(flag, fill, preset):
    cfg = load_config(preset)
    prog = Program(cfg)
    data = np.arange(2 * 3 * 16, dtype=np.int64).reshape(2, 3, 16) % 100 - 50
    seg = prog.add_segment("inp", "inp", data.astype(np.int8))
    prog.instructions = [Load(buffer=Buffer.INP, sram_base=0, dram_base=seg.elem(cfg, Buffer.INP),
                              y_size=2, x_size=3, x_stride=3, y_pad0=1, x_pad0=1, x_pad1=1,
                              pad_min=flag), Finish()]
    drv = SimDriver(cfg)
    drv.run_program(prog)
    got = drv.sram[Buffer.INP][:3 * 5, 0].reshape(3, 5, 16)
    want = np.full((3, 5, 16), fill, np.int8)
    want[1:, 1:4] = data
    np.testing.assert_array_equal(got, want)
    assert (" min" in disasm(prog)) == flag


def test_pad_min_of_other_buffers():
    cfg = load_config("1x16x16-int4w")
    prog = Program(cfg)
    wseg = prog.add_segment("wgt", "wgt", np.full(cfg.wgt_block_bytes, 0x11, np.uint8))
    aseg = prog.add_segment("acc", "acc", np.arange(16, dtype="<i4"))
    prog.instructions = [
        Load(buffer=Buffer.WGT, sram_base=0, dram_base=wseg.elem(cfg, Buffer.WGT), y_size=1,
             x_size=1, x_stride=1, x_pad0=1, pad_min=True),
        Load(buffer=Buffer.ACC, sram_base=0, dram_base=aseg.elem(cfg, Buffer.ACC), y_size=1,
             x_size=1, x_stride=1, x_pad1=1, pad_min=True), Finish()]
    drv = SimDriver(cfg)
    drv.run_program(prog)
    np.testing.assert_array_equal(drv.sram[Buffer.WGT][0], np.full((16, 16), -8))
    np.testing.assert_array_equal(drv.sram[Buffer.WGT][1], np.ones((16, 16)))
    np.testing.assert_array_equal(drv.sram[Buffer.ACC][0, 0], np.arange(16))
    np.testing.assert_array_equal(drv.sram[Buffer.ACC][1], np.full((1, 16), -(1 << 31)))
