"""Replay a recorded trace through the real core (docs/whatif.md, "Through the
real core"): the re-execution model's per-thread schedules run on real threads
of the compiled core, without KVM, and the run is recorded as ``kvmscope run``
records one.

Per vCPU, a real thread runs its program stream (:mod:`kvmscope.analysis.
reexec_model`, with the what-if changes applied by :mod:`kvmscope.analysis.
reexec_engine` as the model engine applies them): guest time and exit
handling are busy time on the run clock; an exit that waits for an interrupt
blocks until another thread has really raised it; the BQL is taken at the
exit's call site through the instrumented lock and held for the hold time,
with the handler's effects done at their offsets: a request into the AIO
pool's queue (a worker busies the recorded service time, writes the eventfd,
the main loop's fd handler schedules the completion bottom half, which raises
the interrupt), a main-loop timer armed or deleted (its callback busies the
recorded time and raises the tick), a bottom half scheduled, an interrupt
raised.  The main loop is the core's loop thread (poll, timers, bottom halves,
the BQL at ``main:dispatch``).

A trace the model cannot take (a QEMU import: no causal model; other locks;
lost records) falls back to the recorded BQL acquisitions alone: per thread,
time outside the lock, call site, hold.
"""
import copy
import datetime
import math
import os
import types

import numpy as np

from . import __version__
from .errors import ConfigError, KvmscopeError

#: the changes the locks-only fallback can apply
CHANGES = ("scale_hold", "add_hold", "lockless")

#: what the locks-only fallback leaves out
LEFT_OUT = ["exits", "interrupts", "timers", "bottom halves", "AIO",
            "causal links between threads (each keeps its recorded timing)"]

#: what a run of the model's schedules leaves out
MODEL_LEFT_OUT = [
    "the guest and KVM (guest time is calibrated busy time on the vCPU thread)",
    "device models and file I/O (handlers and AIO service are busy time)",
]

#: records per thread's ring, drained every DRAIN_INTERVAL_S (as ``kvmscope run``)
RING_RECORDS = 1 << 17
DRAIN_INTERVAL_S = 0.02

#: KVM's default halt_poll_ns: a guest halted in the kernel (in-kernel irqchip)
#: polls this long at most before its thread sleeps
HALT_POLL_NS = 200_000

#: longest single time the schedule may ask for
MAX_TIME_NS = 60 * 10 ** 9


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
    lk = trace.arrow("locks").to_pandas()
    if "lock" in lk:
        lk = lk[lk["lock"].astype(str) == "bql"]
    if len(lk) == 0:
        raise ConfigError("the trace has no BQL acquisitions to replay")
    callsites = _callsites(trace, lk)
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


def _callsites(trace, lk):
    """The trace's call sites, and those only its BQL records name (an import's)."""
    out = list(trace.meta.get("callsites") or [])
    out += sorted(set(lk["callsite"].astype(str)) - set(out))
    if len(out) > 32:
        raise ConfigError(f"the trace's BQL has {len(out)} call sites: the core takes 32")
    return out


