"""Where compiled code runs: ``cpu`` today; ``cuda`` and ``vta`` in later issues."""

from .cpu import HostInfo, check_threads, detect_host, make_target, set_runtime_threads

__all__ = ["HostInfo", "check_threads", "detect_host", "make_target", "set_runtime_threads"]
