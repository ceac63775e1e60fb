"""VTA-style accelerator target (simulated): configuration, ISA, programs, simulator.

Pure Python and numpy (no TVM): ``config`` (hardware configuration), ``isa`` (instructions and
micro-ops), ``program`` (a program file and its disassembly), ``sim`` (the device driver interface
and the simulator), ``timing`` (cycle model), ``hazards`` (race detection), ``emit`` (the token
protocol of tiled programs), ``gemm_program`` and ``conv_program`` (tiled GEMM and direct conv2d
program builders), ``pack`` (int4 and bit packing).
"""

from .config import VtaConfig, load_config, preset_names
from .conv_program import ConvProgram, ConvTiling, build_conv2d, choose_conv_tiling, conv_reference
from .emit import TileEmitter, UopTable
from .errors import DeadlockError, IsaError, ProgramError, SimError, VtaConfigError, VtaError
from .gemm_program import GemmProgram, Tiling, build_gemm, choose_tiling, gemm_reference
from .hazards import RaceError
from .isa import Alu, AluOp, Buffer, Finish, Gemm, Instruction, Load, Module, Opcode, Store, layout
from .program import Program, Segment, disasm
from .sim import DramBuffer, Driver, ProgramRun, RunResult, SimDriver
from .timing import Counters, Schedule, schedule

__all__ = [
    "Alu", "AluOp", "Buffer", "ConvProgram", "ConvTiling", "Counters", "DeadlockError",
    "DramBuffer", "Driver", "Finish", "Gemm", "GemmProgram", "Instruction", "IsaError", "Load",
    "Module", "Opcode", "Program", "ProgramError", "ProgramRun", "RaceError", "RunResult",
    "Schedule", "Segment", "SimDriver", "SimError", "Store", "TileEmitter", "Tiling", "UopTable",
    "VtaConfig", "VtaConfigError", "VtaError", "build_conv2d", "build_gemm", "choose_conv_tiling",
    "choose_tiling", "conv_reference", "disasm", "gemm_reference", "layout", "load_config",
    "preset_names", "schedule",
]
