"""Re-execution model: what each thread of a recorded trace did, as schedules
that :mod:`kvmscope.analysis.reexec_engine` can run again under changed
conditions (docs/whatif.md).

Per vCPU the model keeps the guest's *program stream*: its exits in order,
each with the guest time that led to it, the exit handling before and after
the BQL, the call site and hold time, and what the handler started (an AIO
request, a timer, an interrupt, a bottom half).  An exit the guest made only
because an interrupt arrived (an interrupt service routine's exit, such as a
timer acknowledgement) is kept apart, per interrupt vector, and is re-inserted
wherever the replayed interrupt lands.  An exit the guest could only make
after an interrupt (a block request's status read after its completion
interrupt, the end of a halt loop) waits for the replayed interrupt.

The main loop is kept per iteration (poll wake-up latency, dispatch cost,
timer callbacks, bottom halves), the AIO pool per request (queueing wake-up,
service time), the BQL per acquisition (uncontended cost, hand-off latency,
whether the waiter had to sleep).  Every figure is the recorded one, so that
re-executing an unchanged trace reproduces it; where a change puts an event
in a situation the recording did not have (a newly contended acquisition, a
worker that is busy instead of idle) the figure is drawn from the recorded
distribution of that situation.

Everything here is vectorised except loops over interrupts, timers and
main-loop iterations, which are few next to exits and acquisitions.
"""

import bisect

import numpy as np
import pandas as pd

from ..errors import ConfigError

# Gate of a program exit: how the guest got to it.
GATE_START, GATE_COMPUTE, GATE_WAIT = 0, 1, 2

# Effects of an exit's handler, replayed at an offset into the handling.
FX_SUBMIT, FX_ARM_REL, FX_ARM_GRID, FX_DEL, FX_RAISE, FX_BH, FX_IRQROW = range(7)

#: A waiter that asked for the lock this long before it was released had gone
#: to sleep in the kernel (futex): its hand-off latency is a wake-up.  Below,
#: it was still on its way in and gets the lock within a few hundred ns.
#: Measured on the shipped traces (docs/whatif.md, "the lock").
SLEEP_THRESHOLD_NS = 300

#: Fewer hand-offs to a sleeping waiter than this in a recording do not
#: describe the latency: other sleeping wake-ups of the recording and the
#: host's calibration are added (:func:`_sleep_handoffs`).
MIN_SLEEP_SAMPLES = 30

#: A waiter that asked less than this before the release had not yet queued
#: in the kernel: it retries at once instead of waiting to be woken (the
#: release wakes the first queued sleeper instead).
QUEUE_NS = 100

#: A worker writes the AIO eventfd this long after its I/O returned (it
#: first puts the request on the done list): bounded to 0.8 .. 1.3 us by
#: the polls and eventfd reads of traces/mixed-2vcpu that did and did not
#: see the write (0.78 .. 0.80 us).
EFD_DELAY_NS = 790

#: Share of the program exits around an interrupt's response that follow one
#: another elsewhere too, from which the response is an interrupt service
#: routine's (the guest was preempted, not waiting): 0.84 .. 1.00 for the
#: timer tick's acknowledgement of mixed, 0.36 .. 0.11 for a block request's
#: status read, 0 for timer-hlt's ticks (all shipped and test recordings).
ISR_BRIDGED = 0.75

#: Main-loop wake-up kinds: an event already pending when the loop polled,
#: an fd written while it slept, its timeout, the run's stop.
WAKE_IMMEDIATE, WAKE_FD, WAKE_TIMEOUT, WAKE_STOP = range(4)
WAKE_NAMES = ("immediate", "fd", "timeout", "stop")

_NULL = np.iinfo(np.int64).min
_FAR = 1 << 40          # "no previous release": the engine's value too
INF_NS = np.iinfo(np.int64).max


class Samples:
    """Recorded values of one kind of latency, drawn from deterministically.

    Parameters
    ----------
    values : array of int
        The recorded latencies, ns.
    fallback : int
        Used when nothing was recorded.
    """

    def __init__(self, values, fallback):
        v = np.sort(np.asarray(values, dtype=np.int64))
        self.values = v.tolist() if len(v) else [int(fallback)]
        self.median = int(np.median(v)) if len(v) else int(fallback)
        self.n = len(v)

    def draw(self, rng):
        """One value, chosen by *rng* (a ``random.Random``)."""
        return self.values[int(rng.random() * len(self.values))]

    def __repr__(self):
        return f"<Samples n={self.n} median={self.median}>"


class ExitSpecs:
    """Parallel lists describing exits of one vCPU (program or ISR exits).

    Fields, one entry per exit: ``row`` (row of the recorded ``exits``),
    ``cs`` (call site id, -1: no BQL), ``pre`` (exit to lock request),
    ``lat`` (recorded acquisition latency after the lock was free),
    ``d`` (request minus the previous owner's release, recorded),
    ``cont`` (recorded contended flag), ``tw`` (the try came this long
    after the request: the thread lost its CPU in between), ``hold``, ``post`` (release to
    re-entry), ``dur`` (exit to entry, for exits without the BQL), ``wvec``,
    ``wcnt``, ``wpre``, ``wake`` (a halt exit: waits in userspace for the
    ``wcnt``-th interrupt of vector ``wvec``), ``fx`` (effects: list of
    ``(offset, kind, a, b)`` or None; offsets from the acquisition, or from
    the exit without the BQL), ``last`` (the vCPU never re-entered).
    """

    FIELDS = ("row", "cs", "pre", "tw", "lat", "d", "cont", "hold", "post", "dur",
              "wvec", "wcnt", "wpre", "wake", "fx", "last")

    def __init__(self, n=0):
        for f in self.FIELDS:
            setattr(self, f, [None] * n)

    def __len__(self):
        return len(self.row)


class VcpuStream:
    """One recorded vCPU: its program stream and its interrupt service exits.

    Attributes
    ----------
    name : str
    vcpu : int
        Recorded vCPU index.
    prog : ExitSpecs
        Program exits, in order; plus per exit ``gate`` (GATE_*), ``gap``
        (guest compute time before it, or the reaction time after the
        interrupt it waited for), ``gvec``, ``gcnt`` (that interrupt: the
        ``gcnt``-th of vector ``gvec`` this vCPU received), ``start`` (the
        first exit's time).
    isr : dict of int to ExitSpecs
        Per vector, the exits its interrupt service routine made, with
        ``react`` (interrupt to exit).
    timers : list of int
        Recorded timer ids this vCPU armed (local slot = position).
    """

    def __init__(self, name, vcpu, thread):
        self.name, self.vcpu, self.thread = name, vcpu, thread
        self.prog = ExitSpecs()
        self.isr = {}
        self.timers = []


class MainLoop:
    """The recorded main loop, per iteration: lists ``pre, lat, d, cont,
    hold, post`` (its ``main:dispatch`` acquisition), ``base`` (dispatch
    cost besides timer callbacks and bottom halves), ``wake`` (wake-up
    latency), ``kind`` (WAKE_*), ``sched`` (offset of a bottom half the
    dispatch scheduled); ``first``: the acquisition before the first poll
    (request time, and the same fields)."""


class Model:
    """What a recorded trace's threads did; built by :func:`build`.

    Attributes
    ----------
    meta : dict
        The recording's ``meta.json``.
    path : str or None
    start_ns, end_ns : int
    callsites : list of str
        Call-site names; ``cs`` ids index it.
    devices : dict of str to list of int
        Call-site ids per device name (``pio:blk`` -> ``blk``).
    vcpus : list of VcpuStream
    main : MainLoop or None
    aio : dict of str to list
        Per recorded request: ``op, offset, length, result, io, pick, idle``
        (service time; pick-up latency; whether a worker was idle).
    aio_workers : int
    timers : list of dict
        Per recorded timer: ``name``, ``vcpu``, ``vector``, ``cb`` (callback
        durations), ``raise_off`` (offset of its raise in the callback).
    bh : dict
        Bottom halves: ``names`` (id -> name), ``aio`` (id of the completion
        bottom half or -1), per-request completion ``cost`` and per-run
        ``overhead``; ``dur`` per other bottom half.
    lock : dict
        ``spin``, ``sleep``, ``free`` :class:`Samples` of acquisition
        latencies: a waiter still on its way in, a sleeping waiter, a free
        lock.
    """


