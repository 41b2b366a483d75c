"""Deterministic discrete-event re-execution of a recorded trace's model
(:mod:`kvmscope.analysis.reexec_model`) under changed conditions; the
predicted run comes out as the tables of a trace (docs/whatif.md).

One event queue (``heapq``, ties broken by insertion order), one state
machine per vCPU, the main loop, the AIO pool, the timers and the BQL.  Same
model, same changes, same seed: the same trace, to the nanosecond.
"""

import bisect
import collections
import heapq
import random
import re

import numpy as np

from ..errors import ConfigError
from . import reexec_model as rm

#: Ranges of the changes, as ``kvmscope run`` has them (a test compares them
#: with kvmscope.config).
MAX_VCPUS = 64
MAX_AIO_THREADS = 16
TIMER_PERIOD_US = (50, 60_000_000)
MAX_HOLD_NS = 10 ** 9
MAX_SCALE = 1000.0

#: Lock policies: ``barging`` (glibc's default mutex: a thread that asks
#: while the lock is free takes it, even ahead of a waiter that was woken
#: and has not run yet) and ``fifo`` (a ticket lock: the waiters in request
#: order, a newcomer queues behind them).
POLICIES = ("barging", "fifo")

INF = 1 << 62

#: Events a re-execution may take per recorded exit (and per 1,000 more)
#: before it is stopped as one that cannot end (the shipped traces take 2-22
#: with --vcpus 4).
MAX_EVENTS_PER_EXIT = 200
MIN_EVENTS = 1_000_000
_FAR = 1 << 40          # "no previous release" in the recorded request offsets

# Event kinds.
(E_PROG, E_ISR, E_IREQ, E_ENTRY, E_GRANT, E_FX, E_RAISE, E_MWAKE, E_MPOLL, E_MREQ,
 E_MBH, E_AIOTAKE, E_AIODONE, E_MFIRST, E_EFD) = range(15)

# vCPU modes: in the guest, handling an exit, ended.
M_GUEST, M_USER, M_DONE = 0, 1, 2


class Changes:
    """What to change in a re-execution; every argument is optional.

    Parameters
    ----------
    scale_hold : dict of str to float
        Call site -> factor on its hold times (``main:dispatch`` scales the
        whole dispatch: handlers, timer callbacks, bottom halves).
    add_hold : dict of str to int
        Call site -> ns added to each hold (what ``kvmscope run
        --inject-hold`` does).
    lockless : iterable of str
        Devices dispatched without the BQL (``kvmscope run --lockless``).
    vcpus : int
        vCPUs; extra ones run the recorded vCPUs' streams again.
    aio_threads : int
        AIO worker threads.
    timer_period_us : int
        Period the guests program into the timer device, us.
    """

    NAMES = ("scale_hold", "add_hold", "lockless", "vcpus", "aio_threads", "timer_period_us")

    def __init__(self, scale_hold=None, add_hold=None, lockless=(), vcpus=None,
                 aio_threads=None, timer_period_us=None):
        self.scale_hold = dict(scale_hold or {})
        self.add_hold = dict(add_hold or {})
        if isinstance(lockless, str):
            lockless = [lockless]
        self.lockless = list(dict.fromkeys(lockless or ()))
        self.vcpus = vcpus
        self.aio_threads = aio_threads
        self.timer_period_us = timer_period_us

    @classmethod
    def from_kwargs(cls, **kw):
        """Changes from keyword arguments; an unknown name raises ConfigError."""
        bad = sorted(set(kw) - set(cls.NAMES))
        if bad:
            raise ConfigError(f"unknown change {bad[0]!r}; changes are " + ", ".join(cls.NAMES))
        return cls(**kw)

    def empty(self):
        """True when nothing is changed."""
        return not any(self.as_dict().values())

    def as_dict(self):
        """The changes as plain JSON values (``meta.json`` ``replay.changes``)."""
        out = {}
        if self.scale_hold:
            out["scale_hold"] = {k: float(v) for k, v in self.scale_hold.items()}
        if self.add_hold:
            out["add_hold"] = {k: int(v) for k, v in self.add_hold.items()}
        if self.lockless:
            out["lockless"] = list(self.lockless)
        for k in ("vcpus", "aio_threads", "timer_period_us"):
            if getattr(self, k):
                out[k] = int(getattr(self, k))
        return out

    def describe(self):
        """One short phrase per change (``pio:blk hold x0.5``)."""
        out = [f"{k} hold x{v:g}" for k, v in self.scale_hold.items()]
        out += [f"{k} hold +{_ns_text(v)}" for k, v in self.add_hold.items()]
        out += [f"{d} lockless" for d in self.lockless]
        if self.vcpus:
            out.append(f"{self.vcpus} vCPUs")
        if self.aio_threads:
            out.append(f"{self.aio_threads} AIO threads")
        if self.timer_period_us:
            out.append(f"timer period {self.timer_period_us}us")
        return out

    def check(self, model):
        """ConfigError for a change the model cannot take (an unknown call
        site or device, a value out of range)."""
        for what, table in (("scale", self.scale_hold), ("add", self.add_hold)):
            for cs, v in table.items():
                if cs not in model.callsites:
                    raise ConfigError(f"--{what}-hold: unknown call site {cs!r}; the trace has "
                                      + ", ".join(used_callsites(model)))
                if what == "scale" and not (0 <= float(v) <= MAX_SCALE):
                    raise ConfigError(f"--scale-hold {cs}={v}: out of range: use 0 .. "
                                      f"{MAX_SCALE:g}")
                if what == "add" and not (0 <= int(v) <= MAX_HOLD_NS):
                    raise ConfigError(f"--add-hold {cs}={v}: out of range: use 0 .. 1s")
        for dev in self.lockless:
            if dev not in model.devices:
                raise ConfigError(f"--lockless: unknown device {dev!r}; devices are "
                                  + ", ".join(sorted(model.devices)))
        if self.vcpus is not None and not (1 <= int(self.vcpus) <= MAX_VCPUS):
            raise ConfigError(f"--vcpus {self.vcpus} out of range: use 1 .. {MAX_VCPUS}")
        if self.aio_threads is not None and not (1 <= int(self.aio_threads) <= MAX_AIO_THREADS):
            raise ConfigError(f"--aio-threads {self.aio_threads} out of range: use 1 .. "
                              f"{MAX_AIO_THREADS}")
        lo, hi = TIMER_PERIOD_US
        if self.timer_period_us is not None and not (lo <= int(self.timer_period_us) <= hi):
            raise ConfigError(f"--timer-period-us {self.timer_period_us} out of range: use "
                              f"{lo} .. {hi}")


def _ns_text(ns):
    for unit, k in (("s", 10 ** 9), ("ms", 10 ** 6), ("us", 1000)):
        if ns >= k:
            return f"{ns / k:g}{unit}"
    return f"{ns}ns"


def used_callsites(model):
    """Call sites a model's recording used (not the ``:unassigned`` ones)."""
    return [c for c in model.callsites if not c.endswith(":unassigned")]


def _apply(S, changes, model, cpu=1.0):
    """A copy of ExitSpecs *S* with the hold changes and lockless devices
    applied; *cpu* stretches the recorded busy times (exit handling, holds,
    interrupt reactions) for the host's CPUs being shared differently."""
    out = rm.ExitSpecs()
    for f in rm.ExitSpecs.FIELDS:
        setattr(out, f, list(getattr(S, f)))
    for f in ("react", "defer"):
        if hasattr(S, f):
            setattr(out, f, list(getattr(S, f)))
    if cpu != 1.0:
        for f in ("pre", "post", "dur", "hold", "react"):
            if hasattr(out, f):
                setattr(out, f, [int(round(x * cpu)) for x in getattr(out, f)])
        out.fx = [fx and [(int(round(e[0] * cpu)),) + tuple(e[1:]) for e in fx] for fx in out.fx]
    scale = {model.callsites.index(k): float(v) for k, v in changes.scale_hold.items()}
    add = {model.callsites.index(k): int(v) for k, v in changes.add_hold.items()}
    lockless = {cs for dev in changes.lockless for cs in model.devices[dev]}
    if not (scale or add or lockless):
        return out
    for k in range(len(out.row)):           # per exit, once per re-execution
        cs = out.cs[k]
        if cs < 0 or not (cs in scale or cs in add or cs in lockless):
            continue
        h = out.hold[k]
        fx = out.fx[k]
        if cs in scale:
            f = scale[cs]
            h = int(round(h * f))
            fx = fx and [(int(round(e[0] * f)),) + tuple(e[1:]) for e in fx]
        if cs in add:
            # the injected busy-wait comes first, as kvmscope run's
            h += add[cs]
            fx = fx and [(e[0] + add[cs],) + tuple(e[1:]) for e in fx]
        if cs in lockless:
            pre = out.pre[k]
            out.dur[k] = pre + h + out.post[k]
            fx = fx and [(e[0] + pre,) + tuple(e[1:]) for e in fx]
            out.cs[k] = -1
        out.hold[k] = h
        out.fx[k] = fx
    return out