def _ns_raw(values, rpn, what):
    """ns -> run-clock units (int64), refusing a negative or absurd time."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) and (not np.isfinite(a).all() or a.max() > MAX_TIME_NS):
        raise ConfigError(f"the model's {what} times are out of range (over {MAX_TIME_NS // 10**9}s)")
    return np.round(np.maximum(a, 0.0) * rpn).astype(np.int64)


class _Build:
    """The model's schedules as the arrays of ``_core.ModelRun``."""

    def __init__(self, trace, model, changes, rpn):
        from .analysis import reexec_engine as rx
        from .analysis import reexec_model as rm
        from .traceformat import EXIT_REASONS, IRQ_KINDS
        self.rm = rm
        ch = rx.Changes.from_kwargs(**changes)
        # the model engine's own set-up: changes checked and applied, streams copied
        # for extra vCPUs, one timer per (vCPU, recorded timer it arms)
        plan = rx.plan(model, ch)
        self.model, self.ch, self.plan, self.rpn = model, ch, plan, rpn
        if len(model.callsites) > 32:
            raise ConfigError(f"the trace has {len(model.callsites)} call sites: the core takes 32")
        self.dispatch_cs = model.callsites.index("main:dispatch") \
            if "main:dispatch" in model.callsites else None
        if self.dispatch_cs is None:
            raise ConfigError("the trace has no main:dispatch call site: not a kvmscope recording")
        self.m_scale = float(ch.scale_hold.get("main:dispatch", 1.0))
        # -- interrupt vectors, as small indices
        vecs = set()
        for v in plan.vcpus:
            st = v.stream
            vecs.update(g for g, k in zip(st.gvec, st.gate) if k == rm.GATE_WAIT)
            vecs.update(st.isr)
            for S in [st.prog] + list(st.isr.values()):
                vecs.update(w for w in S.wvec if w >= 0)
                vecs.update(e[2] for f in S.fx if f for e in f if e[1] == rm.FX_RAISE)
        vecs.update(tm.vector for tm in plan.timers if tm.vector is not None)
        if model.bh.get("vector") is not None:
            vecs.add(model.bh["vector"])
        self.vectors = sorted(int(x) for x in vecs)
        if len(self.vectors) > 8:
            raise ConfigError(f"the trace uses {len(self.vectors)} interrupt vectors: the core "
                              "replays 8")
        self.vix = {v: i for i, v in enumerate(self.vectors)}
        # -- recorded exits: the fields of their records
        ex = model.exits
        devices = list(trace.meta.get("devices") or [])
        dev_names = [str(c) for c in ex["device"].cat.categories]
        dev_code = np.array([devices.index(d) if d in devices else
                             (0xFFFFFFFF if d == "unassigned" else 0xFFFFFFFE)
                             for d in dev_names] + [0xFFFFFFFE], np.int64)
        rs_names = [str(c) for c in ex["reason"].cat.categories]
        rs_code = np.array([EXIT_REASONS.index(r) if r in EXIT_REASONS else 0 for r in rs_names]
                           + [0], np.int64)
        self.rec = {
            "reason": rs_code[ex["reason"].cat.codes.to_numpy()],
            "device": dev_code[ex["device"].cat.codes.to_numpy()],
            "size": ex["size"].to_numpy(np.int64), "is_write": ex["is_write"].to_numpy(np.int64),
            "count": ex["count"].to_numpy(np.int64),
            "addr": ex["addr"].to_numpy(np.uint64).view(np.int64),
            "data": ex["data"].to_numpy(np.uint64).view(np.int64)}
        irq = model.irq_rows
        rz = irq[irq["kind"] == "raise"]
        self.raise_times = {(int(c), int(vec)): np.sort(g["ts_ns"].to_numpy(np.int64))
                            for (c, vec), g in rz.groupby(["vcpu", "vector"], observed=True)}
        self.irq_kind = [IRQ_KINDS.index(str(k)) for k in irq["kind"].tolist()]
        self.irq_line = irq["line"].astype(np.int64).tolist()
        self.irq_vec = irq["vector"].astype(np.int64).tolist()
        # -- bottom halves: the pool's completion one first (id 0), then the others
        names = list(model.bh["names"])
        aio_bh = model.bh.get("aio", -1)
        others = [i for i in range(len(names)) if i != aio_bh]
        self.bh_names = ["aio:complete"] + [names[i] for i in others]
        self.bh_map = {aio_bh: 0} if aio_bh is not None and aio_bh >= 0 else {}
        self.bh_map.update({b: k + 1 for k, b in enumerate(others)})
        self.bhs = [_ns_raw(np.asarray(model.bh["dur"].get(b) or [1000]) * self.m_scale, rpn,
                            "bottom-half") for b in others]
        # -- effects, exits
        self.fx = []
        self.vcpus = []
        origin = min(v.stream.start for v in plan.vcpus)
        for v in plan.vcpus:
            st = v.stream
            prog = self._exits(st.prog, v, gate=(st.gate, st.gap, st.gvec, st.gcnt),
                               start=st.start - origin)
            isr = {self.vix[vec]: self._exits(S, v) for vec, S in st.isr.items() if len(S.row)}
            self.vcpus.append((v.name, prog, isr))
        self.fx = np.array(self.fx, np.int64).reshape(-1, 5)
        # -- timers
        self.timers = []
        for tm in plan.timers:
            info = model.timers[tm.recorded]
            cb = np.asarray(info["cb"], np.float64) * self.m_scale
            roff = np.asarray(info["raise_off"], np.float64) * self.m_scale
            self.timers.append((int(tm.vcpu), self.vix[tm.vector] if tm.vector is not None else -1,
                                _ns_raw(cb, rpn, "timer callback"),
                                _ns_raw(roff, rpn, "timer callback")))
        self.timer_names = [tm.name for tm in plan.timers]
        # -- AIO requests: operation, range, result, service time, completion times
        A, B = model.aio, model.bh
        n = len(A["op"])
        ops = {"read": 1, "write": 2, "fsync": 3}
        self.aio = np.zeros((n, 7), np.int64)
        if n:
            self.aio[:, 0] = [ops.get(str(o), 1) for o in A["op"]]
            self.aio[:, 1] = np.asarray(A["offset"], np.int64)
            self.aio[:, 2] = np.asarray(A["length"], np.int64)
            self.aio[:, 3] = np.asarray(A["result"], np.int64)
            self.aio[:, 4] = _ns_raw(A["io"], rpn, "AIO service")
            self.aio[:, 5] = _ns_raw(np.asarray(B["to_raise"], np.float64) * self.m_scale, rpn,
                                     "AIO completion")
            self.aio[:, 6] = _ns_raw(np.asarray(B["after_raise"], np.float64) * self.m_scale,
                                     rpn, "AIO completion")
        self.aio_vec = self.vix[B["vector"]] if B.get("vector") is not None else -1
        self.nworkers = plan.workers
        self.lines = np.array([[plan.irq_line(i, vec) for vec in self.vectors]
                               for i in range(len(plan.vcpus))], np.int64)
        self.dispatch_add = int(round(float(ch.add_hold.get("main:dispatch", 0)) * rpn))

    def _fx(self, e, v):
        """One recorded effect as (off, kind, a, b, c); None when this vCPU has no such
        timer (not armed in its stream)."""
        rm, ch, rpn = self.rm, self.ch, self.rpn
        off, kind, a, b = e
        off = max(int(off), 0)
        if kind == rm.FX_SUBMIT:
            return (off, kind, int(a), 0, 0)
        if kind in (rm.FX_ARM_REL, rm.FX_ARM_GRID, rm.FX_DEL):
            gi = v.timers.get(a)
            if gi is None:
                return None
            tm = self.plan.timers[gi]
            if kind == rm.FX_ARM_REL:
                if ch.timer_period_us:
                    # the guest programs the new period, as the model engine has it
                    rec = self.model.timers[tm.recorded]
                    b = tm.period + (b - (rec.get("period") or b))
                return (off, kind, gi, int(round(max(b, 0) * rpn)), 0)
            if kind == rm.FX_ARM_GRID:
                per = tm.period if ch.timer_period_us else b
                if not per or per <= 0:
                    return None
                return (off, kind, gi, int(round(per * rpn)), 0)
            return (off, kind, gi, 0, 0)
        if kind == rm.FX_RAISE:
            return (off, kind, self.vix[a], 0, 0)
        if kind == rm.FX_BH:
            return (off, kind, self.bh_map[a], 0, 0) if a in self.bh_map else None
        if kind == rm.FX_IRQROW:
            return (off, kind, self.irq_kind[a], self.irq_line[a], self.irq_vec[a])
        return None

    def _between(self, vcpu, wvec, prev_rows, rows):
        """Recorded interrupts of each *wvec* raised for *vcpu* between two exits."""
        out = np.zeros(len(rows), np.int64)
        t = self.model.exits["exit_ns"].to_numpy(np.int64)
        for k, w in enumerate(wvec):
            if w >= 0:
                ts = self.raise_times.get((vcpu, w))
                if ts is not None:
                    out[k] = (np.searchsorted(ts, t[rows[k]], "right")
                              - np.searchsorted(ts, t[prev_rows[k]], "right"))
        return out

    def _exits(self, S, v, gate=None, start=0):
        rpn = self.rpn
        n = len(S.row)
        out = np.zeros((n, 25), np.int64)
        out[:, 24] = [-1 if d is None else d for d in getattr(S, "defer", [-1] * n)]
        rows = np.asarray(S.row, np.int64)

        def col(name):
            return np.array([x or 0 for x in getattr(S, name)], np.float64)

        if gate is not None:
            g, gap, gvec, gcnt = gate
            out[:, 0] = g
            gap = np.asarray(gap, np.float64).copy()
            gap[np.asarray(g) == self.rm.GATE_START] = start
            out[:, 1] = _ns_raw(gap, rpn, "guest")
            out[:, 2] = [self.vix.get(x, -1) if k == self.rm.GATE_WAIT else -1
                         for x, k in zip(gvec, g)]
            out[:, 3] = gcnt
        else:
            out[:, 0] = self.rm.GATE_COMPUTE
            out[:, 13] = _ns_raw(col("react"), rpn, "interrupt reaction")
        out[:, 4] = S.cs
        out[:, 5] = _ns_raw(col("pre") + col("tw"), rpn, "exit handling")
        out[:, 6] = _ns_raw(col("hold"), rpn, "hold")
        out[:, 7] = _ns_raw(col("post"), rpn, "exit handling")
        out[:, 8] = _ns_raw(col("dur"), rpn, "exit handling")
        out[:, 9] = [self.vix[w] if w >= 0 else -1 for w in S.wvec]
        out[:, 10] = [w or 0 for w in S.wcnt]
        if gate is not None:
            # a program exit's halt counts its interrupt from the previous program exit
            # (the recorded ones in between added): an interrupt that came before the
            # halt must not make it wait for one more
            out[1:, 10] += self._between(v.stream.src.vcpu, S.wvec[1:], rows[:-1], rows[1:])
        out[:, 11] = _ns_raw(col("wpre"), rpn, "halt")
        out[:, 12] = _ns_raw(col("wake"), rpn, "halt")
        out[:, 14] = [bool(x) for x in S.last]
        for k, f in enumerate(S.fx):
            if not f:
                continue
            items = [x for x in (self._fx(e, v) for e in sorted(f)) if x is not None]
            out[k, 15] = len(self.fx)
            out[k, 16] = len(items)
            self.fx.extend((int(round(o * rpn)), kind, a, b, c) for o, kind, a, b, c in items)
        for i, name in enumerate(("reason", "size", "is_write", "count", "device", "addr",
                                  "data")):
            out[:, 17 + i] = self.rec[name][rows]
        return out


