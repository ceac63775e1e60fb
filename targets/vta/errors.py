"""Errors of the VTA target: each names what is wrong and where (field, instruction index)."""

from __future__ import annotations

from squeezer.errors import SqueezerError


class VtaError(SqueezerError, ValueError):
    """Base class of the VTA target's errors."""


class VtaConfigError(VtaError):
    """A hardware configuration is malformed: unknown or missing field, unsupported value."""


class IsaError(VtaError):
    """An instruction or micro-op field is out of its encodable range, or bytes do not decode."""


class ProgramError(VtaError):
    """A program is malformed or unreadable (file, segment table, dependency flags)."""


class SimError(VtaError):
    """The simulator met an instruction it cannot execute (out-of-range scratchpad or DRAM)."""


class DeadlockError(SimError):
    """The dependency tokens leave a module waiting forever, or a token queue overflows."""
