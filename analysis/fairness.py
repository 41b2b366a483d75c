"""Hand-off and fairness: who got a contended lock, who was passed over
and for how long, and the episodes in which the lock never went free
(ping-pong between two threads, convoys of several).

Definitions (per lock, acquisitions in ``acquired_ns`` order; a *waiter* is
a contended acquisition between its request and its acquisition):

- owner change: an acquisition by another thread than the previous one
  (mutrace's "Changed"; ``handoffs`` in :func:`stats.lock_stats`);
- re-acquisition while others wait: the previous owner takes the lock
  again although another thread was already waiting for it;
- passed over: acquisitions by others during one thread's wait; its
  longest wait is how long it was starved;
- ping-pong: a run of consecutive hand-offs that alternate between the same
  two threads, each within *max_gap_ns* of the previous release (the lock,
  and its cache line, bouncing between two CPUs), waited for or not;
- convoy: a maximal interval during which at least one thread was always
  waiting (the lock never went free), with at least *min_handoffs*
  hand-offs to waiting threads.

Vectorised: sorted event arrays and binary searches per lock; the only
Python loop is over locks.
"""

import numpy as np
import pandas as pd

from . import replay as _replay

_FAIRNESS = ["lock", "thread", "thread_name", "acquisitions", "contended", "owner_changes",
             "reacquired_while_waited", "barged", "passed_over_max", "starved_max_ns",
             "starved_at", "wait_total_ns"]
_PINGPONG = ["lock", "threads", "start_ns", "end_ns", "duration_ns", "window", "handoffs",
             "handoffs_per_ms", "waited", "gap_mean_ns", "hold_mean_ns"]
_CONVOYS = ["lock", "start_ns", "end_ns", "duration_ns", "window", "acquisitions",
             "handoffs", "threads", "max_waiting", "wait_ns", "first_holder", "first_callsite"]


def _per_lock(trace):
    """Per lock: the positions (into ``trace.locks``) of its acquisitions in
    ``acquired_ns`` order."""
    df = trace.locks
    order = _replay.lock_order(trace)
    codes = df["lock"].cat.codes.to_numpy()[order]
    bounds = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        if e > s:
            yield order[s:e]


