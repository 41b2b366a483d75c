"""Statistics over a trace, in the terms of perf kvm stat, lock_stat/mutrace
and QEMU's own counters; plus the "who blocks whom" attribution.

Percentiles use the nearest-rank definition (the smallest recorded value with
at least p% of values at or below it), so every reported value is one that
was measured.  Durations are integer nanoseconds; means and standard
deviations are floats.
"""

import math

import numpy as np
import pandas as pd

from ..errors import ConfigError
from . import replay as _replay

PERCENTILES = (50, 99)


# --------------------------------------------------------------------------
# grouped summaries

def group_codes(df, keys):
    """Group codes for the rows of *df* by the columns *keys*.

    Returns ``(codes, labels)``: an int64 code per row in
    ``[0, len(labels))`` and a DataFrame with one row per group present.
    Categorical keys use their codes (no hashing); others are factorized.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    unknown = [k for k in keys if k not in df.columns]
    if unknown:
        raise ConfigError(f"unknown column {unknown[0]!r}; columns are "
                          f"{', '.join(map(str, df.columns))}")
    codes = np.zeros(len(df), dtype=np.int64)
    uniques = []
    size = 1
    for key in keys:
        col = df[key]
        if isinstance(col.dtype, pd.CategoricalDtype):
            c = col.cat.codes.to_numpy().astype(np.int64)
            u = col.cat.categories
        else:
            c, u = pd.factorize(col, sort=True)
        uniques.append(u)
        codes = codes * len(u) + c
        size *= max(len(u), 1)
    if size <= 4 * len(df) + 1024:
        present = np.flatnonzero(np.bincount(codes, minlength=size))
        remap = np.zeros(size, dtype=np.int64)
        remap[present] = np.arange(len(present))
        codes = remap[codes]
    else:
        present, codes = np.unique(codes, return_inverse=True)
    labels = {}
    rest = present
    for key, u in zip(reversed(keys), reversed(uniques)):
        labels[key] = np.asarray(u)[rest % len(u)] if len(u) else rest[:0]
        rest = rest // max(len(u), 1)
    labels = pd.DataFrame({k: labels[k] for k in keys})
    for key in keys:
        if isinstance(df[key].dtype, pd.CategoricalDtype):
            labels[key] = labels[key].astype(str)
    return codes, labels


# Work on large arrays goes in chunks of this many elements: temporaries
# of this size are reused by the allocator instead of being fresh pages
# (which the kernel must fault in and zero: the dominant cost at 10^7 rows).
CHUNK = 1 << 20


def _sum_sq_dev(seg, mean):
    """Sum of squared deviations from *mean*, in float64, chunk by chunk."""
    acc = 0.0
    for i in range(0, len(seg), CHUNK):     # a loop over chunks
        d = seg[i:i + CHUNK].astype(np.float64)
        d -= mean
        acc += float(np.dot(d, d))
    return acc


def _segments(codes, values, ngroups, where):
    """Yield (group, values of the group) as fresh arrays the caller owns."""
    if ngroups <= 16:
        # A mask per group: no sort, no index array.
        for g in range(ngroups):            # a loop over groups
            mask = codes == g if ngroups > 1 else None
            if where is not None:
                mask = where if mask is None else mask & where
            yield g, values.copy() if mask is None else values[mask]
        return
    if where is not None:
        codes, values = codes[where], values[where]
    small = np.int16 if ngroups < (1 << 15) else np.int64
    order = np.argsort(codes.astype(small), kind="stable")
    v = values[order]
    count = np.bincount(codes, minlength=ngroups)
    ends = np.cumsum(count)
    for g in np.flatnonzero(count):         # a loop over groups
        yield g, v[ends[g] - count[g]:ends[g]]


def summarize(codes, values, ngroups, prefix="", where=None):
    """Count, total, min, mean, stddev, p50, p99 and max of *values* per
    group code, as a DataFrame with one row per code in ``range(ngroups)``.

    Parameters
    ----------
    codes : int array
        Group of each value, in ``[0, ngroups)``.
    values : int array
        Values (ns).
    ngroups : int
    prefix : str
        Prefix of the statistic columns (``"wait_"``...).
    where : bool array, optional
        Only these values.

    Empty groups get count 0 and missing statistics.  Percentiles are
    nearest-rank, found by ``np.partition`` (linear time) per group.

    Examples
    --------
    >>> import numpy as np
    >>> s = summarize(np.array([0, 0, 0, 1]), np.array([30, 10, 20, 5]), 2)
    >>> s[["count", "p50_ns", "max_ns"]].values.tolist()
    [[3, 20, 30], [1, 5, 5]]
    """
    codes = np.asarray(codes)
    values = np.asarray(values)
    count = np.zeros(ngroups, dtype=np.int64)
    total = np.zeros(ngroups, dtype=np.int64)
    lo = np.zeros(ngroups, dtype=np.int64)
    hi = np.zeros(ngroups, dtype=np.int64)
    mean = np.full(ngroups, np.nan)
    std = np.full(ngroups, np.nan)
    pct = {p: np.zeros(ngroups, dtype=np.int64) for p in PERCENTILES}
    for g, seg in _segments(codes, values, ngroups, where):
        n = len(seg)
        if not n:
            continue
        count[g] = n
        total[g] = seg.sum(dtype=np.int64)
        mean[g] = total[g] / n
        if n > 1:
            # Sample standard deviation (n - 1), as perf and pandas give.
            std[g] = np.sqrt(_sum_sq_dev(seg, mean[g]) / (n - 1))
        ranks = sorted({0, n - 1} | {max(int(np.ceil(p / 100 * n)) - 1, 0)
                                     for p in PERCENTILES})
        seg.partition(ranks)                # in place: seg is ours
        lo[g], hi[g] = seg[0], seg[n - 1]
        for p in PERCENTILES:
            pct[p][g] = seg[max(int(np.ceil(p / 100 * n)) - 1, 0)]
    na = count == 0

    def ints(a):
        if not na.any():
            return a
        arr = pd.array(a, dtype="Int64")
        arr[na] = pd.NA
        return arr
    out = {"count": count, f"{prefix}total_ns": total,
           f"{prefix}min_ns": ints(lo), f"{prefix}mean_ns": mean,
           f"{prefix}stddev_ns": std}
    for p in PERCENTILES:
        out[f"{prefix}p{p}_ns"] = ints(pct[p])
    out[f"{prefix}max_ns"] = ints(hi)
    return pd.DataFrame(out)


def _masked(series):
    """(values, valid) of a nullable Int64 column without copying."""
    arr = series.array
    if hasattr(arr, "_data") and hasattr(arr, "_mask"):
        return arr._data, ~arr._mask
    return (series.to_numpy(dtype=np.int64, na_value=0),
            ~series.isna().to_numpy())


def _pct(part, whole):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, 100.0 * part / whole, 0.0)


# --------------------------------------------------------------------------
# exits

def exit_stats(trace, by="reason"):
    """Exit statistics per reason (or any exits columns), like
    ``perf kvm stat report``.

    Parameters
    ----------
    trace : Trace
    by : str or list of str
        Grouping columns of ``trace.exits``: ``"reason"`` (default),
        ``["reason", "addr"]`` (per port / MMIO address), ``"device"``...

    Returns
    -------
    DataFrame
        The *by* columns, then ``samples``, ``samples_pct``, ``time_pct``,
        ``total_ns``, ``min_ns``, ``mean_ns``, ``stddev_ns``, ``p50_ns``,
        ``p99_ns``, ``max_ns`` of ``dur_ns`` (time from ``KVM_RUN``
        returning to the next entry), sorted by samples.  Exits that never
        re-entered count as samples but not in the time columns.

    Examples
    --------
    >>> trace.exit_stats(["reason", "addr"]).head()   # doctest: +SKIP
    """
    df = trace.exits
    codes, labels = group_codes(df, by)
    n = len(labels)
    dur, has = _masked(df["dur_ns"])
    s = summarize(codes, dur, n, where=has)
    samples = np.bincount(codes, minlength=n)[:n]
    out = labels.assign(
        samples=samples,
        samples_pct=_pct(samples, samples.sum()),
        time_pct=_pct(s["total_ns"].to_numpy(), s["total_ns"].sum()))
    out = pd.concat([out, s.drop(columns="count")], axis=1)
    return out.sort_values("samples", ascending=False, kind="stable") \
        .reset_index(drop=True)


# --------------------------------------------------------------------------
# locks

def lock_stats(trace, by="lock"):
    """Lock statistics per lock or per (lock, call site), like lock_stat,
    QEMU's sync-profile and mutrace.

    Parameters
    ----------
    trace : Trace
    by : str or list of str
        ``"lock"`` (default), ``["lock", "callsite"]``, or any columns of
        ``trace.locks`` (``["lock", "thread_name"]``...).

    Returns
    -------
    DataFrame
        The *by* columns, then ``acquisitions``, ``contentions`` (the first
        try failed), ``contention_pct``, ``handoffs`` (acquisitions whose
        ``prev_owner`` is another thread: owner changes), ``held_pct``
        (hold time over the trace duration), ``wait_*`` over contended
        acquisitions only (as lock_stat does: ``total``, ``min``, ``mean``,
        ``stddev``, ``p50``, ``p99``, ``max``, all ``_ns``) and ``hold_*``
        over all acquisitions.  Sorted by total wait, then total hold.

    Examples
    --------
    >>> trace.lock_stats(["lock", "callsite"])         # doctest: +SKIP
    """
    df = trace.locks
    codes, labels = group_codes(df, by)
    n = len(labels)
    contended = df["contended"].to_numpy()
    acquisitions = np.bincount(codes, minlength=n)[:n]
    contentions = np.bincount(codes, weights=contended, minlength=n)[:n]
    handoffs = np.bincount(codes, weights=df["handoff"].to_numpy(),
                           minlength=n)[:n]
    wait = summarize(codes, df["wait_ns"].to_numpy(), n, "wait_",
                     where=contended)
    hold = summarize(codes, df["hold_ns"].to_numpy(), n, "hold_")
    out = labels.assign(
        acquisitions=acquisitions,
        contentions=contentions.astype(np.int64),
        contention_pct=_pct(contentions, acquisitions),
        handoffs=handoffs.astype(np.int64),
        held_pct=_pct(hold["hold_total_ns"].to_numpy(),
                      max(trace.duration_ns, 1)))
    out = pd.concat([out, wait.drop(columns="count"),
                     hold.drop(columns="count")], axis=1)
    return out.sort_values(["wait_total_ns", "hold_total_ns"],
                           ascending=False, kind="stable") \
        .reset_index(drop=True)


# --------------------------------------------------------------------------
# bottom halves, timers, AIO, main loop

def _named_stats(df, count_name, metrics):
    codes, labels = group_codes(df, "name")
    n = len(labels)
    parts = [labels.assign(**{count_name: np.bincount(codes, minlength=n)[:n]})]
    for col, prefix, keep in metrics:
        s = summarize(codes, df[col].to_numpy(), n, prefix)
        parts.append(s[[prefix + k + "_ns" for k in keep]])
    out = pd.concat(parts, axis=1)
    return out.sort_values(count_name, ascending=False, kind="stable") \
        .reset_index(drop=True)


_ALL = ("total", "min", "mean", "p50", "p99", "max")


def bh_stats(trace):
    """Bottom-half statistics per name: ``runs``, schedule-to-run latency
    (``delay_*``: total, min, mean, p50, p99, max) and callback run time
    (``dur_*``: total, mean, max).

    Examples
    --------
    >>> trace.bh_stats()                               # doctest: +SKIP
    """
    return _named_stats(trace.bh, "runs", [
        ("delay_ns", "delay_", _ALL), ("dur_ns", "dur_", ("total", "mean", "max"))])


def timer_stats(trace):
    """Timer statistics per name: ``fires``, lateness (``late_*`` =
    ``fire_ns - expire_ns``: total, min, mean, p50, p99, max) and callback
    run time (``dur_*``: total, mean, max).

    Examples
    --------
    >>> trace.timer_stats()                            # doctest: +SKIP
    """
    return _named_stats(trace.timers, "fires", [
        ("late_ns", "late_", _ALL), ("dur_ns", "dur_", ("total", "mean", "max"))])


AIO_STAGES = ("queue", "io", "completion", "total")


def aio_stats(trace):
    """AIO latency per op and stage.

    Stages: ``queue`` (``start - submit``: waiting for a worker), ``io``
    (``done - start``: the system call), ``completion`` (``complete -
    done``: waiting for the main loop), ``total`` (``complete - submit``).

    Returns
    -------
    DataFrame
        ``op, stage, requests, total_ns, min_ns, mean_ns, stddev_ns,
        p50_ns, p99_ns, max_ns``, plus ``errors`` (``result < 0``) and
        ``bytes`` (sum of non-negative results), repeated on each stage
        row of an op.

    Examples
    --------
    >>> a = trace.aio_stats()                          # doctest: +SKIP
    >>> a[a.stage == "queue"]                          # doctest: +SKIP
    """
    df = trace.aio
    codes, labels = group_codes(df, "op")
    n = len(labels)
    result = df["result"].to_numpy()
    errors = np.bincount(codes, weights=result < 0, minlength=n)[:n]
    nbytes = np.bincount(codes, weights=np.maximum(result, 0),
                         minlength=n)[:n]
    parts = []
    for stage in AIO_STAGES:            # four stages, each vectorised
        s = summarize(codes, df[stage + "_ns"].to_numpy(), n)
        parts.append(pd.concat([labels.assign(stage=stage), s], axis=1)
                     .assign(errors=errors.astype(np.int64),
                             bytes=nbytes.astype(np.int64)))
    out = pd.concat(parts, ignore_index=True).rename(
        columns={"count": "requests"})
    out["stage"] = pd.Categorical(out["stage"], categories=AIO_STAGES)
    return out.sort_values(["op", "stage"], kind="stable") \
        .reset_index(drop=True)


def loop_stats(trace):
    """Main-loop statistics per loop thread.

    Returns
    -------
    DataFrame
        ``thread, thread_name, iterations, span_ns`` (first poll entry to
        last dispatch end), ``wakeups_per_s`` (iterations per second of
        span), ``timeouts`` (iterations with no fd ready),
        ``poll_total_ns, poll_pct`` (share of span spent in poll),
        ``poll_mean_ns``, ``dispatch_total_ns, dispatch_pct,
        dispatch_mean_ns, dispatch_p99_ns, dispatch_max_ns``.

    Examples
    --------
    >>> trace.loop_stats()                             # doctest: +SKIP
    """
    df = trace.loop
    codes, labels = group_codes(df, "thread")
    n = len(labels)
    poll = summarize(codes, df["poll_ns"].to_numpy(), n, "poll_")
    disp = summarize(codes, df["dispatch_ns"].to_numpy(), n, "dispatch_")
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(first, codes, df["poll_enter_ns"].to_numpy())
    np.maximum.at(last, codes, df["dispatch_end_ns"].to_numpy())
    span = np.where(poll["count"] > 0, last - first, 0)
    iters = poll["count"].to_numpy()
    timeouts = np.bincount(codes, weights=df["nready"].to_numpy() == 0,
                           minlength=n)[:n]
    thread = labels["thread"].to_numpy().astype(np.int16)
    return pd.DataFrame({
        "thread": thread,
        "thread_name": np.asarray(_replay._names(trace, thread)),
        "iterations": iters,
        "span_ns": span,
        "wakeups_per_s": _pct(iters, span) * 1e7,      # 1e9 ns/s / 100%
        "timeouts": timeouts.astype(np.int64),
        "poll_total_ns": poll["poll_total_ns"],
        "poll_pct": _pct(poll["poll_total_ns"].to_numpy(), span),
        "poll_mean_ns": poll["poll_mean_ns"],
        "dispatch_total_ns": disp["dispatch_total_ns"],
        "dispatch_pct": _pct(disp["dispatch_total_ns"].to_numpy(), span),
        "dispatch_mean_ns": disp["dispatch_mean_ns"],
        "dispatch_p99_ns": disp["dispatch_p99_ns"],
        "dispatch_max_ns": disp["dispatch_max_ns"],
    })




#: The row of :func:`cpu_stats` for the process's threads the recorder
#: does not list (the trace writer's compression threads, the interpreter).
OTHER_THREADS = "(other threads)"


def cpu_stats(trace):
    """What the kernel accounted to each thread of the run while it ran
    (``meta.json stats.cpu``, written by ``kvmscope run`` and the core
    replay; empty for traces without it, such as QEMU imports): the
    figures of ``perf sched latency``, per thread, without tracing the
    scheduler.

    Returns
    -------
    DataFrame
        ``thread_name``, ``cpu_ns`` (time on a CPU; a vCPU's includes its
        guest time), ``runq_ns`` (runnable but waiting for a CPU: the host's
        CPUs were taken by other threads), ``runq_pct`` (of the time it
        wanted a CPU: ``runq / (cpu + runq)``), ``slices`` (times it was
        given a CPU), ``delay_mean_ns`` (run-queue wait per slice: how long
        a wake-up or a preemption waited for a CPU), ``voluntary`` (it
        slept: a lock, a poll, a halt) and ``involuntary`` context switches
        (the scheduler took its CPU); last, a row ``(other threads)`` with
        the rest of the process's CPU time over the run (threads not listed,
        such as the trace writer's compression threads, and the listed
        threads' work outside their sampled span).  Missing
        values (a kernel without run-queue accounting) are <NA>.

    Examples
    --------
    >>> trace.cpu_stats()                              # doctest: +SKIP
      thread_name     cpu_ns    runq_ns  runq_pct  slices  delay_mean_ns  voluntary  involuntary
    0       vcpu0  224990760  154309759      40.7      92        1677280          4           87
    """
    fields = ("cpu_ns", "runq_ns", "slices", "voluntary", "involuntary")
    cols = ["thread_name", "cpu_ns", "runq_ns", "runq_pct", "slices", "delay_mean_ns",
            "voluntary", "involuntary"]
    cpu = ((trace.meta.get("stats") or {}).get("cpu")) or {}
    threads = cpu.get("threads") if isinstance(cpu, dict) else None
    rows = []
    if isinstance(threads, dict):
        for name, t in threads.items():
            if isinstance(t, dict):
                rows.append([str(name)] + [_num(t.get(k)) for k in fields])
        other = _num(cpu.get("other_cpu_ns"))
        if rows and not math.isnan(other):
            rows.append([OTHER_THREADS, other] + [math.nan] * (len(fields) - 1))
    df = pd.DataFrame(rows, columns=["thread_name", *fields]).astype({f: "float64" for f in fields})
    want = df["cpu_ns"] + df["runq_ns"]
    df["runq_pct"] = np.where(want > 0, 100.0 * df["runq_ns"] / want.where(want > 0, 1.0), np.nan)
    df["delay_mean_ns"] = np.where(df["slices"] > 0, df["runq_ns"] / df["slices"].where(df["slices"] > 0, 1.0),
                                   np.nan)
    for c in (*fields, "delay_mean_ns"):
        df[c] = df[c].round().astype("Int64") if df[c].isna().any() else df[c].round().astype(np.int64)
    return df[cols]


def vcpu_cpu_waits(trace):
    """Per recorded vCPU, the share of the time it wanted a CPU that it
    waited for one (``runq_pct`` of :func:`cpu_stats`), in percent; {} for a
    trace without that accounting."""
    df = cpu_stats(trace)
    df = df[df["thread_name"].astype(str).str.startswith("vcpu") & df["runq_pct"].notna()]
    return {str(n): float(p) for n, p in zip(df["thread_name"], df["runq_pct"])}


def vcpu_cpu_wait_pct(trace):
    """The mean of :func:`vcpu_cpu_waits` over the vCPUs, or None."""
    waits = vcpu_cpu_waits(trace)
    return sum(waits.values()) / len(waits) if waits else None


#: Recordings whose vCPUs waited for a CPU this many percentage points more
#: on one side of a comparison than on the other were made on hosts not
#: equally busy (``kvmscope diff`` says so in its notes).
CPU_WAIT_GAP_PCT = 10.0


def _num(v):
    """A non-negative number from meta.json as a float, else NaN."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        return math.nan
    return float(v)
