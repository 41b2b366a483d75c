"""Replay of a trace as reconstruction: lock ownership, waits, hand-offs,
thread states, queue depths, and the invariant checker.  Called, the module
re-executes a trace under changed conditions instead
(``kvmscope.analysis.replay(trace, **changes)``: see ``whatif``).

Every function takes a :class:`~kvmscope.analysis.Trace` and returns a
DataFrame; all work is vectorised (sorts, shifts, cumulative sums), so cost
grows with the number of records but no Python code runs per record.
"""

import sys
import types

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from ..errors import ConfigError
from .load import failure_reason, thread_names
from .schema import SPANS

_I64_MIN = np.iinfo(np.int64).min

#: Thread states, lowest priority first: when intervals of one thread nest
#: (a bottom half running while the main loop holds the BQL), the state with
#: the highest priority is the one reported.
STATES = ("idle", "in_guest", "poll", "dispatch", "exit", "io", "hold_lock",
          "timer", "bh", "wait_lock")
_STATE = {s: i for i, s in enumerate(STATES)}


# --------------------------------------------------------------------------
# locks

def lock_order(trace):
    """Row positions of ``trace.locks`` sorted by (lock, acquired_ns).

    Cached on the trace; the basis of every lock replay.
    """
    order = trace._cache.get("lock_order")
    if order is None:
        df = trace.locks
        # Two stable sorts (the second a radix sort on small codes) are much
        # cheaper than a lexsort on nearly sorted timestamps.
        order = np.argsort(df["acquired_ns"].to_numpy(), kind="stable")
        codes = df["lock"].cat.codes.to_numpy()[order]
        if len(codes) and codes.min() != codes.max():
            order = order[np.argsort(codes, kind="stable")]
        trace._cache["lock_order"] = order
    return order


def _take(col, idx):
    """Rows *idx* of a column; categoricals stay categorical (no strings)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return pd.Categorical.from_codes(col.cat.codes.to_numpy()[idx],
                                         dtype=col.dtype)
    return col.to_numpy()[idx]


def _lock_filter(df, lock):
    if lock is None:
        return df
    locks = [lock] if isinstance(lock, str) else list(lock)
    return df[df["lock"].isin(locks)]


def lock_intervals(trace, lock=None):
    """Ownership intervals of each lock, in acquisition order.

    Parameters
    ----------
    trace : Trace
    lock : str or list of str, optional
        Only these locks.

    Returns
    -------
    DataFrame
        ``lock, thread, thread_name, callsite, acquired_ns, released_ns,
        hold_ns, row`` sorted by lock then ``acquired_ns``; ``row`` is the
        row in ``trace.locks``.

    Examples
    --------
    >>> own = trace.lock_intervals("bql")              # doctest: +SKIP
    >>> own.groupby("thread_name", observed=True).hold_ns.sum()  # doctest: +SKIP
    """
    cols = ["lock", "thread", "thread_name", "callsite", "acquired_ns",
            "released_ns", "hold_ns"]
    order = lock_order(trace)
    df = trace.locks
    out = pd.DataFrame({c: _take(df[c], order) for c in cols} | {"row": order},
                       copy=False)
    return _lock_filter(out, lock).reset_index(drop=True)


def lock_waits(trace, lock=None):
    """Intervals during which a thread waited for a lock (contended
    acquisitions: ``contended`` is true).

    Returns
    -------
    DataFrame
        ``thread, thread_name, lock, callsite, start_ns`` (request),
        ``end_ns`` (acquired), ``wait_ns, row``, sorted by ``start_ns``.

    Examples
    --------
    >>> trace.lock_waits().groupby("thread_name", observed=True).wait_ns.sum()  # doctest: +SKIP
    """
    df = trace.locks
    rows = np.flatnonzero(df["contended"].to_numpy())
    rows = rows[np.argsort(df["request_ns"].to_numpy()[rows], kind="stable")]
    out = pd.DataFrame({
        "thread": df["thread"].to_numpy()[rows],
        "thread_name": _take(df["thread_name"], rows),
        "lock": _take(df["lock"], rows),
        "callsite": _take(df["callsite"], rows),
        "start_ns": df["request_ns"].to_numpy()[rows],
        "end_ns": df["acquired_ns"].to_numpy()[rows],
        "wait_ns": df["wait_ns"].to_numpy()[rows],
        "row": rows,
    })
    return _lock_filter(out, lock).reset_index(drop=True)


def handoffs(trace, lock=None):
    """Hand-offs: consecutive acquisitions of a lock by different threads.

    The previous owner is the one found by replay (previous acquisition in
    ``acquired_ns`` order), which matches the ``prev_owner`` column of a
    consistent trace (:func:`check` reports where it does not).

    Returns
    -------
    DataFrame
        ``lock, from_thread, from_name, to_thread, to_name, from_callsite,
        to_callsite, released_ns`` (previous owner let go),
        ``acquired_ns`` (next owner got it), ``latency_ns`` (the
        difference), ``waiting`` (the next owner had requested the lock
        before it was released), ``row`` (the acquisition in
        ``trace.locks``).

    Examples
    --------
    >>> ho = trace.handoffs("bql")                     # doctest: +SKIP
    >>> ho[ho.waiting].latency_ns.describe()           # doctest: +SKIP
    """
    df = trace.locks
    order = lock_order(trace)
    codes = df["lock"].cat.codes.to_numpy()[order]
    thread = df["thread"].to_numpy()[order]
    is_ho = np.zeros(len(order), dtype=bool)
    is_ho[1:] = (codes[1:] == codes[:-1]) & (thread[1:] != thread[:-1])
    nxt = order[is_ho]
    prv = order[np.flatnonzero(is_ho) - 1]
    released = df["released_ns"].to_numpy()[prv]
    acquired = df["acquired_ns"].to_numpy()[nxt]
    out = pd.DataFrame({
        "lock": _take(df["lock"], nxt),
        "from_thread": df["thread"].to_numpy()[prv],
        "from_name": _take(df["thread_name"], prv),
        "to_thread": df["thread"].to_numpy()[nxt],
        "to_name": _take(df["thread_name"], nxt),
        "from_callsite": _take(df["callsite"], prv),
        "to_callsite": _take(df["callsite"], nxt),
        "released_ns": released,
        "acquired_ns": acquired,
        "latency_ns": acquired - released,
        "waiting": df["request_ns"].to_numpy()[nxt] <= released,
        "row": nxt,
    })
    return _lock_filter(out, lock).reset_index(drop=True)


# --------------------------------------------------------------------------
# thread states

def _in_guest(exits):
    """(thread, start, end) of in-guest spans: entry_ns of an exit to the
    exit_ns of the same vCPU thread's next exit."""
    th = exits["thread"].to_numpy()
    ex = exits["exit_ns"].to_numpy()
    order = np.lexsort((ex, th))
    th, ex = th[order], ex[order]
    entry = exits["entry_ns"].take(order)
    ok = ~entry.isna().to_numpy()
    en = entry.to_numpy(dtype=np.int64, na_value=0)
    nxt = np.zeros(len(th), dtype=bool)
    nxt[:-1] = (th[1:] == th[:-1]) & ok[:-1]
    idx = np.flatnonzero(nxt)
    return th[idx], en[idx], ex[idx + 1]


