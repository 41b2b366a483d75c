"""Wait anatomy: what each contended lock wait was spent on.

Every wait ``[request_ns, acquired_ns]`` of an acquisition is split into
three parts that add up to it exactly: ``held_ns`` (another owner that
requested the lock no later than the waiter held it), ``barged_ns``
(an owner that requested it later held it: it barged ahead) and
``handoff_ns`` (nobody held it: wake-up and hand-off latency).

Vectorised: one binary search per wait on the lock's ownership intervals,
then one row per (wait, overlapping owner) pair; the only Python loop is
over locks.
"""

import numpy as np
import pandas as pd

from ..errors import ConfigError
from . import replay as _replay

#: ``holder_thread`` / ``holder_callsite`` of a wait no owner overlapped.
NO_HOLDER = -1
NO_CALLSITE = "(none)"

PARTS = ("wait_ns", "held_ns", "barged_ns", "handoff_ns")

_ANATOMY = ["row", "lock", "thread", "thread_name", "callsite", "request_ns",
            "acquired_ns", "wait_ns", "held_ns", "barged_ns", "handoff_ns",
            "holder_thread", "holder_name", "holder_callsite"]
_DETAIL = ["row", "holder_row", "lock", "thread", "thread_name",
           "holder_thread", "holder_name", "holder_callsite", "overlap_ns",
           "barged"]


def _pairs(trace):
    """Waits and their (wait, owner) overlaps, in lock order.

    Returns ``(waits, pw, ph, overlap)``: row numbers of ``trace.locks`` of
    the waiting acquisitions, and per pair the waiter row, holder row and
    overlap in ns (only pairs with a positive overlap).
    """
    df = trace.locks
    order = _replay.lock_order(trace)
    acq = df["acquired_ns"].to_numpy()[order]
    rel = df["released_ns"].to_numpy()[order]
    req = df["request_ns"].to_numpy()[order]
    cont = df["contended"].to_numpy()[order]
    lcode = df["lock"].cat.codes.to_numpy()[order]
    bounds = np.flatnonzero(lcode[1:] != lcode[:-1]) + 1
    waits, pw, ph, ov = [], [], [], []
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        if s == e:
            continue
        a, r, q = acq[s:e], rel[s:e], req[s:e]
        # Where owners overlap (an inconsistent trace), each instant goes
        # to the first of them only: an owner's effective start is after
        # every earlier owner's release, so the parts never exceed the wait.
        covered = np.maximum.accumulate(r)
        start = a.copy()
        start[1:] = np.maximum(a[1:], covered[:-1])
        # A wait that ends before it starts (check() reports it) has no parts.
        w = np.flatnonzero(cont[s:e] & (a >= q))
        waits.append(order[s + w])
        # Owners that may overlap wait i: released (cumulatively) after its
        # request, acquired before it (earlier in acquisition order).
        lo = np.searchsorted(covered, q[w], side="right")
        n = np.maximum(w - lo, 0)
        if not n.sum():
            continue
        wi = np.repeat(w, n)
        first = np.cumsum(n) - n
        hi = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(first, n))
        o = (np.minimum(r[hi], a[wi]) - np.maximum(start[hi], q[wi]))
        keep = o > 0
        pw.append(order[s + wi[keep]])
        ph.append(order[s + hi[keep]])
        ov.append(o[keep])
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts
           else np.zeros(0, dt))
    return (cat(waits, np.int64), cat(pw, np.int64), cat(ph, np.int64),
            cat(ov, np.int64))


def _names(trace, ids):
    return np.asarray(_replay._names(trace, ids), dtype=object)


def _detail(trace, pw, ph, ov):
    df = trace.locks
    req = df["request_ns"].to_numpy()
    holder = df["thread"].to_numpy()[ph].astype(np.int64)
    return pd.DataFrame({
        "row": pw, "holder_row": ph,
        "lock": _replay._take(df["lock"], pw),
        "thread": df["thread"].to_numpy()[pw].astype(np.int64),
        "thread_name": _replay._take(df["thread_name"], pw),
        "holder_thread": holder,
        "holder_name": _names(trace, holder),
        "holder_callsite": _replay._take(df["callsite"], ph),
        "overlap_ns": ov,
        "barged": req[ph] > req[pw],
    })[_DETAIL]


