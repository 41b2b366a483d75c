"""Replay of a trace: lock ownership, waits, hand-offs, thread states, queue
depths, and the invariant checker.

Every function takes a :class:`~kvmscope.analysis.Trace` and returns a
DataFrame; all work is vectorised (sorts, shifts, cumulative sums), so cost
grows with the number of records but no Python code runs per record.
"""

import numpy as np
import pandas as pd

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
    from .trace import _thread_names
    return _thread_names(thread_ids, trace.threads)


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
        raise ValueError(f"unknown queue {queue!r}; one of {', '.join(cols)}")
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


def _check_locks(trace, out, tolerance_ns=0):
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
        out.append(_violations(
            "lock_overlap", "locks", rows, thread[rows], acq[rows],
            "'" + _s(df["lock"].to_numpy()[rows]) + "' acquired at "
            + _s(acq[rows]) + " while thread " + _s(holder)
            + " held it until " + _s(prev_max[bad])))

    # prev_owner agrees with replay (only meaningful on a whole trace).
    if trace.complete:
        prev_owner = df["prev_owner"].to_numpy()[order]
        replay_prev = np.where(first, -1, np.roll(thread[order], 1))
        lone = first & (prev_owner != -1)
        mism = ~first & (prev_owner != replay_prev)
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
    if len(over):
        rows = o[over]
        out.append(_violations(
            "thread_overlap", "locks", rows, thread[rows], req[rows],
            "requested at " + _s(req[rows]) + " while still waiting for "
            "another lock until " + _s(prev_acq[over])))


def _check_exits(trace, out):
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
        if len(idx):
            rows = o[idx]
            out.append(_violations(
                kind, "exits", rows, thread[rows], ex[rows],
                "exit_ns " + _s(ex[rows]) + " < " + what + " "
                + _s(prev[idx - 1])))


def _check_loop(trace, out):
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
    out = []
    _check_threads(trace, out)
    _check_locks(trace, out, tolerance_ns)
    _check_exits(trace, out)
    _check_loop(trace, out)
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