def _state_intervals(trace):
    """All (thread, start, end, state code) intervals the tables imply."""
    parts = []

    def add(thread, start, end, state):
        parts.append((np.asarray(thread, dtype=np.int16),
                      np.asarray(start, dtype=np.int64),
                      np.asarray(end, dtype=np.int64),
                      np.full(len(start), _STATE[state], dtype=np.int8)))

    ex = trace.exits
    if len(ex):
        end = ex["entry_ns"].to_numpy(dtype=np.int64, na_value=trace.end_ns)
        add(ex["thread"], ex["exit_ns"], end, "exit")
        add(*_in_guest(ex), "in_guest")
    lk = trace.locks
    add(lk["thread"], lk["request_ns"], lk["acquired_ns"], "wait_lock")
    add(lk["thread"], lk["acquired_ns"], lk["released_ns"], "hold_lock")
    lp = trace.loop
    add(lp["thread"], lp["poll_enter_ns"], lp["poll_exit_ns"], "poll")
    add(lp["thread"], lp["poll_exit_ns"], lp["dispatch_end_ns"], "dispatch")
    add(trace.bh["thread"], trace.bh["run_ns"], trace.bh["done_ns"], "bh")
    tm = trace.timers
    add(tm["thread"], tm["fire_ns"], tm["done_ns"], "timer")
    add(trace.aio["thread"], trace.aio["start_ns"], trace.aio["done_ns"], "io")
    return [np.concatenate(c) for c in zip(*parts)]