def _class_ids(ex):
    """An int per exit for its (reason, device, addr, is_write) class."""
    key = (ex["reason"].cat.codes.to_numpy().astype(np.int64) * 1_000_003
           + ex["device"].cat.codes.to_numpy().astype(np.int64) * 7919
           + ex["is_write"].to_numpy().astype(np.int64))
    key = key * 1_000_000_007 + (ex["addr"].to_numpy().astype(np.uint64)
                                 % np.uint64(1 << 40)).astype(np.int64)
    return pd.factorize(key)[0]


def _lock_order_info(lk):
    """Per lock row: release of the previous acquisition (acquisition order)
    and that acquisition's thread; -1 / _NULL for the first."""
    acq = lk["acquired_ns"].to_numpy()
    order = np.argsort(acq, kind="stable")
    prel = np.full(len(lk), _NULL, dtype=np.int64)
    rel = lk["released_ns"].to_numpy()
    prel[order[1:]] = rel[order[:-1]]
    return prel, order


def _acq_fields(lk, rows, prel):
    """Acquisition fields of lock rows (all rows of *lk*, in order): ``lat,
    d, cont, hold, tw``.

    An uncontended acquisition long after its request's timestamp lost its
    CPU in between: it tries ``tw`` later (``tw`` = the wait beyond the
    median uncontended one), and owns the lock from that try.  A waiter
    (contended) is described against the release that let it go on: that of
    the owner when it asked, or, queued behind an earlier waiter, that of
    that waiter; if nobody owned the lock when it asked (its request's
    timestamp came before the try of the thread that won), against the
    winner's release, with its own try just after the winner's.  Then
    ``d = try - release`` (< 0) and ``lat = acquired - release``; a thread
    barging in after that release, before the waiter ran, barges in the
    re-execution too.  Otherwise, against the previous acquisition's
    release ``prel``: ``d = try - prel``, ``lat = acquired - max(try,
    prel)``."""
    req = lk["request_ns"].to_numpy()[rows]
    acq = lk["acquired_ns"].to_numpy()[rows]
    rel = lk["released_ns"].to_numpy()[rows]
    cont = lk["contended"].to_numpy()[rows].astype(bool)
    n = len(rows)
    p = prel[rows]
    has = p != _NULL
    free_wait = (acq - req)[~cont]
    c0 = int(np.median(free_wait)) if len(free_wait) else 30
    tw = np.where(~cont & (acq - req > c0), acq - req - c0, 0).astype(np.int64)
    # a try that found the lock free came after the previous owner let go
    tw = np.where(~cont & has & (req + tw < p), p - req, tw)
    dec = req + tw
    d = np.where(has, dec - p, _FAR)
    lat = acq - np.where(has, np.maximum(dec, p), dec)
    if n < 2:
        return lat, d, cont, rel - acq, tw
    # owned from: an uncontended try, a waiter's acquisition
    own = np.where(cont, acq, dec)
    so = np.argsort(own, kind="stable")
    s_own, s_rel = own[so], rel[so]
    w = np.flatnonzero(cont)
    i = np.searchsorted(s_own, req[w], side="right") - 1
    okw = i >= 0
    i = np.maximum(i, 0)
    held = okw & (s_rel[i] > req[w]) & (so[i] != w)
    # a tie with the holder's try: the waiter tried just after it
    tw[w[held]] = np.maximum(tw[w[held]], s_own[i[held]] + 1 - req[w[held]])
    # nobody owned it: a race with the first acquisition after the request
    order = np.argsort(acq, kind="stable")
    sa = acq[order]
    free_at_req = w[~held]
    nxt = np.searchsorted(sa, req[free_at_req], side="right")
    okn = nxt < n
    fr, pr = free_at_req[okn], order[nxt[okn]]
    race = (pr != fr) & (own[pr] >= req[fr])
    fr, pr = fr[race], pr[race]
    tw[fr] = own[pr] + 1 - req[fr]
    dec = req + tw
    # which release woke each waiter, by the rules the engine applies
    r1 = _first_wakes(dec, own, rel, cont)
    got = np.flatnonzero(cont & (r1 != _NULL))
    d[got] = dec[got] - r1[got]
    lat[got] = acq[got] - r1[got]
    return lat, d, cont, rel - acq, tw


def _first_wakes(dec, own, rel, cont):
    """Per waiter (``cont``), the release that first woke it, as glibc's
    mutex does it and the engine models it: a waiter that tries while the
    lock is owned goes to sleep (queued in order) and sets the lock word to
    2, unless the owner lets go within QUEUE_NS (it then retries at that
    release); a waiter that gets the lock sets it to 2, a try that finds it
    free to 1; a release that finds 2 wakes the first sleeper.  _NULL where
    no release did (the recording and the rules disagree)."""
    n = len(dec)
    out = np.full(n, _NULL, np.int64)
    w = np.flatnonzero(cont)
    if not len(w):
        return out
    # events: 0 release, 1 ownership, 2 a waiter's try; ties in that order
    times = np.concatenate([rel, own, dec[w]])
    kinds = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64),
                            np.full(len(w), 2, np.int64)])
    who = np.concatenate([np.arange(n), np.arange(n), w])
    order = np.lexsort((kinds, times))
    sleeping = []
    word = 0
    owner = -1
    released = True
    for t, k, a in zip(times[order].tolist(), kinds[order].tolist(), who[order].tolist()):
        if k == 0:                              # a release
            if a != owner:
                continue
            released = True
            if word == 2 and sleeping:
                out[sleeping.pop(0)] = t
            word = 0
        elif k == 1:                            # an owner takes it
            if a in sleeping:
                sleeping.remove(a)
            owner, released = a, False
            word = 2 if cont[a] else 1
        else:                                   # a waiter tries
            if not released and rel[owner] - t <= QUEUE_NS:
                out[a] = rel[owner]             # not yet asleep: retries then
            else:
                sleeping.append(a)
            word = 2
    return out


def _holder(lk, ts):
    """Lock row whose hold [acquired, released] contains each time of *ts*
    (-1 if none)."""
    acq = lk["acquired_ns"].to_numpy()
    order = np.argsort(acq, kind="stable")
    sa = acq[order]
    sr = lk["released_ns"].to_numpy()[order]
    i = np.searchsorted(sa, ts, side="right") - 1
    ok = (i >= 0)
    i = np.clip(i, 0, max(len(sa) - 1, 0))
    ok &= len(sa) > 0
    if len(sa):
        ok &= sr[i] >= ts
    return np.where(ok, order[i] if len(sa) else -1, -1)


def _bridging_isr(cls, is_resp):
    """Evidence that the response exits (``is_resp``) of a class are
    interrupt service exits: ``(bridged, total)``, of the pairs of program
    exits around them, how many also follow one another elsewhere without
    anything between (the guest was busy and was only preempted), rather
    than only around them (the guest waited)."""
    keep = ~is_resp
    pairs = set(zip(cls[:-1][keep[:-1] & keep[1:]].tolist(),
                    cls[1:][keep[:-1] & keep[1:]].tolist()))
    idx = np.flatnonzero(is_resp)
    if not len(idx):
        return 0, 0
    bridged = 0
    total = 0
    for i in idx.tolist():          # per interrupt-driven exit
        a = i - 1
        while a >= 0 and is_resp[a]:
            a -= 1
        b = i + 1
        while b < len(cls) and is_resp[b]:
            b += 1
        if a < 0 or b >= len(cls):
            continue
        total += 1
        bridged += (int(cls[a]), int(cls[b])) in pairs
    return bridged, total