def replay(trace, output, force=False, compression=None, **changes):
    """Run a trace's schedules through the compiled core and record the run.

    Parameters
    ----------
    trace : kvmscope.analysis.trace.Trace
        A recording (``kvmscope run``; a QEMU import replays its BQL
        acquisitions alone).
    output : str
        Trace directory to write: missing, empty, or a trace to replace
        with *force*.
    force : bool
    compression : {None, "lz4", "zstd"}
    **changes
        ``scale_hold``, ``add_hold`` (ns), ``lockless``, ``vcpus``,
        ``aio_threads``, ``timer_period_us``, as for
        :func:`kvmscope.analysis.whatif.reexecute`.

    Returns
    -------
    dict
        The written ``meta.json``.

    Raises
    ------
    ConfigError
        A change out of range, an unknown call site or device, a trace the
        model refuses with a change only the model can apply.
    KvmscopeError
        The schedule did not finish (a vCPU waits for an interrupt nobody
        raises) within the watchdog's time.
    """
    from . import _core
    changes = {k: v for k, v in changes.items() if v is not None and v != {} and v != []}
    from .analysis import reexec_model as rm
    try:
        model = rm.build(trace)
    except ConfigError as e:
        # no causal model (an imported trace, other locks, lost records): the BQL
        # acquisitions alone
        return _replay_locks(trace, output, force, compression, str(e), changes)
    clock = _core.calibrate_clock("auto", 0.05)
    try:
        b = _Build(trace, model, changes, _core.raw_per_ns())
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"the trace's model refers to something it lacks ({e!r}): "
                          "cannot build its schedules") from None
    tracer = _core.Tracer(RING_RECORDS, False, True)
    run = _core.ModelRun(tracer, b.vcpus, b.fx, b.aio, b.timers, b.bhs, b.vectors, b.lines,
                         b.aio_vec, b.nworkers, b.dispatch_cs, len(b.model.callsites),
                         b.dispatch_add,
                         0 if b.model.irqchip_user else round(HALT_POLL_NS * _core.raw_per_ns()),
                         bool(b.model.irqchip_user))
    nsrc = len(b.model.vcpus)
    dur_s = max(0, b.model.end_ns - b.model.start_ns) / 1e9
    watchdog = 60 + 20 * dur_s * math.ceil(len(b.vcpus) / nsrc)
    config = copy.deepcopy(trace.meta.get("config") or {})
    config.update(vcpus=len(b.vcpus), aio_threads=b.nworkers)
    if b.ch.timer_period_us:
        config["timer_period_us"] = int(b.ch.timer_period_us)
    replay_meta = {"engine": "core", "of": getattr(trace, "path", None),
                   "changes": b.ch.as_dict(), "describe": b.ch.describe() or ["no change"],
                   "left_out": MODEL_LEFT_OUT}
    return _record(trace, output, force, compression, clock, tracer, config,
                   b.model.callsites, b.bh_names, b.timer_names, replay_meta,
                   lambda drain: run.run(watchdog, drain, DRAIN_INTERVAL_S), run.stats)