def thread_states(trace, threads=None):
    """What each thread was doing, as non-overlapping state intervals.

    States: ``in_guest`` (vCPU between ``entry_ns`` and its next
    ``exit_ns``), ``exit`` (handling an exit), ``wait_lock``, ``hold_lock``,
    ``poll`` and ``dispatch`` (main loop), ``bh``, ``timer``, ``io`` (AIO
    worker), and ``idle`` for gaps between a thread's first and last
    event.  Where intervals nest, the most specific wins, in the order
    ``wait_lock > bh > timer > hold_lock > io > exit > dispatch > poll >
    in_guest`` (see :data:`STATES`).

    Parameters
    ----------
    trace : Trace
    threads : list of int or str, optional
        Only these threads.

    Returns
    -------
    DataFrame
        ``thread, thread_name, state`` (category), ``start_ns, end_ns,
        dur_ns``, sorted by thread then time.

    Examples
    --------
    >>> st = trace.thread_states(["vcpu0"])            # doctest: +SKIP
    >>> st.groupby("state", observed=True).dur_ns.sum()  # doctest: +SKIP
    """
    th, start, end, state = _state_intervals(trace)
    keep = start < end
    if threads is not None:
        keep &= np.isin(th, trace.thread_ids(threads))
    th, start, end, state = th[keep], start[keep], end[keep], state[keep]
    n = len(th)
    # Boundary events sorted by (thread, time); per thread the +1/-1 sum is
    # zero, so a global cumulative sum per state is a per-thread count.
    ev_th = np.concatenate([th, th])
    ev_t = np.concatenate([start, end])
    ev_state = np.concatenate([state, state])
    ev_d = np.concatenate([np.ones(n, np.int32), -np.ones(n, np.int32)])
    o = np.argsort(ev_t, kind="stable")
    o = o[np.argsort(ev_th[o], kind="stable")]      # radix sort on int16
    ev_th, ev_t, ev_state, ev_d = ev_th[o], ev_t[o], ev_state[o], ev_d[o]
    top = np.zeros(len(o), dtype=np.int8)
    for code in range(1, len(STATES)):     # a loop over states, not records
        active = np.cumsum(np.where(ev_state == code, ev_d, 0))
        top[active > 0] = code
    # The state after the last event at each (thread, time) holds until the
    # next time at which that thread has an event.
    last = np.ones(len(o), dtype=bool)
    last[:-1] = (ev_th[1:] != ev_th[:-1]) | (ev_t[1:] != ev_t[:-1])
    s_th, s_t, s_state = ev_th[last], ev_t[last], top[last]
    has_next = np.zeros(len(s_th), dtype=bool)
    has_next[:-1] = s_th[1:] == s_th[:-1]
    seg = np.flatnonzero(has_next)
    s_end = s_t[seg + 1]
    s_th, s_t, s_state = s_th[seg], s_t[seg], s_state[seg]
    # Merge runs of equal state.
    new = np.ones(len(seg), dtype=bool)
    new[1:] = (s_th[1:] != s_th[:-1]) | (s_state[1:] != s_state[:-1]) | \
        (s_t[1:] != s_end[:-1])
    first = np.flatnonzero(new)
    lastseg = np.append(first[1:] - 1, len(seg) - 1).astype(np.int64)
    out_th = s_th[first]
    out = pd.DataFrame({
        "thread": out_th,
        "thread_name": _names(trace, out_th),
        "state": pd.Categorical.from_codes(s_state[first], categories=STATES),
        "start_ns": s_t[first],
        "end_ns": s_end[lastseg] if len(first) else s_end[:0],
    })
    out["dur_ns"] = out["end_ns"] - out["start_ns"]
    return out


def _names(trace, thread_ids):
    return thread_names(thread_ids, trace.threads)


# --------------------------------------------------------------------------
# queues

def queue_depth(trace, queue="aio"):
    """Depth of a queue over time, as a step function.

    Parameters
    ----------
    trace : Trace
    queue : {"aio", "aio_inflight", "bh"}
        ``aio``: requests submitted and not yet picked by a worker
        (``submit_ns`` to ``start_ns``); ``aio_inflight``: submitted and not
        yet completed (to ``complete_ns``); ``bh``: bottom halves scheduled
        and not yet run (``scheduled_ns`` to ``run_ns``).

    Returns
    -------
    DataFrame
        ``ts_ns, depth``: the depth from ``ts_ns`` until the next row.

    Examples
    --------
    >>> q = trace.queue_depth("aio")                   # doctest: +SKIP
    >>> q.depth.max()                                  # doctest: +SKIP
    """
    cols = {"aio": ("aio", "submit_ns", "start_ns"),
            "aio_inflight": ("aio", "submit_ns", "complete_ns"),
            "bh": ("bh", "scheduled_ns", "run_ns")}
    if queue not in cols:
        raise ConfigError(f"unknown queue {queue!r}; one of {', '.join(cols)}")
    table, a, b = cols[queue]
    df = trace.frame(table)
    t = np.concatenate([df[a].to_numpy(), df[b].to_numpy()])
    d = np.concatenate([np.ones(len(df), np.int64), -np.ones(len(df), np.int64)])
    o = np.argsort(t, kind="stable")
    t, depth = t[o], np.cumsum(d[o])
    last = np.ones(len(t), dtype=bool)
    last[:-1] = t[1:] != t[:-1]
    return pd.DataFrame({"ts_ns": t[last], "depth": depth[last]})


# --------------------------------------------------------------------------
# coverage: where the data is incomplete

_I64_MAX = np.iinfo(np.int64).max

#: States of ``meta.json`` after which the tables may end before the run did.
INCOMPLETE_STATES = {"running": "killed", "failed": "failed",
                     "aborted": "aborted"}

COVERAGE_COLUMNS = ["kind", "thread", "thread_name", "start_ns", "end_ns",
                    "lost", "detail"]

#: Kinds of row :func:`coverage` returns, with what they mean.
COVERAGE_KINDS = {
    "lost": "the thread's ring dropped `lost` records, written between "
            "start_ns and end_ns (null: unknown / the thread's data ended)",
    "lost_unplaced": "the thread dropped `lost` records at unknown times "
                     "(meta.json counts them, no losses row places them): "
                     "none of the thread's time is known to be complete",
    "end": "the thread's data ends at start_ns: the run was killed or "
           "failed, or a table was cut short; later records are missing",
}


def _written(table, name):
    """(thread, start, written) of each row of a table: when the row's span
    starts and when its record was written (its last timestamp)."""
    a, b = SPANS[name]
    start = table.column(a)
    end = table.column(b)
    if end.null_count:
        end = pc.coalesce(end, start)
    return (table.column("thread").to_numpy().astype(np.int16, copy=False),
            start.to_numpy(), end.to_numpy())


