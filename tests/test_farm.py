"""The measurement farm: unreachable trackers, farm start/stop, and a server killed mid-run.

Every farm runs on loopback ports found free at test time, with its state file and logs in
``tmp_path``; the ``farms`` fixture stops each one and checks that no process of it is left.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from squeezer.errors import TuningError
from squeezer.tune import farm as farm_mod
from squeezer.tune.farm import Farm, check_tracker, parse_hostport

HOST = "127.0.0.1"
START_TIMEOUT = 180.0  # seconds for a farm to come up on a loaded 2-core machine


def free_port() -> int:
    """A loopback port nothing listens on (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def leftovers(pgid: int, port: int) -> list[str]:
    """Processes of the farm's group, or tracker/servers naming its port, that still run."""
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            in_group = os.getpgid(p.pid) == pgid
        except (OSError, psutil.Error):
            continue
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if in_group or (("tvm.exec.rpc_" in cmd or farm_mod._MARKER in cmd)
                        and str(port) in cmd.split()):
            left.append(f"{p.pid}: {cmd[:120]}")
    return left


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def port_free(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except OSError:
        pass
    else:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the tracker binds
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@pytest.fixture
def farms(tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    """Start farms on free loopback ports; stop them all and check that nothing is left."""
    started: list[Farm] = []

    def start(servers: int = 1, **kw) -> Farm:
        f = farm_mod.start_farm(servers=servers, host=HOST, port=free_port(),
                                state=tmp_path / f"farm{len(started)}.json", threads=1,
                                timeout=START_TIMEOUT, **kw)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()
    for f in started:
        wait_for(functools.partial(group_gone, f.pgid), 20, f"the farm group {f.pgid} to exit")
        assert leftovers(f.pgid, f.port) == []


def tiny_conv():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU()).eval()
    return model, (torch.randn(1, 4, 8, 8),)


# --- 1. tracker unreachable, bad arguments ---
def test_check_tracker_unreachable_names_host_and_port():
    port = free_port()
    with pytest.raises(TuningError, match=rf"127\.0\.0\.1:{port}\b.*unreachable"):
        check_tracker(HOST, port, "x", timeout=2)


def test_check_tracker_not_a_tracker():
    """Something listens but never speaks the tracker protocol: named, and no hang."""
    with socket.socket() as srv:
        srv.bind((HOST, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        with pytest.raises(TuningError, match=rf"127\.0\.0\.1:{port} does not answer as a TVM"):
            check_tracker(HOST, port, "x", timeout=1)


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:", ":9190", "host:port", "h:0",
                                  "h:70000", ""])
def test_parse_hostport_rejects(text):
    with pytest.raises(TuningError, match="--rpc: expected HOST:PORT"):
        parse_hostport(text)


def test_parse_hostport():
    assert parse_hostport("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert parse_hostport("::1:9190") == ("::1", 9190)


def test_tune_rpc_errors(tmp_path):
    """``tune`` refuses an unreachable tracker, a bad --rpc, and --key without --rpc, up front."""
    from squeezer.tune import tune

    model, example = tiny_conv()
    port = free_port()
    kw = dict(example_inputs=example, trials=1, records=tmp_path, threads=1, warm_start=False)
    with pytest.raises(TuningError, match=rf"tracker 127\.0\.0\.1:{port} is unreachable"):
        tune(model, rpc=f"{HOST}:{port}", key="x", **kw)
    with pytest.raises(TuningError, match="--rpc: expected HOST:PORT"):
        tune(model, rpc="127.0.0.1", key="x", **kw)
    with pytest.raises(TuningError, match="--key .*--rpc"):
        tune(model, key="x", **kw)
    with pytest.raises(TuningError, match="--rpc needs --key"):
        tune(model, rpc=f"{HOST}:{port}", **kw)
    assert not any(tmp_path.iterdir())  # nothing written


# --- 2. farm start / status / stop ---
def test_start_refuses_a_taken_port(tmp_path):
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(TuningError, match=rf"port {port} on 127\.0\.0\.1 is taken"):
            farm_mod.start_farm(servers=1, port=port, state=tmp_path / "f.json", threads=1)
    assert not (tmp_path / "f.json").exists()


def test_start_failure_leaves_nothing(tmp_path):
    """A farm that does not come up in time is stopped whole, with a clear error."""
    port, state = free_port(), tmp_path / "farm.json"
    with pytest.raises(TuningError, match=r"the farm did not start: the tracker did not accept"):
        farm_mod.start_farm(servers=1, port=port, state=state, threads=1, timeout=0.01)
    assert not state.exists()
    assert leftovers(-1, port) == []
    wait_for(lambda: port_free(port), 20, f"port {port} to be free")


def test_farm_start_status_stop(tmp_path):
    """Two servers come up under one process group; stop leaves no process and frees the port."""
    port, state = free_port(), tmp_path / "farm.json"
    started = time.monotonic()
    farm = farm_mod.start_farm(servers=2, port=port, key="k2", state=state, threads=1,
                               timeout=START_TIMEOUT)
    try:
        up = time.monotonic() - started
        assert farm.rpc == f"127.0.0.1:{port}" and len(farm.server_pids) == 2
        status = farm_mod.farm_status(state)
        assert status.running and status.servers == {"k2": 2}, status
        assert "running, 2 server(s) with key 'k2'" in status.line()
        assert check_tracker(HOST, port, "k2") == 2
        with pytest.raises(TuningError, match=r"no server with key 'other' \(keys: k2\)"):
            check_tracker(HOST, port, "other")
        members = leftovers(farm.pgid, port)
        assert len(members) >= 1 + 1 + 2 * 2  # supervisor, tracker (+ worker), servers + workers
        for pid in farm.pids:
            assert os.getpgid(pid) == farm.pgid
            assert os.getsid(pid) == farm.pgid != os.getsid(0)  # a session of its own
        started = time.monotonic()
    finally:
        assert farm.stop() is True
    print(f"farm of 2 servers up in {up:.1f}s, stopped in {time.monotonic() - started:.1f}s")
    with pytest.raises(ProcessLookupError):
        os.killpg(farm.pgid, 0)
    assert leftovers(farm.pgid, port) == []
    assert not state.exists()
    wait_for(lambda: port_free(port), 20, f"port {port} to be free")
    assert not farm_mod.farm_status(state).running
    assert farm.stop() is False  # nothing left to stop


def test_farm_cli_start_status_stop(tmp_path, capsys):
    """`squeezer farm start` returns with the farm up and running without it; status; stop."""
    from squeezer.cli import main

    port, state = free_port(), tmp_path / "farm.json"
    args = ["--port", str(port), "--key", "testkey", "--state", str(state)]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "squeezer.cli", "farm", "start", "--servers", "1",
                           *args], capture_output=True, text=True, timeout=START_TIMEOUT + 60)
    up = time.monotonic() - started
    farm = Farm.load(state) if state.exists() else None
    try:
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"--rpc 127.0.0.1:{port} --key testkey" in proc.stdout
        assert farm is not None and farm.servers == 1 and len(farm.server_pids) == 1
        # The CLI process is gone; the farm is not.
        assert check_tracker(HOST, port, "testkey") == 1
        saved = json.loads(state.read_text())
        assert saved["pgid"] == farm.pgid and saved["port"] == port and saved["servers"] == 1
        for name in ("tracker", "server0"):
            assert Path(saved["logs"][name]).parent == tmp_path

        assert main(["farm", "status", *args]) == 0
        out = capsys.readouterr().out
        assert f"127.0.0.1:{port}: running, 1 server(s) with key 'testkey'" in out, out
        with pytest.raises(TuningError, match="already runs"):
            farm_mod.start_farm(servers=1, port=port, state=state, threads=1)

        assert main(["farm", "stop", *args]) == 0
        assert "stopped" in capsys.readouterr().out
    finally:
        if farm is not None:
            farm_mod.stop_farm(state)
    print(f"farm of 1 server up in {up:.1f}s (CLI process included)")
    assert not state.exists()
    wait_for(lambda: group_gone(farm.pgid), 20, "the farm's process group to exit")
    assert leftovers(farm.pgid, port) == []
    wait_for(lambda: port_free(port), 20, f"port {port} to be free")
    assert main(["farm", "status", *args]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["farm", "stop", *args]) == 0  # idempotent
    assert "no farm running" in capsys.readouterr().out


# --- 3. a server killed while the tuner measures on it ---
def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` (not a later process that reused its pid) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_tune_survives_a_killed_server(farms, tmp_path, caplog):
    """SIGKILL one of two servers mid-measurement: the run ends on the other, no record is lost.

    Two batches of 4: the kill lands in a session of the first, the second runs on the survivor
    alone (about 50 s here; 16 trials take about 80 s).

    The victim is killed with its children: the ``rpc_server`` process only waits for its
    ``popen_worker`` child, which holds the listening socket and the tracker connection and forks
    one process per session; killing the ``rpc_server`` pid alone leaves it serving.
    """
    from squeezer.tune import tune
    from squeezer.tune.records import RecordStore

    model, example = tiny_conv()
    farm = farms(servers=2)
    records = tmp_path / "records"
    victim = farm.server_pids[0]
    done = threading.Event()
    killed: dict[str, Any] = {}
    updates: list[float] = []

    def killer() -> None:
        # Wait for the baselines (measured through the farm too), then for a session on the
        # victim: a child of its popen_worker; fall back to the first batch's end.
        while not done.is_set() and not any(records.glob("*/baselines.jsonl")):
            time.sleep(0.05)
        while not done.is_set():
            tree = _process_tree(victim)
            in_session = len(tree) > 2
            if in_session or updates:
                for p in tree:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed.update(in_session=in_session, procs=tree, after_updates=len(updates))
                return
            time.sleep(0.02)

    def on_event(kind: str, **info) -> None:
        if kind == "update":
            updates.append(time.monotonic())

    watch = threading.Thread(target=killer, daemon=True)
    # A hung run would hang the test: stopping the farm makes the tuner's requests fail (after
    # TVM's reconnect retries), so the test ends with an error instead.
    watchdog = threading.Timer(480, farm.stop)
    watch.start()
    watchdog.start()
    started = time.monotonic()
    try:
        result = tune(model, example_inputs=example, trials=8, per_iter=4, records=records,
                      rpc=farm.rpc, key=farm.key, threads=1, warm_start=False,
                      on_event=on_event)
    finally:
        done.set()
        watchdog.cancel()
        watch.join(10)
    elapsed = time.monotonic() - started
    print(f"tuned {result.trials_run} trials through the farm in {elapsed:.0f}s; killed "
          f"{[p.pid for p in killed.get('procs', [])]} "
          f"({'in a session' if killed.get('in_session') else 'between batches'})")

    assert killed, "the victim server was never killed"
    assert farm.alive(), "the watchdog stopped the farm: the run hung"
    # The victim and all its children are gone (reaped by the farm's supervisor).
    wait_for(lambda: not any(_running(p) for p in killed["procs"]), 20,
             "the killed server's processes to vanish")
    wait_for(lambda: check_tracker(HOST, farm.port, farm.key) == 1, 20,
             "the tracker to drop the killed server")

    assert result.trials_run == 8, result.stop_reason
    path = result.records_dir / "records.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == result.trials_run
    for line in lines:
        json.loads(line)  # none torn or corrupt
    during = [f"{r.name}: {r.getMessage()}"[:200] for r in caplog.records
              if r.levelno >= logging.WARNING]
    if during:
        print("warnings during the run:", *during, sep="\n  ")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="squeezer.tune"):
        store = RecordStore(read_dirs=[result.records_dir])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(store.measurements) == len(lines)
    failures = sum(m.failed for m in store.measurements)
    assert failures == sum(t.failures for t in result.tasks)
    assert failures < len(lines), "no candidate was measured after the kill"
    print(f"{failures} of {len(lines)} candidates failed (lost with the killed server)")
