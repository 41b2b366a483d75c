"""Sequence re-execution: the fallback model for a trace whose events have no
causal model, such as one imported from a QEMU log (docs/whatif.md).

Per thread that took the BQL, the recorded sequence of (time outside the
BQL since its last release, call site, hold), run again through a lock that
keeps the recording's precedence and barges as glibc's mutex does
(:func:`run`; the engine's latencies where the recording has none).
Everything else the thread recorded
(its exits, the other mutexes it took, the AIO requests it submitted, any
other row) rides along on the thread's own timeline: shifted by however much
its acquisitions moved, stretched inside a critical section whose hold was
changed.  An AIO request keeps its recorded submit-to-complete times,
shifted with its submitter.

What it leaves out: every causal link between threads.  A thread keeps its
recorded timing outside the BQL, so a longer hold delays only the threads
that queue behind it (no interrupt, completion or wake-up another thread
would have delivered later), and other mutexes keep their recorded waits
(a hold moved onto another's waits for it: they stay mutually exclusive).
Only hold changes apply: no device map to take off the lock, no vCPU
program, AIO pool or timer device to run again.

This module is also the front door of re-execution (:func:`reexecute_any`):
which model a trace takes (:func:`model_kind`), and which part of a lossy or
killed recording its data covers (:func:`covered`).
"""

import heapq
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from . import reexec_engine as _engine
from . import reexec_model as rm
from . import replay as _replay
from .load import from_tables
from ..traceformat import SPANS, TABLES

#: What the sequence model leaves out (``meta.json`` ``replay.left_out``).
LEFT_OUT = ("no causal links between threads: each thread keeps its recorded time outside "
            "the BQL, so a longer hold delays only the threads queueing behind it; other "
            "mutexes keep their recorded waits (only kept mutually exclusive); exits, AIO "
            "requests and other rows ride along on their thread's timeline")

#: Changes the sequence model refuses, with the reason (one line each).
REFUSED = {
    "lockless": "--lockless needs the device map of a kvmscope recording; {why}",
    "vcpus": "--vcpus needs the guests' exit streams of a kvmscope recording; {why}",
    "aio_threads": "--aio-threads needs the AIO pool of a kvmscope recording; {why}",
    "timer_period_us": "--timer-period-us needs the timer device of a kvmscope recording; {why}",
}

#: Fewer recorded hand-offs of a kind than this: its latency is a default.
MIN_SAMPLES = 20


def why_sequence(trace):
    """Why *trace* has no causal model (a phrase), or None when it has one."""
    source = (trace.meta.get("config") or {}).get("source")
    if source:
        what = {"qemu-log": "QEMU log"}.get(source, source)
        return f"this trace was imported from a {what}, which has no causal links"
    return None


class SeqModel:
    """The recorded BQL sequence of each thread; built by :func:`build`.

    Attributes
    ----------
    callsites : list of str
        Call sites of the BQL acquisitions (``cs`` ids index it).
    devices : dict
        Empty: no device map (``--lockless`` is refused).
    rows : ndarray
        Row of the recorded ``locks`` table per BQL acquisition, in
        acquisition order.
    cs, thread, req, acq, rel, lat, d, cont, hold, tw : ndarray
        Per acquisition (same order): call-site id, thread, the recorded
        times and the lock fields of :func:`reexec_model._acq_fields`.
    seq : dict of int to ndarray
        Per thread, its acquisitions (indices into the arrays above) in order.
    lock : dict
        ``spin``, ``sleep``, ``free`` :class:`~kvmscope.analysis.reexec_model.Samples`.
    why : str
        Why this trace has no causal model (or "chosen").
    """