def _per_thread_max(thread, values):
    """{thread id: max value} (a hash group-by; no Python per record)."""
    if not len(thread):
        return {}
    s = pd.Series(values).groupby(thread, sort=False).max()
    return dict(zip(s.index.astype(int), s.to_numpy().astype(np.int64)))


def _fmt_s(ns, origin, other=None):
    """Seconds from the trace start; with *other*, as many digits (4 to 9)
    as it takes to tell the two apart."""
    if ns is None:
        return "?"
    for digits in range(4, 10):
        text = f"{(ns - origin) / 1e9:.{digits}f}"
        if other is None or other == ns or \
                text != f"{(other - origin) / 1e9:.{digits}f}":
            break
    return text + " s"


def _name_of(names, tid):
    return names.get(int(tid), f"thread {int(tid)}")


def _coverage(trace):
    """(coverage DataFrame, {thread: (lo, hi) sorted disjoint intervals of
    write time in which the thread's records may be missing}), of the whole
    trace a window or selection came from; cached."""
    base = trace._base or trace
    got = base._cache.get("coverage")
    if got is not None:
        return got
    meta = base.meta
    threads = base.arrow("threads")
    names = dict(zip(threads.column("thread").to_pylist(),
                     threads.column("name").to_pylist()))
    ids_of = {}
    for tid, name in names.items():
        ids_of.setdefault(name, []).append(tid)
    origin = base.start_ns
    rows, spans = [], {}

    def uncovered(tid, lo, hi):
        spans.setdefault(int(tid), []).append((lo, hi))

    state = meta.get("state")
    incomplete = state in INCOMPLETE_STATES or bool(base.cut)
    losses = base.arrow("losses")
    lost_meta = {}
    for name, rec in (meta.get("records") or {}).items():
        if rec.get("lost"):
            for tid in ids_of.get(name, ()):
                lost_meta[tid] = lost_meta.get(tid, 0) + rec["lost"]
    if not (incomplete or losses.num_rows or lost_meta):
        got = (_empty_coverage(), {})
        base._cache["coverage"] = got
        return got

    tables = [n for n in SPANS if base.arrow(n).num_rows]
    times = {n: _written(base.arrow(n), n) for n in tables}

    # Records dropped at known positions.  A dropped record was written
    # after the thread's record that ends at after_ns and before the next
    # one kept, the first whose span starts at or after before_ns.
    placed = {}
    if losses.num_rows:
        l_th = losses.column("thread").to_numpy()
        l_n = losses.column("lost").to_numpy()
        l_after = losses.column("after_ns").to_pylist()
        l_before = losses.column("before_ns").to_pylist()
        firsts = {}
        for tid in np.unique(l_th):        # per thread, not per record
            st = [times[n][1][times[n][0] == tid] for n in tables]
            wr = [times[n][2][times[n][0] == tid] for n in tables]
            st = np.concatenate(st) if st else np.zeros(0, np.int64)
            wr = np.concatenate(wr) if wr else np.zeros(0, np.int64)
            o = np.argsort(st, kind="stable")
            # Earliest write among the rows starting at or after each start.
            firsts[int(tid)] = (st[o], np.minimum.accumulate(wr[o][::-1])[::-1])
        for tid, n, after, before in zip(l_th, l_n, l_after, l_before):
            tid = int(tid)
            placed[tid] = placed.get(tid, 0) + int(n)
            hi = _I64_MAX
            if before is not None:
                st, first = firsts[tid]
                k = np.searchsorted(st, before, side="left")
                if k < len(st):
                    hi = int(first[k])
            uncovered(tid, _I64_MIN if after is None else after, hi)
            who = _name_of(names, tid)
            if after is not None and before is not None:
                where = (f"between {_fmt_s(after, origin, before)} and "
                         f"{_fmt_s(before, origin, after)}")
            elif after is not None:
                where = f"after {_fmt_s(after, origin)}, to the end of its data"
            elif before is not None:
                where = f"before {_fmt_s(before, origin)}"
            else:
                where = "at unknown times"
            rows.append(("lost", tid, after, before, int(n),
                         f"lost {int(n)} records on {who} {where}"))

    # Records meta.json counts as lost that no losses row places.
    for tid, n in lost_meta.items():
        rest = n - placed.get(tid, 0)
        if rest > 0:
            uncovered(tid, _I64_MIN, _I64_MAX)
            why = ("this format-1 trace records no loss positions"
                   if meta.get("format_version", 1) < 2 else
                   f"the losses table places {placed.get(tid, 0)} of {n}")
            rows.append(("lost_unplaced", tid, None, None, rest,
                         f"lost {rest} records on {_name_of(names, tid)} at "
                         f"unknown times ({why}): its hand-offs and overlaps "
                         "are not checked"))

    # Data that ends early: per thread, the last time it wrote anything;
    # a table cut short ends each thread's data at its last row there.
    if incomplete:
        ends = {}
        for n in tables:
            for tid, e in _per_thread_max(times[n][0], times[n][2]).items():
                ends[tid] = max(ends.get(tid, _I64_MIN), e)
        for n in base.cut:
            th, _, wr = times.get(n) or (np.zeros(0, np.int16), None, None)
            last = _per_thread_max(th, wr)
            table_end = max(last.values()) if last else _I64_MIN
            for tid in ends:
                ends[tid] = min(ends[tid], last.get(tid, table_end))
        for tid in set(names) | set(ends):
            e = ends.get(tid, _I64_MIN)
            uncovered(tid, e, _I64_MAX)
            if e != _I64_MIN:
                rows.append(("end", tid, e, None, None,
                             f"data of {_name_of(names, tid)} ends at "
                             f"{_fmt_s(e, origin)}"))

    merged = {}
    for tid, iv in spans.items():
        iv.sort()
        lo, hi = [iv[0][0]], [iv[0][1]]
        for a, b in iv[1:]:
            if a <= hi[-1]:
                hi[-1] = max(hi[-1], b)
            else:
                lo.append(a)
                hi.append(b)
        merged[tid] = (np.asarray(lo, np.int64), np.asarray(hi, np.int64))

    if rows:
        kind, tid, start, end, lost, detail = zip(*rows)
        df = pd.DataFrame({
            "kind": list(kind), "thread": np.asarray(tid, np.int16),
            "thread_name": [_name_of(names, t) for t in tid],
            "start_ns": pd.array(list(start), dtype="Int64"),
            "end_ns": pd.array(list(end), dtype="Int64"),
            "lost": pd.array(list(lost), dtype="Int64"),
            "detail": list(detail)})
        order = {k: i for i, k in enumerate(COVERAGE_KINDS)}
        df = df.assign(_k=df["kind"].map(order)).sort_values(
            ["_k", "thread", "start_ns"], kind="stable", na_position="first") \
            .drop(columns="_k").reset_index(drop=True)
    else:
        df = _empty_coverage()
    got = (df, merged)
    base._cache["coverage"] = got
    return got


