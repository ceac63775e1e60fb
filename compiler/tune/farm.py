"""Measurement farm: TVM's RPC tracker and servers, started and stopped as one process group.

``squeezer farm start --servers N`` runs ``python -m tvm.exec.rpc_tracker`` and N
``python -m tvm.exec.rpc_server --tracker ... --key KEY`` in a new session (process group), bound
to 127.0.0.1 unless ``--host`` says otherwise, and records them in a state file. ``squeezer farm
stop`` signals the whole group, so the servers' ``popen_worker`` children go too (killing only an
``rpc_server`` process orphans its ``popen_worker``, which holds the listening socket and the
tracker connection: it keeps serving, and would register with the next tracker).
``squeezer tune --rpc HOST:PORT --key KEY`` measures through the tracker.

Layout of a farm: a small supervisor (``python -c``, the leader of a new session, hence the
process group id) starts the tracker, waits until it accepts connections, starts the servers and
then only reaps processes: it is a child subreaper, so the ``popen_worker`` processes of a server
that died are reaped too instead of lingering as zombies or orphans. A process cannot join a
process group of another session, which is why the tracker itself cannot lead the group while the
servers are started from the caller: everything is started from inside the new session.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from squeezer.errors import TuningError
from squeezer.tune.tracker import (  # noqa: F401 - re-exported for the CLI and tests
    check_tracker,
    parse_hostport,
    servers_by_key,
    tracker_summary,
)

SERVER_PORT = 9090  # first port the servers try, as TVM's rpc_server does
_MARKER = "squeezer-farm-supervisor"

# The supervisor: leader of the farm's session and process group. Signals to the group reach
# every process; it ignores them itself (a Python handler, not SIG_IGN, so that the children it
# starts keep the default actions) and exits once every descendant is gone.
_SUPERVISOR = """
import ctypes, json, os, signal, socket, subprocess, sys, time
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, lambda *_: None)
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
def spawn(cmd, log, env):
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
def report(obj):
    sys.stdout.write(json.dumps(obj) + "\\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
tracker = spawn(cfg["tracker"], cfg["tracker_log"], {})
deadline = time.monotonic() + cfg["timeout"]
error = None
while True:
    if tracker.poll() is not None:
        error = "the tracker exited with status %s" % tracker.returncode
        break
    try:
        socket.create_connection(tuple(cfg["connect"]), timeout=1).close()
        break
    except OSError:
        pass
    if time.monotonic() > deadline:
        error = "the tracker did not accept connections within %gs" % cfg["timeout"]
        break
    time.sleep(0.1)
servers = []
if error is None:
    servers = [spawn(cmd, log, cfg["env"]) for cmd, log in zip(cfg["servers"], cfg["server_logs"])]
report({"tracker": tracker.pid, "servers": [p.pid for p in servers], "error": error})
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        pass
"""


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def default_state_path(port: int = 9190) -> Path:
    """``<user runtime dir>/squeezer/farm-<port>.json``, or the user cache dir if not writable."""
    import platformdirs

    with warnings.catch_warnings():  # XDG_RUNTIME_DIR unset: platformdirs warns, falls back
        warnings.simplefilter("ignore")
        runtime = Path(platformdirs.user_runtime_dir("squeezer"))
    for d in (runtime, Path(platformdirs.user_cache_dir("squeezer"))):
        if _writable_dir(d):
            return d / f"farm-{port}.json"
    raise TuningError(f"no writable directory for the farm's state file (tried {runtime} and the "
                      "user cache dir); pass --state FILE")


def _write_atomic(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Supervisors started by this process, by process group id, so that stop can reap them.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class Farm:
    """A running farm, as recorded in its state file.

    Attributes
    ----------
    host, port : the tracker's address (``--rpc HOST:PORT``).
    key : device key the servers registered with.
    servers : number of servers.
    pgid : process group (and session) of every process of the farm.
    tracker_pid, server_pids : the ``tvm.exec`` processes; each has a ``popen_worker`` child that
        does the actual work.
    threads : ``TVM_NUM_THREADS`` of the servers.
    state : the state file.
    logs : log file per process (``supervisor``, ``tracker``, ``server0``...).
    """

    host: str
    port: int
    key: str
    servers: int
    pgid: int
    tracker_pid: int
    server_pids: list[int]
    threads: int
    state: Path
    logs: dict[str, str] = field(default_factory=dict)
    started: float = 0.0

    @property
    def rpc(self) -> str:
        """The ``--rpc`` value for ``squeezer tune``."""
        return f"{self.host}:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.pgid, self.tracker_pid, *self.server_pids]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        d["pids"] = self.pids
        return d

    @classmethod
    def load(cls, path: str | Path) -> Farm:
        """Read a state file; a :class:`TuningError` if it is not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(host=str(d["host"]), port=int(d["port"]), key=str(d["key"]),
                       servers=int(d["servers"]), pgid=int(d["pgid"]),
                       tracker_pid=int(d["tracker_pid"]),
                       server_pids=[int(p) for p in d["server_pids"]],
                       threads=int(d.get("threads", 0)), state=path,
                       logs={str(k): str(v) for k, v in (d.get("logs") or {}).items()},
                       started=float(d.get("started", 0.0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TuningError(f"{path}: not a readable farm state file ({e})") from None

    def alive(self) -> bool:
        """Whether any process of the farm's group is still running."""
        return bool(_members(self.pgid))

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop this farm (see :func:`stop_farm`), even if its state file is gone or reused.

        Returns ``False`` when none of its processes was left to stop.
        """
        try:
            recorded = Farm.load(self.state).pgid if self.state.exists() else None
        except TuningError:
            recorded = None
        if recorded == self.pgid:
            return stop_farm(self.state, timeout=timeout)
        if not _members(self.pgid):
            _group_gone(self.pgid)
            return False
        _kill_group(self.pgid, timeout)
        return True

    def status(self) -> FarmStatus:
        return farm_status(self.state)

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _members(pgid: int, farm_only: bool = True) -> list[int]:
    """Live (non-zombie) processes of group ``pgid`` (that look like a farm's, if ``farm_only``)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(p.pid) != pgid or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except OSError:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        if not farm_only or _MARKER in cmd or "tvm.exec." in cmd:
            found.append(p.pid)
    return found


def _group_gone(pgid: int) -> bool:
    """Whether no process of group ``pgid`` runs any more (zombies about to be reaped aside)."""
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    if _members(pgid, farm_only=False):
        return False
    # Only zombies are left. The supervisor reaps the farm's processes and init reaps the
    # supervisor, unless this process started it: then it is ours to reap.
    proc = _CHILDREN.get(pgid)
    if proc is not None:
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return False
        _reap(pgid)
    return True


def _reap(pgid: int) -> None:
    """Reap the supervisor of group ``pgid`` if this process started it and it has exited."""
    proc = _CHILDREN.get(pgid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pgid]


def _kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM the group, wait up to ``timeout`` seconds, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            raise TuningError(f"not allowed to signal the farm's processes (group {pgid}): "
                              "started by another user?") from None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _group_gone(pgid):
                return
            time.sleep(0.05)
    # SIGKILL cannot be ignored: anything left is a zombie whose parent has not reaped it yet.
    _reap(pgid)


def _tail(path: str | Path, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _logs_tail(logs: dict[str, str]) -> str:
    parts = []
    for name, path in logs.items():
        t = _tail(path)
        if t:
            parts.append(f"--- {name} ({path}):\n{t}")
    return "\n".join(parts)


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound as the tracker binds it (with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise TuningError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    return True


def _server_ports(host: str, n: int, avoid: int) -> list[int]:
    """A distinct free starting port per server from :data:`SERVER_PORT` upwards."""
    ports: list[int] = []
    p = SERVER_PORT
    while len(ports) < n and p < 65535:
        if p != avoid and _port_free(host, p):
            ports.append(p)
        p += 1
    if len(ports) < n:
        raise TuningError(f"no {n} free ports on {host} from {SERVER_PORT} upwards for servers")
    return ports


def _connect_host(host: str) -> str:
    """The address to reach a socket bound to ``host`` (wildcards mean this machine)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def start_farm(
    servers: int = 1,
    host: str = "127.0.0.1",
    port: int = 9190,
    key: str = "local",
    state: str | Path | None = None,
    threads: int | None = None,
    timeout: float = 60.0,
) -> Farm:
    """Start a tracker on ``host:port`` and ``servers`` RPC servers registered under ``key``.

    Everything runs in one new session and process group, which outlives the caller; the farm
    is recorded in ``state`` (default :func:`default_state_path`), with the logs next to it.
    Returns once every server is registered with the tracker.

    Parameters
    ----------
    servers : number of RPC servers.
    host : address the tracker and the servers bind to (loopback unless said otherwise). The
        servers register with the address they reach the tracker from, so for clients on other
        machines give this machine's address, not ``0.0.0.0`` (they would register as
        127.0.0.1).
    port : the tracker's port; it must be free.
    key : device key the servers register with (``squeezer tune --key``).
    state : state file.
    threads : ``TVM_NUM_THREADS`` of the servers; default: the host's physical cores.
    timeout : seconds to wait for the tracker to listen, and again for the servers to register.

    Raises
    ------
    TuningError
        Bad arguments, the port is taken, a farm is already recorded in ``state``, or the farm
        did not come up (the group is then stopped, and the message ends with the logs' tails).
    """
    if os.name != "posix":
        raise TuningError("squeezer farm needs a POSIX system (process groups, sessions)")
    if not isinstance(servers, int) or servers < 1:
        raise TuningError(f"--servers must be a positive integer, got {servers!r}")
    if not 0 < int(port) < 65536:
        raise TuningError(f"--port must be in 1..65535, got {port!r}")
    if not key or any(c.isspace() for c in key):
        raise TuningError(f"--key must be a non-empty word, got {key!r}")
    if threads is None:
        from squeezer.targets.cpu import detect_host

        threads = detect_host().cores
    if threads < 1:
        raise TuningError(f"--threads must be positive, got {threads!r}")
    path = Path(state) if state is not None else default_state_path(port)
    if path.exists():
        try:
            old = Farm.load(path)
        except TuningError:
            old = None
        if old is not None and old.alive():
            raise TuningError(f"a farm already runs on {old.rpc} (state {path}); stop it with "
                              f"`squeezer farm stop --port {old.port}` first")
        path.unlink(missing_ok=True)
    if not _port_free(host, port):
        raise TuningError(f"port {port} on {host} is taken: cannot start the RPC tracker there "
                          "(choose another --port, or `squeezer farm stop` the farm on it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    logs = {"supervisor": f"{stem}.supervisor.log", "tracker": f"{stem}.tracker.log"}
    logs.update({f"server{i}": f"{stem}.server{i}.log" for i in range(servers)})
    for p in logs.values():
        Path(p).write_bytes(b"")
    py = [sys.executable, "-m"]
    tracker_at = f"{_connect_host(host)}:{port}"
    ports = _server_ports(host, servers, port)
    cfg = {
        "tracker": [*py, "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                    "--port-end", str(port + 1)],
        "tracker_log": logs["tracker"],
        "connect": [_connect_host(host), port],
        "servers": [[*py, "tvm.exec.rpc_server", "--tracker", tracker_at, "--key", key,
                     "--host", host, "--port", str(p), "--port-end", str(min(p + 100, 65535))]
                    for p in ports],
        "server_logs": [logs[f"server{i}"] for i in range(servers)],
        "env": {"TVM_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"},
        "timeout": timeout,
    }
    # The program comes on stdin, so that `ps` shows a short command line with the marker.
    program = f"import json\ncfg = json.loads({json.dumps(json.dumps(cfg))})\n{_SUPERVISOR}"
    bootstrap = "import sys; exec(sys.stdin.read())"
    with open(logs["supervisor"], "ab") as err:
        proc = subprocess.Popen([sys.executable, "-c", bootstrap, _MARKER, str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True, close_fds=True)
    pgid = proc.pid
    _CHILDREN[pgid] = proc
    try:
        assert proc.stdin is not None
        proc.stdin.write(program.encode())
        proc.stdin.close()
        report = _read_report(proc, timeout + 30)
        farm = Farm(host=host, port=port, key=key, servers=servers, pgid=pgid,
                    tracker_pid=int(report.get("tracker") or 0),
                    server_pids=[int(p) for p in report.get("servers") or []],
                    threads=threads, state=path, logs=logs, started=time.time())
        if report.get("error"):
            raise TuningError(f"the farm did not start: {report['error']}")
        _write_atomic(path, farm.to_json())
        _wait_registered(farm, timeout)
    except BaseException as e:
        _kill_group(pgid, timeout=5.0)
        path.unlink(missing_ok=True)
        if isinstance(e, TuningError):
            tail = _logs_tail(logs)
            raise TuningError(f"{e}" + (f"\n{tail}" if tail else "")) from None
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    return farm


def _read_report(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The supervisor's one JSON line (pids, or the error that stopped it)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TuningError(f"the farm's supervisor did not report within {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise TuningError(f"the farm's supervisor exited (status {proc.wait()})")
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def _wait_registered(farm: Farm, timeout: float) -> None:
    """Poll the tracker until all servers are registered; fail early if a process died."""
    import psutil

    deadline = time.monotonic() + timeout
    connect = _connect_host(farm.host)
    count = 0
    while True:
        for name, pid in [("tracker", farm.tracker_pid)] + [
                (f"server {i}", p) for i, p in enumerate(farm.server_pids)]:
            try:
                dead = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                dead = True
            if dead:
                raise TuningError(f"the farm did not start: the {name} (pid {pid}) exited")
        with contextlib.suppress(OSError, ValueError):
            count = servers_by_key(tracker_summary(connect, farm.port, timeout=5.0)).get(
                farm.key, 0)
            if count >= farm.servers:
                return
        if time.monotonic() > deadline:
            raise TuningError(f"the farm did not start: {count} of {farm.servers} server(s) "
                              f"registered with the tracker {farm.rpc} within {timeout:g}s")
        time.sleep(0.2)


def stop_farm(state: str | Path | None = None, port: int = 9190, timeout: float = 10.0) -> bool:
    """Stop the farm recorded in ``state`` (default: the one on ``port``); remove the state file.

    Sends SIGTERM to the farm's process group, waits up to ``timeout`` seconds for every process
    to exit, then sends SIGKILL. Returns ``False`` when there was no farm (no state file, or its
    processes are already gone).
    """
    path = Path(state) if state is not None else default_state_path(port)
    if not path.exists():
        return False
    try:
        farm = Farm.load(path)
    except TuningError:
        path.unlink(missing_ok=True)
        return False
    if not _members(farm.pgid):
        # Gone already, or the group id now belongs to processes that are not a farm's.
        _group_gone(farm.pgid)
        path.unlink(missing_ok=True)
        return False
    _kill_group(farm.pgid, timeout)
    path.unlink(missing_ok=True)
    return True


@dataclass
class FarmStatus:
    """What ``squeezer farm status`` reports."""

    running: bool
    host: str
    port: int
    state: Path
    servers: dict[str, int] = field(default_factory=dict)  # connected servers per key
    farm: Farm | None = None
    note: str = ""

    def line(self) -> str:
        """One line for the console."""
        where = f"{self.host}:{self.port}"
        if not self.running:
            return f"farm on {where}: not running" + (f" ({self.note})" if self.note else "")
        keys = ", ".join(f"{n} server(s) with key {k!r}" for k, n in sorted(self.servers.items()))
        owner = f"pgid {self.farm.pgid}, state {self.state}" if self.farm else self.note
        return f"farm on {where}: running, {keys or 'no servers registered'} ({owner})"


def farm_status(state: str | Path | None = None, port: int = 9190,
                host: str = "127.0.0.1") -> FarmStatus:
    """The farm recorded in ``state`` (default: on ``port``) and its tracker's servers per key.

    Without a state file, a tracker answering on ``host:port`` (started by hand) is reported too.
    """
    path = Path(state) if state is not None else default_state_path(port)
    farm = None
    if path.exists():
        with contextlib.suppress(TuningError):
            farm = Farm.load(path)
    if farm is not None:
        host, port = _connect_host(farm.host), farm.port
        if not farm.alive():
            return FarmStatus(False, farm.host, port, path, farm=farm,
                              note=f"stale state file {path}")
    try:
        summary = tracker_summary(host, port, timeout=5.0)
    except (OSError, ValueError) as e:
        if farm is not None:
            return FarmStatus(True, farm.host, port, path, farm=farm,
                              note=f"processes alive but the tracker does not answer: {e}")
        return FarmStatus(False, host, port, path, note=f"no state file {path}")
    return FarmStatus(True, farm.host if farm else host, port, path, servers_by_key(summary),
                      farm, note="" if farm else "a tracker not started by `squeezer farm`")


def cmd_farm(args: Any, console: Any) -> int:
    """``squeezer farm start|stop|status``: one line each; returns the exit status.

    ``status`` returns 1 when nothing runs; ``stop`` returns 0 either way (it is idempotent).
    """
    state = getattr(args, "state", None)
    port = int(getattr(args, "port", 9190))
    if args.action == "start":
        farm = start_farm(servers=args.servers, host=args.host, port=port, key=args.key,
                          state=state, threads=getattr(args, "threads", None))
        console.print(f"farm started: tracker {farm.rpc}, {farm.servers} server(s) with key "
                      f"{farm.key!r}, {farm.threads} thread(s) each (state {farm.state}); tune "
                      f"with --rpc {farm.rpc} --key {farm.key}", highlight=False, soft_wrap=True)
        return 0
    if args.action == "stop":
        path = Path(state) if state else default_state_path(port)
        where = f"port {port}"
        with contextlib.suppress(TuningError):
            where = Farm.load(path).rpc if path.exists() else where
        if stop_farm(path, port):
            console.print(f"farm on {where} stopped", highlight=False, soft_wrap=True)
        else:
            console.print(f"no farm running on {where} (state {path})", highlight=False,
                          soft_wrap=True)
        return 0
    if args.action == "status":
        status = farm_status(state, port, _connect_host(getattr(args, "host", "127.0.0.1")))
        console.print(status.line(), highlight=False, soft_wrap=True)
        return 0 if status.running else 1
    raise TuningError(f"unknown farm action {args.action!r} (start, stop, status)")