def build(trace, why=None):
    """Build the sequence model of *trace*.

    Parameters
    ----------
    trace : Trace
        A whole trace (records lost or a run cut short are cut to the
        covered part first: :func:`covered`).
    why : str, optional
        The reason the fallback is used, for the refusals of other changes.

    Returns
    -------
    SeqModel

    Raises
    ------
    ConfigError
        The trace has no BQL acquisition.
    """
    lk = trace.locks
    is_bql = (lk["lock"].astype(str) == "bql").to_numpy() if len(lk) else np.zeros(0, bool)
    rows = np.flatnonzero(is_bql)
    if not len(rows):
        raise ConfigError("the trace has no BQL acquisitions: nothing to re-execute")
    bql = lk.iloc[rows].reset_index(drop=True)
    order = np.lexsort((bql["request_ns"].to_numpy(), bql["acquired_ns"].to_numpy()))
    bql = bql.iloc[order].reset_index(drop=True)
    rows = rows[order]
    m = SeqModel()
    m.why = why or "chosen"
    m.meta = trace.meta
    m.rows = rows
    names = [str(c) for c in bql["callsite"].astype(str)]
    m.callsites = list(dict.fromkeys(names))
    cs_id = {c: i for i, c in enumerate(m.callsites)}
    m.cs = np.array([cs_id[c] for c in names], dtype=np.int64)
    m.devices = {}
    m.thread = bql["thread"].to_numpy().astype(np.int64)
    m.req = bql["request_ns"].to_numpy().astype(np.int64)
    m.acq = bql["acquired_ns"].to_numpy().astype(np.int64)
    m.rel = bql["released_ns"].to_numpy().astype(np.int64)
    prel, _ = rm._lock_order_info(bql)
    m.lat, m.d, m.cont, m.hold, m.tw = rm._acq_fields(bql, np.arange(len(bql)), prel)
    m.cont = np.asarray(m.cont, bool)
    c = m.cont & (m.d < 0)
    before = -m.d
    spin = m.lat[c & (before <= rm.SLEEP_THRESHOLD_NS)]
    sleep = m.lat[c & (before > rm.SLEEP_THRESHOLD_NS)]
    # a handful of waits (one 4 ms wait behind a long hold) is no hand-off
    # latency to give every new waiter: then the engine's defaults
    m.lock = {"spin": rm.Samples(spin if len(spin) >= MIN_SAMPLES else [], 400),
              "sleep": rm.Samples(sleep if len(sleep) >= MIN_SAMPLES else [], 8000),
              "free": rm.Samples(m.lat[~m.cont], 40)}
    m.seq = {}
    for th in np.unique(m.thread).tolist():          # per thread, in acquisition order
        m.seq[int(th)] = np.flatnonzero(m.thread == th)
    return m


def check(changes, model):
    """ConfigError (one line) for a change the sequence model cannot take."""
    for name in changes.NAMES:
        if name not in ("scale_hold", "add_hold") and getattr(changes, name, None):
            text = REFUSED.get(name, "--" + name.replace("_", "-")
                               + " needs the causal model of a kvmscope recording; {why}")
            raise ConfigError(text.format(why=model.why))
    changes.check(model)