def _empty_coverage():
    return pd.DataFrame({
        "kind": pd.Series([], dtype=object), "thread": np.zeros(0, np.int16),
        "thread_name": pd.Series([], dtype=object),
        "start_ns": pd.array([], dtype="Int64"),
        "end_ns": pd.array([], dtype="Int64"),
        "lost": pd.array([], dtype="Int64"),
        "detail": pd.Series([], dtype=object)})


def coverage(trace):
    """Where the trace's data is incomplete.

    A thread's records can be missing in three ways: its ring dropped them
    (lossy mode: the ``losses`` table places each run of dropped records;
    a version-1 trace only counts them in ``meta.json``, so the whole
    thread is then uncertain), or the run was killed, failed or aborted
    before they were flushed (``meta.json`` ``state`` is ``running``,
    ``failed`` or ``aborted``: each thread's data ends at its last
    timestamp in any table), or a table file was cut short.
    :func:`check` reports nothing that such missing data could explain.

    Parameters
    ----------
    trace : Trace
        A window or selection answers for the whole trace it came from.

    Returns
    -------
    DataFrame
        ``kind`` (``lost``, ``lost_unplaced``, ``end``; see
        :data:`COVERAGE_KINDS`), ``thread, thread_name``, ``start_ns`` and
        ``end_ns`` (``Int64``: for ``lost``, the end of the thread's last
        record before the drop and the start of its next one, null where
        there is none; for ``end``, where its data ends), ``lost``
        (records; ``Int64``), ``detail`` (one line).  Empty when every
        thread's records are all there.

    Examples
    --------
    >>> cov = trace.coverage()                          # doctest: +SKIP
    >>> cov[cov.kind == "lost"].groupby("thread_name").lost.sum()  # doctest: +SKIP
    """
    return _coverage(trace)[0].copy()


def is_complete(trace):
    """Whether the trace holds every record of its run: not killed or
    failed, no table cut short, no record lost."""
    base = trace._base or trace
    return (base.meta.get("state") not in INCOMPLETE_STATES and not base.cut
            and _coverage(trace)[0].empty)


def describe_coverage(trace):
    """Plain lines saying how the trace is incomplete (empty if it is not).

    ``killed: data ends at 2.3100 s (main), 2.3500 s (vcpu0)``, ``failed:
    write failed: No space left on device; data ends at ...``, ``aborted
    (a second interrupt): data ends at ...``, the tables
    cut short, and ``lost 312 records on vcpu1 between 1.2034 s and
    1.2051 s`` (one line per thread when a thread lost records more than
    five times).  Times are seconds from the trace start.
    """
    base = trace._base or trace
    cov = _coverage(trace)[0]
    origin = base.start_ns
    lines = []
    ends = cov[cov["kind"] == "end"].sort_values("start_ns", kind="stable")
    at = ", ".join(f"{_fmt_s(int(e), origin)} ({n})"
                   for e, n in zip(ends["start_ns"], ends["thread_name"]))
    at = f"data ends at {at}" if at else "no data was flushed"
    state = base.meta.get("state")
    if state == "running":
        lines.append(f"killed: {at}")
    elif state == "failed":
        lines.append(f"failed: {failure_reason(base.meta)}; {at}")
    elif state == "aborted":
        lines.append(f"aborted (a second interrupt): {at}")
    elif base.cut:
        lines.append(f"cut short: {at}")
    for why in base.cut.values():
        lines.append(f"cut short: {why}")
    lost = cov[cov["kind"] == "lost"]
    for tid, g in lost.groupby("thread", sort=True):
        if len(g) <= 5:
            lines.extend(g["detail"])
            continue
        lo, hi = g["start_ns"].min(), g["end_ns"].max()
        span = (f" between {_fmt_s(int(lo), origin, int(hi))} and "
                f"{_fmt_s(int(hi), origin, int(lo))}"
                if lo is not pd.NA and hi is not pd.NA else "")
        lines.append(f"lost {int(g['lost'].sum())} records on "
                     f"{g['thread_name'].iloc[0]} in {len(g)} runs{span} "
                     "(Trace.coverage() lists each)")
    lines.extend(cov.loc[cov["kind"] == "lost_unplaced", "detail"])
    return lines


