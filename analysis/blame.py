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
    overlap in ns (only pairs with a positive overlap).  Computed once per
    trace: the anatomy, ``caused`` and ``blockers`` share it.
    """
    if "wait_pairs" not in trace._cache:
        trace._cache["wait_pairs"] = _compute_pairs(trace)
    return trace._cache["wait_pairs"]


def _compute_pairs(trace):
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


def _name_column(trace, ids):
    """Thread names of thread ids *ids*, as a categorical (names looked up
    once per distinct id)."""
    inv, uniq = pd.factorize(np.asarray(ids), sort=True)
    names = _names(trace, uniq)
    if len(set(names)) != len(names):
        return names[inv.reshape(-1)]
    return pd.Categorical.from_codes(inv.reshape(-1), categories=list(names))


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
        "holder_name": _name_column(trace, holder),
        "holder_callsite": _replay._take(df["callsite"], ph),
        "overlap_ns": ov,
        "barged": req[ph] > req[pw],
    })[_DETAIL]


def _anatomy(trace, pairs):
    """The :func:`wait_anatomy` table (all locks) from :func:`_pairs`."""
    df = trace.locks
    waits, pw, ph, ov = pairs
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
    # Longest overlap per wait, earliest holder on a tie: pairs come grouped
    # by wait (pi non-decreasing) and, within a wait, in the owners' order.
    hrow = np.full(len(waits), -1, dtype=np.int64)
    if len(pi):
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        top = np.maximum.reduceat(ov, starts)
        cand = np.flatnonzero(ov == np.repeat(top, np.diff(np.r_[starts, len(pi)])))
        firsts = cand[np.r_[True, pi[cand][1:] != pi[cand][:-1]]]
        hrow[pi[firsts]] = ph[firsts]
    has = hrow >= 0
    hthread = np.full(len(waits), NO_HOLDER, dtype=np.int64)
    hthread[has] = df["thread"].to_numpy()[hrow[has]]
    # Categoricals built from codes: no string per row.
    csite = df["callsite"]
    cats = list(csite.cat.categories)
    none = cats.index(NO_CALLSITE) if NO_CALLSITE in cats else len(cats)
    codes = np.full(len(waits), none, dtype=np.int64)
    codes[has] = csite.cat.codes.to_numpy()[hrow[has]]
    hcs = pd.Categorical.from_codes(codes, categories=cats + [NO_CALLSITE] * (none == len(cats)))
    hname = _name_column(trace, hthread)
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
        "holder_name": hname,
        "holder_callsite": hcs,
    })[_ANATOMY]
    return out


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
    return _replay._lock_filter(_anatomy(trace, _pairs(trace)), lock).reset_index(drop=True)


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
    df = trace.locks
    cols = ["lock", "holder_callsite", "caused_ns", "caused_pct", "waits", "barged_ns",
            "acquisitions", "hold_mean_ns", "hold_p99_ns", "hold_total_ns"]
    waits, pw, ph, ov = _pairs(trace)
    req = df["request_ns"].to_numpy()
    acq = df["acquired_ns"].to_numpy()
    lcode = df["lock"].cat.codes.to_numpy().astype(np.int64)
    ccode = df["callsite"].cat.codes.to_numpy().astype(np.int64)
    locks = np.asarray(df["lock"].cat.categories, dtype=object)
    sites = np.asarray(df["callsite"].cat.categories, dtype=object)
    keep_w = np.ones(len(waits), dtype=bool)
    keep_p = np.ones(len(pw), dtype=bool)
    if lock is not None:
        want = np.isin(locks, [lock] if isinstance(lock, str) else list(lock))
        keep_w &= want[lcode[waits]]
        keep_p &= want[lcode[pw]]
    if threads is not None:
        ids = trace.thread_ids(list(threads)).astype(np.int64)
        thread = df["thread"].to_numpy().astype(np.int64)
        keep_w &= np.isin(thread[waits], ids)
        keep_p &= np.isin(thread[pw], ids)
    waits = waits[keep_w]
    pw, ph, ov = pw[keep_p], ph[keep_p], ov[keep_p]
    if not len(waits):
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("lock", "holder_callsite") else float)
                             for c in cols})
    nl, nc = len(locks), len(sites)
    # Each (lock, holder call site) is one bin; the hand-off rows are bins nc.
    key = lcode[ph] * (nc + 1) + ccode[ph]
    nbins = nl * (nc + 1)
    caused = np.bincount(key, weights=ov, minlength=nbins).astype(np.float64)
    barged = np.bincount(key, weights=np.where(req[ph] > req[pw], ov, 0), minlength=nbins)
    pairs = np.sort(pw * nbins + key)       # a sort: cheaper than a hash unique here
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    delayed = np.bincount(pairs % nbins, minlength=nbins)
    wait = acq[waits] - req[waits]
    # Hand-off time per wait: its wait minus what owners covered.
    order = np.argsort(waits)
    covered = np.zeros(len(waits))
    covered[order] = np.bincount(np.searchsorted(waits[order], pw), weights=ov, minlength=len(waits))
    handoff = wait - covered
    hkey = lcode[waits] * (nc + 1) + nc
    caused += np.bincount(hkey, weights=handoff, minlength=nbins)
    delayed += np.bincount(hkey, weights=handoff > 0, minlength=nbins).astype(np.int64)
    total = np.bincount(lcode[waits], weights=wait, minlength=nl)
    bins = np.flatnonzero(caused > 0)
    out = pd.DataFrame({
        "lock": locks[bins // (nc + 1)],
        "holder_callsite": np.where(bins % (nc + 1) == nc, "(hand-off)",
                                    sites[np.minimum(bins % (nc + 1), nc - 1)]),
        "caused_ns": caused[bins].astype(np.int64),
        "caused_pct": 100.0 * caused[bins] / total[bins // (nc + 1)],
        "waits": delayed[bins].astype(np.int64),
        "barged_ns": barged[bins].astype(np.int64),
    })
    hold = trace.lock_stats(["lock", "callsite"])[["lock", "callsite", "acquisitions", "hold_mean_ns",
                                                    "hold_p99_ns", "hold_total_ns"]]
    hold = hold.assign(lock=hold["lock"].astype(str), callsite=hold["callsite"].astype(str))
    out = out.merge(hold.rename(columns={"callsite": "holder_callsite"}),
                    on=["lock", "holder_callsite"], how="left")
    out["acquisitions"] = out["acquisitions"].astype("Int64")
    # critical sections first, largest first; the hand-off rows (nobody's
    # critical section) after them
    out["_handoff"] = out["holder_callsite"] == "(hand-off)"
    out = out.sort_values(["_handoff", "caused_ns"], ascending=[True, False], kind="stable")
    return out[cols].reset_index(drop=True)


#: Most (lock, waiter, holder) bins :func:`blockers` counts densely; a
#: damaged trace with thousands of thread ids is counted sparsely instead.
_DENSE_BINS = 1 << 22


def _first_in_group(group, value):
    """Whether each element is the first of its *value* within its run of
    equal *group* (*group* non-decreasing).  Runs of 3 or fewer, the usual
    case, are compared with their neighbours; longer ones are sorted."""
    n = len(group)
    first = np.ones(n, dtype=bool)
    if n < 2:
        return first
    later = np.flatnonzero(group[1:] == group[:-1]) + 1      # not the first of its run
    if not len(later):
        return first
    for k in (1, 2):
        i = later[later >= k]
        first[i[(group[i] == group[i - k]) & (value[i] == value[i - k])]] = False
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    if sizes.max() > 3:
        idx = np.flatnonzero(np.repeat(sizes > 3, sizes))
        o = np.lexsort((idx, value[idx], group[idx]))
        g, v = group[idx][o], value[idx][o]
        first[idx[o]] = np.r_[True, (g[1:] != g[:-1]) | (v[1:] != v[:-1])]
    return first


def blockers(trace, lock=None, callsites=None):
    """Who blocks whom: each contended wait attributed to the threads that
    held the lock meanwhile.

    The same split as :func:`wait_anatomy`, per thread: the overlap of a
    wait with each other thread's ownership is that thread's share; what no
    other thread covered (the lock free but not yet taken: wake-up and
    hand-off latency) goes to holder ``-1``, ``"(none)"``.

    Parameters
    ----------
    lock : str, optional
    callsites : list of str, optional
        Only the waits of acquisitions at these call sites (the waiter's
        call site; the holders may be anywhere): who blocks *them*.

    Returns
    -------
    DataFrame
        ``lock, waiter, waiter_name, holder, holder_name, waits`` (contended
        acquisitions that waited on this holder), ``wait_ns`` (attributed
        wait), sorted by ``wait_ns``.

    Examples
    --------
    >>> trace.blockers().head()                        # doctest: +SKIP
    """
    df = trace.locks
    waits, pw, ph, ov = _pairs(trace)
    cols = ["lock", "waiter", "waiter_name", "holder", "holder_name", "waits", "wait_ns"]
    if callsites is not None:
        at = df["callsite"].astype(str).isin(list(callsites)).to_numpy()
        waits = waits[at[waits]]
        keep = at[pw]
        pw, ph, ov = pw[keep], ph[keep], ov[keep]
    thread = df["thread"].to_numpy().astype(np.int64)
    lcode = df["lock"].cat.codes.to_numpy().astype(np.int64)
    req = df["request_ns"].to_numpy()
    acq = df["acquired_ns"].to_numpy()
    # A thread's own acquisitions never block it (only an inconsistent trace
    # has them overlap its wait): that time counts as free.
    other = thread[ph] != thread[pw]
    pw, ph, ov = pw[other], ph[other], ov[other]
    pos = np.empty(len(df), dtype=np.int64)
    pos[waits] = np.arange(len(waits))
    pi = pos[pw]                                   # non-decreasing: pairs come by wait
    covered = np.bincount(pi, weights=ov, minlength=len(waits))
    free = (acq[waits] - req[waits]) - covered
    has = free > 0
    # One row per (lock, waiter, holder): a dense code per thread id (with a
    # slot for "no holder"), one int64 key per pair and per free time.
    tids = np.unique(np.r_[pd.unique(thread), NO_HOLDER])
    nt = len(tids)
    fw = waits[has]
    kp = (lcode[pw] * nt + np.searchsorted(tids, thread[pw])) * nt + np.searchsorted(tids, thread[ph])
    kf = (lcode[fw] * nt + np.searchsorted(tids, thread[fw])) * nt + \
        int(np.searchsorted(tids, NO_HOLDER))
    # Waits, each counted once per row (a wait may overlap two acquisitions
    # of one holder thread); the free times are one per wait already.
    once = _first_in_group(pi, thread[ph])
    nbins = (int(lcode.max()) + 1 if len(lcode) else 1) * nt * nt
    if nbins <= _DENSE_BINS:                       # the usual handful of threads: dense bins
        total = np.bincount(kp, weights=ov, minlength=nbins) + \
            np.bincount(kf, weights=free[has], minlength=nbins)
        count = np.bincount(kp[once], minlength=nbins) + np.bincount(kf, minlength=nbins)
        keys = np.flatnonzero(count)
        total, count = total[keys], count[keys]
    else:                                          # a damaged trace with thousands of ids
        inv, keys = pd.factorize(np.r_[kp, kf], sort=True)
        total = np.bincount(inv, weights=np.r_[ov, free[has]])
        count = np.bincount(inv[np.r_[once, np.ones(len(kf), dtype=bool)]], minlength=len(keys))
    if not len(keys):
        return pd.DataFrame({c: pd.Series(dtype=object if c.endswith("name") or c == "lock"
                                          else np.int64) for c in cols})
    uniq = np.c_[keys // (nt * nt), tids[(keys // nt) % nt], tids[keys % nt]]
    locks = np.asarray(df["lock"].cat.categories, dtype=object)
    out = pd.DataFrame({
        "lock": locks[uniq[:, 0]],
        "waiter": uniq[:, 1].astype(np.int16),
        "holder": uniq[:, 2].astype(np.int16),
        "waits": count.astype(np.int64),
        "wait_ns": np.rint(total).astype(np.int64),
    })
    out.insert(2, "waiter_name", _names(trace, out["waiter"].to_numpy()))
    holder_name = _names(trace, out["holder"].to_numpy())
    holder_name[out["holder"].to_numpy() == NO_HOLDER] = NO_CALLSITE
    out.insert(4, "holder_name", holder_name)
    out = _replay._lock_filter(out[cols], lock)
    return out.sort_values("wait_ns", ascending=False, kind="stable").reset_index(drop=True)


def blockers_matrix(trace, lock=None):
    """Total wait (ns) per waiting thread (rows) and holding thread
    (columns), summed over locks (or over *lock* only).

    Examples
    --------
    >>> trace.blockers_matrix("bql")                   # doctest: +SKIP
    holder_name  (none)   main  vcpu0  vcpu1
    waiter_name
    main            900      0  41200  38800
    ...
    """
    b = blockers(trace, lock)
    return b.pivot_table(index="waiter_name", columns="holder_name",
                         values="wait_ns", aggfunc="sum", fill_value=0)