def run(model, changes, policy="barging", seed=None):
    """Run the sequences through the lock.

    The lock keeps the recording's precedence: a free lock goes to whoever
    tries first, after its recorded cost of taking a free lock; at a
    release, the waiter the recording served first gets it, its recorded
    hand-off latency after the release; a thread the recording served
    before that waiter, trying in between, barges in ahead of it (as a
    glibc mutex lets it).  ``fifo``: the waiter that asked first, no
    barging.  Ties in time go in recorded acquisition order (an imported
    log's timestamps are microseconds).  A situation the recording did not
    have takes the median of the recorded figures of its kind (a seed: a
    draw among them).

    Returns
    -------
    tuple
        Per acquisition (the model's order): predicted request, acquisition
        and release times, previous owner (thread), contended flag, and
        ``(scale, add)``, the hold changes applied.
    """
    import random
    if policy not in _engine.POLICIES:
        raise ConfigError(f"unknown lock policy {policy!r}; use one of "
                          f"{', '.join(_engine.POLICIES)}")
    barging = policy == "barging"
    rng = random.Random(int(seed)) if seed is not None else None
    tick = int((model.meta.get("clock") or {}).get("resolution_ns") or 1)
    queue_ns, sleep_ns = max(rm.QUEUE_NS, tick), max(rm.SLEEP_THRESHOLD_NS, tick)

    def draw(s):
        return s.median if rng is None else s.draw(rng)

    n = len(model.req)
    scale = np.ones(n)
    add = np.zeros(n, np.int64)
    for cs, f in changes.scale_hold.items():
        scale[model.cs == model.callsites.index(cs)] = float(f)
    for cs, a in changes.add_hold.items():
        add[model.cs == model.callsites.index(cs)] = int(a)
    hold = (np.round(model.hold * scale).astype(np.int64) + add).tolist()
    # recorded figures: cost of a free lock after the try, hand-off after
    # the previous acquisition's release
    req_l, acq_l, rel_l = model.req.tolist(), model.acq.tolist(), model.rel.tolist()
    tw = model.tw.tolist()          # the try came this long after the request
    free = (model.acq - model.req - model.tw).tolist()
    prel = np.concatenate([model.req[:1], model.rel[:-1]])
    hand = (model.acq - prel).tolist()
    prel_l = prel.tolist()
    cont_l = model.cont.tolist()
    thread = model.thread.tolist()
    out_req = [0] * n
    out_acq = [0] * n
    out_rel = [0] * n
    out_prev = [-1] * n
    out_cont = [False] * n
    heap = []
    # events (time, order, index, kind, generation): at one time a release
    # first, then tries and grants in recorded acquisition order
    REL, TRY, GRANT = 0, 1, 2
    pos = {}
    gap = {}
    for th, idx in model.seq.items():       # time outside the BQL before each request
        idx = idx.tolist()
        gap[th] = [0] + [req_l[b] - rel_l[a] for a, b in zip(idx[:-1], idx[1:])]
        pos[th] = 0
        heapq.heappush(heap, (req_l[idx[0]] + tw[idx[0]], 1, idx[0], TRY, 0))
    st = {"owner": -1, "last": -1, "last_rel": None, "reserved": -1, "gen": 0, "tie": False}
    waiters = []            # (key, index, try time)

    def take(k, acq, queued):
        last = st["last"]
        out_acq[k] = acq
        out_rel[k] = acq + hold[k]
        out_prev[k] = thread[last] if last >= 0 else -1
        recorded = (last == k - 1 and st["last_rel"] is not None
                    and acq - st["last_rel"] == hand[k])
        out_cont[k] = cont_l[k] if recorded else queued
        st["owner"], st["last"], st["reserved"] = k, k, -1
        heapq.heappush(heap, (out_rel[k], 0, k, REL, 0))

    def free_at(k, t):
        """Acquisition time of *k* trying at *t* on a lock nobody holds."""
        r = st["last_rel"]
        if not cont_l[k]:
            return t + free[k]
        if r is not None and r + hand[k] >= t:
            return r + hand[k]
        return t + draw(model.lock["free"])

    def grant_next(t):
        if not waiters:
            return
        _, k, tried = min(waiters)
        r = st["last_rel"]
        last = st["last"]
        if 0 <= last < k:
            # the recorded time from this release to the waiter's
            # acquisition (threads the recording served in between barge
            # in before it), at most the wait it recorded after its try
            g = max(r, min(r + (acq_l[k] - rel_l[last]), tried + free[k]))
            st["tie"] = False
        else:
            # another situation than the recorded one: a waiter that asked
            # long enough before the release slept (engine's thresholds, at
            # least a clock tick: closer, the recording shows a tie)
            before = r - tried
            slept = before > sleep_ns
            if cont_l[k] and slept == (prel_l[k] - req_l[k] - tw[k] > sleep_ns):
                g = r + hand[k]
            elif before <= queue_ns:
                g = r + draw(model.lock["free"])
            else:
                g = r + draw(model.lock["sleep" if slept else "spin"])
            st["tie"] = before <= tick
        st["reserved"] = k
        st["gen"] += 1
        heapq.heappush(heap, (max(g, t), 1, k, GRANT, st["gen"]))

    while heap:
        t, _, k, kind, gen = heapq.heappop(heap)
        if kind == REL:
            st["owner"] = -1
            st["last_rel"] = t
            th = thread[k]
            p = pos[th] = pos[th] + 1
            idx = model.seq[th]
            if p < len(idx):
                j = int(idx[p])
                heapq.heappush(heap, (t + gap[th][p] + tw[j], 1, j, TRY, 0))
            grant_next(t)
        elif kind == TRY:
            if gen == 0:
                out_req[k] = t - tw[k]
            res = st["reserved"]
            own = st["owner"]
            first = None
            if own < 0 and res < 0:
                # a thread the recording served first trying about as soon
                # (within a clock tick, at least QUEUE_NS) still goes first
                first = min((e for e in heap if e[3] == TRY and e[2] < k
                             and e[0] <= t + queue_ns), default=None)
            if first is not None:
                heapq.heappush(heap, (first[0], 1, k, TRY, 1))
            elif (own >= 0 and tick > 1 and not cont_l[k] and res < 0 and not waiters
                    and out_rel[own] - t < tick):
                # within a clock tick of the release: the recording would
                # show a tie, which it orders release first
                heapq.heappush(heap, (out_rel[own], 1, k, TRY, 1))
            elif own < 0 and (res < 0 or (barging and k < res)):
                if res >= 0:
                    st["gen"] += 1                  # the woken waiter sleeps again
                    st["reserved"] = -1
                take(k, free_at(k, t), False)
            else:
                waiters.append((k if barging else t, k, t))
        elif gen == st["gen"] and st["reserved"] == k:      # a woken waiter runs
            waiters[:] = [w for w in waiters if w[1] != k]
            take(k, t, not st["tie"])
    if waiters or any(pos[th] < len(idx) for th, idx in model.seq.items()):
        raise RuntimeError("sequence re-execution ended with acquisitions not served")
    return (np.asarray(out_req, np.int64), np.asarray(out_acq, np.int64),
            np.asarray(out_rel, np.int64), np.asarray(out_prev, np.int64),
            np.asarray(out_cont, bool), (scale, add))