def _record(trace, output, force, compression, clock, tracer, config, callsites, bh_names,
            timer_names, replay_meta, go, stats):
    """Run *go* and write what *tracer* recorded as a trace, as ``kvmscope run`` does."""
    from . import _core
    from .config import prepare_output
    from .runner import CpuAccount, host_info, versions
    from .traceformat import FORMAT_NAME, FORMAT_VERSION
    from .tracewriter import TraceWriter

    prepare_output(types.SimpleNamespace(trace=True, output=output, force=force))
    src = trace.meta
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kvmscope_version": __version__,
        "state": "running", "clock": clock,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "config": config, "host": host_info(), "versions": versions(),
        "devices": list(src.get("devices") or []), "callsites": list(callsites),
        "locks": ["bql"], "bottom_halves": list(bh_names), "timers": list(timer_names),
        "replay": replay_meta,
    }
    cal = _core.measure_mutex_handoff()
    meta["host"]["mutex_wake_ns"] = cal["wake_ns"]
    meta["host"]["mutex_unlock_wake_ns"] = cal["unlock_ns"]
    os.makedirs(output, exist_ok=True)
    writer = TraceWriter(output, meta["devices"], meta["callsites"],
                         bh_names=meta["bottom_halves"], timer_names=meta["timers"],
                         compression=compression)
    open(os.path.join(output, "console.log"), "wb").close()
    def drain(final=False):
        # the run started on a short clock calibration: finish it before the
        # first timestamp is converted
        hz = _core.refine_clock()
        if hz:
            clock["tsc_hz"] = round(hz)
        writer.write_records(tracer.drain())
        writer.write_losses(tracer.take_losses(final))

    cpu = CpuAccount(tracer)
    try:
        start_ns, end_ns = go(drain)
    except KvmscopeError:
        writer.close()
        raise
    drain(True)
    writer.write_threads(tracer.threads_info())
    st = stats()
    st["cpu"] = cpu.finish()
    meta.update(state="complete", start_ns=start_ns, end_ns=end_ns, stop_reason="schedule done",
                messages=[], records=tracer.counts(), tables=dict(writer.counts), stats=st)
    writer.close()
    writer.write_meta(meta)
    writer.finish(meta, convert=True)
    return meta


