"""The tuning record store: MetaSchedule records on disk, safe to share, kill and resume.

A record directory (``tuning_logs/<target-key>/``) holds three append-only JSON-lines files:

``workloads.jsonl``
    one line per tuned PrimFunc: its structural hash, the task name and MetaSchedule's workload
    JSON (the function itself, so records can be replayed anywhere).
``records.jsonl``
    one line per measured candidate: the workload hash, MetaSchedule's tuning record (trace, run
    seconds, target, argument info) and the squeezer and TVM versions that measured it.
``runs.jsonl``
    one line per tuning run: the model, its tasks (workload hash, name, calls per inference,
    FLOPs), threads and trials; ``squeezer tune-report`` uses it to weigh tasks per model.
``baselines.jsonl``
    one line per task and tuning run: the latency of squeezer's default schedule for that
    workload, measured by the same runner. Records are applied only where they beat it.

Every line is written with a single ``write`` on a descriptor opened with ``O_APPEND`` while holding
an exclusive ``flock`` on ``.lock``, then fsynced: two processes tuning into one directory
interleave whole lines, and a process killed mid-write leaves at most one truncated last line. A
line that does not parse is skipped with a warning naming file and line number; records measured
by another squeezer or TVM version are ignored with one warning per file.

:class:`RecordStore` is a MetaSchedule ``PyDatabase``: the tuner commits to it directly, and
``compile`` queries it through the same interface.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm.s_tir.meta_schedule as ms
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule import _ffi_api as ms_ffi
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload

log = logging.getLogger("squeezer.tune")

FORMAT = 1
WORKLOADS = "workloads.jsonl"
RECORDS = "records.jsonl"
BASELINES = "baselines.jsonl"
RUNS = "runs.jsonl"
FAILED_SECS = 1e10  # MetaSchedule's run time for a candidate that failed to build or run


def versions() -> dict[str, str]:
    import squeezer

    return {"squeezer": squeezer.__version__, "tvm": tvm.__version__}


def _plain(obj):
    """MetaSchedule's JSON object -> Python JSON values.

    Like MetaSchedule's own ``_json_de_tvm``, except that IR objects embedded in a trace (the
    ``IndexMap`` of a layout rewrite) become their ``save_json`` text, as MetaSchedule's C++ JSON
    database writes them; ``TuningRecord.from_json`` reads them back from that text.
    """
    from tvm_ffi import Array, Map

    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return obj.value
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, Array | list | tuple):
        return [_plain(i) for i in obj]
    if isinstance(obj, Map | dict):
        return {str(_plain(k)): _plain(v) for k, v in obj.items()}
    # save_json pretty-prints; the compact form is a third of the size and loads the same.
    return json.dumps(json.loads(tvm.ir.save_json(obj)), separators=(",", ":"))


def record_json(record: TuningRecord) -> list:
    return _plain(ms_ffi.TuningRecordAsJSON(record))


@dataclass(frozen=True)
class Measurement:
    """One measured candidate as read back from ``records.jsonl`` (file order = trial order)."""

    workload: str
    seconds: float  # mean of the run seconds; FAILED_SECS for a failure
    source: Path | None = None  # the directory it was read from or written to

    @property
    def failed(self) -> bool:
        return self.seconds >= FAILED_SECS


@contextmanager
def _locked(directory: Path):
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_lines(path: Path, objs: Iterable[dict]) -> None:
    """Append JSON lines to ``path`` atomically with respect to other writers and to kills."""
    data = "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objs)
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A writer killed mid-line left no newline: start on a fresh line so that only the
            # torn line is lost, not the next one as well.
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = "\n" + data
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: Path) -> Iterable[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each well-formed line; warn about the others.

    A packed ``<path>.gz`` (see :func:`pack`) is read first, then ``path`` itself.
    """
    packed = path.with_name(path.name + ".gz")
    if packed.exists():
        yield from _read(packed, lambda: gzip.open(packed, "rt", encoding="utf-8",
                                                   errors="replace"))
    if path.exists():
        yield from _read(path, lambda: open(path, encoding="utf-8", errors="replace"))


def _read(path: Path, opener) -> Iterable[tuple[int, dict]]:
    with opener() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                log.warning("%s:%d: skipped a corrupt tuning record line (%s)", path, number, e)
                continue
            yield number, obj


def pack(directory: str | Path) -> dict[str, tuple[int, int]]:
    """Fold each ``X.jsonl`` of a record directory into ``X.jsonl.gz`` (what squeezer ships).

    Traces compress about 30x. The merged archive is written to a temporary file, fsynced and
    renamed over the old one, and only then is the plain file emptied, all under the directory
    lock, so a crash at any point leaves every record readable exactly once or (between the
    rename and the truncation) readable from both files, never lost. Returns ``{file: (lines,
    bytes)}``.
    """
    directory = Path(directory)
    out: dict[str, tuple[int, int]] = {}
    with _locked(directory):
        for name in (WORKLOADS, RECORDS, BASELINES, RUNS):
            plain, packed = directory / name, directory / (name + ".gz")
            if not plain.exists() or plain.stat().st_size == 0:
                continue
            lines = [json.dumps(obj, separators=(",", ":")) for _, obj in read_lines(plain)]
            tmp = packed.with_name(f".{packed.name}.tmp")
            with open(tmp, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    gz.write(("\n".join(lines) + "\n").encode())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, packed)
            with open(plain, "w"):
                pass  # emptied: its lines now live in the archive
            out[name] = (len(lines), packed.stat().st_size)
    return out