def wait_anatomy(trace, lock=None):
    """Split every lock wait into held, barged and hand-off time.

    For each contended acquisition (``contended`` true, as in
    :func:`replay.lock_waits`; an uncontended one's ``wait_ns`` is the cost
    of taking a free lock, not a wait behind anyone), the wait is
    intersected with the lock's ownership intervals (every other
    acquisition of the lock, whatever its thread).

    Parameters
    ----------
    trace : Trace
    lock : str or list of str, optional
        Only these locks.

    Returns
    -------
    DataFrame
        One row per contended acquisition (uncontended ones, and ones
        acquired before their request, are not listed): ``row`` (in ``trace.locks``), ``lock, thread,
        thread_name, callsite, request_ns, acquired_ns, wait_ns``;
        ``held_ns`` (held by owners that requested no later than this
        waiter), ``barged_ns`` (held by owners that requested later),
        ``handoff_ns`` (the lock free): the three add up to ``wait_ns``;
        ``holder_thread, holder_name, holder_callsite``: the owner that
        overlapped the wait longest (the earliest on a tie; ``-1``,
        ``"(none)"`` when none did).  Sorted by lock, then ``acquired_ns``.

    Examples
    --------
    >>> a = trace.wait_anatomy("bql")                  # doctest: +SKIP
    >>> a[["held_ns", "barged_ns", "handoff_ns"]].sum()  # doctest: +SKIP
    """
    df = trace.locks
    waits, pw, ph, ov = _pairs(trace)
    req = df["request_ns"].to_numpy()
    acq = df["acquired_ns"].to_numpy()
    wait = acq[waits] - req[waits]
    pos = np.empty(len(df), dtype=np.int64)
    pos[waits] = np.arange(len(waits))
    pi = pos[pw]
    barged = req[ph] > req[pw]
    held = np.bincount(pi, weights=np.where(barged, 0, ov),
                       minlength=len(waits)).astype(np.int64)
    barg = np.bincount(pi, weights=np.where(barged, ov, 0),
                       minlength=len(waits)).astype(np.int64)
    # Longest overlap per wait, earliest holder on a tie.
    best = np.lexsort((-ov, pi))
    firsts = best[np.r_[True, pi[best][1:] != pi[best][:-1]]] if len(best) \
        else best
    hrow = np.full(len(waits), -1, dtype=np.int64)
    hrow[pi[firsts]] = ph[firsts]
    has = hrow >= 0
    hthread = np.full(len(waits), NO_HOLDER, dtype=np.int64)
    hthread[has] = df["thread"].to_numpy()[hrow[has]]
    csite = df["callsite"]
    hcs = np.full(len(waits), NO_CALLSITE, dtype=object)
    hcs[has] = np.asarray(csite.cat.categories, dtype=object)[
        csite.cat.codes.to_numpy()[hrow[has]]]
    out = pd.DataFrame({
        "row": waits,
        "lock": _replay._take(df["lock"], waits),
        "thread": df["thread"].to_numpy()[waits].astype(np.int64),
        "thread_name": _replay._take(df["thread_name"], waits),
        "callsite": _replay._take(df["callsite"], waits),
        "request_ns": req[waits], "acquired_ns": acq[waits],
        "wait_ns": wait, "held_ns": held, "barged_ns": barg,
        "handoff_ns": wait - held - barg,
        "holder_thread": hthread,
        "holder_name": _names(trace, hthread),
        "holder_callsite": pd.Categorical(hcs),
    })[_ANATOMY]
    return _replay._lock_filter(out, lock).reset_index(drop=True)


def wait_anatomy_detail(trace, lock=None):
    """Every (waiting acquisition, overlapping owner) pair of
    :func:`wait_anatomy`, long form.

    Returns
    -------
    DataFrame
        ``row`` (the waiting acquisition in ``trace.locks``), ``holder_row``
        (the owner's acquisition), ``lock, thread, thread_name,
        holder_thread, holder_name, holder_callsite``, ``overlap_ns`` (time
        of the wait that owner held the lock) and ``barged`` (the owner
        requested the lock after the waiter).  Per ``row``, the
        ``overlap_ns`` of the rows with ``barged`` false add up to
        ``held_ns``, those with ``barged`` true to ``barged_ns``.  Sorted by
        lock, then the waiter's and the owner's ``acquired_ns``.
    """
    _, pw, ph, ov = _pairs(trace)
    return _replay._lock_filter(_detail(trace, pw, ph, ov), lock) \
        .reset_index(drop=True)