def _replay_locks(trace, output, force, compression, why, changes):
    """The fallback for a trace the model refuses: its BQL acquisitions alone."""
    from . import _core
    other = sorted(k for k in changes if k not in CHANGES)
    if other:
        raise ConfigError("--engine core cannot apply "
                          + ", ".join("--" + k.replace("_", "-") for k in other)
                          + f" to this trace: {why}")
    sched = schedules(trace, **changes)
    lk = trace.locks
    lk = lk[lk["lock"].astype(str) == "bql"]
    clock = _core.calibrate_clock("auto", 0.05)
    n = max(len(s[4]) for s in sched)
    tracer = _core.Tracer(min(max(n + 64, 64), 1 << 26), False, True)
    run = _core.ScheduleRun(tracer, sched)

    def stats():
        st = run.stats()
        return {"bql": {k: sum(s[k] for s in st) for k in ("acquisitions", "contended", "wait_ns")},
                "threads": {name: s for (name, *_), s in zip(sched, st)}}

    replay_meta = {"engine": "core", "of": getattr(trace, "path", None),
                   "changes": {k: v for k, v in changes.items() if v},
                   "describe": _describe(changes), "left_out": LEFT_OUT,
                   "locks_only": why}
    return _record(trace, output, force, compression, clock, tracer,
                   copy.deepcopy(trace.meta.get("config") or {}),
                   _callsites(trace, lk), trace.meta.get("bottom_halves") or [],
                   trace.meta.get("timers") or [], replay_meta, lambda drain: run.run(), stats)


def _describe(changes):
    out = []
    for cs, f in (changes.get("scale_hold") or {}).items():
        out.append(f"{cs} hold x{f:g}")
    for cs, ns in (changes.get("add_hold") or {}).items():
        out.append(f"{cs} hold +{ns:g} ns")
    for dev in changes.get("lockless") or []:
        out.append(f"{dev} without the BQL")
    return out or ["no change"]
