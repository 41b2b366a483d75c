"""Replay a recorded trace through the real core: each vCPU's (and the main
loop's) BQL acquisitions run on real threads through the compiled,
instrumented BQL, without KVM, and the run is recorded as ``kvmscope run``
records one (docs/whatif.md, "Through the real core").

What runs: per thread, the recorded sequence of (time outside the lock,
call site, hold time).  Time outside the lock (guest time and exit handling
of a vCPU) is busy time on the calibrated run clock; the main loop sleeps
most of a long gap, as it does in poll.  Holds are busy time with the BQL
held.  Left out: exits, interrupts, timers, bottom halves and AIO (the
causal links between threads): each thread keeps its own recorded timing.
"""
import copy
import datetime
import os
import types

import numpy as np

from . import __version__
from .errors import ConfigError

#: the changes the core engine can apply
CHANGES = ("scale_hold", "add_hold", "lockless")

LEFT_OUT = ["exits", "interrupts", "timers", "bottom halves", "AIO",
            "causal links between threads (each keeps its recorded timing)"]


def schedules(trace, scale_hold=None, add_hold=None, lockless=None):
    """Per-thread schedules of a recorded trace, with changes applied.

    Parameters
    ----------
    trace : kvmscope.analysis.trace.Trace
    scale_hold, add_hold : dict, optional
        Call site -> factor / extra nanoseconds for each hold there.
    lockless : list of str, optional
        Devices whose call sites no longer take the BQL: their hold becomes
        time outside the lock.

    Returns
    -------
    list of tuple
        ``(name, role, gap_ns, hold_ns, callsite_id)`` per thread holding
        the BQL, in thread order; ids index ``trace.meta["callsites"]``.
    """
    callsites = list(trace.meta.get("callsites") or [])
    scale_hold = dict(scale_hold or {})
    add_hold = dict(add_hold or {})
    lockless = list(lockless or [])
    for cs in list(scale_hold) + list(add_hold):
        if cs not in callsites:
            raise ConfigError(f"unknown call site {cs!r}: the trace has {', '.join(callsites)}")
    devices = list(trace.meta.get("devices") or [])
    for dev in lockless:
        if dev not in devices:
            raise ConfigError(f"unknown device {dev!r}: the trace has {', '.join(devices)}")
    lk = trace.arrow("locks").to_pandas()
    if len(lk) == 0:
        raise ConfigError("the trace has no BQL acquisitions to replay")
    th = trace.arrow("threads").to_pandas().set_index("thread")
    site_id = {c: i for i, c in enumerate(callsites)}
    off_sites = {c for c in callsites if c.split(":", 1)[-1] in lockless}
    origin = int(lk["request_ns"].min())
    out = []
    for thread, g in lk.sort_values(["thread", "request_ns"]).groupby("thread", sort=True):
        sites = g["callsite"].astype(str).to_numpy()
        req = g["request_ns"].to_numpy(np.int64)
        hold = (g["released_ns"] - g["acquired_ns"]).to_numpy(np.float64)
        rel = g["released_ns"].to_numpy(np.int64)
        gap = np.empty(len(g), np.float64)
        gap[0] = req[0] - origin
        gap[1:] = req[1:] - rel[:-1]
        for cs, f in scale_hold.items():
            hold[sites == cs] *= f
        for cs, ns in add_hold.items():
            hold[sites == cs] += ns
        keep = np.ones(len(g), bool)
        if off_sites:
            keep = ~np.isin(sites, list(off_sites))
            # a lockless section is time outside the lock, before the next request
            dropped = np.cumsum(np.where(keep, 0.0, gap + hold))[keep]
            gap[keep] += np.diff(dropped, prepend=0.0)
        ids = np.array([site_id[s] for s in sites], np.uint32)
        name, role = (th.loc[thread, "name"], th.loc[thread, "role"]) if thread in th.index \
            else (f"thread{thread}", "vcpu")
        out.append((str(name), str(role), np.maximum(gap[keep], 0), np.maximum(hold[keep], 0),
                    ids[keep]))
    return out