def build(trace):
    """Build the re-execution model of a recorded trace.

    Parameters
    ----------
    trace : Trace
        A complete recording (``kvmscope run``).

    Returns
    -------
    Model

    Raises
    ------
    ConfigError
        The trace cannot be re-executed: no vCPU exits, records lost, or
        its data ends early (a killed run).
    """
    source = (trace.meta.get("config") or {}).get("source")
    if source:
        raise ConfigError(f"the causal model needs a kvmscope recording; this trace was imported "
                          f"from a {source}, whose threads' events have no causal links "
                          "(whatif.reexecute uses the sequence model: docs/whatif.md)")
    if not getattr(trace, "complete", True):
        raise ConfigError("re-execution needs a whole trace, not a window or selection of one")
    if len(trace.losses) or any((r or {}).get("lost") for r in
                                (trace.meta.get("records") or {}).values()):
        raise ConfigError("the trace lost records: re-execution needs every exit and acquisition "
                          "(record with --lossless)")
    if trace.state in ("running", "failed", "aborted"):
        raise ConfigError(f"the recording did not end cleanly (state {trace.state}): "
                          "re-execution needs the whole run")
    threads = trace.threads
    roles = dict(zip(threads["thread"].tolist(), threads["role"].tolist()))
    names = dict(zip(threads["thread"].tolist(), threads["name"].tolist()))
    ex = trace.exits
    if not len(ex):
        raise ConfigError("the trace has no vCPU exits: nothing to re-execute")
    lk = trace.locks
    other = sorted({str(c) for c in lk["lock"].cat.categories[np.unique(
        lk["lock"].cat.codes.to_numpy())]} - {"bql"}) if len(lk) else []
    if other:
        raise ConfigError("re-execution models the BQL only; this trace has other locks: "
                          + ", ".join(other[:3]) + (" ..." if len(other) > 3 else ""))
    m = Model()
    m.meta = trace.meta
    m.path = trace.path
    m.start_ns, m.end_ns = int(trace.start_ns), int(trace.end_ns)
    callsites = list(trace.meta.get("callsites") or [])
    for c in lk["callsite"].cat.categories:
        if c not in callsites:
            callsites.append(str(c))
    m.callsites = callsites
    cs_id = {c: i for i, c in enumerate(callsites)}
    m.devices = {}
    for i, c in enumerate(callsites):
        dev = c.split(":", 1)[1] if c.startswith(("pio:", "mmio:")) else None
        if dev:
            m.devices.setdefault(dev, []).append(i)
    lk_cs = np.array([cs_id[str(c)] for c in lk["callsite"].cat.categories],
                     dtype=np.int64)[lk["callsite"].cat.codes.to_numpy()] if len(lk) else \
        np.zeros(0, np.int64)
    prel, _ = _lock_order_info(lk)
    lat, d, cont, hold, tw = _acq_fields(lk, np.arange(len(lk)), prel)
    lk_thread = lk["thread"].to_numpy()
    lk_req = lk["request_ns"].to_numpy()
    lk_acq = lk["acquired_ns"].to_numpy()
    lk_rel = lk["released_ns"].to_numpy()

    # Lock latency distributions: a contended waiter that had not yet slept,
    # one that slept, and the cost of taking a free lock.
    c = cont.astype(bool) & (d < 0)
    before = -d
    m.lock = {"spin": Samples(lat[c & (before <= SLEEP_THRESHOLD_NS)], 400),
              "sleep": Samples(lat[c & (before > SLEEP_THRESHOLD_NS)], 8000),
              "free": Samples(lat[~cont.astype(bool)], 40)}

    # Which lock row holds each event's timestamp (effects inside handlers).
    def held_by(ts):
        ts = np.asarray(ts, dtype=np.int64)
        return _holder(lk, ts) if len(lk) else np.full(len(ts), -1)

    aio = trace.aio.sort_values("submit_ns", kind="stable").reset_index(drop=True)
    timers = trace.timers.sort_values("fire_ns", kind="stable").reset_index(drop=True)
    bh = trace.bh.sort_values("run_ns", kind="stable").reset_index(drop=True)
    irqs = trace.irqs.sort_values("ts_ns", kind="stable").reset_index(drop=True)

    # ---- AIO requests ----------------------------------------------------
    m.aio_workers = int((trace.meta.get("config") or {}).get("aio_threads")
                        or max(1, sum(r == "aio" for r in roles.values())))
    m.aio = _aio_requests(aio)

    # ---- timers ------------------------------------------------------------
    m.timers, timer_idx = _timers(trace, timers, irqs)

    # ---- bottom halves -------------------------------------------------------
    m.bh = _bottom_halves(trace, bh, aio, irqs)

    # ---- vCPUs -------------------------------------------------------------------
    ex_cls = _class_ids(ex)
    vcpu_threads = [t for t in sorted(set(ex["thread"].tolist()))]
    raises = irqs[irqs["kind"] == "raise"]
    m.vcpus = []
    # effects found by time: rows of the holding lock and of the exit
    fx_by_lock = {}
    fx_by_exit = {}

    def add_fx(lock_rows, ts, kind, a, b, threads_of):
        rows = held_by(ts)
        for i, (r, t, aa, bb) in enumerate(zip(rows.tolist(), ts.tolist(), a, b)):
            if r >= 0 and lk_thread[r] == threads_of[i]:
                fx_by_lock.setdefault(r, []).append((t - int(lk_acq[r]), kind, aa, bb))
            else:
                fx_by_exit.setdefault(threads_of[i], []).append((t, kind, aa, bb))

    if len(aio):
        add_fx(None, aio["submit_ns"].to_numpy(), FX_SUBMIT, list(range(len(aio))),
               [0] * len(aio), aio["submit_thread"].to_numpy().tolist())
    arms = _timer_arms(trace, timers, timer_idx, m.timers)
    if arms:
        ts = np.array([a[0] for a in arms], dtype=np.int64)
        rows = held_by(ts)
        for (t, kind, slot, val), r in zip(arms, rows.tolist()):
            if r >= 0:
                fx_by_lock.setdefault(r, []).append((t - int(lk_acq[r]), kind, slot, val))
    vraise = raises[raises["thread"].map(roles).eq("vcpu")]
    if len(vraise):
        add_fx(None, vraise["ts_ns"].to_numpy(), FX_RAISE,
               vraise["vector"].tolist(), vraise["vcpu"].tolist(), vraise["thread"].tolist())
    vbh = bh[bh["sched_thread"].map(roles).eq("vcpu")]
    if len(vbh):
        add_fx(None, vbh["scheduled_ns"].to_numpy(), FX_BH, vbh["bh"].tolist(),
               [0] * len(vbh), vbh["sched_thread"].tolist())
    vrows = irqs[irqs["thread"].map(roles).eq("vcpu") & (irqs["kind"] != "raise")]
    for t, row in zip(vrows["thread"].tolist(), vrows.index.tolist()):
        fx_by_exit.setdefault(t, []).append((int(irqs["ts_ns"][row]), FX_IRQROW, row, 0))

    lk_by_thread = {}
    if len(lk):
        for t, rows in pd.Series(np.arange(len(lk))).groupby(lk_thread):
            lk_by_thread[int(t)] = rows.to_numpy()
    sels = {}
    for th in vcpu_threads:
        sel = np.flatnonzero(ex["thread"].to_numpy() == th)
        sels[th] = sel[np.argsort(ex["exit_ns"].to_numpy()[sel], kind="stable")]
    resp_votes, isr_votes = {}, {}
    classes = decided = None
    for step in range(3):       # votes of every vCPU (answering class, ISR or not), streams
        if step == 1:
            classes = {v: max(c, key=c.get) for v, c in resp_votes.items()}
        if step == 2:
            decided = {v for v, (b, tot, nr, nm) in isr_votes.items()
                       if tot and b >= ISR_BRIDGED * tot and nr >= 0.9 * nm}
        for th in vcpu_threads:
            sel = sels[th]
            st = _vcpu_stream(trace, th, names.get(th, f"vcpu{th}"), ex, sel, ex_cls[sel],
                              lk_by_thread.get(th, np.zeros(0, np.int64)), lk_req, lk_acq,
                              lk_rel, lk_cs, (lat, d, cont, hold, tw), raises, fx_by_lock,
                              fx_by_exit.get(th, []), m.timers, (resp_votes, isr_votes),
                              classes, decided)
            if step == 2:
                m.vcpus.append(st)

    # ---- main loop ---------------------------------------------------------------
    m.main = _main_loop(trace, roles, lk, lk_cs, (lat, d, cont, hold, tw), timers, bh, aio,
                        cs_id, m)
    m.irq_rows = irqs
    m.exits = ex
    m.exit_cls = ex_cls.tolist()
    m.arrow_exits = trace.arrow("exits")
    m.period_write_rows = np.array(sorted(
        r for s in m.vcpus for S in [s.prog] + list(s.isr.values())
        for r, fx in zip(S.row, S.fx) for e in (fx or ())
        if e[1] in (FX_ARM_REL, FX_DEL)), dtype=np.int64)
    m.threads = threads
    m.irqchip_user = bool(len(irqs) and (irqs["kind"] == "kick").any()) or \
        (trace.meta.get("config") or {}).get("irqchip") == "user"
    m.line_stride = _line_stride(raises)
    m.lock["sleep"], m.sleep_source = _sleep_handoffs(trace, m)
    return m


