"""VTA programs: save/load round trip, disassembly, `squeezer vta disasm`, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from squeezer.cli import main
from squeezer.targets.vta.errors import ProgramError, SimError
from squeezer.targets.vta.gemm_program import Tiling, build_gemm, gemm_reference
from squeezer.targets.vta.isa import Alu, AluOp, Finish
from squeezer.targets.vta.program import Program, disasm
from squeezer.targets.vta.sim import SimDriver


@pytest.fixture(scope="module")
def gemm():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (20, 40)).astype(np.int8)
    w = rng.integers(-8, 8, (24, 40)).astype(np.int8)
    bias = rng.integers(-999, 999, 24).astype(np.int32)
    gp = build_gemm("1x16x16-int4w", a, w, bias=bias, shift=4, clip=(-128, 127),
                    tiling=Tiling(8, 1, 2))
    return gp, gemm_reference(a, w, bias=bias, shift=4, clip=(-128, 127))


def test_save_load_round_trip(gemm, tmp_path):
    gp, ref = gemm
    path = tmp_path / "prog.npz"
    gp.program.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["prog.npz"]  # no temporary left
    back = Program.load(path)
    assert back.config == gp.program.config
    assert back.instructions == gp.program.instructions
    assert back.meta == gp.program.meta
    for name, seg in gp.program.segments.items():
        got = back.segments[name]
        assert (got.kind, got.offset, got.nbytes) == (seg.kind, seg.offset, seg.nbytes)
        if seg.data is None:
            assert got.data is None
        else:
            np.testing.assert_array_equal(got.data, seg.data)
    run = SimDriver(back.config).run_program(back)
    np.testing.assert_array_equal(gp.unpack_output(run.outputs["out"]), ref)


def test_disasm_lists_every_opcode_and_dependency_flags(gemm):
    gp, _ = gemm
    prog = Program(gp.program.config, [*gp.program.instructions[:-1],
                                       Alu(alu_op=AluOp.MUL, use_imm=False, uop_bgn=0, uop_end=1,
                                           iter_out=1, iter_in=1), Finish()],
                   gp.program.segments)
    text = disasm(prog)
    lines = text.splitlines()
    body = [ln for ln in lines if not ln.startswith(";")]
    assert len(body) == len(prog.instructions)
    for word in ("LOAD   UOP", "LOAD   INP", "LOAD   WGT", "LOAD   ACC", "GEMM reset", "GEMM ",
                 "ALU    ADD acc", "ALU    SHR imm=4", "ALU    MAX imm=-128", "ALU    MIN imm=127",
                 "ALU    MUL acc", "STORE  OUT", "FINISH", "pop:prev", "push:prev",
                 "push:next", "pop:next"):
        assert word in text, word
    assert "uop 0: dst=" not in text
    with_uops = disasm(prog, uops=True)
    n_uops = gp.meta["uops"]
    assert sum(ln.startswith("        uop ") for ln in with_uops.splitlines()) == n_uops


def test_cli_disasm(gemm, tmp_path, capsys):
    gp, _ = gemm
    path = tmp_path / "p.npz"
    gp.program.save(path)
    assert main(["vta", "disasm", str(path), "--uops"]) == 0
    out = capsys.readouterr().out
    assert out == disasm(gp.program, uops=True)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["vta", "disasm", str(bad)]) == 2
    assert "bad.npz: not a VTA program" in capsys.readouterr().err


def test_load_errors(tmp_path):
    with pytest.raises(ProgramError, match="missing.npz: cannot read the program: No such file"):
        Program.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ProgramError, match="other.npz: not a VTA program"):
        Program.load(tmp_path / "other.npz")


def test_run_program_checks_and_timing_only_mode(gemm):
    gp, ref = gemm
    prog = gp.program
    full = SimDriver(prog.config).run_program(prog)
    timed = SimDriver(prog.config, functional=False).run_program(prog)
    assert timed.counters == full.counters  # the timing model does not need the data
    np.testing.assert_array_equal(gp.unpack_output(full.outputs["out"]), ref)
    with pytest.raises(SimError, match="program is for config 1x16x16-int4w, the device runs "
                                       "1x16x16"):
        SimDriver("1x16x16").run_program(prog)
    with pytest.raises(SimError, match="input 'x' is not a segment of the program"):
        SimDriver(prog.config).run_program(prog, {"x": np.zeros(3, np.uint8)})
    with pytest.raises(SimError, match=r"segment inp: expected 960 bytes, got 3"):
        SimDriver(prog.config).run_program(prog, {"inp": np.zeros(3, np.uint8)})
    drv = SimDriver(prog.config)
    buf = drv.alloc(100)
    with pytest.raises(SimError, match=r"DRAM access \[96, 104\) outside the buffer of 100 bytes"):
        drv.write(buf, np.zeros(8, np.uint8), 96)
    drv.free(buf)
    with pytest.raises(SimError, match="is not allocated"):
        drv.read(buf)