def summary(anatomy, by="lock"):
    """Sum the parts of :func:`wait_anatomy` per group.

    Parameters
    ----------
    anatomy : DataFrame
        :func:`wait_anatomy` output (or a selection of its rows).
    by : str or list of str
        Its columns to group by, e.g. ``"lock"``, ``["lock", "thread_name"]``
        or ``"holder_callsite"`` (a whole wait goes to its longest holder;
        :func:`wait_anatomy_detail` splits it among all).

    Returns
    -------
    DataFrame
        The keys, ``waits`` (acquisitions), ``wait_ns, held_ns, barged_ns,
        handoff_ns`` (sums) and ``barged_pct, handoff_pct`` (shares of
        ``wait_ns``), by decreasing ``wait_ns``.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ConfigError("by: give at least one column to group by")
    unknown = [k for k in keys if k not in anatomy.columns]
    if unknown:
        raise ConfigError(f"by: unknown column {unknown[0]!r}; columns are "
                          + ", ".join(anatomy.columns))
    g = anatomy.groupby(keys, observed=True, sort=False)
    out = g[list(PARTS)].sum()
    out.insert(0, "waits", g.size().astype(np.int64))
    total = out["wait_ns"].to_numpy().astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["barged_pct"] = 100.0 * out["barged_ns"].to_numpy() / total
        out["handoff_pct"] = 100.0 * out["handoff_ns"].to_numpy() / total
    return out.reset_index().sort_values(
        "wait_ns", ascending=False, kind="stable").reset_index(drop=True)


def caused(trace, lock=None, threads=None):
    """Critical sections ranked by the waiting they caused others: the
    investigator's question "whose lock hold made the others wait?".

    Each contended wait is split as in :func:`wait_anatomy`; the time other
    threads spent waiting while an acquisition from a call site held the lock
    (``held_ns`` and ``barged_ns`` parts) is charged to that call site.  The
    hand-off latency, when the lock was free and nobody held it, is one more
    row per lock, holder call site ``(hand-off)``, after the critical sections.

    Parameters
    ----------
    trace : Trace
    lock : str or list of str, optional
        Only these locks.
    threads : list of str, optional
        Only the waits of these threads (the waiters): who made them wait.

    Returns
    -------
    DataFrame
        ``lock, holder_callsite``, ``caused_ns`` (others' wait while it held
        the lock), ``caused_pct`` (share of all contended wait on that lock),
        ``waits`` (contended acquisitions it delayed), ``barged_ns`` (the part
        of ``caused_ns`` during which it had barged ahead of the waiter), and
        its own ``acquisitions``, ``hold_mean_ns``, ``hold_p99_ns``,
        ``hold_total_ns``.  Critical sections sorted by ``caused_ns``,
        largest first, then the hand-off rows.

    Examples
    --------
    >>> trace.caused().head(3)                         # doctest: +SKIP
    """
    detail = wait_anatomy_detail(trace, lock)
    anatomy = wait_anatomy(trace, lock)
    if threads is not None:
        names = set(threads)
        detail = detail[detail["thread_name"].astype(str).isin(names)]
        anatomy = anatomy[anatomy["thread_name"].astype(str).isin(names)]
    cols = ["lock", "holder_callsite", "caused_ns", "caused_pct", "waits", "barged_ns",
            "acquisitions", "hold_mean_ns", "hold_p99_ns", "hold_total_ns"]
    if anatomy.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("lock", "holder_callsite") else float)
                             for c in cols})
    d = detail.assign(lock=detail["lock"].astype(str), holder_callsite=detail["holder_callsite"].astype(str),
                      barged_part=np.where(detail["barged"], detail["overlap_ns"], 0))
    by_site = d.groupby(["lock", "holder_callsite"], sort=False).agg(
        caused_ns=("overlap_ns", "sum"), waits=("row", "nunique"),
        barged_ns=("barged_part", "sum")).reset_index()
    a = anatomy.assign(lock=anatomy["lock"].astype(str))
    free = a.groupby("lock", sort=False).agg(caused_ns=("handoff_ns", "sum"),
                                             waits=("handoff_ns", lambda s: int((s > 0).sum())))
    free = free.reset_index().assign(holder_callsite="(hand-off)", barged_ns=0)
    out = pd.concat([by_site, free[free["caused_ns"] > 0]], ignore_index=True)
    total = a.groupby("lock")["wait_ns"].sum()
    out["caused_pct"] = 100.0 * out["caused_ns"] / out["lock"].map(total).to_numpy()
    locks = trace.locks.assign(lock=trace.locks["lock"].astype(str),
                               callsite=trace.locks["callsite"].astype(str))
    hold = locks.groupby(["lock", "callsite"])["hold_ns"].agg(
        acquisitions="size", hold_mean_ns="mean", hold_p99_ns=lambda s: s.quantile(0.99),
        hold_total_ns="sum")
    hold.index = hold.index.set_names(["lock", "holder_callsite"])
    out = out.join(hold, on=["lock", "holder_callsite"])
    out["acquisitions"] = out["acquisitions"].astype("Int64")
    # critical sections first, largest first; the hand-off rows (nobody's
    # critical section) after them
    out["_handoff"] = out["holder_callsite"] == "(hand-off)"
    out = out.sort_values(["_handoff", "caused_ns"], ascending=[True, False], kind="stable")
    return out[cols].reset_index(drop=True)
