"""VTA simulator on hand-written programs: LOAD padding, STORE narrowing, ALU vs numpy, exact
timing counters, deadlock and overflow detection, out-of-range errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from squeezer.targets.vta.errors import DeadlockError, SimError
from squeezer.targets.vta.isa import Alu, AluOp, Buffer, Finish, Gemm, Load, Store
from squeezer.targets.vta.sim import SimDriver

CFG = "1x16x16"
MEM = {"y_pad0": 0, "y_pad1": 0, "x_pad0": 0, "x_pad1": 0}


def _acc_driver(values: np.ndarray):
    """A driver whose DRAM holds int32 accumulator blocks ``values [n, 1, 16]``."""
    drv = SimDriver(CFG)
    buf = drv.alloc(values.nbytes + 4096)
    drv.write(buf, values.astype("<i4"))
    out = drv.alloc(4096)
    return drv, buf, out


def _uop_load(drv, words: np.ndarray) -> Load:
    ubuf = drv.alloc(words.nbytes)
    drv.write(ubuf, words.astype("<u4"))
    return Load(buffer=Buffer.UOP, sram_base=0, dram_base=ubuf.addr // 4, y_size=1,
                x_size=words.size, x_stride=0)


def test_load_2d_strided_with_padding_then_store_narrows():
    rng = np.random.default_rng(0)
    vals = rng.integers(-(1 << 31), 1 << 31, (20, 1, 16), dtype=np.int64).astype(np.int32)
    drv, buf, out = _acc_driver(vals)
    base = buf.addr // 64
    load = Load(buffer=Buffer.ACC, sram_base=3, dram_base=base + 1, y_size=3, x_size=2,
                x_stride=5, y_pad0=1, y_pad1=0, x_pad0=1, x_pad1=1, push_next=True)
    store = Store(buffer=Buffer.OUT, sram_base=3, dram_base=out.addr // 16, y_size=4, x_size=4,
                  x_stride=4, pop_prev=True)
    res = drv.run([load, store, Finish()])
    grid = vals.reshape(4, 5, 16)[:3, 1:3]  # rows 0..2 at stride 5, columns 1..2
    want = np.pad(grid, ((1, 0), (1, 1), (0, 0)))
    np.testing.assert_array_equal(drv.sram[Buffer.ACC][3:19, 0], want.reshape(16, 16))
    got = drv.read(out, 256).view(np.int8).reshape(16, 16)
    np.testing.assert_array_equal(got, want.reshape(16, 16).astype(np.int8))  # low 8 bits
    c = res.counters
    assert c.dma_bytes == {"UOP": 0, "WGT": 0, "INP": 0, "ACC": 6 * 64, "OUT": 16 * 16}
    assert c.insn_counts == {"LOAD": 1, "STORE": 1, "GEMM": 0, "FINISH": 1, "ALU": 0}


def _alu_case(op, vals, imm=None, src_vals=None):
    n = vals.shape[0]
    drv, buf, _ = _acc_driver(np.concatenate([vals, src_vals]) if src_vals is not None else vals)
    total = n * (2 if src_vals is not None else 1)
    uload = _uop_load(drv, np.array([0 | (n << 11)], dtype=np.uint32))  # dst 0, src n
    insns = [Load(buffer=Buffer.ACC, sram_base=0, dram_base=buf.addr // 64, y_size=1,
                  x_size=total, x_stride=0), uload,
             Alu(alu_op=op, use_imm=imm is not None, imm=imm or 0, uop_bgn=0, uop_end=1,
                 iter_out=n, iter_in=1, dst_factor_out=1, src_factor_out=1), Finish()]
    res = drv.run(insns)
    return drv.sram[Buffer.ACC][:n], res.counters


@pytest.mark.parametrize("op, imm, ref", [
    (AluOp.SHR, 5, lambda x: x >> 5),
    (AluOp.SHR, -3, lambda x: x << 3),
    (AluOp.MAX, -100, lambda x: np.maximum(x, -100)),
    (AluOp.MIN, 127, lambda x: np.minimum(x, 127)),
    (AluOp.ADD, -32768, lambda x: x + np.int32(-32768)),
    (AluOp.MUL, 1000, lambda x: x * np.int32(1000)),  # wraps at 32 bits
])
def test_alu_immediate_ops_match_numpy(op, imm, ref):
    rng = np.random.default_rng(1)
    vals = rng.integers(-(1 << 31), 1 << 31, (7, 1, 16), dtype=np.int64).astype(np.int32)
    vals[0, 0, :4] = [-1, -2, 1, 0]
    got, c = _alu_case(op, vals, imm=imm)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, ref(vals))
    assert c.alu_ops == 7


@pytest.mark.parametrize("op, ref", [
    (AluOp.ADD, np.add), (AluOp.MIN, np.minimum), (AluOp.MAX, np.maximum),
    (AluOp.SHR, lambda x, y: np.where(y >= 0, x >> np.clip(y, 0, 31), x << np.clip(-y, 0, 31))),
])
def test_alu_between_accumulators(op, ref):
    rng = np.random.default_rng(2)
    x = rng.integers(-(1 << 20), 1 << 20, (5, 1, 16)).astype(np.int32)
    y = rng.integers(-40, 40, (5, 1, 16)).astype(np.int32)
    got, _ = _alu_case(op, x, src_vals=y)
    np.testing.assert_array_equal(got, ref(x, y))


def test_alu_chain_reads_earlier_results():
    # acc[i] += acc[i-1] for i = 1..5 in one instruction: a prefix sum, executed in order
    vals = np.arange(6 * 16, dtype=np.int32).reshape(6, 1, 16)
    drv, buf, _ = _acc_driver(vals)
    insns = [Load(buffer=Buffer.ACC, sram_base=0, dram_base=buf.addr // 64, y_size=1, x_size=6,
                  x_stride=0), _uop_load(drv, np.array([1], dtype=np.uint32)),
             Alu(alu_op=AluOp.ADD, uop_bgn=0, uop_end=1, iter_out=5, iter_in=1,
                 dst_factor_out=1, src_factor_out=1), Finish()]
    drv.run(insns)
    np.testing.assert_array_equal(drv.sram[Buffer.ACC][:6], np.cumsum(vals, axis=0))


def test_timing_counters_are_exact():
    drv = SimDriver(CFG)
    buf = drv.alloc(8192)
    rng = np.random.default_rng(3)
    drv.write(buf, rng.integers(-128, 128, 8192).astype(np.int8))
    ubuf = drv.alloc(4)
    insns = [
        Load(buffer=Buffer.UOP, sram_base=0, dram_base=ubuf.addr // 4, y_size=1, x_size=1,
             x_stride=0),                                                     # compute: 32+1
        Load(buffer=Buffer.INP, sram_base=0, dram_base=buf.addr // 16, y_size=1, x_size=4,
             x_stride=0),                                                     # load: 32+8
        Load(buffer=Buffer.WGT, sram_base=0, dram_base=buf.addr // 256, y_size=1, x_size=1,
             x_stride=0, push_next=True),                                     # load: 32+32
        Gemm(uop_bgn=0, uop_end=1, iter_out=4, iter_in=1, src_factor_out=1, pop_prev=True,
             push_next=True),                                                 # 4 ops + 4
        Store(buffer=Buffer.OUT, sram_base=0, dram_base=buf.addr // 16, y_size=1, x_size=1,
              x_stride=0, pop_prev=True, push_prev=True),                     # store: 32+2
        Finish(pop_next=True),
    ]
    res = drv.run(insns)
    s, c = res.schedule, res.counters
    np.testing.assert_array_equal(s.start, [0, 0, 40, 104, 112, 146])
    np.testing.assert_array_equal(s.end, [33, 40, 104, 112, 146, 147])
    assert c.cycles == 147 and c.gemm_ops == 4
    assert c.busy == {"load": 104, "compute": 33 + 8 + 1, "store": 34}
    assert c.gemm_utilization == pytest.approx(4 / 147)
    assert c.time_s == pytest.approx(147 / 200e6)


def test_deadlock_reports_instruction_and_module():
    drv = SimDriver(CFG)
    buf = drv.alloc(4096)
    with pytest.raises(DeadlockError, match=r"instruction 1 \(GEMM\) on the compute module waits "
                                            r"for a load -> compute token"):
        drv.run([Finish(), Gemm(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1, pop_prev=True)])
    cycle = [Load(buffer=Buffer.INP, sram_base=0, dram_base=buf.addr // 16, y_size=1, x_size=1,
                  x_stride=0, pop_next=True, push_next=True),
             Gemm(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1, pop_prev=True, push_prev=True)]
    with pytest.raises(DeadlockError, match=r"instruction 0 \(LOAD\) on the load module"):
        drv.run(cycle)
    flood = [Load(buffer=Buffer.INP, sram_base=0, dram_base=buf.addr // 16, y_size=1, x_size=1,
                  x_stride=0, push_next=True)] * 9
    with pytest.raises(DeadlockError, match=r"overflow: instruction 8 \(LOAD\) pushes a load -> "
                                            r"compute token into a full queue \(depth 8\)"):
        drv.run(flood)


def test_out_of_range_accesses_name_instruction_and_field():
    drv = SimDriver(CFG)
    buf = drv.alloc(64 * 16)
    ok = Load(buffer=Buffer.INP, sram_base=0, dram_base=buf.addr // 16, y_size=1, x_size=4,
              x_stride=0)
    with pytest.raises(SimError, match=r"instruction 1 \(LOAD INP\): scratchpad entries "
                                       r"\[2040, 2056\) exceed the INP depth 2048"):
        drv.run([ok, Load(buffer=Buffer.INP, sram_base=2040, dram_base=buf.addr // 16,
                          y_size=4, x_size=4, x_stride=4)])
    with pytest.raises(SimError, match=r"instruction 0 \(LOAD INP\): DRAM bytes .* outside every "
                                       r"allocated buffer"):
        drv.run([Load(buffer=Buffer.INP, sram_base=0, dram_base=buf.addr // 16, y_size=2,
                      x_size=4, x_stride=62)])
    words = np.array([1000 << 22], dtype=np.uint32)  # wgt index 1000
    with pytest.raises(SimError, match=r"instruction 1 \(GEMM\): wgt index 1030 out of the WGT "
                                       r"scratchpad of depth 1024 \(uop 0, iteration out=3 in=0"):
        drv.run([_uop_load(drv, words), Gemm(uop_bgn=0, uop_end=1, iter_out=4, iter_in=1,
                                             wgt_factor_out=10)])
    with pytest.raises(SimError, match=r"instruction 0 \(ALU\): micro-ops \[0, 9000\) outside"):
        drv.run([Alu(alu_op=AluOp.ADD, uop_bgn=0, uop_end=9000, iter_out=1, iter_in=1)])


def test_store_before_its_token_is_a_race():
    vals = np.ones((2, 1, 16), dtype=np.int32)
    drv, buf, out = _acc_driver(vals)
    load = Load(buffer=Buffer.ACC, sram_base=0, dram_base=buf.addr // 64, y_size=1, x_size=2,
                x_stride=0)
    store = Store(buffer=Buffer.OUT, sram_base=1, dram_base=out.addr // 16, y_size=1, x_size=1,
                  x_stride=0)
    with pytest.raises(SimError, match=r"race: instruction 0 \(LOAD ACC, compute module\) writes "
                                       r"ACC entries \[0, 2\) and instruction 1 \(STORE OUT, "
                                       r"store module\) reads \[1, 2\)"):
        drv.run([load, store])
    # the same pair ordered by a compute -> store token
    drv.run([replace(load, push_next=True), replace(store, pop_prev=True)])
    np.testing.assert_array_equal(drv.read(out, 16).view(np.int8), np.ones(16, np.int8))