class _TimeMap:
    """Per thread, recorded time -> predicted time: shifted with the
    thread's acquisitions, scaled inside a changed critical section."""

    def __init__(self, model, req, acq, rel, scale, add):
        self.maps = {}
        for th, idx in model.seq.items():
            k = len(idx)
            bp = np.empty(3 * k, np.int64)      # request, acquisition, release of each
            bp[0::3], bp[1::3], bp[2::3] = model.req[idx], model.acq[idx], model.rel[idx]
            new = np.empty(3 * k, np.int64)
            new[0::3], new[1::3], new[2::3] = req[idx], acq[idx], rel[idx]
            f = np.ones(3 * k)
            f[1::3] = scale[idx]
            off = np.zeros(3 * k, np.int64)
            off[1::3] = add[idx]
            cap = np.full(3 * k, np.iinfo(np.int64).max)
            cap[0::3] = acq[idx]            # waiting: not past the acquisition
            self.maps[th] = (bp, new, f, off, cap)

    def __call__(self, thread, ts, side="right"):
        """Predicted times of recorded times *ts* on *thread* (arrays);
        *side* ``left`` puts a time equal to a boundary before it."""
        ts = np.asarray(ts, dtype=np.int64)
        thread = np.asarray(thread, dtype=np.int64)
        out = ts.copy()
        for th, (bp, new, f, off, cap) in self.maps.items():
            sel = np.flatnonzero(thread == th)
            if not len(sel):
                continue
            t = ts[sel]
            i = np.searchsorted(bp, t, side=side) - 1
            ok = i >= 0
            j = np.maximum(i, 0)
            v = new[j] + off[j] + np.round((t - bp[j]) * f[j]).astype(np.int64)
            v = np.minimum(v, cap[j])
            out[sel] = np.where(ok, v, t)
        return out


def _map_col(table, name, thread, tmap, side="right"):
    col = table.column(name)
    mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
    vals = col.fill_null(0).to_numpy() if col.null_count else col.to_numpy()
    out = tmap(thread, vals, side)
    return pa.array(out, pa.int64(), mask=mask)


def tables(trace, model, result):
    """The predicted trace's tables: the recording's rows with their times
    moved (the BQL's from the lock, the others along their thread)."""
    from .schema import SCHEMAS
    req, acq, rel, prev, cont, (scale, add) = result
    tmap = _TimeMap(model, req, acq, rel, scale, add)
    out = {"threads": trace.arrow("threads")}
    # locks: the BQL as re-executed, other mutexes along their thread
    lt = trace.arrow("locks")
    th = lt.column("thread").to_numpy().astype(np.int64)
    r0 = lt.column("request_ns").to_numpy()
    a0 = lt.column("acquired_ns").to_numpy()
    nr = tmap(th, r0, "right")
    na = np.maximum(tmap(th, a0, "right"), nr)
    nl = np.maximum(tmap(th, lt.column("released_ns").to_numpy(), "right"), na)
    prev_col = lt.column("prev_owner").to_numpy().astype(np.int64)
    cont_col = lt.column("contended").to_numpy(zero_copy_only=False).astype(bool)
    nr[model.rows], na[model.rows], nl[model.rows] = req, acq, rel
    prev_col[model.rows] = prev
    cont_col[model.rows] = cont
    # other mutexes: the previous owner in their predicted order
    codes = trace.locks["lock"].cat.codes.to_numpy()
    other = np.ones(lt.num_rows, bool)
    other[model.rows] = False
    o = np.flatnonzero(other)
    if len(o):
        # a hold moved into another's waits for its release (a mutex); the
        # thread asks for its next one only once it has it
        last, got = {}, {}
        for i in o[np.argsort(na[o], kind="stable")].tolist():
            c, t_ = codes[i], th[i]
            d = max(0, got.get(t_, nr[i]) - nr[i])
            r = last.get(c)
            if r is not None and na[i] + d < nl[r]:
                d = nl[r] - na[i]
                cont_col[i] = True
            if d:
                nr[i] = max(nr[i], got.get(t_, nr[i]))
                na[i] += d
                nl[i] += d
            got[t_] = na[i]
            last[c] = i if r is None or nl[i] >= nl[r] else r
        so = o[np.lexsort((na[o], codes[o]))]
        same = np.zeros(len(so), bool)
        same[1:] = codes[so[1:]] == codes[so[:-1]]
        p = np.full(len(so), -1, np.int64)
        p[1:] = th[so[:-1]]
        prev_col[so] = np.where(same, p, -1)
    order = np.argsort(nl, kind="stable")
    cols = {f.name: lt.column(f.name) for f in SCHEMAS["locks"]}
    cols.update(request_ns=pa.array(nr), acquired_ns=pa.array(na), released_ns=pa.array(nl),
                prev_owner=pa.array(prev_col.astype(np.int16)), contended=pa.array(cont_col))
    out["locks"] = pa.Table.from_arrays([cols[f.name] for f in SCHEMAS["locks"]],
                                        schema=SCHEMAS["locks"]).take(pa.array(order))
    # aio: the request keeps its recorded latencies, shifted with its submitter
    at = trace.arrow("aio")
    if at.num_rows:
        s = at.column("submit_ns").to_numpy()
        delta = tmap(at.column("submit_thread").to_numpy().astype(np.int64), s, "right") - s
        cols = {f.name: at.column(f.name) for f in SCHEMAS["aio"]}
        for c in ("submit_ns", "start_ns", "done_ns", "complete_ns"):
            cols[c] = pa.array(at.column(c).to_numpy() + delta)
        tab = pa.Table.from_arrays([cols[f.name] for f in SCHEMAS["aio"]], schema=SCHEMAS["aio"])
        out["aio"] = tab.take(pa.array(np.argsort(tab.column("complete_ns").to_numpy(),
                                                  kind="stable")))
    else:
        out["aio"] = at
    # every other table: its times along the row's thread
    for name in ("exits", "bh", "timers", "loop", "irqs"):
        t = trace.arrow(name)
        if not t.num_rows:
            out[name] = t
            continue
        th = t.column("thread").to_numpy().astype(np.int64)
        cols = {f.name: t.column(f.name) for f in SCHEMAS[name]}
        times = [f.name for f in SCHEMAS[name] if f.name.endswith("_ns")
                 and f.name != "timeout_ns"]
        first = SPANS[name][0]
        prevv = None
        for c in [first] + [c for c in times if c != first]:
            col = _map_col(t, c, th, tmap, "left" if c == first else "right")
            if prevv is not None and c != first:
                # a row's later times stay after its first
                v = np.maximum(col.fill_null(0).to_numpy(), prevv)
                col = pa.array(v, pa.int64(), mask=col.is_null().to_numpy(zero_copy_only=False)
                               if col.null_count else None)
            if c == first:
                prevv = col.to_numpy()
            cols[c] = col
        tab = pa.Table.from_arrays([cols[f.name] for f in SCHEMAS[name]], schema=SCHEMAS[name])
        key = tab.column(SPANS[name][0]).to_numpy()
        out[name] = tab.take(pa.array(np.argsort(key, kind="stable")))
    out["losses"] = SCHEMAS["losses"].empty_table()
    return out, tmap