def _sleep_handoffs(trace, m):
    """Hand-off latencies of a BQL waiter that had gone to sleep, and where
    they come from: a prediction that makes waiters sleep where the
    recording hardly had any (a lengthened critical section on a workload
    that was seldom contended) must not take them from a handful.  Below
    MIN_SLEEP_SAMPLES of its own, the recording's other sleeping wake-ups
    (main-loop polls woken by an fd, AIO workers picking up a request while
    idle: the same futex wake-up) are added, then the host's calibration
    (``meta.json`` ``host.mutex_wake_ns``, measured by every run)."""
    own = m.lock["sleep"]
    if own.n >= MIN_SLEEP_SAMPLES:
        return own, "recording"
    vals = list(own.values) if own.n else []
    other = [m.aio["wake"]] + ([m.main.wake_samples[WAKE_FD]] if m.main is not None else [])
    others = [x for s in other if s.n for x in s.values]
    if len(vals) + len(others) >= MIN_SLEEP_SAMPLES:
        return Samples(vals + others, 0), "recording's other wake-ups too"
    cal = ((trace.meta or {}).get("host") or {}).get("mutex_wake_ns") or []
    cal = [int(x) for x in (cal if isinstance(cal, list) else [])
           if isinstance(x, (int, float)) and 0 < x < 10**9]
    if cal:
        return Samples(vals + others + cal, 0), "host calibration"
    if vals or others:
        return Samples(vals + others, 0), "few recorded"
    return own, "default value"