def _touches(gaps, thread, lo, hi):
    """For each (thread, [lo, hi]): whether the interval meets a time at
    which that thread's records may be missing."""
    thread = np.asarray(thread)
    out = np.zeros(len(thread), dtype=bool)
    if not gaps or not len(thread):
        return out
    lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), thread.shape)
    hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), thread.shape)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    for tid, (glo, ghi) in gaps.items():     # a loop over threads
        sel = np.flatnonzero(thread == tid)
        if not len(sel):
            continue
        k = np.searchsorted(ghi, lo[sel], side="left")
        inside = k < len(ghi)
        out[sel] = inside & (glo[np.minimum(k, len(ghi) - 1)] <= hi[sel])
    return out


# --------------------------------------------------------------------------
# invariant checker

CHECK_COLUMNS = ["kind", "table", "row", "thread", "ts_ns", "detail"]

#: Kinds of violation :func:`check` reports, with what they mean.
VIOLATIONS = {
    "lock_overlap": "two owners of one lock at the same time",
    "lock_acquired_before_request": "acquired_ns < request_ns",
    "lock_released_before_acquired": "released_ns < acquired_ns",
    "release_without_acquire": "the first recorded acquisition of a lock "
                               "names a previous owner (its acquisition is "
                               "missing)",
    "prev_owner_mismatch": "prev_owner is not the previous owner found by "
                           "replay (records lost or out of order)",
    "thread_time_backwards": "a thread's records go back in time (exits: "
                             "exit_ns; locks: released_ns, in row order)",
    "thread_overlap": "a thread in two places at once (an exit starting "
                      "before its previous entry, waits for two locks, "
                      "overlapping loop iterations)",
    "exit_entry_before_exit": "entry_ns < exit_ns",
    "aio_stage_order": "not submit_ns <= start_ns <= done_ns <= complete_ns",
    "bh_stage_order": "not scheduled_ns <= run_ns <= done_ns",
    "timer_stage_order": "not armed_ns <= fire_ns <= done_ns",
    "loop_stage_order": "not poll_enter_ns <= poll_exit_ns <= "
                        "dispatch_end_ns",
    "unknown_thread": "a thread id missing from the threads table "
                      "(one row per table and id)",
}


def _s(x):
    return pd.Series(np.asarray(x)).astype(str).to_numpy(dtype=object)


def _violations(kind, table, rows, thread, ts, detail):
    return pd.DataFrame({"kind": kind, "table": table,
                         "row": np.asarray(rows, dtype=np.int64),
                         "thread": np.asarray(thread, dtype=np.int16),
                         "ts_ns": np.asarray(ts, dtype=np.int64),
                         "detail": detail})


def _stage_order(df, table, kind, cols):
    """Rows where the timestamps *cols* are not in non-decreasing order;
    the detail names the first pair out of order."""
    vals = [df[c].to_numpy() for c in cols]
    bad_pairs = [vals[i + 1] < vals[i] for i in range(len(cols) - 1)]
    bad = np.logical_or.reduce(bad_pairs)
    rows = np.flatnonzero(bad)
    if not len(rows):
        return None
    which = np.argmax(np.stack([b[rows] for b in bad_pairs]), axis=0)
    v = np.stack([x[rows] for x in vals])
    ar = np.arange(len(rows))
    left = np.asarray(cols[1:], dtype=object)[which]
    right = np.asarray(cols[:-1], dtype=object)[which]
    detail = (left + " " + _s(v[which + 1, ar]) + " < " + right + " "
              + _s(v[which, ar]))
    return _violations(kind, table, rows, df["thread"].to_numpy()[rows],
                       v[which, ar], detail)


def _per_thread_prev(thread):
    """Stable order by thread (row order kept within a thread), and for each
    position whether the previous position is the same thread."""
    order = np.argsort(thread, kind="stable")
    th = thread[order]
    same = np.zeros(len(th), dtype=bool)
    same[1:] = th[1:] == th[:-1]
    return order, same


def _shifted_cummax(values, first):
    """Running max of *values* over the earlier elements of each segment
    (segments start where *first* is true); the minimum int64 at a segment's
    first element."""
    out = np.empty(len(values), dtype=np.int64)
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):      # a loop over segments (locks, threads)
        out[s] = _I64_MIN
        np.maximum.accumulate(values[s:e - 1], out=out[s + 1:e])
    return out