def predicted_meta(trace, model, changes, policy, seed, tabs, tmap):
    """``meta.json`` of the predicted trace (as the engine's, with
    ``replay.model`` ``sequence`` and what it leaves out)."""
    from .. import __version__
    rec = trace.meta
    meta = {k: v for k, v in rec.items() if k not in ("stats", "failure", "messages")}
    meta["kvmscope_version"] = __version__
    meta["state"] = "complete"
    meta["stop_reason"] = "replay"
    config = dict(rec.get("config") or {})
    if changes.add_hold:
        hold = dict(config.get("inject_hold") or {})
        for k, v in changes.add_hold.items():
            hold[k] = float(hold.get(k, 0)) + float(v)
        config["inject_hold"] = hold
    meta["config"] = config
    ths = list(model.seq)
    start, end = int(trace.start_ns), int(trace.end_ns)
    meta["start_ns"] = start
    meta["end_ns"] = int(max([end] + tmap(ths, [end] * len(ths)).tolist()))
    names = dict(zip(tabs["threads"].column("thread").to_pylist(),
                     tabs["threads"].column("name").to_pylist()))
    written = {n: 0 for n in names.values()}
    for name, t in tabs.items():
        if name in ("threads", "losses") or not t.num_rows:
            continue
        u, c = np.unique(t.column("thread").to_numpy(), return_counts=True)
        for i, k in zip(u.tolist(), c.tolist()):       # per thread
            n = names.get(i, f"thread {i}")
            written[n] = written.get(n, 0) + k
    meta["records"] = {n: {"written": int(w), "lost": 0, "stalls": 0} for n, w in written.items()}
    meta["tables"] = {n: t.num_rows for n, t in tabs.items() if n != "threads"}
    meta["replay"] = {
        "of": trace.path, "engine": "model", "model": "sequence", "policy": policy,
        "seed": None if seed is None else int(seed),
        "changes": changes.as_dict(), "describe": changes.describe() or ["no change"],
        "left_out": LEFT_OUT, "why": model.why,
        "recorded": {"start_ns": start, "end_ns": end,
                     "guest": (rec.get("config") or {}).get("guest"),
                     "kvmscope_version": rec.get("kvmscope_version")},
    }
    return meta


