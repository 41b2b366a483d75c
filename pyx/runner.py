"""Record a run: configure the machine, start the vCPUs, drain the tracer into a trace, summarise."""
import dataclasses
import datetime
import os
import platform
import resource
import signal
import socket
import sys
import tempfile
import threading
import time

from . import __version__, board
from .config import RunConfig, prepare_output  # noqa: F401  (RunConfig re-exported here)

DRAIN_INTERVAL_S = 0.05        # flush period; a killed run loses at most this much


@dataclasses.dataclass
class RunResult:
    config: RunConfig
    stop_reason: str
    ok: bool
    elapsed_s: float
    stats: dict
    records: dict
    tables: dict
    console: bytes
    clock: dict
    trace_path: str = None
    messages: list = dataclasses.field(default_factory=list)

    @property
    def lost(self):
        return sum(r["lost"] for r in self.records.values())

    @property
    def written(self):
        return sum(r["written"] for r in self.records.values())


def host_info():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "kernel": platform.release(),
            "machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count()}


def versions():
    import numpy
    import pyarrow
    out = {"kvmscope": __version__, "python": platform.python_version(),
           "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}
    try:
        import Cython
        out["cython"] = Cython.__version__
    except ImportError:
        pass
    return out


def _initial_meta(config, machine, clock, format_name, format_version, temporary_disk, disk_path,
                  disk_sectors, region):
    """meta.json as written when the run starts (state "running")."""
    meta = {
        "format": format_name, "format_version": format_version, "kvmscope_version": __version__,
        "state": "running", "clock": clock,
        # wall clock, to order runs of many boots (start_ns is CLOCK_MONOTONIC)
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "config": dataclasses.asdict(config), "host": host_info(), "versions": versions(),
        "devices": list(machine.devices), "callsites": list(machine.callsites),
        "locks": ["bql"], "bottom_halves": list(machine.bh_names), "timers": list(machine.timer_names),
        "disk": {"path": None if temporary_disk else os.path.abspath(disk_path),
                 "sectors": disk_sectors, "sectors_per_vcpu": region},
    }
    meta["config"]["lockless"] = list(config.lockless)
    return meta


def record(config, progress=None):
    """Run a guest under kvmscope and record its trace.

    Parameters
    ----------
    config : RunConfig
    progress : callable, optional
        Called about every 50 ms with ``(elapsed_s, records_written)``.

    Returns
    -------
    RunResult

    Raises
    ------
    kvmscope._core.KvmError
        /dev/kvm missing or unusable, a capability missing, or a KVM set-up call failed.

    Examples
    --------
    >>> from kvmscope.runner import RunConfig, record
    >>> r = record(RunConfig("pio-storm", vcpus=1, iterations=1000, output="/tmp/t"))  # doctest: +SKIP
    >>> r.stats["vcpus"][0]["by_reason"]["io"]                                          # doctest: +SKIP
    1001
    """
    from . import _core

    guest = config.validate()
    image = guest.image()
    kvm = _core.Kvm(config.kvm_device)
    clock = _core.calibrate_clock(config.clock)
    tracer = _core.Tracer(config.ring_records, config.lossless, config.trace)
    disk_path, temporary_disk = _prepare_disk(config)
    try:
        machine = _core.Machine(kvm, tracer, config.vcpus, config.memory, irqchip=config.irqchip,
                                disk_path=disk_path, aio_threads=config.aio_threads)
    finally:
        if temporary_disk:
            os.unlink(disk_path)        # the machine holds it open
    image_size = os.path.getsize(disk_path) if not temporary_disk else config.disk_size
    disk_sectors = image_size // board.BLK_SECTOR_SIZE
    # each vCPU's sectors, at most as many as its version table (one dword per sector) holds
    region = min(board.VERSIONS_PER_VCPU // 4, disk_sectors // config.vcpus)
    machine.load_image(image)
    machine.write_mem(board.PARAMS_ADDR, board.pack_params(
        nvcpus=config.vcpus, iterations=config.iterations, seed=config.seed & (2 ** 64 - 1),
        mem_size=config.memory, timer_period_us=config.timer_period_us, region=region,
        port_burst=config.port_burst))
    for callsite, ns in config.inject_hold.items():
        machine.set_inject_hold(callsite, ns)
    for device in config.lockless:
        machine.set_lockless(device, True)

    writer = None
    log_fd = -1
    meta = {}
    if config.trace:
        # pyarrow (and the pandas it pulls in) only when recording: --no-trace starts faster
        from .tracewriter import TraceWriter
        from .traceformat import FORMAT_NAME, FORMAT_VERSION
        meta = _initial_meta(config, machine, clock, FORMAT_NAME, FORMAT_VERSION, temporary_disk,
                             disk_path, disk_sectors, region)
        cal = _core.measure_mutex_handoff()
        meta["host"]["mutex_wake_ns"] = cal["wake_ns"]
        meta["host"]["mutex_unlock_wake_ns"] = cal["unlock_ns"]
        prepare_output(config)
        writer = TraceWriter(config.output, machine.devices, machine.callsites,
                             bh_names=machine.bh_names, timer_names=machine.timer_names,
                             compression=config.compression)
        log_fd = os.open(os.path.join(config.output, "console.log"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    out_fd = -1
    if config.console:
        sys.stdout.flush()
        out_fd = sys.stdout.fileno()
    machine.set_console_fds(out_fd, log_fd)

    stop_reason = "guest exit"
    signals = _StopSignals()
    drain = _Drain(tracer, writer, _core, clock)
    cpu = CpuAccount(tracer)
    start_ns = _core.now_ns()
    meta["start_ns"] = start_ns
    if writer:
        writer.write_meta(meta)
    t0 = time.monotonic()
    with signals:
        try:
            machine.start()
            try:
                _wait_for_tids(tracer)
                if writer:
                    writer.write_threads(tracer.threads_info())
                while not machine.wait(DRAIN_INTERVAL_S):
                    drain.once()
                    elapsed = time.monotonic() - t0
                    if progress:
                        progress(elapsed, sum(c["written"] for c in tracer.counts().values()))
                    if drain.failure:
                        stop_reason = "error"
                        machine.stop()
                        break
                    if signals.received:
                        stop_reason = "interrupted"
                        machine.stop()
                        break
                    if config.duration is not None and elapsed >= config.duration:
                        stop_reason = "duration"
                        machine.stop()
                        break
            except _Abort:
                raise
            except KeyboardInterrupt:
                # only where signals could not be caught as a flag (not the main thread)
                stop_reason = "interrupted"
                machine.stop()
            _join_draining(machine, drain)
            if signals.received and stop_reason != "error":
                stop_reason = "interrupted"
            elapsed = time.monotonic() - t0
            end_ns = _core.now_ns()
            result = _finish(config, guest, machine, tracer, drain, writer, meta, log_fd, stop_reason,
                             elapsed, end_ns, clock, cpu)
        except _Abort:
            _abort(tracer, drain, writer, meta)
    return result


class CpuAccount:
    """What the kernel accounted to the run's threads while it ran
    (``meta.json stats.cpu``): per thread of the core (vCPUs, main loop, AIO
    workers; each samples itself at its start and end) and the drain (the
    thread that moves records to the writer, sampled here), ``cpu_ns``,
    ``runq_ns`` (runnable but waiting for a CPU), ``slices``, ``voluntary``
    and ``involuntary`` context switches; the whole process's CPU time over the
    run and the rest of it (``other_cpu_ns``: threads not listed, such as
    the writer's compression threads, and the listed threads' work outside
    their sampled span)."""

    def __init__(self, tracer):
        self.tracer = tracer
        self.drain = "drain" in tracer.names
        self.t0 = _process_cpu_ns()
        if self.drain:
            tracer.cpu_begin("drain")

    def finish(self):
        if self.drain:
            self.tracer.cpu_end("drain")
        process = _process_cpu_ns() - self.t0
        threads = self.tracer.cpu_stats()
        listed = sum(t["cpu_ns"] or 0 for t in threads.values())
        return {"threads": threads, "process_cpu_ns": process, "other_cpu_ns": max(0, process - listed)}


def _process_cpu_ns():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round((ru.ru_utime + ru.ru_stime) * 1e9)


class _Drain:
    """Moves records from the rings to the trace writer, and keeps draining
    (discarding) after the writer failed, so that no producer ever waits for a
    drain that will not come."""

    def __init__(self, tracer, writer, core, clock):
        self.tracer = tracer
        self.writer = writer
        self._core = core
        self._clock = clock
        self.failure = None         # one-line reason the trace could not be written
        self.unwritten = 0          # records drained after the failure
        self.flushes = 0
        self.max_interval_s = 0.0
        self._last = None

    def once(self, final=False):
        # the run started on a short clock calibration: finish it before the
        # first timestamp is converted
        hz = self._core.refine_clock()
        if hz:
            self._clock["tsc_hz"] = round(hz)
        records = self.tracer.drain()
        losses = self.tracer.take_losses(final)
        if self.writer is None:
            return
        if self.failure:
            self.unwritten += len(records)
            return
        try:
            self.writer.write_records(records)
            self.writer.write_losses(losses)
            self.writer.flush()
        except self.writer.ERRORS as e:
            self.failure = "write failed: " + _one_line(e)
            self.unwritten += len(records)
            self.tracer.abandon()
            return
        now = time.monotonic()
        if self._last is not None:
            self.max_interval_s = max(self.max_interval_s, now - self._last)
        self._last = now
        self.flushes += 1

    def summary(self):
        return {"interval_s": DRAIN_INTERVAL_S, "flushes": self.flushes,
                "max_interval_s": round(self.max_interval_s, 4)}


def _one_line(exc):
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _join_draining(machine, drain):
    """Wait for every thread of the machine to end while still draining: a
    thread in lossless mode may be waiting for room in its ring (possibly while
    it holds the BQL that others wait for), and only the drain frees it."""
    joiner = threading.Thread(target=machine.join, name="kvmscope-join", daemon=True)
    joiner.start()
    while joiner.is_alive():
        joiner.join(0.005)
        drain.once()


def _abort(tracer, drain, writer, meta):
    """A second interrupt: leave at once.  What was flushed stays readable;
    meta.json says the recording was aborted."""
    tracer.abandon()
    if writer is not None and not drain.failure:
        try:
            writer.flush()
            meta.update(state="aborted", stop_reason="aborted", drain=drain.summary())
            writer.write_meta(meta)
        except writer.ERRORS:
            pass
    sys.stderr.write("kvmscope: aborted by a second interrupt"
                     + (f"; the trace in {writer.path} holds what was flushed\n" if writer else "\n"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _finish(config, guest, machine, tracer, drain, writer, meta, log_fd, stop_reason, elapsed, end_ns,
            clock, cpu):
    """After the threads ended: last drain, meta.json, the result."""
    machine.flush_console()
    stats = machine.stats()
    messages = [v["message"] for v in stats["vcpus"] if v["message"]]
    if stats["error"]:
        stop_reason = "error"
    failed_status = [v for v in stats["vcpus"] if v["finished_by_guest"] and v["exit_status"]
                     and not guest.status_is_count]
    if failed_status and stop_reason == "guest exit":
        stop_reason = "guest exit: " + ", ".join(
            f"vcpu{v['vcpu']} status {v['exit_status']}" for v in failed_status)
    drain.once(final=True)
    stats["cpu"] = cpu.finish()
    if drain.failure:
        messages.append(f"trace: {drain.failure}; {drain.unwritten} records not written"
                        f" (what was written before stays readable)")
    ok = not stats["error"] and not failed_status and not drain.failure
    records = tracer.counts()
    if writer:
        os.close(log_fd)
        if drain.failure:
            state = "failed"
        elif stats["error"]:
            state = "failed"
        else:
            state = "stopped" if stop_reason in ("duration", "interrupted") else "complete"
        meta.update(state=state, end_ns=end_ns, stop_reason=stop_reason, messages=messages,
                    records=records, tables=dict(writer.counts), stats=stats, drain=drain.summary())
        if state == "failed":
            meta["failure"] = drain.failure or (messages[0] if messages else "the run failed")
        try:
            writer.close()
        except writer.ERRORS as e:
            if not drain.failure:
                drain.failure = "write failed: " + _one_line(e)
                meta.update(state="failed", failure=drain.failure)
                messages.append(f"trace: {drain.failure}")
                ok = False
        meta_ok = True
        try:
            writer.write_meta(meta)
        except OSError as e:
            messages.append(f"trace: could not update meta.json: {_one_line(e)}")
            ok = meta_ok = False
        # the finished trace in the Parquet layout (docs/trace-format.md)
        note = writer.finish(meta, convert=meta_ok and not drain.failure)
        if note:
            messages.append(f"trace: {note}")
    return RunResult(config=config, stop_reason=stop_reason, ok=ok, elapsed_s=elapsed,
                     stats=stats, records=records, tables=dict(writer.counts) if writer else {},
                     console=machine.console(), clock=clock,
                     trace_path=config.output if writer else None, messages=messages)


class _Abort(KeyboardInterrupt):
    """A second SIGINT/SIGTERM while recording: abort at once."""


class _StopSignals:
    """While recording, SIGINT and SIGTERM only raise a flag that the drain loop
    checks, so that a signal can never cut a drained batch in half; a second
    one aborts at once (KeyboardInterrupt).  Outside the main thread Python
    cannot install handlers, and Ctrl-C stays a KeyboardInterrupt."""

    def __init__(self):
        self.received = None
        self._saved = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise _Abort
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        return False


def _prepare_disk(config):
    """(path, temporary): the image named by --disk (created with --disk-size if
    missing), or a temporary zero-filled one."""
    if config.disk:
        if not os.path.exists(config.disk):
            with open(config.disk, "wb") as f:
                f.truncate(config.disk_size)
        return config.disk, False
    fd, path = tempfile.mkstemp(prefix="kvmscope-disk-", suffix=".img")
    os.ftruncate(fd, config.disk_size)
    os.close(fd)
    return path, True


def _wait_for_tids(tracer, timeout=1.0):
    """vCPU threads publish their OS tid as they start; wait briefly for all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(tid for _, tid, _, _ in tracer.threads_info()):
            return
        time.sleep(0.001)