def replay(trace, output, force=False, compression=None, **changes):
    """Run a trace's schedules through the compiled BQL and record the run.

    Parameters
    ----------
    trace : kvmscope.analysis.trace.Trace
        A recording (``kvmscope run``).
    output : str
        Trace directory to write: missing, empty, or a trace to replace
        with *force*.
    force : bool
    compression : {None, "lz4", "zstd"}
    **changes
        ``scale_hold``, ``add_hold`` (ns) and ``lockless``, as for
        :func:`kvmscope.analysis.whatif.reexecute`.

    Returns
    -------
    dict
        The written ``meta.json``.

    Raises
    ------
    ConfigError
        A change the core engine cannot apply, an unknown call site or
        device, or a trace without BQL acquisitions.
    """
    from . import _core
    from .config import prepare_output
    from .runner import host_info, versions
    from .traceformat import FORMAT_NAME, FORMAT_VERSION
    from .tracewriter import TraceWriter

    other = sorted(k for k, v in changes.items() if k not in CHANGES and v is not None)
    if other:
        raise ConfigError("--engine core cannot apply "
                          + ", ".join("--" + k.replace("_", "-") for k in other)
                          + ": use --engine model")
    sched = schedules(trace, **changes)
    prepare_output(types.SimpleNamespace(trace=True, output=output, force=force))
    clock = _core.calibrate_clock("auto", 0.05)
    n = max(len(s[4]) for s in sched)
    tracer = _core.Tracer(min(max(n + 64, 64), 1 << 26), False, True)
    run = _core.ScheduleRun(tracer, sched)
    src = trace.meta
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kvmscope_version": __version__,
        "state": "running", "clock": clock,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "config": copy.deepcopy(src.get("config") or {}), "host": host_info(), "versions": versions(),
        "devices": list(src.get("devices") or []), "callsites": list(src.get("callsites") or []),
        "locks": ["bql"], "bottom_halves": list(src.get("bottom_halves") or []),
        "timers": list(src.get("timers") or []),
        "replay": {"engine": "core", "of": getattr(trace, "path", None),
                   "changes": {k: v for k, v in changes.items() if v},
                   "describe": _describe(changes), "left_out": LEFT_OUT},
    }
    os.makedirs(output, exist_ok=True)
    writer = TraceWriter(output, meta["devices"], meta["callsites"],
                         bh_names=meta["bottom_halves"], timer_names=meta["timers"],
                         compression=compression)
    open(os.path.join(output, "console.log"), "wb").close()
    start_ns, end_ns = run.run()
    hz = _core.refine_clock()
    if hz:
        clock["tsc_hz"] = round(hz)
    writer.write_threads(tracer.threads_info())
    writer.write_records(tracer.drain())
    writer.write_losses(tracer.take_losses(True))
    counts = tracer.counts()
    stats = run.stats()
    meta.update(state="complete", start_ns=start_ns, end_ns=end_ns, stop_reason="schedule done",
                messages=[], records=counts, tables=dict(writer.counts),
                stats={"bql": {"acquisitions": sum(s["acquisitions"] for s in stats),
                               "contended": sum(s["contended"] for s in stats),
                               "wait_ns": sum(s["wait_ns"] for s in stats)},
                       "threads": {name: s for (name, *_), s in zip(sched, stats)}})
    writer.close()
    writer.write_meta(meta)
    writer.finish(meta, convert=True)
    return meta


def _describe(changes):
    out = []
    for cs, f in (changes.get("scale_hold") or {}).items():
        out.append(f"{cs} hold x{f:g}")
    for cs, ns in (changes.get("add_hold") or {}).items():
        out.append(f"{cs} hold +{ns:g} ns")
    for dev in changes.get("lockless") or []:
        out.append(f"{dev} without the BQL")
    return out or ["no change"]