def model_of(trace, why=None):
    """The sequence model of *trace* (built once, kept with the trace)."""
    model = trace._cache.get("reexec_seq_model")
    if model is None:
        model = build(trace, why)
        trace._cache["reexec_seq_model"] = model
    return model


def reexecute_tables(trace, policy="barging", seed=None, why=None, **changes):
    """Re-execute *trace* with the sequence model; ``(tables, meta)`` of the
    predicted trace.  Only ``scale_hold`` and ``add_hold`` apply; the other
    changes raise ConfigError with the reason."""
    ch = _engine.Changes.from_kwargs(**changes)
    model = model_of(trace, why or why_sequence(trace))
    check(ch, model)
    result = run(model, ch, policy, seed)
    tabs, tmap = tables(trace, model, result)
    return tabs, predicted_meta(trace, model, ch, policy, seed, tabs, tmap)


# --------------------------------------------------------------------------
# which model, and what part of an incomplete recording

#: Longer than the recorder's largest gap between two flushes of the trace
#: rings (every 50 ms; 50-80 ms measured, docs/architecture.md): a killed
#: run's threads whose data ends within this of the latest end lost their
#: last records, the others were idle.
FLUSH_NS = 100_000_000


def reexecute_covered(t, window, policy="barging", seed=None, changes=None):
    """Re-execute the covered trace *t* (see :func:`covered`) with the causal
    model, or the sequence model when it has none; ``(tables, meta)``."""
    changes = dict(changes or {})
    # CPU sharing is the causal model's (the sequence model keeps each
    # thread's recorded timing outside the lock)
    cpus = changes.pop("cpus", None)
    why = model_kind(t)[1]
    if why:
        tables, meta = reexecute_tables(t, policy=policy, seed=seed, why=why, **changes)
    else:
        same = t._cache.get("reexec_unchanged")
        if same is not None and not changes and policy == "barging" and seed is None:
            tables, meta = same[0], dict(same[1], replay=dict(same[1]["replay"]))
        else:
            tables, meta = _engine.reexecute_tables(t, policy=policy, seed=seed, cpus=cpus,
                                                    **changes)
        meta["replay"]["model"] = "causal"
        # how far the unchanged re-execution was from the recording (None: exact)
        meta["replay"]["unchanged_off"] = t._cache.get("reexec_near")
    meta.pop("layout", None)        # written as Arrow streams, whatever the recording's
    if window:
        meta["replay"]["window"] = {k: v for k, v in window.items() if k != "warning"}
    return tables, meta


def model_kind(trace):
    """Which model re-executes *trace*: ``("causal", None)``, or
    ``("sequence", why)`` for a trace without a causal model (imported from
    a QEMU log), one the causal model cannot take (other locks than the
    BQL, no vCPU exits...), or a recording (or the covered part of an
    incomplete one) whose causal re-execution, unchanged, does not give it
    back (each vCPU's exits, each
    call site's acquisitions): it then cannot be trusted with a change
    either.  Decided once per trace, by one unchanged re-execution, kept."""
    got = trace._cache.get("reexec_kind")
    if got is not None:
        return got
    why = why_sequence(trace)
    what = "the covered part" if getattr(trace, "_covered_part", False) else "this trace"
    if why is None:
        try:
            model = _engine.model_of(trace)
            # checked: a model that does not give the recording back unchanged
            # cannot be trusted with a change either (a recording of a guest
            # or a cut it was not built for)
            eng = _engine.run(model)
            tables = _engine.tables(eng)
            trace._cache["reexec_unchanged"] = (tables, _engine.predicted_meta(eng, trace, tables))
            # the recording's own CPU sharing, which a changed run compares with
            _engine.keep_recorded_stretch(model, eng)
            miss, near = _not_reproduced(trace, tables, _timed_callsites(model))
            if miss:
                why = f"the causal model does not reproduce {what} ({miss})"
            trace._cache["reexec_near"] = near
        except (ConfigError, RuntimeError) as e:
            why = f"the causal model cannot take {what} ({e})"
    got = ("sequence", why) if why else ("causal", None)
    trace._cache["reexec_kind"] = got
    return got


#: An unchanged causal re-execution must give back each vCPU's exits and
#: each call site's acquisitions within this share of the recorded count
#: (or :data:`REPRODUCE_SLACK` records): a recording taken with more busy
#: threads than CPUs can differ by a timer tick's interrupt exits (which
#: sleeper a release woke is not decidable from the timestamps alone: 1 or
#: 2 of ~4,000 exits per vCPU in 3 of 8 recordings of `mixed` on 2 vCPUs
#: here).
REPRODUCE_TOLERANCE = 0.01
REPRODUCE_SLACK = 2

