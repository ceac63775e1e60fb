"""Talking to a TVM RPC tracker: the ``--rpc HOST:PORT`` value, the tracker's summary, and the
check that it is reachable and has servers for a key (clear errors naming host, port and key)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from squeezer.errors import TuningError

# The tracker's wire protocol (``tvm.rpc.base``): a magic handshake, then length-prefixed JSON.
# Spoken here directly so that a timeout applies: ``tvm.rpc.connect_tracker(...).summary()``
# blocks forever on a port that accepts but does not answer.
_TRACKER_MAGIC = 0x2F271  # tvm.rpc.base.RPC_TRACKER_MAGIC
_CODE_SUCCESS = 0  # tvm.rpc.base.TrackerCode.SUCCESS
_CODE_SUMMARY = 6  # tvm.rpc.base.TrackerCode.SUMMARY


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (the ``--rpc`` value); a :class:`TuningError` says what is wrong."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TuningError(f"--rpc: expected HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}")
    return host, int(port)


# --- the tracker's summary ---------------------------------------------------------------------
def _recvall(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the connection closed mid-message")
        data += chunk
    return data


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """The tracker's ``summary()``: ``{"queue_info": {...}, "server_info": [...]}``.

    ``queue_info`` maps each key ever seen (servers or requests) to ``{"free", "pending"}``:
    ``free`` counts idle servers, ``pending`` counts *clients* waiting for one. ``server_info``
    lists each connected server as ``{"key": "server:KEY", "addr": [host, port]}``, idle or busy.

    Raises
    ------
    OSError
        Nothing answers at ``host:port`` (refused, timed out).
    ValueError
        Something answers but does not speak the tracker protocol.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(struct.pack("<i", _TRACKER_MAGIC))
            magic = struct.unpack("<i", _recvall(sock, 4))[0]
            if magic != _TRACKER_MAGIC:
                raise ValueError(f"wrong handshake {magic:#x}")
            msg = json.dumps([_CODE_SUMMARY]).encode()
            sock.sendall(struct.pack("<i", len(msg)) + msg)
            size = struct.unpack("<i", _recvall(sock, 4))[0]
            if not 0 < size <= 1 << 24:
                raise ValueError(f"implausible reply size {size}")
            reply = json.loads(_recvall(sock, size).decode())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, struct.error) as e:
            raise ValueError(f"no tracker reply ({e})") from None
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == _CODE_SUCCESS
            and isinstance(reply[1], dict)):
        raise ValueError(f"unexpected reply {reply!r:.80}")
    return reply[1]


def servers_by_key(summary: dict[str, Any]) -> dict[str, int]:
    """Connected servers per device key (busy ones included) from a tracker summary."""
    counts: dict[str, int] = {}
    for info in summary.get("server_info") or []:
        k = str(info.get("key", ""))
        if k.startswith("server:"):
            counts[k[len("server:"):]] = counts.get(k[len("server:"):], 0) + 1
    return counts


def check_tracker(host: str, port: int, key: str, timeout: float = 5.0) -> int:
    """Connect to the tracker; return how many servers are registered under ``key``.

    Raises a :class:`TuningError` naming host and port when nothing answers there, and one naming
    the key when the tracker knows no server with it.

    Servers are counted from the summary's ``server_info`` (one entry per connected server, busy
    or idle); ``queue_info[key]["pending"]`` counts waiting *clients*, not servers, and
    ``queue_info`` keeps keys whose servers are gone or that only clients asked for.
    """
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise TuningError(
            f"RPC tracker {host}:{port} is unreachable ({e.strerror or e}); start one with "
            "`squeezer farm start` or check --rpc"
        ) from None
    try:
        summary = tracker_summary(host, port, timeout)
    except (OSError, ValueError) as e:
        raise TuningError(f"{host}:{port} does not answer as a TVM RPC tracker: {e}") from None
    by_key = servers_by_key(summary)
    count = by_key.get(key, 0)
    if count == 0 and not summary.get("server_info"):  # a tracker without server_info
        count = int((summary.get("queue_info") or {}).get(key, {}).get("free", 0))
    if count == 0:
        raise TuningError(
            f"RPC tracker {host}:{port} has no server with key {key!r}"
            + (f" (keys: {', '.join(sorted(by_key))})" if by_key else " (no servers registered)")
        )
    return count


# --- state ---------------------------------------------------------------------------------------