class _Stream:
    """A vCPU stream as one vCPU of the re-execution runs it: the recorded
    specs with the changes applied."""

    def __init__(self, src, changes, model, copy, copies, stagger, cpu=1.0):
        P = src.prog
        self.src = src
        self.prog = _apply(P, changes, model, cpu)
        self.gate, self.gvec, self.gcnt = P.gate, P.gvec, P.gcnt
        self.gap = list(P.gap) if cpu == 1.0 else [int(round(g * cpu)) for g in P.gap]
        self.start = P.start + copy * stagger
        if copy:
            # A replica: its guest times are the recorded stream's, rotated
            # within each exit class, so that copies do not run in lock step.
            cls = np.asarray(model.exit_cls, dtype=np.int64)[np.asarray(P.row, dtype=np.int64)]
            gap = np.asarray(self.gap, dtype=np.int64)
            out = gap.copy()
            comp = np.asarray(P.gate) == rm.GATE_COMPUTE
            for c in np.unique(cls[comp]).tolist():     # per exit class
                idx = np.flatnonzero((cls == c) & comp)
                out[idx] = np.roll(gap[idx], (copy * len(idx)) // (copies + 1))
            self.gap = out.tolist()
        self.isr = {v: _apply(S, changes, model, cpu) for v, S in src.isr.items()}


class _Vcpu:
    """State of one vCPU of the re-execution."""

    __slots__ = ("i", "th", "name", "st", "j", "mode", "ver", "left", "since", "waiting",
                 "wvec", "wcnt", "sched", "until", "pending", "cnt", "rtimes", "icur",
                 "timers", "cur_isr", "in_isr", "hlt", "done_t", "halt_from")

    def __init__(self, i, name, st):
        self.i, self.th, self.name, self.st = i, i, name, st
        self.j = 0                  # next program exit
        self.mode = M_GUEST
        self.ver = 0                # invalidates scheduled guest events
        self.left = 0               # guest time left before program exit j
        self.since = 0              # ... counted from here
        self.waiting = False        # program exit j waits for an interrupt
        self.wvec = -1
        self.wcnt = 0
        self.sched = INF            # when program exit j is due
        self.until = 0              # in userspace until (re-entry)
        self.pending = []           # interrupt service routines to run at entry
        self.cnt = {}               # interrupts received, per vector
        self.rtimes = {}            # their times
        self.icur = {}              # next ISR exit, per vector
        self.timers = {}            # recorded timer index -> timer of this vCPU
        self.cur_isr = None
        self.in_isr = False
        self.hlt = None             # a halt waiting in userspace for an interrupt
        self.done_t = None
        self.halt_from = None       # halted (asleep) since, waiting for an interrupt


class Engine:
    """One re-execution of a model; :func:`run` is the entry point."""

    def __init__(self, model, changes, policy="barging", seed=None, cpu=1.0):
        if policy not in POLICIES:
            raise ConfigError(f"unknown lock policy {policy!r}; use one of {', '.join(POLICIES)}")
        changes.check(model)
        self.m = model
        self.ch = changes
        self.policy = policy
        self.barging = policy == "barging"
        # seed None: a situation the recording did not have gets the
        # median of the recorded ones; a seed: a draw among them
        self.seed = None if seed is None else int(seed)
        self.rng = random.Random(self.seed) if seed is not None else None
        # a sleeping waiter's wake-up is always a draw (seed 0 by default):
        # a median would wake it at a fixed phase of a periodic owner's
        # cycle, and a waiter that wakes into the owner's next hold would
        # then miss every one (docs/whatif.md, "The lock")
        self.wake_rng = random.Random(self.seed or 0)
        # recorded busy times are stretched by this (see cpu_stretch)
        self.cpu = float(cpu)
        self.sleeps = []            # (thread, from, to): asleep, not using a CPU
        self.heap = []
        self.seq = 0
        # -- threads of the predicted run ----------------------------------
        n_src = len(model.vcpus)
        self.n_src = n_src
        nv = int(changes.vcpus or n_src)
        self.nworkers = int(changes.aio_threads or model.aio_workers)
        stagger = self._stagger()
        copies = (nv - 1) // n_src
        self.vcpus = []
        for i in range(nv):
            src = model.vcpus[i % n_src]
            st = _Stream(src, changes, model, i // n_src, copies, stagger, self.cpu)
            self.vcpus.append(_Vcpu(i, f"vcpu{i}", st))
        self.main_th = nv
        self.aio_th = [nv + 1 + k for k in range(self.nworkers)]
        # -- timers: one per (vCPU, recorded timer its stream arms) ----------
        self.timers = []
        for v in self.vcpus:
            for slot in v.st.src.timers:
                info = model.timers[slot]
                name, src_v = info["name"], v.st.src.vcpu
                if v.i != src_v:
                    renamed = re.sub(rf"vcpu{src_v}$", f"vcpu{v.i}", name)
                    name = renamed if renamed != name else f"{name}#{v.i}"
                v.timers[slot] = len(self.timers)
                per = info.get("period")
                if changes.timer_period_us:
                    per = int(changes.timer_period_us) * 1000
                # [name, vcpu, vector, recorded index, armed, expire, armed at,
                #  period, arms, fires, recorded id (None: not the recorded vCPU)]
                self.timers.append([name, v.i, info["vector"], slot, False, 0, 0, per, 0, 0,
                                    info["id"] if v.i == src_v else None])
        self.timer_cb_i = {}
        # -- the BQL -------------------------------------------------------------
        self.busy_until = -INF      # release of the last acquisition (INF: not known yet)
        self.last_owner = -1
        self.waiters = []
        self.word = 0               # glibc's lock word: 0 free, 1 taken, 2 with sleepers
        self.owner_row = -1         # lock record of the current owner
        self.wake_row = -2          # the owner whose release already woke a waiter
        # -- main loop ------------------------------------------------------------
        self.ml = model.main
        self.m_iter = 0
        self.m_state = "init"
        self.m_ver = 0
        self.m_poll_enter = 0
        self.m_wake_t = INF
        self.m_trigger_t = INF
        self.m_trigger_key = None
        self.m_last_key = None
        self.m_rec = None           # the recorded iteration this one is
        self.m_used = set()
        self.vbh_n = {}
        self.m_timeout = -1
        self.m_end = None
        self.efd = []               # eventfd writes not yet read
        self.notify = []
        self.efd_upto = self.notify_upto = -INF     # read by a dispatch up to
        self.bh_pending = {}        # bottom half -> (scheduled, by thread)
        self.bh_over_i = 0
        self.bh_dur_i = {}
        self.stop_t = None
        self.cur_main = None
        self.m_scale = float(changes.scale_hold.get("main:dispatch", 1.0)) * self.cpu
        self.m_add = int(changes.add_hold.get("main:dispatch", 0))
        # -- AIO ---------------------------------------------------------------------
        self.idle_workers = [(-INF, k) for k in range(self.nworkers)]
        self.aio_queue = []
        self.aio_done = []          # done, not yet completed by the bottom half
        self.aio_reqs = []          # [spec, vcpu, submit, start, done, complete, worker]
        # -- output -------------------------------------------------------------------
        # exits: recorded row, vcpu, exit, entry (-1: never re-entered)
        self.ex_row, self.ex_vc, self.ex_x, self.ex_e = [], [], [], []
        # lock records (callsite and release filled in when known)
        self.lk_th, self.lk_cs, self.lk_req, self.lk_acq = [], [], [], []
        self.lk_rel, self.lk_prev, self.lk_cont = [], [], []
        self.o_loop = []
        self.o_timers = []
        self.o_bh = []
        self.o_irqs = []            # (thread, kind, line, vector, vcpu, ts)
        self.n_done = 0
        self._lines = {}
        raises = model.irq_rows[model.irq_rows["kind"] == "raise"]
        stride = model.line_stride
        for vec, line, vc in zip(raises["vector"].tolist(), raises["line"].tolist(),
                                 raises["vcpu"].tolist()):
            for v in range(nv):
                self._lines.setdefault((v, vec), line - stride * vc + stride * v)

    def _stagger(self):
        starts = sorted(s.prog.start for s in self.m.vcpus)
        if len(starts) > 1:
            return max(1000, (starts[-1] - starts[0]) // (len(starts) - 1))
        return 50_000

    def push(self, t, kind, a=0, b=0):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def draw(self, samples):
        return samples.median if self.rng is None else samples.draw(self.rng)

    # -- the BQL ----------------------------------------------------------------------
    # glibc's default mutex: a free lock goes to whoever tries first (a
    # woken waiter is not preferred); the lock word is 1 when taken by a
    # try that found it free, 2 once a thread went to sleep on it or a
    # woken waiter took it; an unlock that finds 2 wakes one sleeper.
    # ``fifo`` instead hands the lock to the first waiter at every release.

    def request(self, th, r, lat, d, cont, hold, cb, arg, tw=0):
        """Thread *th* asks for the BQL at *r*; ``cb(arg, acquired, released,
        lock_row)`` runs when it has it.  *lat*, *d*, *cont* are the
        recorded acquisition's latency, request-to-previous-release offset
        and contended flag; *hold* None: released later (:meth:`release_at`);
        *tw*: the request's timestamp came this much earlier (recorded)."""
        if r >= self.busy_until and (self.barging or not self.waiters):
            dd = r - self.busy_until if self.busy_until > -INF else _FAR
            if dd == d:
                L, c = lat, cont
            elif not cont:
                L, c = lat, False
            else:
                L, c = self.draw(self.m.lock["free"]), False
            self.word = 1
            self._acquire(th, r - tw, r + L, hold, c, cb, arg)
            return
        # [thread, request, lat, d, cont, hold, cb, arg, wakes, tw, woken]
        self.waiters.append([th, r, lat, d, cont, hold, cb, arg, 0, tw, False])
        self.word = 2
        if self.busy_until < INF:
            self._wake(self.busy_until)

    def _handoff_latency(self, w, rel):
        """Hand-off latency of waiter *w* after a release at *rel*: the
        recorded one when the situation is the recorded one, else drawn
        from the recorded ones of a waiter that had slept or had not."""
        r, lat, d, cont, wakes = w[1], w[2], w[3], w[4], w[8]
        dd = r - rel
        if wakes == 0 and dd == d:
            return lat
        sleep = wakes > 0 or -dd > rm.SLEEP_THRESHOLD_NS
        if cont and d < 0 and sleep == (-d > rm.SLEEP_THRESHOLD_NS):
            return lat
        if sleep:
            return self.m.lock["sleep"].draw(self.rng or self.wake_rng)
        return self.draw(self.m.lock["spin"])

    def _wake(self, rel):
        """The owner's release at *rel* wakes a waiter: the first one
        asleep (fifo: the first one), once per release.  Under barging, a
        waiter that asked shortly before the release was not asleep yet
        and tries again at once."""
        if self.barging:
            for w in self.waiters:
                if not w[10] and rel - w[1] <= rm.QUEUE_NS:
                    w[10] = True
                    self.push(max(rel, w[1]) + self._handoff_latency(w, rel), E_GRANT, id(w), w)
        if self.wake_row == self.owner_row:
            return
        if self.barging and self.word != 2:
            return
        for w in self.waiters:
            if not w[10]:
                break
        else:
            return
        if not self.barging and w is not self.waiters[0]:
            return
        self.wake_row = self.owner_row
        w[10] = True
        g = max(rel, w[1]) + self._handoff_latency(w, rel)
        self.push(g, E_GRANT, id(w), w)

    def _grant(self, w, t):
        """Event: woken waiter *w* runs and tries the lock."""
        if t < self.busy_until:
            # a thread barged in: back to sleep until a release wakes it
            w[10] = False
            w[8] += 1
            self.word = 2
            if self.busy_until < INF:
                self._wake(self.busy_until)
            return
        self.waiters.remove(w)
        dd = w[1] - self.busy_until if self.busy_until > -INF else _FAR
        c = w[4] if (w[8] == 0 and dd == w[3]) else True
        self.word = 2
        self._acquire(w[0], w[1] - w[9], t, w[5], c, w[6], w[7])

    def _acquire(self, th, r, acq, hold, contended, cb, arg):
        prev = self.last_owner
        self.last_owner = th
        rel = None if hold is None else acq + hold
        self.busy_until = INF if rel is None else rel
        self.lk_th.append(th)
        self.lk_cs.append(-1)
        self.lk_req.append(r)
        self.lk_acq.append(acq)
        self.lk_rel.append(rel)
        self.lk_prev.append(prev)
        self.lk_cont.append(contended)
        self.owner_row = len(self.lk_th) - 1
        cb(arg, acq, rel, self.owner_row)
        if rel is not None and self.waiters:
            self._wake(rel)

    def release_at(self, row, rel):
        """The owner of lock record *row* (taken without a known hold)
        releases it at *rel*."""
        self.lk_rel[row] = rel
        self.busy_until = rel
        if self.waiters:
            self._wake(rel)

    # -- vCPUs ------------------------------------------------------------------------

    def _setup_gate(self, v, x=None):
        """Program exit v.j is next (the previous one happened at *x*): what
        the guest does before it."""
        j = v.j
        st = v.st
        if j >= len(st.prog.row):
            v.waiting = False
            v.left = INF
            return
        v.left = st.gap[j]
        v.waiting = st.gate[j] == rm.GATE_WAIT
        if v.waiting:
            v.wvec = vec = st.gvec[j]
            times = v.rtimes.get(vec, ())
            v.wcnt = (bisect.bisect_right(times, x) if x is not None else len(times)) + st.gcnt[j]

    def _enter(self, v, e):
        """vCPU *v* re-enters the guest at *e* (possibly later than now:
        an interrupt that reaches it before *e* re-runs this at *e*)."""
        v.mode = M_GUEST
        v.until = e
        v.ver += 1
        if v.pending and not self._deferred(v, v.pending[0]):
            self._isr_at(v, v.pending.pop(0), e)
            return
        v.since = e
        if v.j >= len(v.st.prog.row):
            # no program exit left (a recording cut while the vCPU ran)
            self._finish(v, e)
            return
        if v.waiting:
            if v.cnt.get(v.wvec, 0) < v.wcnt:
                v.sched = INF
                v.halt_from = e
                return
            v.waiting = False
            v.since = max(e, v.rtimes[v.wvec][v.wcnt - 1])
        self._sched_prog(v, v.since + v.left)

    def _sched_prog(self, v, t):
        v.sched = t
        P = v.st.prog
        j = v.j
        if j < len(P.row):
            self.push(t + (P.pre[j] + P.tw[j] if P.cs[j] >= 0 else 0), E_PROG, v.i, v.ver)

    def _isr_at(self, v, vec, t):
        if v.halt_from is not None:
            if t > v.halt_from:
                self.sleeps.append((v.th, v.halt_from, t))
            v.halt_from = None
        v.in_isr = True
        S = v.st.isr[vec]
        k = v.icur.get(vec, 0)
        v.icur[vec] = k + 1
        k %= len(S.row)
        v.cur_isr = (vec, k)
        v.ver += 1
        v.sched = INF
        self.push(t + S.react[k], E_ISR, v.i, v.ver)

    def _prog(self, v, ver, t):
        """Event: program exit v.j happened at v.sched; *t* is its lock
        request, or the exit itself when it takes no lock.

        The common case (the BQL free, the handler starting nothing, the
        guest going on computing) is written out here: this is the hot loop
        of a re-execution."""
        if ver != v.ver:
            return
        j = v.j
        x = v.sched
        v.mode = M_USER
        v.until = INF
        v.j = j1 = j + 1
        self._setup_gate(v, x)
        P = v.st.prog
        cs = P.cs[j]
        busy = self.busy_until
        if (cs < 0 or t < busy or (self.waiters and not self.barging) or P.fx[j] is not None
                or P.last[j] or v.pending or v.waiting):
            self._handle(v, P, j, x, t)
            return
        d, cont = P.d[j], P.cont[j]
        dd = t - busy if busy > -INF else _FAR
        if dd == d:
            L, c = P.lat[j], cont
        elif not cont:
            L, c = P.lat[j], False
        else:
            L, c = self.draw(self.m.lock["free"]), False
        self.word = 1
        acq = t + L
        rel = acq + P.hold[j]
        self.lk_th.append(v.th)
        self.lk_cs.append(cs)
        self.lk_req.append(t - P.tw[j])
        self.lk_acq.append(acq)
        self.lk_rel.append(rel)
        self.lk_prev.append(self.last_owner)
        self.lk_cont.append(c)
        self.owner_row = len(self.lk_th) - 1
        self.last_owner = v.th
        self.busy_until = rel
        if self.waiters:
            self._wake(rel)
        e = rel + P.post[j]
        self.ex_row.append(P.row[j])
        self.ex_vc.append(v.i)
        self.ex_x.append(x)
        self.ex_e.append(e)
        # re-enter the guest and go on to the next program exit
        v.mode = M_GUEST
        v.until = e
        v.ver += 1
        v.since = e
        v.sched = nxt = e + v.left
        if j1 < len(P.row):
            self.seq += 1
            heapq.heappush(self.heap, (nxt + (P.pre[j1] + P.tw[j1] if P.cs[j1] >= 0 else 0),
                                       self.seq, E_PROG, v.i, v.ver))
        else:
            self._finish(v, e)

    def _handle(self, v, S, k, x, t):
        """Handle exit *k* of specs *S*: exit at *x*, lock request at *t*."""
        cs = S.cs[k]
        if cs >= 0:
            self.request(v.th, t, S.lat[k], S.d[k], S.cont[k], S.hold[k], self._v_acquired,
                         (v, S, k, x, cs), S.tw[k])
            return
        self._fx(v, S, k, x)
        if S.wvec[k] >= 0:
            vec = S.wvec[k]
            n = bisect.bisect_right(v.rtimes.get(vec, ()), x) + S.wcnt[k]
            if v.cnt.get(vec, 0) < n:
                v.hlt = (S, k, x, n)
                return
            e = max(x + S.wpre[k], v.rtimes[vec][n - 1]) + S.wake[k]
        else:
            e = x + S.dur[k]
        self._exited(v, S, k, x, e)

    def _v_acquired(self, arg, acq, rel, lrow):
        v, S, k, x, cs = arg
        self.lk_cs[lrow] = cs
        self._fx(v, S, k, acq)
        self._exited(v, S, k, x, rel + S.post[k])

    def _fx(self, v, S, k, base):
        fx = S.fx[k]
        if fx:
            for off, kind, a, b in fx:
                self.push(base + max(off, 0), E_FX, v.i, (kind, a, b))

    def _exited(self, v, S, k, x, e):
        """Exit *k* of *S* is handled: the vCPU re-enters at *e*."""
        last = S.last[k]
        self.ex_row.append(S.row[k])
        self.ex_vc.append(v.i)
        self.ex_x.append(x)
        self.ex_e.append(-1 if last else e)
        if last:
            self._finish(v, e)
            return
        if S is not v.st.prog:
            v.in_isr = False
        self._enter(v, e)

    def _finish(self, v, t):
        """vCPU *v* has made its last exit (its thread ends, or its stream
        has no exit left) at *t*; the run stops when every vCPU has."""
        v.mode = M_DONE
        v.done_t = t
        v.ver += 1
        self.n_done += 1
        if self.n_done == len(self.vcpus):
            self._stop(t)

    def _isr(self, v, ver, t):
        """Event: the ISR exit scheduled for vCPU *v* happens now."""
        if ver != v.ver:
            return
        vec, k = v.cur_isr
        S = v.st.isr[vec]
        v.mode = M_USER
        v.until = INF
        if S.cs[k] >= 0:
            self.push(t + S.pre[k] + S.tw[k], E_IREQ, v.i, (S, k, t))
        else:
            self._handle(v, S, k, t, t)

    def _raise(self, vi, vec, t, raiser):
        """Interrupt *vec* raised for vCPU *vi* at *t* by thread *raiser*."""
        v = self.vcpus[vi]
        self.o_irqs.append((raiser, "raise", self._lines.get((vi, vec), -1), vec, vi, t))
        if v.mode == M_DONE:
            return
        v.cnt[vec] = v.cnt.get(vec, 0) + 1
        v.rtimes.setdefault(vec, []).append(t)
        in_guest = v.mode == M_GUEST and t >= v.until
        if self.m.irqchip_user and in_guest and not v.in_isr and v.hlt is None:
            self.o_irqs.append((raiser, "kick", -1, vec, vi, t))
        if v.hlt is not None:
            S, k, x, n = v.hlt
            if S.wvec[k] == vec and v.cnt[vec] >= n:
                v.hlt = None
                if t > x + S.wpre[k]:
                    self.sleeps.append((v.th, x + S.wpre[k], t))
                self._exited(v, S, k, x, max(x + S.wpre[k], t) + S.wake[k])
            return
        S = v.st.isr.get(vec)
        if S is not None:
            if in_guest and not v.in_isr and t < v.sched and not self._deferred(v, vec):
                if not v.waiting:
                    v.left = max(0, v.left - (t - v.since))
                self._isr_at(v, vec, t)
            else:
                v.pending.append(vec)
                # not re-entered yet: take it at the re-entry; in an ISR, its
                # end re-enters and takes it (re-running the entry would drop
                # the ISR scheduled there and leave the vCPU in it for ever)
                if v.mode == M_GUEST and t < v.until and not v.in_isr:
                    self._reenter_later(v)
            return
        if v.waiting and v.wvec == vec and v.cnt[vec] >= v.wcnt:
            if in_guest and not v.in_isr:
                if v.halt_from is not None and t > v.halt_from:
                    self.sleeps.append((v.th, v.halt_from, t))
                v.halt_from = None
                v.waiting = False
                v.since = t
                v.ver += 1
                self._sched_prog(v, t + v.left)
            elif v.mode == M_GUEST and t < v.until and not v.in_isr:
                self._reenter_later(v)

    def _deferred(self, v, vec):
        """Whether the next interrupt service exit of *vec* waits for the
        coming program exit, as in the recording (its vCPU thread had lost
        its CPU: the guest took the interrupt only after that exit)."""
        S = v.st.isr[vec]
        k = v.icur.get(vec, 0)
        return k < len(S.row) and S.defer[k] == v.j

    def _reenter_later(self, v):
        v.ver += 1
        self.push(v.until, E_ENTRY, v.i, v.ver)

    # -- what an exit's handler starts ---------------------------------------------------

    def _effect(self, vi, fx, t):
        kind, a, b = fx
        v = self.vcpus[vi]
        if kind == rm.FX_SUBMIT:
            self._aio_submit(vi, a, t)
        elif kind in (rm.FX_ARM_REL, rm.FX_ARM_GRID, rm.FX_DEL):
            ti = v.timers.get(a)
            if ti is None:
                return
            tm = self.timers[ti]
            if kind == rm.FX_DEL:
                tm[4] = False
                return
            if kind == rm.FX_ARM_REL:
                if self.ch.timer_period_us:
                    # the guest programs the new period; keep the recorded
                    # offset between the two clock reads of an arming
                    rec = self.m.timers[tm[3]]
                    b = tm[7] + (b - (rec.get("period") or b))
                expire = t + b
            else:
                per = tm[7] if self.ch.timer_period_us else b
                expire = tm[5] + per
                if expire < t:
                    # fell behind by more than a period: skip ahead (timerdev)
                    expire += ((t - expire) // per + 1) * per
            tm[4], tm[5], tm[6] = True, expire, t
            key = None if tm[10] is None else ("arm", tm[10], tm[8])
            tm[8] += 1
            self._fd_event(False, t, key)
        elif kind == rm.FX_RAISE:
            self._raise(vi, a, t, v.th)
        elif kind == rm.FX_BH:
            if a not in self.bh_pending:
                self.bh_pending[a] = (t, v.th)
            n = self.vbh_n.get(a, 0)
            self.vbh_n[a] = n + 1
            self._fd_event(False, t, ("vbh", a, n) if v.i < self.n_src else None)
        elif kind == rm.FX_IRQROW:
            r = self.m.irq_rows
            self.o_irqs.append((v.th, str(r["kind"].iat[a]), int(r["line"].iat[a]),
                                int(r["vector"].iat[a]), vi, t))

    # -- AIO ------------------------------------------------------------------------------

    def _aio_submit(self, vi, spec, t):
        """A request is queued and an idle worker woken; the first worker to
        reach the queue takes it (the woken one, or one that just finished)."""
        q = len(self.aio_reqs)
        self.aio_reqs.append([spec, vi, t, 0, 0, 0, -1])
        self.aio_queue.append(q)
        if self.idle_workers:
            _, w = self.idle_workers.pop(0)
            A = self.m.aio
            if A["idle"][spec]:
                wake = A["pick"][spec]
            else:
                # recorded: a worker that finished first took it; the
                # woken one had not come by then
                wake = max(self.draw(A["wake"]), A["queue"][spec] + 1)
            self.push(t + wake, E_AIOTAKE, 0, w)

    def _aio_take(self, w, t):
        """Worker *w* reaches the queue at *t*: takes its head, or sleeps."""
        if not self.aio_queue:
            self.idle_workers.append((t, w))
            return
        q = self.aio_queue.pop(0)
        r = self.aio_reqs[q]
        r[3], r[6] = t, w
        io = self.m.aio["io"][r[0]]
        self.push(t + (io if self.cpu == 1.0 else int(round(io * self.cpu))), E_AIODONE, q, w)

    def _aio_done(self, q, w, t):
        r = self.aio_reqs[q]
        r[4] = t
        # on the done list, then the eventfd written
        self.push(t + self.m.aio["efd_delay"][r[0]], E_EFD, q)
        if self.aio_queue:
            A = self.m.aio
            head = self.aio_reqs[self.aio_queue[0]]
            spec = head[0]
            if not A["idle"][spec]:
                nxt = A["pick"][spec]
            else:
                # recorded: the woken worker took it; this one had not
                # come back to the queue by then
                nxt = max(self.draw(A["next"]), head[2] + A["queue"][spec] + 1 - t)
            self.push(t + nxt, E_AIOTAKE, 0, w)
        else:
            self.idle_workers.append((t, w))

    # -- main loop ------------------------------------------------------------------------

    def _fd_event(self, efd, t, key=None):
        """The AIO eventfd (*efd*) or the loop's notifier was written at *t*;
        *key* says by what (see reexec_model._main_loop), None: something
        the recording did not have."""
        if t <= (self.efd_upto if efd else self.notify_upto):
            return      # a dispatch that is reading this fd gets it too
        (self.efd if efd else self.notify).append((t, key))
        if self.m_state == "poll":
            self._wake_at(t, rm.WAKE_FD, key)

    def _iter_value(self, name):
        """A figure of the current iteration: the recorded iteration woken by
        the same event, else a typical one."""
        j = self.m_rec
        return getattr(self.ml, name)[j] if j is not None else self.ml.typical[name]

    def _rec_iter(self, key):
        j = self.ml.key_iter.get(key) if key is not None else None
        return None if j is None or j in self.m_used else j

    def _wake_latency(self, kind, key):
        ml = self.ml
        if kind == rm.WAKE_STOP:
            return 0            # the runner's delay is in stop_t
        j = self._rec_iter(key)
        if j is not None and ml.kind[j] == kind:
            return ml.wake[j]
        return self.draw(ml.wake_samples[kind])

    def _wake_at(self, t, kind, key=None):
        """Schedule the poll's return for an event at *t* of *kind* (what
        sent it: *key*), unless it returns earlier anyway."""
        t = max(t, self.m_poll_enter)
        if t >= self.m_trigger_t:
            return      # an earlier event already wakes the loop
        w = t + self._wake_latency(kind, key)
        self.m_trigger_t = t
        self.m_trigger_key = key
        self.m_wake_t = w
        self.m_ver += 1
        self.push(w, E_MWAKE, self.m_ver)

    def _m_first(self, t):
        """Event: the main loop takes the BQL before its first poll."""
        f = self.ml.first
        self.m_state = "first"
        hold = int(f["hold"] * self.m_scale) + self.m_add

        def acquired(arg, acq, rel, lrow):
            self.lk_cs[lrow] = self.ml.cs
            self.push(rel + f["post"], E_MPOLL)
        self.request(self.main_th, t + f["tw"], f["lat"], f["d"], f["cont"], hold, acquired, None,
                     f["tw"])

    def _m_poll(self, t):
        """Event: the main loop enters poll at *t*, the BQL dropped."""
        self.m_state = "poll"
        self.m_poll_enter = t
        self.m_wake_t = INF
        self.m_trigger_t = INF
        if self.bh_pending:
            deadline = t
        else:
            deadline = min((tm[5] for tm in self.timers if tm[4]), default=INF)
            deadline = max(deadline, t) if deadline < INF else INF
        self.m_timeout = -1 if deadline >= INF else deadline - t
        if self.stop_t is not None:
            self._wake_at(max(self.stop_t, t), rm.WAKE_STOP, ("stop",))
        spont = ("none", self.m_last_key)
        j = self._rec_iter(spont)
        if j is not None:
            # the recording's loop woke here for a reason it does not show
            self._wake_at(t, rm.WAKE_FD, spont)
        due = self._deadline_key(deadline)
        if self.efd or self.notify:
            first = min(self.efd + self.notify, key=lambda e: e[0])
            self._wake_at(t, rm.WAKE_IMMEDIATE, first[1])
        elif deadline <= t:
            self._wake_at(t, rm.WAKE_IMMEDIATE, due)
        elif deadline < INF:
            self._wake_at(deadline, rm.WAKE_TIMEOUT, due)

    def _deadline_key(self, deadline):
        for tm in self.timers:
            if tm[4] and tm[5] == deadline:
                return None if tm[10] is None else ("dl", tm[10], tm[8] - 1)
        return None

    def _m_wake(self, ver, t):
        """Event: poll returns; the loop asks for the BQL."""
        if ver != self.m_ver or self.m_state != "poll":
            return
        self.m_state = "dispatch"
        self.m_rec = self._rec_iter(self.m_trigger_key)
        if self.m_rec is not None:
            self.m_used.add(self.m_rec)
        self.m_last_key = self.m_trigger_key
        efd, notify = bool(self.efd), bool(self.notify)
        stop = self.stop_t is not None and self.stop_t <= t
        nready = efd + notify + (stop and not notify)
        self.cur_main = [self.m_poll_enter, t, nready, efd, notify, stop, self.m_timeout, -1]
        tw = self.ml.tw[self.m_rec] if self.m_rec is not None else 0
        self.push(t + self._iter_value("pre") + tw, E_MREQ)

    def _m_req(self, t):
        ml = self.ml
        j = self.m_rec
        if j is not None:
            self.request(self.main_th, t, ml.lat[j], ml.d[j], ml.cont[j], None,
                         self._m_acquired, None, ml.tw[j])
        else:
            self.request(self.main_th, t, self.m.lock["free"].median, _FAR + 1, False, None,
                         self._m_acquired, None, 0)

    def _m_acquired(self, arg, acq, rel, lrow):
        """The main loop has the BQL: fd handlers, then timers."""
        self.lk_cs[lrow] = self.ml.cs
        cur = self.cur_main
        cur[7] = lrow
        if cur[3]:
            # the AIO eventfd's handler reads it, then schedules the
            # completion bottom half
            off = self._iter_value("sched")
            when = acq + (off if off >= 0 else 400)
            self.efd_upto = when
            self.efd = [e for e in self.efd if e[0] > when]
            aio_bh = self.m.bh["aio"]
            if aio_bh >= 0 and aio_bh not in self.bh_pending:
                self.bh_pending[aio_bh] = (when, self.main_th)
            # bh_schedule writes the notifier: the next iteration's
            self.notify.append((when, ("after", self.m_trigger_key)))
        if cur[4]:
            self.notify_upto = acq
            self.notify = [e for e in self.notify if e[0] > acq]
        t = acq + self.m_add + int(self._iter_value("base_pre") * self.m_scale)
        fired = 0
        while True:                     # expired timers, earliest deadline first
            due = None
            for ti, tm in enumerate(self.timers):
                if tm[4] and tm[5] <= t and (due is None or tm[5] < self.timers[due][5]):
                    due = ti
            if due is None:
                break
            tm = self.timers[due]
            tm[4] = False
            tm[9] += 1
            info = self.m.timers[tm[3]]
            k = self.timer_cb_i.get(due, 0)
            self.timer_cb_i[due] = k + 1
            if fired:
                t += info["gap"][k % len(info["gap"])]
            fired += 1
            cb = int(info["cb"][k % len(info["cb"])] * self.m_scale)
            if tm[2] is not None:
                off = info["raise_off"][k % len(info["raise_off"])]
                self.push(t + min(off, cb), E_RAISE, tm[1], (tm[2], self.main_th))
            self.o_timers.append((due, tm[6], tm[5], t, t + cb))
            t += cb
        if self.bh_pending:
            t += int(self._iter_value("base_mid") * self.m_scale)
        self.push(t, E_MBH)

    def _m_bh(self, t):
        """Event: the dispatch's bottom halves run from *t*, then the BQL is
        released and the loop polls again."""
        aio_bh = self.m.bh["aio"]
        B = self.m.bh
        for b in sorted(self.bh_pending):
            sched, who = self.bh_pending.pop(b)
            t = max(t, sched)
            start = t
            if b == aio_bh:
                done, self.aio_done = self.aio_done, []
                for q in done:          # oldest first, as aio_complete_all
                    r = self.aio_reqs[q]
                    t += int(B["to_raise"][r[0]] * self.m_scale)
                    if B["vector"] is not None:
                        self.push(t, E_RAISE, r[1], (B["vector"], self.main_th))
                    t += int(B["after_raise"][r[0]] * self.m_scale)
                    r[5] = t
                t += int(B["overhead"][self.bh_over_i % len(B["overhead"])] * self.m_scale)
                self.bh_over_i += 1
            else:
                durs = B["dur"].get(b) or [1000]
                k = self.bh_dur_i.get(b, 0)
                self.bh_dur_i[b] = k + 1
                t += int(durs[k % len(durs)] * self.m_scale)
            self.o_bh.append((b, who, sched, start, t))
        t += int(self._iter_value("base") * self.m_scale)
        cur = self.cur_main
        self.release_at(cur[7], t)
        end = t + self._iter_value("post")
        self.o_loop.append((self.m_iter + 1, cur[6], cur[0], cur[1], cur[2], end))
        self.m_iter += 1
        if cur[5]:
            self.m_state = "stopped"
            self.m_end = end
            return
        self.m_state = "between"
        self.push(end, E_MPOLL)

    def _stop(self, t):
        """Every vCPU has ended at *t*: the runner stops the main loop (its
        notification comes the recorded delay later)."""
        self.stop_t = t + (self.ml.stop_delay if self.ml is not None else 0)
        if self.m_state == "poll":
            self._wake_at(self.stop_t, rm.WAKE_STOP, ("stop",))

    # -- the run ---------------------------------------------------------------------------

    def run(self):
        """Run every event; returns self."""
        for v in self.vcpus:
            v.since = v.st.start
            self._sched_prog(v, v.st.start)
        if self.ml is not None:
            self.push(self.ml.first["request"], E_MFIRST)
        heap = self.heap
        pop = heapq.heappop
        vcpus = self.vcpus
        # a bound on events, so that a model that cannot end fails instead
        # of growing without limit
        limit = MAX_EVENTS_PER_EXIT * max(1, len(vcpus) // max(1, self.n_src)) \
            * (len(self.m.exits) + 1000) + MIN_EVENTS
        count = 0
        while heap:
            count += 1
            if count > limit:
                raise ConfigError(f"the re-execution did not end after {limit:,} events "
                                  f"(at {t - self.m.start_ns:,} ns into the run): "
                                  "the model cannot represent this trace")
            t, _, kind, a, b = pop(heap)
            if kind == E_PROG:
                self._prog(vcpus[a], b, t)
            elif kind == E_FX:
                self._effect(a, b, t)
            elif kind == E_GRANT:
                self._grant(b, t)
            elif kind == E_RAISE:
                self._raise(a, b[0], t, b[1])
            elif kind == E_ISR:
                self._isr(vcpus[a], b, t)
            elif kind == E_IREQ:
                S, k, x = b
                v = vcpus[a]
                self.request(v.th, t, S.lat[k], S.d[k], S.cont[k], S.hold[k], self._v_acquired,
                             (v, S, k, x, S.cs[k]), S.tw[k])
            elif kind == E_ENTRY:
                v = vcpus[a]
                if b == v.ver:
                    self._enter(v, t)
            elif kind == E_MWAKE:
                self._m_wake(a, t)
            elif kind == E_MPOLL:
                self._m_poll(t)
            elif kind == E_MREQ:
                self._m_req(t)
            elif kind == E_MBH:
                self._m_bh(t)
            elif kind == E_AIOTAKE:
                self._aio_take(b, t)
            elif kind == E_AIODONE:
                self._aio_done(a, b, t)
            elif kind == E_EFD:
                self.aio_done.append(a)
                r = self.aio_reqs[a]
                self._fd_event(True, t, ("efd", r[0]) if r[1] < self.n_src else None)
            elif kind == E_MFIRST:
                self._m_first(t)
        return self


#: A waiter that waited this long for the BQL slept in the kernel (not
#: using a CPU) for the CPU-sharing estimate; shorter waits spin.
CPU_SLEEP_WAIT_NS = 2000

#: Fixed-point iterations of the CPU-sharing correction (:func:`run`).
CPU_ITERATIONS = 3


#: Tables whose rows the recorder's drain and writer handle (its CPU cost
#: per record is taken from the recording's ``stats.cpu``).
RECORD_TABLES = ("exits", "locks", "bh", "timers", "aio", "loop", "irqs")


def recorder_cost(model):
    """CPU ns the recorder (the drain thread and the writer's threads:
    ``meta.json stats.cpu``) spent per record of the recording, or 0.0 for
    a recording without that accounting (and for a replay's trace)."""
    meta = model.meta or {}
    if meta.get("replay"):
        return 0.0
    cpu = (meta.get("stats") or {}).get("cpu")
    tables = meta.get("tables")
    if not isinstance(cpu, dict) or not isinstance(tables, dict):
        return 0.0
    drain = ((cpu.get("threads") or {}).get("drain") or {}).get("cpu_ns")
    other = cpu.get("other_cpu_ns")
    n = sum(v for k, v in tables.items() if k in RECORD_TABLES and isinstance(v, int) and v > 0)
    if not n or not all(isinstance(x, (int, float)) and x >= 0 for x in (drain, other)):
        return 0.0
    return (drain + other) / n


def _records(eng):
    return (len(eng.ex_row) + len(eng.lk_req) + len(eng.o_loop) + len(eng.o_timers) + len(eng.o_bh)
            + len(eng.o_irqs) + len(eng.aio_reqs))


def cpu_stretch(eng, ncpu):
    """How much the run's threads were slowed by sharing *ncpu* CPUs.

    A thread is busy (wants a CPU) from its start to its end except while
    it sleeps: a vCPU halted until an interrupt, a waiter that slept on the
    BQL (waits over :data:`CPU_SLEEP_WAIT_NS`), the main loop in poll, an
    AIO worker without a request.  The recorder's own threads add a steady
    load of L CPUs: its CPU time per record in the recording
    (:func:`recorder_cost`) times the run's records, over the run's span.
    With n(t) threads busy and the CPUs shared equally, each runs at
    min(1, ncpu / (n(t) + L)); the result is the busy time over the CPU
    time it got: integral of n over integral of n * min(1, ncpu / (n + L)),
    1.0 when the threads never outnumbered the CPUs.
    """
    ts, ds = [], []

    def span(a, b):
        if b is None or b <= a:
            return
        ts.extend((a, b))
        ds.extend((1, -1))

    for v in eng.vcpus:
        end = v.done_t if v.done_t is not None else (eng.m_end or v.until)
        span(v.st.start, end if end < INF else None)
    if eng.ml is not None and eng.m_end is not None:
        span(eng.ml.first["request"], eng.m_end)
        for row in eng.o_loop:                  # asleep in poll
            if row[3] > row[2]:
                ts.extend((row[2], row[3]))
                ds.extend((-1, 1))
    for th, a, b in eng.sleeps:
        ts.extend((a, b))
        ds.extend((-1, 1))
    req = np.asarray(eng.lk_req, np.int64)
    acq = np.asarray(eng.lk_acq, np.int64)
    slept = (acq - req) > CPU_SLEEP_WAIT_NS
    ts.extend(req[slept].tolist())
    ds.extend([-1] * int(slept.sum()))
    ts.extend(acq[slept].tolist())
    ds.extend([1] * int(slept.sum()))
    for r in eng.aio_reqs:                      # a worker serving a request
        if r[4] > r[3] > 0:
            ts.extend((r[3], r[4]))
            ds.extend((1, -1))
    if not ts:
        return 1.0
    t = np.asarray(ts, np.int64)
    d = np.asarray(ds, np.int64)
    o = np.argsort(t, kind="stable")
    t, d = t[o], d[o]
    n = np.maximum(np.cumsum(d)[:-1], 0).astype(np.float64)
    dt = np.diff(t).astype(np.float64)
    span = float(t[-1] - t[0])
    load = recorder_cost(eng.m) * _records(eng) / span if span > 0 else 0.0
    busy = float((n * dt).sum())
    got = float((n * np.minimum(1.0, ncpu / np.maximum(n + load, 1e-9)) * dt).sum())
    return busy / got if got > 0 else 1.0


def keep_recorded_stretch(model, eng):
    """Keep the CPU stretch of *eng*, the unchanged re-execution of *model*
    (barging lock), for the recording host's CPUs: what :func:`run` compares
    a changed run's with, so that it need not re-execute unchanged again."""
    ncpu = host_cpus(model)
    if ncpu and eng.policy == "barging" and eng.ch.empty() and eng.seed is None:
        model.__dict__.setdefault("_cpu_stretch", {})[eng.policy, ncpu] = cpu_stretch(eng, ncpu)


def host_cpus(model):
    """CPUs of the host the recording was made on (meta.json ``host.cpus``), or None."""
    n = ((model.meta or {}).get("host") or {}).get("cpus")
    return int(n) if n else None


def run(model, changes=None, policy="barging", seed=None, cpus=None):
    """Re-execute *model* under *changes*.

    Parameters
    ----------
    model : reexec_model.Model
    changes : Changes, optional
    policy : {"barging", "fifo"}
        How the BQL picks its next owner.
    seed : int, optional
        A situation the recording did not have (a newly contended
        acquisition, a wake-up of another kind) takes the median of the
        recorded ones of that kind; with a seed, a draw among them.
    cpus : int, optional
        Host CPUs the threads share (default: the recording host's, from
        ``meta.json``; 0: as many as threads, no CPU sharing).  A change
        that makes the threads busier than in the recording (more vCPUs, a
        lock they no longer sleep on, a busy-wait added) slows every busy
        thread by the extra sharing, estimated by :func:`cpu_stretch`: the
        run is repeated with the recorded busy times stretched by
        ``stretch(predicted) / stretch(recorded)`` until that settles.

    Returns
    -------
    Engine
        Holding the predicted records (``cpu``: the stretch applied);
        :func:`tables` turns them into a trace's tables.
    """
    changes = changes or Changes()
    if changes.empty():
        return Engine(model, changes, policy, seed).run()
    ncpu = host_cpus(model) if cpus is None else int(cpus)
    eng = Engine(model, changes, policy, seed).run()
    if not ncpu:
        return eng
    cache = model.__dict__.setdefault("_cpu_stretch", {})
    if (policy, ncpu) not in cache:
        # the recording's own: its unchanged re-execution is the recording
        cache[policy, ncpu] = cpu_stretch(Engine(model, Changes(), policy, None).run(), ncpu)
    base = cache[policy, ncpu]
    f = 1.0
    for _ in range(CPU_ITERATIONS):
        nf = cpu_stretch(eng, ncpu) / base
        if abs(nf - f) < 0.005:
            break
        f = nf
        eng = Engine(model, changes, policy, seed, cpu=f).run()
    return eng


# --------------------------------------------------------------------------
# the predicted run as trace tables

def _dict_array(pa, values, names):
    """Dictionary array of *names* indexed by int *values*."""
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(values, np.int32), pa.int32()),
                                          pa.array(list(names), pa.string()))


def _strings_dict(pa, values, default):
    if not len(values):
        return _dict_array(pa, [], [default])
    names, idx = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return _dict_array(pa, idx, names.tolist())


def _col(pa, rows, i, dtype):
    return pa.array(np.array([r[i] for r in rows], dtype=dtype))


def tables(eng):
    """The predicted records of a finished :class:`Engine` as Arrow tables
    of the trace format (every table of ``kvmscope.traceformat.TABLES``),
    rows in the order a recording writes them: exits by exit time, locks by
    release, the others by their last timestamp."""
    import pyarrow as pa
    from .schema import SCHEMAS
    m = eng.m
    nv = len(eng.vcpus)
    out = {}
    rec_tid = dict(zip(m.threads["name"].tolist(), m.threads["tid"].tolist()))
    names = ([v.name for v in eng.vcpus] + ["main"] + [f"aio{k}" for k in range(eng.nworkers)]
             + ["drain"])
    roles = ["vcpu"] * nv + ["main"] + ["aio"] * eng.nworkers + ["drain"]
    out["threads"] = pa.Table.from_arrays([
        pa.array(np.arange(len(names), dtype=np.int16)),
        pa.array([int(rec_tid.get(n, 0)) for n in names], pa.int32()),
        pa.array(names, pa.string()), pa.array(roles, pa.string())], schema=SCHEMAS["threads"])

    # exits: the recorded rows' static columns with the predicted times
    rows = np.asarray(eng.ex_row, dtype=np.int64)
    vc = np.asarray(eng.ex_vc, dtype=np.int64)
    xt = np.asarray(eng.ex_x, dtype=np.int64)
    en = np.asarray(eng.ex_e, dtype=np.int64)
    order = np.argsort(xt, kind="stable")
    rows, vc, xt, en = rows[order], vc[order], xt[order], en[order]
    base = m.arrow_exits.take(pa.array(rows, pa.int64()))
    data = base.column("data").to_numpy().astype(np.uint64)
    if eng.ch.timer_period_us and len(rows):
        hit = np.isin(rows, m.period_write_rows) & (data != 0)
        data = np.where(hit, np.uint64(eng.ch.timer_period_us), data)
    cols = {f.name: base.column(f.name) for f in SCHEMAS["exits"]}
    cols["thread"] = pa.array(vc.astype(np.int16))
    cols["vcpu"] = pa.array(vc.astype(np.int16))
    cols["data"] = pa.array(data, pa.uint64())
    cols["exit_ns"] = pa.array(xt)
    cols["entry_ns"] = pa.array(en, mask=en < 0)
    out["exits"] = pa.Table.from_arrays([cols[f.name] for f in SCHEMAS["exits"]],
                                        schema=SCHEMAS["exits"])

    if None in eng.lk_rel:
        raise RuntimeError("re-execution ended with the BQL held")
    rel = np.asarray(eng.lk_rel, dtype=np.int64)
    order = np.argsort(rel, kind="stable")

    def lcol(values, dtype):
        return np.asarray(values, dtype=dtype)[order]
    out["locks"] = pa.Table.from_arrays([
        pa.array(lcol(eng.lk_th, np.int16)), _dict_array(pa, np.zeros(len(rel)), ["bql"]),
        _dict_array(pa, lcol(eng.lk_cs, np.int64), m.callsites),
        pa.array(lcol(eng.lk_req, np.int64)), pa.array(lcol(eng.lk_acq, np.int64)),
        pa.array(rel[order]), pa.array(lcol(eng.lk_prev, np.int16)),
        pa.array(lcol(eng.lk_cont, bool))], schema=SCHEMAS["locks"])

    main = eng.main_th
    bh = sorted(eng.o_bh, key=lambda r: r[4])
    out["bh"] = pa.Table.from_arrays([
        pa.array(np.full(len(bh), main, np.int16)), _col(pa, bh, 0, np.int32),
        _dict_array(pa, [r[0] for r in bh], m.bh["names"] or [""]),
        _col(pa, bh, 1, np.int16), _col(pa, bh, 2, np.int64), _col(pa, bh, 3, np.int64),
        _col(pa, bh, 4, np.int64), pa.array(np.zeros(len(bh), bool))], schema=SCHEMAS["bh"])

    tm = sorted(eng.o_timers, key=lambda r: r[4])
    out["timers"] = pa.Table.from_arrays([
        pa.array(np.full(len(tm), main, np.int16)), _col(pa, tm, 0, np.int32),
        _dict_array(pa, [r[0] for r in tm], [t[0] for t in eng.timers] or [""]),
        _col(pa, tm, 1, np.int64), _col(pa, tm, 2, np.int64), _col(pa, tm, 3, np.int64),
        _col(pa, tm, 4, np.int64)], schema=SCHEMAS["timers"])

    done = sorted(((q, r) for q, r in enumerate(eng.aio_reqs) if r[5]), key=lambda x: x[1][5])
    A = m.aio
    spec = [r[0] for _, r in done]
    reqs = [r for _, r in done]
    out["aio"] = pa.Table.from_arrays([
        pa.array(np.array([eng.aio_th[r[6]] for r in reqs], np.int16)),
        pa.array(np.array([q for q, _ in done], np.int64)),
        _strings_dict(pa, [A["op"][s] for s in spec], "read"),
        pa.array(np.array([A["offset"][s] for s in spec], np.int64)),
        pa.array(np.array([A["length"][s] for s in spec], np.int64)),
        pa.array(np.array([A["result"][s] for s in spec], np.int64)),
        _col(pa, reqs, 1, np.int16), _col(pa, reqs, 2, np.int64), _col(pa, reqs, 3, np.int64),
        _col(pa, reqs, 4, np.int64), _col(pa, reqs, 5, np.int64)], schema=SCHEMAS["aio"])

    lp = eng.o_loop
    out["loop"] = pa.Table.from_arrays([
        pa.array(np.full(len(lp), main, np.int16)), _col(pa, lp, 0, np.int64),
        _col(pa, lp, 1, np.int64), _col(pa, lp, 2, np.int64), _col(pa, lp, 3, np.int64),
        _col(pa, lp, 4, np.int32), _col(pa, lp, 5, np.int64)], schema=SCHEMAS["loop"])

    ir = sorted(eng.o_irqs, key=lambda r: r[5])
    out["irqs"] = pa.Table.from_arrays([
        _col(pa, ir, 0, np.int16), _strings_dict(pa, [r[1] for r in ir], "raise"),
        _col(pa, ir, 2, np.int32), _col(pa, ir, 3, np.int32), _col(pa, ir, 4, np.int16),
        _col(pa, ir, 5, np.int64)], schema=SCHEMAS["irqs"])
    out["losses"] = SCHEMAS["losses"].empty_table()
    return out


# --------------------------------------------------------------------------
# from a trace to the predicted trace

# --------------------------------------------------------------------------
# the plan: what a re-execution runs, for another executor of the schedules

#: One vCPU of a :class:`Plan`: its name, its ``stream`` (the recorded
#: specs with the changes applied: ``prog``, ``isr`` per vector, ``gate``,
#: ``gap``, ``gvec``, ``gcnt``, ``start``, and ``src``, the recorded vCPU's
#: stream it copies) and its ``timers`` (recorded timer index -> index into
#: ``Plan.timers``).
PlanVcpu = collections.namedtuple("PlanVcpu", "name stream timers")

#: One timer of a :class:`Plan`: its name, the vCPU that arms it, its
#: interrupt vector (None: it raises none), the recorded timer it is and
#: its period in ns (None: one-shot).
PlanTimer = collections.namedtuple("PlanTimer", "name vcpu vector recorded period")


class Plan:
    """What a re-execution of a model under changes runs, set up but not
    run: the changes checked and applied, the streams of extra vCPUs
    copied, one timer per (vCPU, recorded timer it arms).  The model engine
    runs it itself; ``kvmscope replay --engine core`` runs it on real
    threads through the compiled core.

    Attributes
    ----------
    vcpus : list of PlanVcpu
    timers : list of PlanTimer
    workers : int
        AIO worker threads.
    """

    def __init__(self, eng):
        self.vcpus = [PlanVcpu(v.name, v.st, dict(v.timers)) for v in eng.vcpus]
        self.timers = [PlanTimer(t[0], t[1], t[2], t[3], t[7]) for t in eng.timers]
        self.workers = int(eng.nworkers)
        self._lines = dict(eng._lines)

    def irq_line(self, vcpu, vector):
        """The interrupt line that raises *vector* for *vcpu* (-1: none
        recorded)."""
        return self._lines.get((vcpu, vector), -1)


def plan(model, changes=None):
    """The :class:`Plan` of re-executing *model* under *changes*
    (:class:`Changes`; raises ConfigError for one the model cannot take)."""
    return Plan(Engine(model, changes or Changes()))


def model_of(trace):
    """The re-execution model of *trace* (built once, kept with the trace)."""
    model = trace._cache.get("reexec_model")
    if model is None:
        model = rm.build(trace)
        trace._cache["reexec_model"] = model
    return model


def predicted_meta(eng, trace, tables):
    """``meta.json`` of a predicted trace: the recording's, with what the
    re-execution changed, ``state`` complete and a ``replay`` object saying
    of what trace, with which changes, engine, policy and seed."""
    from .. import __version__
    rec = trace.meta
    # written as Arrow streams whatever the recording's file layout
    meta = {k: v for k, v in rec.items() if k not in ("stats", "failure", "messages", "layout")}
    meta["kvmscope_version"] = __version__
    meta["state"] = "complete"
    meta["stop_reason"] = "replay"
    ch = eng.ch
    config = dict(rec.get("config") or {})
    config["vcpus"] = len(eng.vcpus)
    config["aio_threads"] = eng.nworkers
    if ch.timer_period_us:
        config["timer_period_us"] = int(ch.timer_period_us)
    if ch.add_hold:
        hold = dict(config.get("inject_hold") or {})
        for k, v in ch.add_hold.items():
            hold[k] = float(hold.get(k, 0)) + float(v)
        config["inject_hold"] = hold
    if ch.lockless:
        config["lockless"] = sorted(set(config.get("lockless") or []) | set(ch.lockless))
    config["trace"] = True
    meta["config"] = config
    meta["timers"] = [t[0] for t in eng.timers]
    end = eng.m_end if eng.m_end is not None else max(max(eng.ex_e), max(eng.ex_x))
    tail = eng.ml.end_tail if eng.ml is not None else 0
    meta["start_ns"] = int(trace.start_ns)
    meta["end_ns"] = int(end + tail)
    names = tables["threads"].column("name").to_pylist()
    ids = tables["threads"].column("thread").to_pylist()
    written = {n: 0 for n in names}
    by_id = dict(zip(ids, names))
    for name, t in tables.items():
        if name in ("threads", "losses") or not t.num_rows:
            continue
        # the main loop writes the AIO rows, as a recording does
        col = (np.full(t.num_rows, eng.main_th) if name == "aio"
               else t.column("thread").to_numpy())
        u, c = np.unique(col, return_counts=True)
        for i, k in zip(u.tolist(), c.tolist()):       # per thread
            written[by_id.get(i, f"thread {i}")] = written.get(by_id.get(i), 0) + k
    meta["records"] = {n: {"written": int(w), "lost": 0, "stalls": 0} for n, w in written.items()}
    meta["tables"] = {n: t.num_rows for n, t in tables.items() if n != "threads"}
    meta["replay"] = {
        "of": trace.path, "engine": "model", "policy": eng.policy, "seed": eng.seed,
        "changes": ch.as_dict(), "describe": ch.describe() or ["no change"],
        "cpu_stretch": round(eng.cpu, 4),
        "recorder_ns_per_record": round(recorder_cost(eng.m), 1),
        "sleep_wake": {"source": eng.m.sleep_source, "n": eng.m.lock["sleep"].n,
                       "median_ns": eng.m.lock["sleep"].median},
        "recorded": {"start_ns": int(trace.start_ns), "end_ns": int(trace.end_ns),
                     "guest": (rec.get("config") or {}).get("guest"),
                     "kvmscope_version": rec.get("kvmscope_version")},
    }
    return meta


def reexecute_tables(trace, policy="barging", seed=None, cpus=None, **changes):
    """Re-execute *trace* under *changes*; returns ``(tables, meta)`` of the
    predicted trace (see :func:`kvmscope.analysis.whatif.reexecute`)."""
    ch = changes.pop("changes", None) or Changes.from_kwargs(**changes)
    eng = run(model_of(trace), ch, policy, seed, cpus=cpus)
    tabs = tables(eng)
    return tabs, predicted_meta(eng, trace, tabs)