def _line_stride(raises):
    """Interrupt lines per vCPU (lines are 32 + stride * vcpu + source)."""
    if not len(raises):
        return 2
    g = raises.groupby("vector", observed=True)
    for _, df in g:
        v = df["vcpu"].to_numpy()
        ln = df["line"].to_numpy()
        if len(np.unique(v)) > 1:
            a, b = np.unique(v)[:2]
            return int((ln[v == b][0] - ln[v == a][0]) // (b - a)) or 2
    return 2


def _aio_requests(aio):
    """Per request: service time and pick-up latency (recorded worker idle
    or busy when it was submitted)."""
    n = len(aio)
    out = {"op": aio["op"].astype(str).tolist(), "offset": aio["offset"].tolist(),
           "length": aio["length"].tolist(), "result": aio["result"].tolist(),
           "io": (aio["done_ns"] - aio["start_ns"]).tolist(),
           "submit": aio["submit_ns"].tolist(), "vcpu_thread": aio["submit_thread"].tolist()}
    pick = np.zeros(n, np.int64)
    idle = np.ones(n, bool)
    if n:
        w = aio["thread"].to_numpy()
        start = aio["start_ns"].to_numpy()
        done = aio["done_ns"].to_numpy()
        sub = aio["submit_ns"].to_numpy()
        order = np.lexsort((start, w))
        prev_done = np.full(n, _NULL, np.int64)
        same = np.zeros(n, bool)
        same[1:] = w[order][1:] == w[order][:-1]
        prev_done[order[1:][same[1:]]] = done[order][:-1][same[1:]]
        busy = prev_done > sub
        idle = ~busy
        pick = start - np.where(busy, prev_done, sub)
    out["pick"] = pick.tolist()
    out["idle"] = idle.tolist()
    out["queue"] = (aio["start_ns"] - aio["submit_ns"]).tolist()
    out["wake"] = Samples(pick[idle], 15000)
    out["next"] = Samples(pick[~idle], 1500)
    return out


def _callback_gaps(timers):
    """Per timer row: the time since the callback before it when both ran in
    the same dispatch (under 5 us apart), else 0."""
    f = timers["fire_ns"].to_numpy()
    dn = timers["done_ns"].to_numpy()
    gaps = np.zeros(len(f), np.int64)
    if len(f) > 1:
        g = f[1:] - dn[:-1]
        near = (g >= 0) & (g < 5000)
        gaps[1:][near] = g[near]
    return gaps


def _timers(trace, timers, irqs):
    """Per recorded timer: owner vCPU, the vector it raises, callback
    durations and the raise's offset in the callback."""
    names = list(trace.meta.get("timers") or [])
    ids = sorted(set(timers["timer"].tolist()) | set(range(len(names))))
    out = []
    idx = {}
    main_raises = irqs[irqs["kind"] == "raise"]
    rts = main_raises["ts_ns"].to_numpy()
    gaps = _callback_gaps(timers)
    for tid in ids:
        rows = timers[timers["timer"] == tid]
        name = names[tid] if tid < len(names) else (
            str(rows["name"].iloc[0]) if len(rows) else f"timer{tid}")
        info = {"id": tid, "name": name, "vcpu": None, "vector": None,
                "cb": (rows["done_ns"] - rows["fire_ns"]).tolist() or [1000],
                "raise_off": [0], "gap": (gaps[rows.index.to_numpy()].tolist()
                                           if len(rows) else [0])}
        if len(rows):
            f = rows["fire_ns"].to_numpy()
            dn = rows["done_ns"].to_numpy()
            i = np.searchsorted(rts, f, side="left")
            ok = (i < len(rts))
            i = np.clip(i, 0, max(len(rts) - 1, 0))
            if len(rts):
                ok &= rts[i] <= dn
                hit = i[ok]
                if len(hit):
                    info["vector"] = int(main_raises["vector"].iloc[hit[0]])
                    info["vcpu"] = int(main_raises["vcpu"].iloc[hit[0]])
                    off = np.full(len(f), int(np.median(rts[hit] - f[ok])), np.int64)
                    off[ok] = rts[hit] - f[ok]
                    info["raise_off"] = off.tolist()
        idx[tid] = len(out)
        out.append(info)
    return out, idx


def _timer_arms(trace, timers, timer_idx, tinfo):
    """Every recorded arming of a timer: ``(armed_ns, FX_ARM_REL or
    FX_ARM_GRID, timer index, ns)``: relative (deadline = now + ns) or on
    the period grid (previous deadline + the period).  Sets each timer's
    ``period`` (the grid's step)."""
    out = []
    for tid, rows in timers.groupby("timer", sort=True):
        armed = rows["armed_ns"].to_numpy()
        expire = rows["expire_ns"].to_numpy()
        delay = None
        steps = []
        for k in range(len(rows)):          # per timer firing
            step = int(expire[k] - expire[k - 1]) if k else None
            if k and delay is not None and abs(step - delay) <= 1000:
                out.append((int(armed[k]), FX_ARM_GRID, timer_idx[int(tid)], step))
                steps.append(step)
            else:
                delay = int(expire[k] - armed[k])
                out.append((int(armed[k]), FX_ARM_REL, timer_idx[int(tid)], delay))
        info = tinfo[timer_idx[int(tid)]]
        info["period"] = int(np.median(steps)) if steps else delay
        info["delay"] = delay
    return out


def _bottom_halves(trace, bh, aio, irqs):
    """Bottom halves: the AIO completion one (per-request completion cost,
    per-run overhead, the raise of each completion), the others' durations."""
    names = list(trace.meta.get("bottom_halves") or [])
    for b, n in zip(bh["bh"].tolist(), bh["name"].astype(str).tolist()):
        while len(names) <= b:
            names.append(f"bh{len(names)}")
        names[b] = n
    out = {"names": names, "aio": names.index("aio:complete") if "aio:complete" in names else -1,
           "dur": {}, "to_raise": [], "after_raise": [], "overhead": [300], "vector": None}
    for b in set(bh["bh"].tolist()):
        if b != out["aio"]:
            out["dur"][b] = (bh["done_ns"] - bh["run_ns"])[bh["bh"] == b].tolist()
    if out["aio"] >= 0 and len(aio):
        # Per request (in submission order, as _aio_requests): time from the
        # previous completion (or the run's start) to its interrupt, and
        # from the interrupt to the end of its completion.
        runs = bh[bh["bh"] == out["aio"]]
        comp = aio["complete_ns"].to_numpy()
        order = np.argsort(comp, kind="stable")
        sc = comp[order]
        r0 = runs["run_ns"].to_numpy()
        r1 = runs["done_ns"].to_numpy()
        lo = np.searchsorted(sc, r0, side="left")
        hi = np.searchsorted(sc, r1, side="right")
        prev = np.full(len(aio), _NULL, np.int64)
        over = []
        for a, b, s, e in zip(lo.tolist(), hi.tolist(), r0.tolist(), r1.tolist()):
            p = s
            for q in order[a:b].tolist():           # per completed request
                prev[q] = p
                p = int(comp[q])
            over.append(e - p)
        missing = prev == _NULL
        prev[missing] = comp[missing] - 1000
        raises = irqs[(irqs["kind"] == "raise")]
        to_raise = np.zeros(len(aio), np.int64)
        if len(raises):
            ts = raises["ts_ns"].to_numpy()
            i = np.searchsorted(ts, comp, side="right") - 1
            ok = (i >= 0) & (ts[np.maximum(i, 0)] >= prev)
            if ok.any():
                out["vector"] = int(pd.Series(raises["vector"].to_numpy()[i[ok]]).mode()[0])
            to_raise = np.where(ok, ts[np.maximum(i, 0)] - prev, (comp - prev) // 2)
        out["to_raise"] = to_raise.tolist()
        out["after_raise"] = (comp - prev - to_raise).tolist()
        out["overhead"] = over or [300]
    return out


def _vcpu_stream(trace, th, name, ex, sel, cls, lrows, lk_req, lk_acq, lk_rel, lk_cs,
                 acqf, raises, fx_by_lock, fx_exit, tinfo, votes, resp_classes, isr_vectors):
    """The program stream and interrupt service exits of vCPU thread *th*.

    Three passes over the vCPUs, as they run the same guest: with
    *resp_classes* None, only add this vCPU's votes on which exit class
    answers each vector; with *isr_vectors* None, only its votes on whether
    those answers are interrupt service exits; then the stream."""
    resp_votes, isr_votes = votes
    exit_ns = ex["exit_ns"].to_numpy()[sel]
    entry_m = ex["entry_ns"].take(sel)
    last = entry_m.isna().to_numpy()
    entry = entry_m.to_numpy(dtype=np.int64, na_value=0)
    entry = np.where(last, exit_ns, entry)
    cats = list(ex["reason"].cat.categories)
    codes = ex["reason"].cat.codes.to_numpy()[sel]
    reason = np.where(codes == (cats.index("hlt") if "hlt" in cats else -2), "hlt", "")
    n = len(sel)
    vcpu = int(ex["vcpu"].to_numpy()[sel[0]])
    st = VcpuStream(name, vcpu, th)

    # The lock row of each exit (at most one: the handler takes the BQL once).
    lrows = lrows[np.argsort(lk_req[lrows], kind="stable")]
    k = np.searchsorted(exit_ns, lk_req[lrows], side="right") - 1
    ok = (k >= 0) & (lk_req[lrows] <= entry[np.clip(k, 0, n - 1)] + last[np.clip(k, 0, n - 1)]
                     * (1 << 60))
    lrow = np.full(n, -1, np.int64)
    lrow[k[ok]] = lrows[ok]

    # Interrupts raised for this vCPU: which exit answered each.
    r = raises[raises["vcpu"] == vcpu]
    rts = r["ts_ns"].to_numpy()
    rvec = r["vector"].to_numpy()
    first_after = np.searchsorted(exit_ns, rts, side="left")
    is_hlt = reason == "hlt"
    assign_exit = np.full(len(rts), -1, np.int64)      # exit gated or answered
    assign_hlt = np.full(len(rts), -1, np.int64)       # halt exit it woke
    for i in range(len(rts)):                           # per interrupt
        kk = int(first_after[i])
        if kk > 0 and is_hlt[kk - 1] and rts[i] < entry[kk - 1]:
            assign_hlt[i] = kk - 1
        elif kk < n:
            assign_exit[i] = kk

    # Interrupt service exits: per vector, the class answering its raises,
    # when the guest was only preempted (see _bridging_isr; the votes of
    # every vCPU decide, since they run the same guest).
    isr_of = np.full(n, -1, np.int64)                  # vector of an ISR exit
    isr_raise = np.full(n, -1, np.int64)
    resp = {}
    for vec in np.unique(rvec).tolist():
        mine = np.flatnonzero((rvec == vec) & (assign_exit >= 0))
        if not len(mine):
            continue
        if resp_classes is None:         # first pass: which class answers, by vote
            # the class among the two exits after each interrupt (a vCPU
            # thread that lost its CPU stamps its exit late: the exit the
            # interrupt found in progress may come first)
            counts = resp_votes.setdefault(vec, {})
            k0 = assign_exit[mine]
            k1 = np.minimum(k0 + 1, n - 1)
            for a_, b_ in zip(cls[k0].tolist(), cls[k1].tolist()):
                counts[a_] = counts.get(a_, 0) + 2
                if b_ != a_:
                    counts[b_] = counts.get(b_, 0) + 1
            continue
        resp_cls = resp_classes[vec]
        is_resp = np.zeros(n, bool)
        by = np.full(n, -1, np.int64)
        for i in mine.tolist():
            kk = int(assign_exit[i])
            while kk < n and (cls[kk] != resp_cls or is_resp[kk]):
                kk += 1
            if kk < n:
                is_resp[kk] = True
                by[kk] = i
        resp[vec] = (is_resp, by)
        if isr_vectors is not None:
            continue
        b, tot = _bridging_isr(cls, is_resp)
        votes = isr_votes.setdefault(vec, [0, 0, 0, 0])
        votes[0] += b
        votes[1] += tot
        votes[2] += int(is_resp.sum())
        votes[3] += len(mine)
    if isr_vectors is None:
        return None
    for vec, (is_resp, by) in resp.items():
        if vec in isr_vectors:
            take = is_resp & (isr_of < 0)
            isr_of[take] = vec
            isr_raise[take] = by[take]

    prog = isr_of < 0
    # Gates of program exits: the last non-ISR interrupt before each.
    counts = {}
    cum = np.zeros(len(rts), np.int64)
    for i in range(len(rts)):
        counts[rvec[i]] = counts.get(rvec[i], 0) + 1
        cum[i] = counts[rvec[i]]
    prog_idx = np.flatnonzero(prog)
    gate_raise = np.full(n, -1, np.int64)
    hlt_raise = np.full(n, -1, np.int64)
    isr_vecs = set(np.unique(isr_of[isr_of >= 0]).tolist())
    for i in range(len(rts)):
        if rvec[i] in isr_vecs:
            continue
        if assign_hlt[i] >= 0:
            hlt_raise[assign_hlt[i]] = i
            continue
        if assign_exit[i] < 0:
            continue
        j = np.searchsorted(prog_idx, assign_exit[i], side="left")
        if j < len(prog_idx):
            kk = prog_idx[j]
            if gate_raise[kk] < 0 or rts[i] >= rts[gate_raise[kk]]:
                gate_raise[kk] = i

    # Time an ISR took from the guest: from its interrupt (or the entry it
    # was pending at) to its own re-entry.
    prev_entry = np.empty(n, np.int64)
    prev_entry[0] = exit_ns[0]
    prev_entry[1:] = entry[:-1]
    stolen = np.zeros(n, np.int64)
    react_isr = np.zeros(n, np.int64)
    isr_rows = np.flatnonzero(isr_of >= 0)
    defer_j = np.full(n, -1, np.int64)
    if len(isr_rows):
        rt = rts[isr_raise[isr_rows]]
        begin = np.maximum(rt, prev_entry[isr_rows])
        stolen[isr_rows] = entry[isr_rows] - begin
        react_isr[isr_rows] = exit_ns[isr_rows] - begin
        # An interrupt the guest took only after a later program exit (its
        # vCPU thread was descheduled in between): delivered at that exit's
        # re-entry when the re-execution has it in the same place.
        pidx = np.flatnonzero(isr_of < 0)
        j_at_raise = np.searchsorted(exit_ns[pidx], rt, side="left")
        j_before_isr = np.searchsorted(pidx, isr_rows, side="left")
        late = j_before_isr > j_at_raise
        defer_j[isr_rows[late]] = j_at_raise[late]
    cum_stolen = np.cumsum(stolen)

    specs = _exit_specs(sel, lrow, exit_ns, entry, last, reason, lk_req, lk_acq, lk_rel, lk_cs,
                        acqf, fx_by_lock, fx_exit, hlt_raise, rts, rvec, cum)

    added = _timer_classes(specs, cls, ex["data"].to_numpy()[sel])
    # when those arms happened in the recording: they notified the loop
    when = [(slot, int(lk_acq[lrow[k]]) + off if lrow[k] >= 0 else int(exit_ns[k]) + off, dele)
            for k, off, slot, dele in added]
    st.extra_arms = [(slot, t_) for slot, t_, dele in when if not dele]
    st.extra_dels = [(slot, t_) for slot, t_, dele in when if dele]

    # Program stream.
    p = prog_idx
    P = _subset(specs, p)
    gate = np.full(len(p), GATE_COMPUTE, np.int64)
    gap = np.zeros(len(p), np.int64)
    gvec = np.full(len(p), -1, np.int64)
    gcnt = np.zeros(len(p), np.int64)
    if len(p):
        gate[0] = GATE_START
        prevp = np.empty(len(p), np.int64)
        prevp[1:] = p[:-1]
        prevp[0] = p[0]
        st_between = cum_stolen[np.maximum(p - 1, 0)] - cum_stolen[prevp]
        st_between[0] = 0
        gap[1:] = (exit_ns[p] - entry[prevp] - st_between)[1:]
        gr = gate_raise[p]
        w = np.flatnonzero(gr >= 0)
        w = w[w > 0]
        if len(w):
            rt = rts[gr[w]]
            base = np.maximum(entry[prevp[w]], rt)
            gate[w] = GATE_WAIT
            gvec[w] = rvec[gr[w]]
            # the how-manieth interrupt of that vector since the previous
            # program exit (relative: robust to interrupts that come or
            # not in a re-execution)
            before = np.array([np.searchsorted(rts[rvec == g_], x_, side="right")
                               for g_, x_ in zip(rvec[gr[w]].tolist(),
                                                 exit_ns[prevp[w]].tolist())], dtype=np.int64)
            gcnt[w] = cum[gr[w]] - before
            gap[w] = exit_ns[p[w]] - base
            # ISRs after the interrupt took that time from the guest
            if len(isr_rows):
                isr_begin = np.full(n, INF_NS, np.int64)
                isr_begin[isr_rows] = np.maximum(rts[isr_raise[isr_rows]], prev_entry[isr_rows])
                for q, b0 in zip(w.tolist(), base.tolist()):    # per waiting exit
                    lo_, hi_ = prevp[q] + 1, p[q]
                    seg = isr_begin[lo_:hi_] < INF_NS
                    after = entry[lo_:hi_] - np.maximum(isr_begin[lo_:hi_], b0)
                    gap[q] -= int(np.maximum(after[seg], 0).sum())
        gap = np.maximum(gap, 0)
    P.gate, P.gap, P.gvec, P.gcnt = gate.tolist(), gap.tolist(), gvec.tolist(), gcnt.tolist()
    P.start = int(exit_ns[p[0]]) if len(p) else int(exit_ns[0])
    st.prog = P
    # when the vCPU's thread was done: its last exit's release (or exit)
    st.end_ns = int(lk_rel[lrow[-1]]) if lrow[-1] >= 0 else int(exit_ns[-1])
    for vec in isr_vecs:
        rows = np.flatnonzero(isr_of == vec)
        S = _subset(specs, rows)
        S.react = np.maximum(react_isr[rows], 0).tolist()
        S.defer = defer_j[rows].tolist()
        st.isr[int(vec)] = S
    st.timers = sorted({fx[2] for specs_fx in specs.fx if specs_fx for fx in specs_fx
                        if fx[1] in (FX_ARM_REL, FX_ARM_GRID)})
    return st


def _timer_classes(S, cls, data):
    """Every exit of a class that armed a timer does what that class does:
    a relative arm (a period write: data 0 deletes the timer instead, other
    data arm it for data x the recorded ns per unit) or an arm on the period
    grid (a tick's acknowledgement), also where the recording has no firing
    to show it (the timer was deleted first)."""
    added = []
    per_cls = {}
    for k, fx in enumerate(S.fx):
        for e in fx or ():
            if e[1] in (FX_ARM_REL, FX_ARM_GRID):
                per_cls.setdefault(int(cls[k]), []).append((k, e))
    for c, arms in per_cls.items():         # per timer-arming exit class
        kinds = [e[1] for _, e in arms]
        kind = max(set(kinds), key=kinds.count)
        slot = arms[0][1][2]
        off = int(np.median([e[0] for _, e in arms]))
        ratio = [e[3] / data[k] for k, e in arms if e[1] == FX_ARM_REL and data[k]]
        ratio = float(np.median(ratio)) if ratio else None
        armed = {k for k, _ in arms}
        for k in np.flatnonzero(cls == c).tolist():
            if k in armed:
                continue
            if kind == FX_ARM_GRID:
                e = (off, FX_ARM_GRID, slot, arms[0][1][3])
            elif data[k] == 0:
                e = (off, FX_DEL, slot, 0)
            elif ratio:
                e = (off, FX_ARM_REL, slot, int(round(data[k] * ratio)))
            else:
                continue
            S.fx[k] = sorted((S.fx[k] or []) + [e])
            added.append((k, e[0], e[2], e[1] == FX_DEL))
    return added


def _exit_specs(sel, lrow, exit_ns, entry, last, reason, lk_req, lk_acq, lk_rel, lk_cs,
                acqf, fx_by_lock, fx_exit, hlt_raise, rts, rvec, cum):
    """ExitSpecs of every exit of one vCPU, in order (numeric fields as
    numpy arrays until :func:`_subset`)."""
    lat, d, cont, hold, tw = acqf
    n = len(sel)
    S = ExitSpecs(0)
    has = lrow >= 0
    lr = np.where(has, lrow, 0)
    nl = len(lk_cs)

    def col(values, default):
        return np.where(has, values[lr], default) if nl else np.full(n, default)
    S.row = sel.astype(np.int64)
    S.cs = col(lk_cs, -1)
    S.pre = np.where(has, lk_req[lr] - exit_ns, 0) if nl else np.zeros(n, np.int64)
    S.lat = col(lat, 0)
    S.d = col(d, 0)
    S.cont = col(cont, False)
    S.hold = col(hold, 0)
    S.tw = col(tw, 0)
    post = np.where(has & ~last, entry - lk_rel[lr], 0) if nl else np.zeros(n, np.int64)
    S.post = np.maximum(post, 0)
    S.dur = np.where(~has, entry - exit_ns, 0)
    S.last = last.copy()
    S.wvec = np.full(n, -1, np.int64)
    S.wcnt = np.zeros(n, np.int64)
    S.wpre = np.zeros(n, np.int64)
    S.wake = np.zeros(n, np.int64)
    for k in np.flatnonzero(hlt_raise >= 0).tolist():     # per halt that waited
        i = int(hlt_raise[k])
        S.wvec[k] = int(rvec[i])
        S.wcnt[k] = int(cum[i]) - int(np.searchsorted(rts[rvec == rvec[i]], exit_ns[k],
                                                         side="right"))
        S.wake[k] = int(entry[k] - max(exit_ns[k], rts[i]))
    S.fx = [None] * n
    if fx_by_lock and has.any():
        inv = {int(r): k for k, r in zip(np.flatnonzero(has).tolist(), lrow[has].tolist())} \
            if len(fx_by_lock) > has.sum() // 8 else None
        for r, f in fx_by_lock.items():                   # lock rows that started something
            if inv is not None:
                k = inv.get(r)
            else:
                hit = np.flatnonzero(lrow == r)
                k = int(hit[0]) if len(hit) else None
            if k is not None:
                S.fx[k] = sorted(f)
    if fx_exit:
        ts = np.array([f[0] for f in fx_exit], dtype=np.int64)
        kk = np.searchsorted(exit_ns, ts, side="right") - 1
        for f, k in zip(fx_exit, kk.tolist()):              # effects outside the BQL
            if k < 0:
                continue
            off = f[0] - int(exit_ns[k])
            if lrow[k] >= 0:
                off -= int(lk_acq[lrow[k]] - exit_ns[k])   # stored from the acquisition
            S.fx[k] = sorted((S.fx[k] or []) + [(off,) + tuple(f[1:])])
    return S


def _subset(S, idx):
    """ExitSpecs of the exits *idx* of *S*, fields as Python lists (the
    engine indexes them one by one)."""
    out = ExitSpecs(0)
    for f in ExitSpecs.FIELDS:
        vals = getattr(S, f)
        if isinstance(vals, np.ndarray):
            setattr(out, f, vals[idx].tolist())
        else:
            setattr(out, f, [vals[i] for i in idx.tolist()])
    return out


def _main_loop(trace, roles, lk, lk_cs, acqf, timers, bh, aio, cs_id, m):
    """Per main-loop iteration: wake-up, its acquisition, dispatch cost."""
    lat, d, cont, hold, tw = acqf
    main_threads = [t for t, r in roles.items() if r == "main"]
    if not main_threads:
        return None
    th = main_threads[0]
    loop = trace.loop[trace.loop["thread"] == th].sort_values("poll_enter_ns", kind="stable")
    rows = np.flatnonzero(lk["thread"].to_numpy() == th)
    rows = rows[np.argsort(lk["request_ns"].to_numpy()[rows], kind="stable")]
    if not len(rows):
        return None
    n = len(loop)
    if len(rows) != n + 1:
        raise ConfigError(f"main loop: {len(rows)} acquisitions for {n} iterations "
                          "(expected one more: the acquisition before the first poll)")
    ml = MainLoop()
    ml.thread = th
    ml.name = str(trace.threads.set_index("thread")["name"].get(th, "main"))
    req = lk["request_ns"].to_numpy()[rows]
    acq = lk["acquired_ns"].to_numpy()[rows]
    rel = lk["released_ns"].to_numpy()[rows]
    pe = loop["poll_enter_ns"].to_numpy()
    px = loop["poll_exit_ns"].to_numpy()
    de = loop["dispatch_end_ns"].to_numpy()
    tmo = loop["timeout_ns"].to_numpy()
    ml.cs = cs_id.get("main:dispatch", int(lk_cs[rows[0]]))
    ml.first = {"request": int(req[0]), "tw": int(tw[rows[0]]), "lat": int(lat[rows[0]]),
                "d": int(d[rows[0]]),
                "cont": bool(cont[rows[0]]), "hold": int(hold[rows[0]]),
                "post": int(pe[0] - rel[0]) if n else 0}
    it = rows[1:]
    ml.pre = (req[1:] - px).tolist()
    ml.tw = tw[it].tolist()
    ml.lat = lat[it].tolist()
    ml.d = d[it].tolist()
    ml.cont = cont[it].tolist()
    ml.hold = hold[it].tolist()
    ml.post = np.maximum(de - rel[1:], 0).tolist()
    # Dispatch cost besides timer callbacks and bottom halves: before the
    # first callback (fd handlers), and the rest (after the last one).
    base = hold[it].astype(np.int64).copy()
    a1, r1 = acq[1:], rel[1:]
    first_cb = r1.copy()
    if len(timers):
        f = timers["fire_ns"].to_numpy()
        i = np.searchsorted(a1, f, side="right") - 1
        ok = (i >= 0) & (f <= r1[np.clip(i, 0, n - 1)])
        np.subtract.at(base, i[ok], (timers["done_ns"] - timers["fire_ns"]).to_numpy()[ok])
        np.minimum.at(first_cb, i[ok], f[ok])
        # the gaps between callbacks are the timers' (see _timers)
        g = _callback_gaps(timers)
        same = np.zeros(len(f), bool)
        same[1:] = i[1:] == i[:-1]
        np.subtract.at(base, i[ok & same], g[ok & same])
    sched = np.full(n, -1, np.int64)
    if len(bh):
        s = bh["run_ns"].to_numpy()
        i = np.searchsorted(a1, s, side="right") - 1
        ok = (i >= 0) & (s <= r1[np.clip(i, 0, n - 1)])
        np.subtract.at(base, i[ok], (bh["done_ns"] - bh["run_ns"]).to_numpy()[ok])
        np.minimum.at(first_cb, i[ok], s[ok])
        mb = bh[bh["sched_thread"] == th]
        s = mb["scheduled_ns"].to_numpy()
        i = np.searchsorted(a1, s, side="right") - 1
        ok = (i >= 0) & (s <= r1[np.clip(i, 0, n - 1)])
        sched[i[ok]] = (s - a1[i])[ok]
    # between the last timer callback and the first bottom half
    mid = np.zeros(n, np.int64)
    if len(timers) and len(bh):
        last_t = np.full(n, _NULL, np.int64)
        f = timers["fire_ns"].to_numpy()
        i = np.searchsorted(a1, f, side="right") - 1
        ok = (i >= 0) & (f <= r1[np.clip(i, 0, n - 1)])
        np.maximum.at(last_t, i[ok], timers["done_ns"].to_numpy()[ok])
        first_b = np.full(n, INF_NS, np.int64)
        s = bh["run_ns"].to_numpy()
        i = np.searchsorted(a1, s, side="right") - 1
        ok = (i >= 0) & (s <= r1[np.clip(i, 0, n - 1)])
        np.minimum.at(first_b, i[ok], s[ok])
        both = (last_t != _NULL) & (first_b != INF_NS)
        mid[both] = np.maximum(first_b[both] - last_t[both], 0)
    base = np.maximum(base, 0)
    pre_ = np.minimum(np.maximum(first_cb - a1, 0), base)
    mid = np.minimum(mid, base - pre_)
    ml.base_pre = pre_.tolist()
    ml.base_mid = mid.tolist()
    ml.base = (base - pre_ - mid).tolist()
    ml.sched = sched.tolist()
    ml.timeout = tmo.tolist()
    ml.nready = loop["nready"].tolist()
    ml.end_tail = max(0, m.end_ns - int(de[-1])) if n else 0

    # Wake-up kind and latency of each iteration: the earliest fd event
    # not consumed by an earlier iteration, or the poll's deadline.
    # Notifications of the loop, each with a key saying what sent it (so
    # that a re-execution finds the iteration it woke, even where the
    # iterations are not the recorded ones): a bottom half scheduled by the
    # loop itself (the iteration after the one that did), a timer armed by
    # a vCPU (the timer and which arming), a bottom half a vCPU scheduled.
    notify = []             # (time, key)
    sched_iter = {}
    if len(bh):
        nb = bh[~bh["idle"].to_numpy()]
        for t_, who, b in zip(nb["scheduled_ns"].tolist(), nb["sched_thread"].tolist(),
                              nb["bh"].tolist()):
            if who == th:
                sched_iter[t_] = None       # keyed by its iteration, below
                notify.append((t_, ("self", t_)))
            else:
                notify.append((t_, ("vbh", int(b), len([x for x in notify if x[1][0] == "vbh"
                                                        and x[1][1] == b]))))
    arms = _arm_times(trace, lk, timers, th, m)
    for tid, lst in arms.items():
        for k, (t_, _, _) in enumerate(lst):
            notify.append((t_, ("arm", tid, k)))
    notify.sort(key=lambda x: x[0])
    notify_ev = np.asarray([x[0] for x in notify], np.int64)
    notify_key = [x[1] for x in notify]
    # a deadline is that of a timer's latest arming
    dl_key = {}
    for tid, lst in arms.items():
        for k, (_, e, _) in enumerate(lst):
            dl_key.setdefault(int(e), ("dl", tid, k))
    # The poll's deadline: the earliest timer armed when it began (the
    # recorded timeout was computed a little before poll_enter).
    deadline = np.where(tmo >= 0, pe + tmo, INF_NS)
    if arms:
        exact = np.full(n, INF_NS, np.int64)
        for tid, lst in arms.items():           # per timer arming: armed until the next
            for k, (t_, e, f) in enumerate(lst):
                end = lst[k + 1][0] if k + 1 < len(lst) else INF_NS
                if f is not None:
                    end = min(end, f)
                a = np.searchsorted(pe, t_, side="left")
                b = np.searchsorted(pe, min(end, e + 10_000_000), side="right")
                if b > a:
                    np.minimum(exact[a:b], e, out=exact[a:b])
        close = (tmo >= 0) & (np.abs(exact - deadline) < 20_000)
        deadline = np.where(close, np.maximum(exact, pe), deadline)
    # Per iteration: the earliest fd event not read by an earlier dispatch
    # (a dispatch reads an fd poll reported, with what was written to it up
    # to its handler), or the deadline, woke it.  A worker's eventfd write
    # comes EFD_DELAY_NS after its I/O, give or take a few hundred ns: per
    # request, the delay is set so that each poll sees the writes the
    # recording shows it saw (its dispatch ran the eventfd's handler or not).
    kind = np.full(n, WAKE_FD, np.int64)
    wake = np.zeros(n, np.int64)
    dorder = np.argsort(aio["done_ns"].to_numpy(), kind="stable") if len(aio) else \
        np.zeros(0, np.int64)
    D = aio["done_ns"].to_numpy()[dorder].tolist() if len(aio) else []
    delay, floor = _done_list_order(aio, bh, m.bh["aio"],
                                    np.full(len(aio), EFD_DELAY_NS, np.int64))
    delay = delay[dorder].tolist()
    floor = floor[dorder].tolist()
    used = [False] * len(D)
    ce = cn = 0
    keys = []
    N = notify_ev.tolist()
    acq_it = acq[1:]
    prev_read = None
    for i in range(n):                      # per main-loop iteration
        p_in, p_out = int(pe[i]), int(px[i])
        ready = sched[i] >= 0               # the eventfd handler ran
        read = int(acq_it[i]) + max(int(sched[i]), 0)
        while ce < len(D) and used[ce]:
            ce += 1
        hi = bisect.bisect_right(D, p_out, ce)
        vis = [j for j in range(ce, hi) if not used[j] and D[j] + delay[j] <= p_out]
        if ready and not vis:
            pend = [j for j in range(ce, hi) if not used[j] and D[j] + floor[j] <= p_out]
            if pend:
                delay[pend[0]] = max(floor[pend[0]], p_out - D[pend[0]])
        elif not ready and vis:
            for j in vis:
                if prev_read is not None and D[j] + floor[j] <= prev_read:
                    delay[j] = max(floor[j], prev_read - D[j])  # the previous read had it
                    used[j] = True
                else:
                    delay[j] = max(floor[j], p_out - D[j] + 1)
        fe = min((D[j] + delay[j] for j in range(ce, min(len(D), hi + 8)) if not used[j]),
                 default=INF_NS)
        fn = N[cn] if cn < len(N) else INF_NS
        first = min(fe, fn)
        dl = int(deadline[i])
        trig = min(first, dl)
        unknown = False
        if trig <= p_in:
            kind[i] = WAKE_IMMEDIATE
        elif trig > p_out:
            kind[i] = WAKE_FD           # nothing known woke it
            trig = p_out
            unknown = True
        else:
            kind[i] = WAKE_TIMEOUT if dl <= first else WAKE_FD
        wake[i] = p_out - max(p_in, trig)
        if unknown:
            # nothing the trace shows woke it: re-executed as a wake-up
            # after the same poll time, following the same iteration
            key = ("none", keys[-1] if keys else None)
            wake[i] = p_out - p_in
        elif dl <= first:
            key = dl_key.get(dl, ("deadline", i))
        elif fe <= fn:
            jj = min((j for j in range(ce, min(len(D), hi + 8)) if not used[j]),
                     key=lambda j: D[j] + delay[j])
            key = ("efd", int(dorder[jj]))
        else:
            key = notify_key[cn]
            if key[0] == "self":
                key = ("after", keys[-1] if keys else None)
        keys.append(key)
        if ready:
            for j in range(ce, bisect.bisect_right(D, read, ce)):
                if D[j] + delay[j] <= read:
                    used[j] = True
            prev_read = read
        else:
            prev_read = None
        if fn <= p_out:
            cn = bisect.bisect_right(N, int(acq_it[i]), cn)
    efd_delay = np.full(len(aio), EFD_DELAY_NS, np.int64)
    if len(D):
        efd_delay[dorder] = delay
    m.aio["efd_delay"] = efd_delay.tolist()
    ml.stop_delay = 0           # no iteration recorded: stopped when the vCPUs end
    if n:
        kind[-1] = WAKE_STOP
        vend = max(s_.end_ns for s_ in m.vcpus)
        ml.stop_delay = max(0, int(px[-1]) - vend)
        wake[-1] = 0
    if n:
        keys[-1] = ("stop",)
    ml.kind = kind.tolist()
    ml.wake = wake.tolist()
    ml.keys = keys
    ml.key_iter = {}
    for i, k in enumerate(keys):
        ml.key_iter.setdefault(k, i)
    # for an iteration the recording did not have
    ml.typical = {name: int(np.median(np.asarray(getattr(ml, name), np.int64))) if n else 0
                  for name in ("pre", "post", "base_pre", "base_mid", "base", "sched")}
    ml.typical["sched"] = int(np.median(sched[sched >= 0])) if (sched >= 0).any() else 400
    ml.wake_samples = {k: Samples(wake[kind == k], (1000, 30000, 20000, 100000)[k])
                       for k in range(4)}
    return ml


def _arm_times(trace, lk, timers, main_th, m):
    """Per recorded timer id: ``[(armed, deadline)]`` of each time a vCPU
    armed it (each notified the loop): the recorded firings' arms and the
    arms of :func:`_timer_classes` (a deadline on the period grid after the
    timer's previous one, for an arm whose timer was deleted first)."""
    out = {}
    if len(timers):
        arm = timers["armed_ns"].to_numpy()
        holder = _holder(lk, arm)
        by_other = (holder >= 0) & (lk["thread"].to_numpy()[np.maximum(holder, 0)] != main_th)
        for tid, t_, e, f in zip(timers["timer"].to_numpy()[by_other].tolist(),
                                 arm[by_other].tolist(),
                                 timers["expire_ns"].to_numpy()[by_other].tolist(),
                                 timers["fire_ns"].to_numpy()[by_other].tolist()):
            out.setdefault(int(tid), []).append((int(t_), int(e), int(f)))
    for s_ in m.vcpus:
        for slot, t_ in getattr(s_, "extra_arms", []):
            out.setdefault(int(m.timers[slot]["id"]), []).append((int(t_), None, None))
        # a deletion ends the arm before it (as its firing would)
        for slot, t_ in getattr(s_, "extra_dels", []):
            out.setdefault(int(m.timers[slot]["id"]), []).append((int(t_), "del", None))
    for tid, arms in out.items():               # per timer
        arms.sort(key=lambda a: a[0])
        per = next((t["period"] for t in m.timers if t["id"] == tid), None) or 1
        prev = None
        for k, (t_, e, f) in enumerate(arms):
            if e is None:
                e = (prev or t_) + per
                if e < t_:
                    e += ((t_ - e) // per + 1) * per
                arms[k] = (t_, e, None)
            if e != "del":
                prev = arms[k][1]
        # ends: the firing, the next arming, or a deletion
        ended = []
        for k, (t_, e, f) in enumerate(arms):
            if e == "del":
                continue
            nxt = next((a[0] for a in arms[k + 1:]), None)
            ended.append((t_, e, f if f is not None else (nxt if nxt is not None else None)))
        out[tid] = ended
    return out


def _done_list_order(aio, bh, aio_bh, delay):
    """Eventfd delays adjusted so that the requests reach the done list
    (just before the write) in the order, and before the completion bottom
    half, that completed them: a worker can lose its CPU between its I/O
    and that.  Returns the delays and their floors (not on the list before
    the previous bottom half took it)."""
    floor = np.zeros(len(delay), np.int64)
    if aio_bh < 0:
        return delay, floor
    runs = np.sort(bh[bh["bh"] == aio_bh]["run_ns"].to_numpy())
    done = aio["done_ns"].to_numpy()
    comp = aio["complete_ns"].to_numpy()
    out = delay.copy()
    prev = np.iinfo(np.int64).min
    for r in np.argsort(comp, kind="stable").tolist():      # per request
        b = np.searchsorted(runs, comp[r], side="right") - 1
        hi = int(runs[b]) - 1 if b >= 0 else int(comp[r])
        lo = int(runs[b - 1]) + 1 if b >= 1 else np.iinfo(np.int64).min
        floor[r] = max(0, lo - int(done[r]))
        p = max(int(done[r] + out[r]), lo, prev + 1)
        p = max(min(p, hi), int(done[r]))
        out[r] = p - int(done[r])
        prev = p
    return out, floor


def describe(model):
    """A few lines saying what the model holds (for ``kvmscope replay -v``
    and the docs): streams, interrupt service exits, gates, main loop."""
    lines = []
    for s in model.vcpus:
        P = s.prog
        waits = sum(g == GATE_WAIT for g in P.gate)
        isr = ", ".join(f"vector {v}: {len(S)} ISR exits" for v, S in sorted(s.isr.items()))
        lines.append(f"{s.name}: {len(P)} program exits ({waits} wait for an interrupt)"
                     + (f"; {isr}" if isr else ""))
    if model.main is not None:
        ml = model.main
        kinds = np.bincount(np.asarray(ml.kind, np.int64), minlength=4)
        lines.append(f"{ml.name}: {len(ml.pre)} iterations ("
                     + ", ".join(f"{k} {WAKE_NAMES[i]}" for i, k in enumerate(kinds.tolist()))
                     + ")")
    lines.append(f"aio: {len(model.aio['io'])} requests, {model.aio_workers} workers")
    lines.append(f"lock: {model.lock['spin']!r} spin, {model.lock['sleep']!r} sleep, "
                 f"{model.lock['free']!r} free")
    return lines