def _check_locks(trace, out, tolerance_ns, gaps):
    df = trace.locks
    if not len(df):
        return
    thread = df["thread"].to_numpy()
    req, acq, rel = (df[c].to_numpy() for c in
                     ("request_ns", "acquired_ns", "released_ns"))
    out.append(_stage_order(df, "locks", "lock_acquired_before_request",
                            ["request_ns", "acquired_ns"]))
    out.append(_stage_order(df, "locks", "lock_released_before_acquired",
                            ["acquired_ns", "released_ns"]))

    # One owner at a time: in acquisition order, an acquisition before the
    # latest release seen so far on that lock overlaps an earlier owner.
    order = lock_order(trace)
    codes = df["lock"].cat.codes.to_numpy()[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    o_rel = rel[order]
    prev_max = _shifted_cummax(o_rel, first)
    o_acq = acq[order]
    bad = o_acq < prev_max
    if tolerance_ns:
        bad &= (prev_max - o_acq) > tolerance_ns   # no overflow: bad rows only
    bad = np.flatnonzero(bad)
    if len(bad):
        # Which earlier owner held it: the position of that running max.
        pos = np.where(o_rel >= np.maximum(prev_max, o_rel),
                       np.arange(len(order)), -1)
        prev_arg = _shifted_cummax(pos, first)
        rows = order[bad]
        holder = thread[order[prev_arg[bad]]]
        # Where either owner's records may be missing, skip.
        keep = ~(_touches(gaps, thread[rows], acq[rows], prev_max[bad])
                 | _touches(gaps, holder, acq[rows], prev_max[bad]))
        bad, rows, holder = bad[keep], rows[keep], holder[keep]
    if len(bad):
        out.append(_violations(
            "lock_overlap", "locks", rows, thread[rows], acq[rows],
            "'" + _s(df["lock"].to_numpy()[rows]) + "' acquired at "
            + _s(acq[rows]) + " while thread " + _s(holder)
            + " held it until " + _s(prev_max[bad])))

    # prev_owner agrees with replay (only meaningful on a whole trace).
    if trace.complete:
        prev_owner = df["prev_owner"].to_numpy()[order]
        replay_prev = np.where(first, -1, np.roll(thread[order], 1))
        # The release of the owner prev_owner names lies between the
        # replayed previous release and this acquisition; where that
        # owner's records may be missing there, replay cannot tell.
        prev_rel = np.where(first, _I64_MIN, np.roll(o_rel, 1))
        unsure = _touches(gaps, prev_owner, prev_rel, o_acq)
        lone = first & (prev_owner != -1) & ~unsure
        mism = ~first & (prev_owner != replay_prev) & ~unsure
        for kind, mask, what in (
                ("release_without_acquire", lone, "none recorded"),
                ("prev_owner_mismatch", mism, None)):
            idx = np.flatnonzero(mask)
            if not len(idx):
                continue
            rows = order[idx]
            was = (what if what else "replay says " + _s(replay_prev[idx]))
            out.append(_violations(
                kind, "locks", rows, thread[rows], acq[rows],
                "prev_owner " + _s(prev_owner[idx]) + " on '"
                + _s(df["lock"].to_numpy()[rows]) + "'; " + was))

    # Per thread: records are written at release, so released_ns never goes
    # back in row order; a thread never waits for two locks at once.
    o, same = _per_thread_prev(thread)
    back = np.flatnonzero(same[1:] & (rel[o][1:] < rel[o][:-1])) + 1
    back = back[~_touches(gaps, thread[o[back]], rel[o[back]], rel[o[back - 1]])]
    if len(back):
        rows = o[back]
        out.append(_violations(
            "thread_time_backwards", "locks", rows, thread[rows], rel[rows],
            "released_ns " + _s(rel[rows]) + " < previous row's "
            + _s(rel[o[back - 1]])))
    o = np.argsort(req, kind="stable")
    o = o[np.argsort(thread[o], kind="stable")]
    th = thread[o]
    first = np.ones(len(o), dtype=bool)
    first[1:] = th[1:] != th[:-1]
    prev_acq = _shifted_cummax(acq[o], first)
    over = np.flatnonzero(req[o] < prev_acq)
    over = over[~_touches(gaps, th[over], req[o][over], prev_acq[over])]
    if len(over):
        rows = o[over]
        out.append(_violations(
            "thread_overlap", "locks", rows, thread[rows], req[rows],
            "requested at " + _s(req[rows]) + " while still waiting for "
            "another lock until " + _s(prev_acq[over])))


def _check_exits(trace, out, gaps):
    df = trace.exits
    if not len(df):
        return
    thread = df["thread"].to_numpy()
    ex = df["exit_ns"].to_numpy()
    entry = df["entry_ns"]
    has_entry = ~entry.isna().to_numpy()
    en = entry.to_numpy(dtype=np.int64, na_value=0)
    bad = np.flatnonzero(has_entry & (en < ex))
    if len(bad):
        out.append(_violations(
            "exit_entry_before_exit", "exits", bad, thread[bad], ex[bad],
            "entry_ns " + _s(en[bad]) + " < exit_ns " + _s(ex[bad])))
    o, same = _per_thread_prev(thread)
    ex_o, en_o, has_o = ex[o], en[o], has_entry[o]
    back = same[1:] & (ex_o[1:] < ex_o[:-1])
    over = same[1:] & ~back & has_o[:-1] & (ex_o[1:] < en_o[:-1])
    for kind, mask, what, prev in (
            ("thread_time_backwards", back, "previous exit_ns", ex_o),
            ("thread_overlap", over, "previous entry_ns", en_o)):
        idx = np.flatnonzero(mask) + 1
        idx = idx[~_touches(gaps, thread[o[idx]], np.minimum(ex_o[idx], prev[idx - 1]),
                            np.maximum(ex_o[idx], prev[idx - 1]))]
        if len(idx):
            rows = o[idx]
            out.append(_violations(
                kind, "exits", rows, thread[rows], ex[rows],
                "exit_ns " + _s(ex[rows]) + " < " + what + " "
                + _s(prev[idx - 1])))


def _check_loop(trace, out, gaps):
    df = trace.loop
    if not len(df):
        return
    out.append(_stage_order(df, "loop", "loop_stage_order",
                            ["poll_enter_ns", "poll_exit_ns",
                             "dispatch_end_ns"]))
    thread = df["thread"].to_numpy()
    enter, end = df["poll_enter_ns"].to_numpy(), df["dispatch_end_ns"].to_numpy()
    o, same = _per_thread_prev(thread)
    idx = np.flatnonzero(same[1:] & (enter[o][1:] < end[o][:-1])) + 1
    idx = idx[~_touches(gaps, thread[o[idx]], enter[o[idx]], end[o[idx - 1]])]
    if len(idx):
        rows = o[idx]
        out.append(_violations(
            "thread_overlap", "loop", rows, thread[rows], enter[rows],
            "poll_enter_ns " + _s(enter[rows]) + " < previous iteration's "
            "dispatch_end_ns " + _s(end[o[idx - 1]])))


def _check_threads(trace, out):
    known = trace.threads["thread"].to_numpy()
    for name in ("exits", "locks", "bh", "timers", "aio", "loop", "irqs"):
        th = trace.arrow(name).column("thread").to_numpy()
        unknown = ~np.isin(th, known)
        if not unknown.any():
            continue
        ids, first, counts = np.unique(th[unknown], return_index=True,
                                       return_counts=True)
        rows = np.flatnonzero(unknown)[first]
        out.append(_violations(
            "unknown_thread", name, rows, ids, np.zeros(len(ids)),
            "thread " + _s(ids) + " not in the threads table ("
            + _s(counts) + " rows)"))


def check(trace, tolerance_ns=0):
    """Check the trace's invariants and list every violation.

    Checked: one owner per lock at a time; ``request <= acquired <=
    released``; ``prev_owner`` agrees with the replayed previous owner (on
    a whole trace, not after ``window``/``select``); each thread's exits
    and lock records go forward in time without overlapping; stage order
    of AIO requests, bottom halves, timers and loop iterations; ``entry_ns
    >= exit_ns``; thread ids known.  See :data:`VIOLATIONS`.

    Parameters
    ----------
    trace : Trace
    tolerance_ns : int
        Overlaps of lock owners up to this long are not reported (for
        recorders whose release timestamp is taken just after unlocking).

    Returns
    -------
    DataFrame
        ``kind, table, row, thread, ts_ns, detail``, one row per
        violation, sorted by time; empty for a clean trace.  ``row`` is
        the row in ``trace.<table>``.

    Examples
    --------
    >>> v = trace.check()                              # doctest: +SKIP
    >>> v.kind.value_counts()                          # doctest: +SKIP
    """
    if not (isinstance(tolerance_ns, (int, np.integer)) and tolerance_ns >= 0):
        raise ConfigError(f"tolerance_ns must be an integer >= 0, not {tolerance_ns!r}")
    out = []
    gaps = _coverage(trace)[1]
    _check_threads(trace, out)
    _check_locks(trace, out, tolerance_ns, gaps)
    _check_exits(trace, out, gaps)
    _check_loop(trace, out, gaps)
    out.append(_stage_order(trace.aio, "aio", "aio_stage_order",
                            ["submit_ns", "start_ns", "done_ns",
                             "complete_ns"]))
    out.append(_stage_order(trace.bh, "bh", "bh_stage_order",
                            ["scheduled_ns", "run_ns", "done_ns"]))
    out.append(_stage_order(trace.timers, "timers", "timer_stage_order",
                            ["armed_ns", "fire_ns", "done_ns"]))
    out = [v for v in out if v is not None and len(v)]
    if not out:
        return _violations([], [], [], [], [], []).astype(
            {"kind": object, "table": object, "detail": object})
    res = pd.concat(out, ignore_index=True)
    return res.sort_values(["ts_ns", "table", "row"], kind="stable") \
        .reset_index(drop=True)


class _ReplayModule(types.ModuleType):
    """This module, callable: its functions reconstruct what was true at
    each instant of a trace; ``replay(trace, **changes)`` re-executes the
    trace under changed conditions (:func:`kvmscope.analysis.reexecute`)."""

    def __call__(self, trace, policy="barging", seed=None, **changes):
        # Through the package (always loaded before this module): re-execution
        # sits above reconstruction, which must not import it.
        return sys.modules[__package__].reexecute(trace, policy=policy, seed=seed, **changes)


sys.modules[__name__].__class__ = _ReplayModule