@derived_object
class RecordStore(PyDatabase):
    """MetaSchedule database over one or more record directories.

    Parameters
    ----------
    read_dirs : directories whose records are loaded (missing ones are fine).
    write_dir : directory that receives new workloads, records and baselines; it is also read.
        ``None`` makes the store read-only (compile).

    Lines are read eagerly, but a record's trace is only parsed (about 10 ms each) when its
    workload is asked for: ``compile`` parses one record per kernel of the model, a tuning run
    the records of its own tasks, however many other models' records the directories hold.
    """

    def __init__(self, read_dirs: Iterable[str | Path] = (), write_dir: str | Path | None = None):
        super().__init__()
        self.write_dir = Path(write_dir) if write_dir is not None else None
        dirs = [Path(d) for d in read_dirs]
        if self.write_dir is not None and self.write_dir not in dirs:
            dirs.append(self.write_dir)
        self.dirs = dirs
        self.memory = ms.database.MemoryDatabase()
        self._keys: dict[str, Workload] = {}  # workload hash -> workload in self.memory
        self._wl_json: dict[str, list] = {}  # workload hash -> MetaSchedule workload JSON
        self._raw: dict[str, list[tuple[float, list, Path, int]]] = defaultdict(list)
        self._parsed: dict[str, int] = defaultdict(int)  # raw records parsed, best first
        self._best: dict[str, float] = {}  # best working latency per workload
        self.task_names: dict[str, str] = {}
        self.measurements: list[Measurement] = []
        self.baselines: dict[str, float] = {}  # workload hash -> default-schedule seconds
        self.ignored_versions: dict[tuple[str, str], int] = defaultdict(int)
        self._pending_name: str | None = None
        for d in dirs:
            self._load(d)

    # --- loading ---------------------------------------------------------------------------
    def _load(self, directory: Path) -> None:
        here = versions()
        for number, obj in read_lines(directory / WORKLOADS):
            try:
                key, js = str(obj["key"]), obj["workload"]
                if not isinstance(js, list):
                    raise TypeError("workload is not a list")
                self._wl_json.setdefault(key, js)
                self.task_names.setdefault(key, str(obj.get("name", "")))
            except (KeyError, TypeError) as e:
                log.warning("%s:%d: skipped a corrupt workload line (%s)", directory / WORKLOADS,
                            number, e)
        skipped: dict[tuple[str, str], int] = defaultdict(int)
        for number, obj in read_lines(directory / RECORDS):
            ver = (str(obj.get("squeezer")), str(obj.get("tvm")))
            if ver != (here["squeezer"], here["tvm"]):
                skipped[ver] += 1
                continue
            try:
                key = str(obj["workload"])
                rec = obj["record"]
                if key not in self._wl_json:
                    raise KeyError(f"workload {key} is not in {WORKLOADS}")
                secs = [float(x) for x in (rec[1] or [FAILED_SECS])]
                mean = sum(secs) / len(secs)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                log.warning("%s:%d: skipped an unreadable tuning record (%s)",
                            directory / RECORDS, number, e)
                continue
            self._raw[key].append((mean, rec, directory, number))
            self.measurements.append(Measurement(key, mean, directory))
            if mean < FAILED_SECS and mean < self._best.get(key, FAILED_SECS):
                self._best[key] = mean
        for number, obj in read_lines(directory / BASELINES):
            ver = (str(obj.get("squeezer")), str(obj.get("tvm")))
            if ver != (here["squeezer"], here["tvm"]):
                continue
            try:
                self.baselines[str(obj["workload"])] = float(obj["seconds"])
            except (KeyError, TypeError, ValueError) as e:
                log.warning("%s:%d: skipped a corrupt baseline line (%s)", directory / BASELINES,
                            number, e)
        for (sq, tv), n in skipped.items():
            self.ignored_versions[(sq, tv)] += n
            log.warning(
                "%s: ignored %d tuning record(s) measured by squeezer %s / TVM %s "
                "(this is squeezer %s / TVM %s); retune to use them",
                directory / RECORDS, n, sq, tv, here["squeezer"], here["tvm"],
            )

    def _workload(self, key: str) -> Workload:
        if key in self._keys:
            return self._keys[key]
        mod = Workload.from_json(self._wl_json[key]).mod
        workload = self.memory.commit_workload(mod)
        self._keys[key] = workload
        return workload

    def _ensure(self, key: str, limit: int | None = None) -> None:
        """Parse the stored records of ``key`` into the in-memory database, best first."""
        raw = self._raw.get(key)
        if not raw or (limit is not None and self._parsed[key] >= limit):
            return
        if self._parsed[key] == 0:
            raw.sort(key=lambda r: r[0])
        workload = self._workload(key)
        stop = len(raw) if limit is None else min(limit, len(raw))
        while self._parsed[key] < stop:
            _, rec, directory, number = raw[self._parsed[key]]
            self._parsed[key] += 1
            try:
                self.memory.commit_tuning_record(TuningRecord.from_json(rec, workload))
            except Exception as e:  # noqa: BLE001 - any malformed record is skipped, not fatal
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                log.warning("%s:%d: skipped an unreadable tuning record (%s)",
                            directory / RECORDS, number, msg)
                if self._parsed[key] == 1 and len(raw) > 1:
                    stop = min(stop + 1, len(raw))  # the best one was bad: take the next

    # --- PyDatabase interface --------------------------------------------------------------
    def has_workload(self, mod: tvm.IRModule) -> bool:
        return workload_hash(mod) in self._wl_json or self.memory.has_workload(mod)

    def commit_task(self, mod: tvm.IRModule, name: str) -> str:
        """Commit ``mod`` as the workload of the task ``name``; returns its hash."""
        self._pending_name = name
        try:
            return self.commit_key(mod)
        finally:
            self._pending_name = None

    def commit_workload(self, mod: tvm.IRModule) -> Workload:
        key = workload_hash(mod)
        if key in self._wl_json:
            workload = self._workload(key)
            self._ensure(key)  # a tuning run: all its stored records, for search and dedup
            return workload
        workload = self.memory.commit_workload(mod)
        self._keys[key] = workload
        self._wl_json[key] = workload.as_json()
        name = self._pending_name or _func_name(mod)
        self.task_names.setdefault(key, name)
        if self.write_dir is not None:
            append_lines(self.write_dir / WORKLOADS,
                         [{"key": key, "name": name, "workload": self._wl_json[key]}])
        return workload

    def commit_tuning_record(self, record: TuningRecord) -> None:
        self.memory.commit_tuning_record(record)
        key = str(record.workload.as_json()[0])
        secs = [float(s) for s in (record.run_secs or [FAILED_SECS])]
        mean = sum(secs) / len(secs)
        self.measurements.append(Measurement(key, mean, self.write_dir))
        if mean < FAILED_SECS and mean < self._best.get(key, FAILED_SECS):
            self._best[key] = mean
        if self.write_dir is not None:
            append_lines(self.write_dir / RECORDS,
                         [{"workload": key, "record": record_json(record), **versions()}])

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        key = str(workload.as_json()[0])
        self._ensure(key)
        return list(self.memory.get_top_k(workload, top_k))

    def get_all_tuning_records(self) -> list[TuningRecord]:
        for key in list(self._raw):
            self._ensure(key)
        return list(self.memory.get_all_tuning_records())

    def __len__(self) -> int:
        return len(self.measurements)

    # --- squeezer's own queries ------------------------------------------------------------
    def commit_baseline(self, mod: tvm.IRModule, seconds: float) -> None:
        key = self.commit_key(mod)
        self.baselines[key] = seconds
        if self.write_dir is not None:
            append_lines(self.write_dir / BASELINES,
                         [{"workload": key, "seconds": seconds, **versions()}])

    def commit_run(self, info: dict) -> None:
        if self.write_dir is not None:
            append_lines(self.write_dir / RUNS, [{**info, **versions()}])

    def commit_key(self, mod: tvm.IRModule) -> str:
        self.commit_workload(mod)
        return workload_hash(mod)

    def key_of(self, mod: tvm.IRModule) -> str | None:
        """The stored hash of ``mod`` if its workload is known, else ``None`` (adds nothing)."""
        key = workload_hash(mod)
        return key if key in self._wl_json else None

    def keys(self) -> list[str]:
        """Hashes of every workload that has stored records."""
        return [k for k, v in self._raw.items() if v]

    def best_seconds(self, mod: tvm.IRModule) -> float | None:
        """The best measured latency of a working candidate for ``mod``, if any."""
        return self._best.get(workload_hash(mod))

    def best_schedule(self, mod: tvm.IRModule, target) -> tvm.s_tir.Schedule | None:
        """The schedule of the best record of ``mod`` (parses that record only)."""
        key = workload_hash(mod)
        if key not in self._wl_json:
            return None
        self._ensure(key, limit=1)
        return self.memory.query_schedule(mod, target, "main")

    def training_records(self, per_workload: int = 32) -> list[TuningRecord]:
        """The best ``per_workload`` records of every stored workload (cost-model warm start)."""
        out: list[TuningRecord] = []
        for key in self.keys():
            self._ensure(key, limit=per_workload)
            out += list(self.memory.get_top_k(self._workload(key), per_workload))
        return out

    def trials_of(self, key: str) -> int:
        return sum(1 for m in self.measurements if m.workload == key)


def workload_hash(mod: tvm.IRModule) -> str:
    """MetaSchedule's workload hash (structural) of a normalized one-function module."""
    return str(tvm_ffi.structural_hash(mod))


workload_key = workload_hash


def _func_name(mod: tvm.IRModule) -> str:
    for gv in mod.get_global_vars():
        return gv.name_hint
    return "?"