#: The same for the call sites whose count follows the run's timing: the
#: main loop's dispatches count its wake-ups (how many events one iteration
#: took in depends on timing the model approximates: 0.4% to 1.7% off in 4
#: of those 8 recordings), and an interrupt service routine's exits come
#: one per interrupt taken (the timer ticks of a run that lasts a little
#: longer or shorter: up to 4.5% of `mixed`'s `pio:timerdev` acquisitions
#: in 50 recordings).
REPRODUCE_TOLERANCE_TIMED = 0.05


def _timed_callsites(model):
    """``main:dispatch`` and the call sites of interrupt service exits."""
    sites = {"main:dispatch"}
    for s in model.vcpus:
        for S in s.isr.values():
            sites.update(model.callsites[c] for c in set(S.cs) if c is not None and c >= 0)
    return sites


def _not_reproduced(trace, tables, timed=("main:dispatch",)):
    """What an unchanged causal re-execution did not give back: ``(miss,
    near)``, *miss* the first count off by more than
    :data:`REPRODUCE_TOLERANCE` (or None), *near* every difference within
    it, joined (or None when every count is given back; each call site's
    acquisitions within one counts as given back: the main loop's stop
    after a recording cut short); call sites in *timed* are allowed
    :data:`REPRODUCE_TOLERANCE_TIMED`."""
    def counts(t, col):
        c = t.column(col)
        if pa.types.is_dictionary(c.type):
            c = c.cast(c.type.value_type)
        vc = pc.value_counts(c)
        return {str(v): int(n) for v, n in zip(vc.field("values").to_pylist(),
                                                 vc.field("counts").to_pylist())}
    thr = trace.arrow("threads")
    names = dict(zip(map(str, thr.column("thread").to_pylist()), thr.column("name").to_pylist()))
    offs = []           # (difference, recorded count, text, tolerance)
    rec, pred = counts(trace.arrow("exits"), "thread"), counts(tables["exits"], "thread")
    for th, n in rec.items():
        got = pred.get(th, 0)
        if got != n:
            offs.append((abs(got - n), n, f"{got:,} of {names.get(th, th)}'s {n:,} exits re-executed",
                         REPRODUCE_TOLERANCE))
    rec, pred = counts(trace.arrow("locks"), "callsite"), counts(tables["locks"], "callsite")
    for cs, n in rec.items():
        got = pred.get(cs, 0)
        if abs(got - n) > 1:
            offs.append((abs(got - n), n, f"{got:,} of {n:,} acquisitions at {cs}",
                         REPRODUCE_TOLERANCE_TIMED if cs in timed else REPRODUCE_TOLERANCE))
    miss = [text for d, n, text, tol in offs if d > max(REPRODUCE_SLACK, tol * n)]
    near = "; ".join(o[2] for o in offs) or None
    return (miss[0] if miss else None), (None if miss else near)