def _windows(trace, start_ns, end_ns):
    """``"10.204ms:10.310ms"`` per interval: a ``--window`` (relative to the
    trace start, in whole microseconds) that contains ``[start_ns, end_ns]``."""
    t0 = trace.start_ns
    lo = np.maximum(np.asarray(start_ns, dtype=np.int64) - t0, 0) // 1000
    hi = -(-(np.asarray(end_ns, dtype=np.int64) - t0 + 1) // 1000)
    return np.asarray([f"{a / 1000:.3f}ms:{b / 1000:.3f}ms" for a, b in zip(lo.tolist(), hi.tolist())],
                      dtype=object)


def fairness(trace, lock=None):
    """Per lock and thread: how fairly the thread was served.

    Returns
    -------
    DataFrame
        ``lock, thread, thread_name``; ``acquisitions``, ``contended``;
        ``owner_changes`` (its acquisitions that took the lock from another
        thread); ``reacquired_while_waited`` (it took the lock right after
        itself while another thread was waiting); ``barged`` (acquisitions
        in which it got the lock before a thread that had asked earlier);
        ``passed_over_max`` (most acquisitions by others during one of its
        waits); ``starved_max_ns`` (its longest wait) and ``starved_at``
        (that wait as a ``--window``, relative to the trace start);
        ``wait_total_ns``.  Sorted by lock, then
        ``starved_max_ns``, longest first.

    Examples
    --------
    >>> trace.fairness().head()                       # doctest: +SKIP
    """
    df = trace.locks
    req_all = df["request_ns"].to_numpy()
    acq_all = df["acquired_ns"].to_numpy()
    thr_all = df["thread"].to_numpy().astype(np.int64)
    cont_all = df["contended"].to_numpy()
    frames = []
    for pos in _per_lock(trace):
        req, acq, thr, cont = req_all[pos], acq_all[pos], thr_all[pos], cont_all[pos]
        # Work on the waiters (contended rows) where possible: on large
        # traces they are few, and random-access searches over every row
        # cost more in cache misses than the arithmetic.
        ci = np.flatnonzero(cont)
        wait_c = acq[ci] - req[ci]
        prev_thr = np.r_[-1, thr[:-1]]
        changed = (prev_thr != thr) & (prev_thr != -1)
        # Waiters at each acquisition instant (others only: its own request
        # and acquisition cancel out); acq is sorted, so the acquisitions of
        # waiters so far are a running count.
        waiting = np.searchsorted(np.sort(req[ci]), acq, side="right") - np.cumsum(cont)
        reacq = (prev_thr == thr) & (waiting > 0)
        # Passed over: acquisitions strictly inside a wait (i is the number
        # of acquisitions before acq_i).
        passed_c = ci - np.searchsorted(acq, req[ci], side="right")
        # Barged: a waiter j that asked earlier (req_j < req_i) was still
        # waiting when i got the lock (acq_j > acq_i): the largest acq among
        # the earlier requests tells.  Only where someone was waiting.
        order_q = np.argsort(req[ci], kind="stable")
        q_req, q_acq = req[ci][order_q], acq[ci][order_q]
        run_max = np.maximum.accumulate(q_acq) if len(q_acq) else q_acq
        cand = np.flatnonzero(waiting > 0)
        k = np.searchsorted(q_req, req[cand], side="left")
        barged = np.zeros(len(pos), dtype=bool)
        barged[cand[k > 0]] = run_max[k[k > 0] - 1] > acq[cand[k > 0]]
        codes, uniq = pd.factorize(thr, sort=True)
        m = len(uniq)

        def total(x, at=None):
            return np.bincount(codes if at is None else codes[at], weights=x,
                               minlength=m).astype(np.int64)

        per_thread = pd.DataFrame({"code": codes[ci], "wait": wait_c, "passed": passed_c,
                                   "at": ci}).groupby("code")
        longest = per_thread["wait"].idxmax()           # positions in the waiters
        starved = np.zeros(m, dtype=np.int64)
        starved[longest.index] = wait_c[longest.to_numpy()]
        starved_at = np.full(m, "-", dtype=object)
        j = longest.to_numpy()
        starved_at[longest.index] = _windows(trace, req[ci[j]], acq[ci[j]])
        passed_max = np.zeros(m, dtype=np.int64)
        pm = per_thread["passed"].max()
        passed_max[pm.index] = pm.to_numpy()
        frames.append(pd.DataFrame({
            "lock": str(df["lock"].iloc[pos[0]]),
            "thread": uniq,
            "acquisitions": np.bincount(codes, minlength=m),
            "contended": total(None, ci) if len(ci) else np.zeros(m, np.int64),
            "owner_changes": total(changed),
            "reacquired_while_waited": total(reacq),
            "barged": total(barged),
            "passed_over_max": passed_max,
            "starved_max_ns": starved,
            "starved_at": starved_at,
            "wait_total_ns": total(wait_c, ci),
        }))
    if not frames:
        return pd.DataFrame({c: [] for c in _FAIRNESS})
    out = pd.concat(frames, ignore_index=True)
    out["thread_name"] = np.asarray(_replay._names(trace, out["thread"].to_numpy()), dtype=object)
    out = _replay._lock_filter(out[_FAIRNESS], lock)
    return out.sort_values(["lock", "starved_max_ns"], ascending=[True, False],
                           kind="stable").reset_index(drop=True)


def _strings(col, rows):
    """Rows *rows* of a (categorical) column as an array of str."""
    return np.asarray(_replay._take(col, rows), dtype=object).astype(str)


def _member_names(ep, thread, ep2, thread2, nep, idx, trace):
    """Comma-separated sorted names of the threads of episodes *idx*, from
    (episode, thread) pairs ``(ep, thread)`` and ``(ep2, thread2)``."""
    eps = np.r_[ep, ep2]
    ids = np.r_[thread, thread2]
    code, uniq = pd.factorize(ids, sort=True)
    names = np.asarray(_replay._names(trace, uniq), dtype=object)
    if len(uniq) <= 62:
        mask = np.zeros(nep, dtype=np.int64)
        np.bitwise_or.at(mask, eps, np.left_shift(1, code.astype(np.int64)))
        sets, inv = np.unique(mask[idx], return_inverse=True)
        text = [",".join(sorted(names[b] for b in range(len(uniq)) if m >> b & 1)) for m in sets]
        return np.asarray(text, dtype=object)[inv]
    pairs = pd.DataFrame({"ep": eps, "name": names[code]}).drop_duplicates()
    joined = pairs.groupby("ep")["name"].agg(lambda s: ",".join(sorted(s)))
    return joined.reindex(idx).to_numpy()


def convoys(trace, lock=None, min_handoffs=4):
    """Lock convoys: intervals in which the lock always had a waiter.

    Parameters
    ----------
    trace : Trace
    lock : str or list of str, optional
    min_handoffs : int
        Keep episodes with at least this many hand-offs to a waiting thread.

    Returns
    -------
    DataFrame
        ``lock``; ``start_ns, end_ns`` (first request that found the lock held, last waiter's
        acquisition), ``duration_ns``; ``window`` (``"START:END"`` relative
        to the trace start, for ``--window``); ``acquisitions`` (by
        waiters, in the episode), ``handoffs`` (of them, from another
        thread), ``threads`` (names, comma-separated), ``max_waiting``
        (most threads waiting at once), ``wait_ns`` (total);
        ``first_holder, first_callsite``: who held the lock when the
        episode began (it started the queue).  Longest first.

    Examples
    --------
    >>> trace.convoys().head()                         # doctest: +SKIP
    """
    df = trace.locks
    req_all = df["request_ns"].to_numpy()
    acq_all = df["acquired_ns"].to_numpy()
    rel_all = df["released_ns"].to_numpy()
    thr_all = df["thread"].to_numpy().astype(np.int64)
    cont_all = df["contended"].to_numpy() & (acq_all >= req_all)
    frames = []
    for pos in _per_lock(trace):
        w = pos[cont_all[pos]]
        if len(w) < 2:
            continue
        # Waiting-queue depth: +1 at each request, -1 at each acquisition;
        # at equal times the acquisition first, so that back-to-back waits
        # do not merge through a zero-length gap.
        t = np.r_[req_all[w], acq_all[w]]
        d = np.r_[np.ones(len(w), np.int64), -np.ones(len(w), np.int64)]
        o = np.lexsort((d, t))
        t, d = t[o], d[o]
        depth = np.cumsum(d)
        starts = np.flatnonzero((depth == 1) & (d == 1) & (np.r_[0, depth[:-1]] == 0))
        ends = np.flatnonzero(depth == 0)
        if not len(starts):
            continue
        # Every start has the first zero after it as its end.
        ends = ends[np.searchsorted(ends, starts)]
        s_ns, e_ns = t[starts], t[ends]
        peak = np.maximum.reduceat(depth, starts)
        # Waiters belong to the episode in which they were acquired.
        wacq = acq_all[w]
        wo = np.argsort(wacq, kind="stable")
        w, wacq = w[wo], wacq[wo]
        ep = np.searchsorted(s_ns, wacq, side="left") - 1
        ep = np.clip(ep, 0, len(s_ns) - 1)
        # The previous owner of each waiter (any acquisition of the lock).
        lacq = acq_all[pos]
        prev = pos[np.clip(np.searchsorted(lacq, wacq, side="left") - 1, 0, len(pos) - 1)]
        ho = thr_all[prev] != thr_all[w]
        nep = len(s_ns)
        handoffs = np.bincount(ep, weights=ho, minlength=nep).astype(np.int64)
        count = np.bincount(ep, minlength=nep)
        waited = np.bincount(ep, weights=wacq - req_all[w], minlength=nep).astype(np.int64)
        keep = handoffs >= min_handoffs
        if not keep.any():
            continue
        # Threads per episode (the waiters and the first holder) as a bit
        # set per episode, named once per distinct set.
        idx = np.flatnonzero(keep)
        first_owner = pos[np.clip(np.searchsorted(lacq, s_ns, side="right") - 1, 0, len(pos) - 1)]
        held = (acq_all[first_owner] <= s_ns) & (rel_all[first_owner] >= s_ns)
        members = _member_names(ep, thr_all[w], np.flatnonzero(held), thr_all[first_owner[held]],
                                nep, idx, trace)
        frames.append(pd.DataFrame({
            "lock": str(df["lock"].iloc[pos[0]]),
            "start_ns": s_ns[idx], "end_ns": e_ns[idx], "duration_ns": e_ns[idx] - s_ns[idx],
            "window": _windows(trace, s_ns[idx], e_ns[idx]),
            "acquisitions": count[idx], "handoffs": handoffs[idx],
            "threads": members,
            "max_waiting": peak[idx], "wait_ns": waited[idx],
            "first_holder": np.where(held[idx], _strings(df["thread_name"], first_owner[idx]),
                                     "(none)"),
            "first_callsite": np.where(held[idx], _strings(df["callsite"], first_owner[idx]),
                                       "(none)"),
        }))
    if not frames:
        return pd.DataFrame({c: [] for c in _CONVOYS})
    out = _replay._lock_filter(pd.concat(frames, ignore_index=True)[_CONVOYS], lock)
    return out.sort_values("duration_ns", ascending=False, kind="stable").reset_index(drop=True)


def pingpong(trace, lock=None, min_handoffs=16, max_gap_ns=20_000):
    """Ping-pong chains: the lock bouncing between two threads.

    Parameters
    ----------
    trace : Trace
    lock : str or list of str, optional
    min_handoffs : int
        Keep chains of at least this many hand-offs.
    max_gap_ns : int
        A hand-off continues the chain when the next owner took the lock
        within this long of the release (default 20 us: a couple of exits
        here; the hand-off latency of a busy two-vCPU run is ~4 us median).

    Returns
    -------
    DataFrame
        ``lock, threads`` (the two, comma-separated), ``start_ns, end_ns``
        (first acquisition, last release), ``duration_ns``, ``window``
        (``"START:END"`` relative to the trace start, for ``--window``),
        ``handoffs``, ``handoffs_per_ms``, ``waited`` (hand-offs to a
        thread that was already waiting), ``gap_mean_ns`` (release to the
        other's acquisition), ``hold_mean_ns``.  Longest first.

    Examples
    --------
    >>> trace.pingpong().head()                        # doctest: +SKIP
    """
    df = trace.locks
    acq_all = df["acquired_ns"].to_numpy()
    rel_all = df["released_ns"].to_numpy()
    req_all = df["request_ns"].to_numpy()
    thr_all = df["thread"].to_numpy().astype(np.int64)
    frames = []
    for pos in _per_lock(trace):
        if len(pos) < 3:
            continue
        acq, rel, req, thr = acq_all[pos], rel_all[pos], req_all[pos], thr_all[pos]
        gap = np.r_[0, acq[1:] - rel[:-1]]
        link = np.r_[False, thr[1:] != thr[:-1]] & (gap <= max_gap_ns)
        # A third thread inside a run (thr[i] != thr[i-2]) starts a new one.
        alt = np.r_[False, False, thr[2:] == thr[:-2]]
        start = link & ~(np.r_[False, link[:-1]] & alt)
        run = np.cumsum(start)
        i = np.flatnonzero(link)
        if not len(i):
            continue
        r = run[i]
        first = i[np.r_[True, r[1:] != r[:-1]]]
        last = i[np.r_[r[1:] != r[:-1], True]]
        n = last - first + 1
        keep = n >= min_handoffs
        if not keep.any():
            continue
        first, last, n = first[keep], last[keep], n[keep]
        lo = first - 1
        start_ns, end_ns = acq[lo], rel[last]
        csum = lambda x: np.r_[0, np.cumsum(x)]      # noqa: E731 (sum over index ranges)
        waited = csum(req <= np.r_[acq[0], rel[:-1]])
        gaps = csum(gap)
        holds = csum(rel - acq)
        dur = end_ns - start_ns
        one, two = _strings(df["thread_name"], pos[lo]), _strings(df["thread_name"], pos[lo + 1])
        pair = np.where(one < two, one + "," + two, two + "," + one)
        frames.append(pd.DataFrame({
            "lock": str(df["lock"].iloc[pos[0]]),
            "threads": pair,
            "start_ns": start_ns, "end_ns": end_ns, "duration_ns": dur,
            "window": _windows(trace, start_ns, end_ns),
            "handoffs": n,
            "handoffs_per_ms": n / np.maximum(dur, 1) * 1e6,
            "waited": (waited[last + 1] - waited[first]).astype(np.int64),
            "gap_mean_ns": (gaps[last + 1] - gaps[first]) / n,
            "hold_mean_ns": (holds[last + 1] - holds[lo]) / (n + 1),
        }))
    if not frames:
        return pd.DataFrame({c: [] for c in _PINGPONG})
    out = _replay._lock_filter(pd.concat(frames, ignore_index=True)[_PINGPONG], lock)
    return out.sort_values("duration_ns", ascending=False, kind="stable").reset_index(drop=True)
