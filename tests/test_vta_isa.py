"""VTA ISA: 128-bit encode/decode round trip over every field range, micro-ops, field errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer.targets.vta import isa
from squeezer.targets.vta.config import load_config, preset_names
from squeezer.targets.vta.errors import IsaError
from squeezer.targets.vta.isa import Alu, AluOp, Buffer, Finish, Gemm, Load, Module, Store

LAYOUTS = {name: isa.layout(load_config(name)) for name in preset_names()}


@st.composite
def instructions(draw, lay: isa.Layout):
    opcode = draw(st.sampled_from(list(isa.Opcode)))
    cls = {isa.Opcode.LOAD: Load, isa.Opcode.STORE: Store, isa.Opcode.GEMM: Gemm,
           isa.Opcode.ALU: Alu, isa.Opcode.FINISH: Finish}[opcode]
    kw = {}
    for name, _ in lay.widths[opcode]:
        lo, hi = lay.field_range(opcode, name)
        kw[name] = draw(st.integers(lo, hi))
    if opcode == isa.Opcode.LOAD:
        kw["buffer"] = draw(st.sampled_from([Buffer.UOP, Buffer.WGT, Buffer.INP, Buffer.ACC]))
    elif opcode == isa.Opcode.STORE:
        kw["buffer"] = Buffer.OUT
    if opcode == isa.Opcode.ALU:
        kw["alu_op"] = draw(st.sampled_from(list(AluOp)))
    for flag in ("reset", "use_imm"):
        if flag in kw:
            kw[flag] = bool(kw[flag])
    probe = cls(**kw)
    flags = ["pop_next", "push_next"] if probe.module == Module.LOAD else \
        ["pop_prev", "push_prev"] if probe.module == Module.STORE else \
        ["pop_prev", "pop_next", "push_prev", "push_next"]
    for flag in flags:
        kw[flag] = draw(st.booleans())
    return cls(**kw)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_round_trip_every_field(name):
    lay = LAYOUTS[name]

    @settings(max_examples=300, deadline=None)
    @given(instructions(lay))
    def check(insn):
        data = insn.encode(lay)
        assert len(data) == 16
        assert lay.decode(data) == insn

    check()


@given(st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 2047), st.integers(0, 1023)),
                min_size=1, max_size=50))
def test_uops_round_trip(rows):
    lay = LAYOUTS["1x16x16"]
    assert lay.uop_widths == (11, 11, 10)  # 2048 acc, 2048 inp, 1024 wgt entries: 32 bits
    arr = np.array(rows)
    words = lay.encode_uops(arr[:, 0], arr[:, 1], arr[:, 2])
    assert words.dtype == np.uint32
    for got, want in zip(lay.decode_uops(words), arr.T, strict=True):
        np.testing.assert_array_equal(got, want)


def test_field_out_of_range_names_the_field():
    lay = LAYOUTS["1x16x16"]
    with pytest.raises(IsaError, match=r"GEMM: field wgt_factor_in: expected 0..1023 \(10 bits\)"
                                       r", got 1024"):
        Gemm(uop_bgn=0, uop_end=1, iter_out=1, iter_in=1, wgt_factor_in=1024).encode(lay)
    with pytest.raises(IsaError, match=r"ALU: field imm: expected -32768..32767"):
        Alu(uop_bgn=0, uop_end=1, iter_out=1, iter_in=1, alu_op=AluOp.ADD, use_imm=True,
            imm=40000).encode(lay)
    with pytest.raises(IsaError, match=r"LOAD: field x_pad0: expected 0..15 \(4 bits\), got 16"):
        Load(buffer=Buffer.INP, sram_base=0, dram_base=0, y_size=1, x_size=1, x_stride=1,
             x_pad0=16).encode(lay)
    with pytest.raises(IsaError, match=r"instruction 1: GEMM: field iter_out"):
        isa.encode_program([Finish(), Gemm(uop_bgn=0, uop_end=1, iter_out=1 << 14, iter_in=1)],
                           lay)
    with pytest.raises(IsaError, match=r"uop 1: field wgt: expected 0..1023"):
        lay.encode_uops(np.array([0, 0]), np.array([0, 0]), np.array([5, 1024]))
    with pytest.raises(IsaError, match="STORE: field buffer: expected OUT, got ACC"):
        Store(buffer=Buffer.ACC, sram_base=0, dram_base=0, y_size=1, x_size=1, x_stride=1)
    with pytest.raises(IsaError, match="load module, which has no previous module"):
        Load(buffer=Buffer.WGT, sram_base=0, dram_base=0, y_size=1, x_size=1, x_stride=1,
             pop_prev=True)
    with pytest.raises(IsaError, match="unknown opcode 7"):
        lay.decode(bytes([7]) + bytes(15))
    with pytest.raises(IsaError, match="unused bits 123..127 are not zero"):
        lay.decode(bytes(15) + bytes([0x80]))


def test_module_assignment():
    mem = {"sram_base": 0, "dram_base": 0, "y_size": 1, "x_size": 1, "x_stride": 1}
    assert Load(buffer=Buffer.INP, **mem).module == Module.LOAD
    assert Load(buffer=Buffer.WGT, **mem).module == Module.LOAD
    assert Load(buffer=Buffer.UOP, **mem).module == Module.COMPUTE
    assert Load(buffer=Buffer.ACC, **mem).module == Module.COMPUTE
    assert Store(buffer=Buffer.OUT, **mem).module == Module.STORE
    assert Finish().module == Module.COMPUTE
    g = Gemm(uop_bgn=2, uop_end=5, iter_out=3, iter_in=4)
    assert g.module == Module.COMPUTE and g.ops == 36