def covered(trace):
    """The part of a trace its data covers, for re-execution.

    A trace whose rings dropped records is complete up to its first loss
    (the end of the losing thread's last record before it); a run that was
    killed, failed or aborted (``meta.json`` ``state``), or whose table was
    cut short, up to the earliest end of data among the threads that took
    the BQL or exited, leaving out a thread whose data ends more than
    :data:`FLUSH_NS` before the latest end (it was idle: a later flush
    would have written its records); for a trace imported from a log,
    which is written in one stream, up to the log's end.  Rows that end
    after that time are left out, as they were not written either: an AIO
    request submitted but not completed, a lock not yet released; each
    vCPU's last exit before the cut ends its run, open (not re-entered).

    Parameters
    ----------
    trace : Trace

    Returns
    -------
    (Trace, dict or None)
        The covered trace (the trace itself when it is whole) and the
        window: ``start_ns``, ``end_ns``, ``missing`` (what is missing, a
        phrase) and ``warning`` (one line); None when the trace is whole.

    Raises
    ------
    ConfigError
        A window or selection, or no part known to be complete (records
        lost at unknown times, or before the thread's first record).
    """
    t = trace
    if not getattr(t, "complete", True):
        raise ConfigError("re-execution needs a whole trace, not a window or selection of one")
    cov = t.coverage()
    state = t.state
    killed = state in _replay.INCOMPLETE_STATES or bool(t.cut)
    if cov.empty and not killed:
        return t, None
    origin = t.start_ns
    unplaced = cov[cov["kind"] == "lost_unplaced"]
    if len(unplaced):
        raise ConfigError(f"{unplaced['detail'].iloc[0].split(' (')[0]}: no part of the trace "
                          "is known to be complete (record with --lossless)")
    cut, missing = None, None
    lost = cov[cov["kind"] == "lost"]
    if len(lost):
        if lost["start_ns"].isna().any():
            row = lost[lost["start_ns"].isna()].iloc[0]
            raise ConfigError(f"{row['detail']}: before its first record, so no part of the "
                              "trace is known to be complete (record with --lossless)")
        row = lost.loc[lost["start_ns"].astype("int64").idxmin()]
        cut = int(row["start_ns"])
        n = int(lost["lost"].sum())
        missing = (f"{n:,} records lost (the first on {row['thread_name']} after "
                   f"{(cut - origin) / 1e9:.4f} s)")
    ends = cov[cov["kind"] == "end"]
    if killed:
        active = set(t.locks.loc[t.locks["lock"].astype(str) == "bql", "thread"].tolist()) | \
            set(t.exits["thread"].tolist())
        e = ends[ends["thread"].isin(active)] if active else ends
        if not len(e):
            raise ConfigError(f"the recording did not end cleanly (state {state}) and holds no "
                              "data to re-execute")
        one_stream = bool((t.meta.get("config") or {}).get("source"))
        e_ns = e["start_ns"].astype("int64")
        if not one_stream:
            # a thread whose data ends more than a flush before the latest
            # was idle: a later flush would have written its records
            e_ns = e_ns[e_ns >= e_ns.max() - FLUSH_NS]
        end = int(e_ns.max() if one_stream else e_ns.min())
        who = e.loc[e_ns.idxmax() if one_stream else e_ns.idxmin(), "thread_name"]
        why = {"running": "was killed", "failed": "failed", "aborted": "was aborted"}.get(state)
        text = (f"the run {why} (state {state})" if state in _replay.INCOMPLETE_STATES
                else f"a table was cut short ({', '.join(sorted(t.cut))})")
        text += (f": its log ends at {(end - origin) / 1e9:.4f} s" if one_stream else
                 f": data ends at {(end - origin) / 1e9:.4f} s ({who}), the earliest end")
        if cut is None or end < cut:
            cut, missing = end, text
        else:
            missing = f"{missing}; {text}"
    part = _cut(t, cut)
    if not len(part.locks) and not len(part.exits):
        raise ConfigError(f"{missing}: nothing is complete before that to re-execute")
    span = (cut - origin) / 1e9
    warning = (f"{missing}: re-executing only the part every thread's data covers, "
               f"the first {span:.4f} s (to {span:.4f} s of {t.duration_ns / 1e9:.4f} s)")
    return part, {"start_ns": int(origin), "end_ns": int(cut), "missing": missing,
                  "warning": warning}


def _cut(t, cut):
    """Trace *t* up to *cut*: the rows written (ended) by then, with a
    ``meta.json`` of a whole run of that length."""
    tables = {}
    for name in TABLES:
        tab = t.arrow(name)
        if name in SPANS and tab.num_rows:
            a, b = SPANS[name]
            # an exit not re-entered by the cut is kept open (below)
            end = tab.column(a if name == "exits" else b)
            end = end.fill_null(tab.column(a)) if end.null_count else end
            tab = tab.filter(pa.array(end.to_numpy() <= cut))
        elif name == "losses":
            tab = tab.slice(0, 0)
        if name == "exits" and tab.num_rows:
            # each vCPU's last exit before the cut ends its run, open, as
            # a vCPU that never re-entered does at a run's end
            th = tab.column("thread").to_numpy()
            x = tab.column("exit_ns").to_numpy()
            last = np.zeros(tab.num_rows, bool)
            o = np.lexsort((x, th))
            last[o[np.r_[th[o][1:] != th[o][:-1], True]]] = True
            entry = tab.column("entry_ns")
            mask = last | (entry.is_null().to_numpy(zero_copy_only=False)
                           if entry.null_count else False)
            col = pa.array(entry.fill_null(0).to_numpy(), pa.int64(), mask=mask)
            tab = tab.set_column(tab.schema.get_field_index("entry_ns"), "entry_ns", col)
        tables[name] = tab
    meta = dict(t.meta)
    meta["state"] = "complete"
    meta["end_ns"] = int(cut)
    meta.pop("failure", None)
    meta["records"] = {k: dict(v or {}, lost=0) for k, v in (t.meta.get("records") or {}).items()}
    meta["tables"] = {n: tab.num_rows for n, tab in tables.items() if n != "threads"}
    tabs, meta = from_tables(tables, meta)
    part = type(t)(tabs, meta, path=t.path)
    part._covered_part = True
    return part



def reexecute_any(trace, policy="barging", seed=None, **changes):
    """Re-execute *trace*: the part its data covers (a warning says what is
    missing), with the causal model or, without one, the sequence model;
    ``(tables, meta)`` of the predicted trace."""
    t, window = covered(trace)
    if window:
        warnings.warn(window["warning"], stacklevel=3)
    return reexecute_covered(t, window, policy, seed, changes)
