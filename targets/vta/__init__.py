"""VTA-style accelerator target (simulated): configuration, ISA, programs, simulator.

Pure Python and numpy (no TVM): ``config`` (hardware configuration), ``isa`` (instructions and
micro-ops), ``program`` (a program file and its disassembly), ``sim`` (the device driver interface
and the simulator), ``timing`` (cycle model), ``gemm_program`` (tiled GEMM program builder),
``pack`` (int4 and bit packing).
"""

from .config import VtaConfig, load_config, preset_names
from .errors import DeadlockError, IsaError, ProgramError, SimError, VtaConfigError, VtaError
from .gemm_program import GemmProgram, Tiling, build_gemm, choose_tiling, gemm_reference
from .isa import Alu, AluOp, Buffer, Finish, Gemm, Instruction, Load, Module, Opcode, Store, layout
from .program import Program, Segment, disasm
from .sim import DramBuffer, Driver, ProgramRun, RunResult, SimDriver
from .timing import Counters, Schedule, schedule

__all__ = [
    "Alu", "AluOp", "Buffer", "Counters", "DeadlockError", "DramBuffer", "Driver", "Finish",
    "Gemm", "GemmProgram", "Instruction", "IsaError", "Load", "Module", "Opcode", "Program",
    "ProgramError", "ProgramRun", "RunResult", "Schedule", "Segment", "SimDriver", "SimError",
    "Store", "Tiling", "VtaConfig", "VtaConfigError", "VtaError", "build_gemm", "choose_tiling",
    "disasm", "gemm_reference", "layout", "load_config", "preset_names", "schedule",
]
