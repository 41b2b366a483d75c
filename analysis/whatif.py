"""What if: re-execute a recorded trace under changed conditions and compare
the prediction with the recording (docs/whatif.md).

:func:`reexecute` returns the predicted run as a :class:`~kvmscope.analysis.Trace`
(every command and method works on it), :func:`write` stores it as a trace
directory, :func:`metrics` and :func:`compare` put figures of two runs side
by side, :func:`rank` answers "what should we optimise": the gain of halving
each call site's critical section, or of taking its device off the BQL.

The model and the engine are :mod:`kvmscope.analysis.reexec_model` and
:mod:`kvmscope.analysis.reexec_engine`; this module is the view on top.
"""

import json
import os
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import ConfigError
from . import reexec_engine as _engine
from . import reexec_seq as _seq
from . import replay as _replay
from ..traceformat import CONSOLE_FILE, META_FILE, SPANS, TABLES, table_file
from .load import from_tables
from .trace import Trace

#: Figures of a run, in the order :func:`compare` shows them.
METRICS = ("exits", "exits_per_s", "acquisitions", "bql_wait_ns", "contended_pct",
           "hold_ns", "requests", "requests_per_s", "request_p50_ns", "request_p99_ns",
           "duration_ns")

#: Phrases for the figures (text and Markdown tables).
LABELS = {
    "exits": "vCPU exits", "exits_per_s": "exits/s (guest progress)",
    "acquisitions": "BQL acquisitions", "bql_wait_ns": "BQL wait (contended, total)",
    "contended_pct": "contended share", "hold_ns": "BQL hold (total)",
    "requests": "block requests completed", "requests_per_s": "block requests/s",
    "request_p50_ns": "request latency p50", "request_p99_ns": "request latency p99",
    "duration_ns": "run duration",
}


#: Longer than the recorder's largest gap between two flushes of the trace
#: rings (every 50 ms; 50-80 ms measured, docs/architecture.md): a killed
#: run's threads whose data ends within this of the latest end lost their
#: last records, the others were idle.
FLUSH_NS = 100_000_000


def _trace(trace):
    return trace if isinstance(trace, Trace) else Trace.load(trace)


def reexecute(trace, policy="barging", seed=None, **changes):
    """Re-execute a recorded trace under changed conditions.

    Parameters
    ----------
    trace : Trace or str
        A complete recording (``kvmscope run``), or its directory.
    policy : {"barging", "fifo"}
        How the BQL picks its next owner (``barging``: glibc's mutex, which
        the recordings match).
    seed : int, optional
        A situation the recording did not have (a newly contended
        acquisition, a main-loop wake-up of another kind...) takes the
        median of the recorded ones of its kind; with a seed, a draw among
        them instead (for the spread of a prediction).  Same trace, changes
        and seed: the same prediction.
    **changes
        ``scale_hold={"pio:blk": 0.5}``, ``add_hold={"pio:debugport":
        2000}`` (ns), ``lockless=["debugport"]``, ``vcpus=4``,
        ``aio_threads=1``, ``timer_period_us=1000``; none: the recording
        again, to the nanosecond.

    Returns
    -------
    Trace
        The predicted run; ``meta["replay"]`` says of what and with which
        changes.

    Raises
    ------
    ConfigError
        An unknown change, call site or device, a value out of range, or a
        trace that cannot be re-executed (records lost, a killed run).

    Examples
    --------
    >>> from kvmscope.analysis import whatif
    >>> p = whatif.reexecute("traces/mixed-2vcpu", scale_hold={"pio:blk": 0.5})  # doctest: +SKIP
    >>> whatif.compare("traces/mixed-2vcpu", p)                                   # doctest: +SKIP
    """
    t, window = covered(trace)
    if window:
        warnings.warn(window["warning"], stacklevel=2)
    return _reexecute(t, window, policy, seed, changes)


def _reexecute(t, window, policy, seed, changes):
    """Re-execute the covered trace *t* with the causal model, or the
    sequence model when it has none."""
    why = model_kind(t)[1]
    if why:
        tables, meta = _seq.reexecute_tables(t, policy=policy, seed=seed, why=why, **changes)
    else:
        tables, meta = _engine.reexecute_tables(t, policy=policy, seed=seed, **changes)
        meta["replay"]["model"] = "causal"
    if window:
        meta["replay"]["window"] = {k: v for k, v in window.items() if k != "warning"}
    return Trace.from_arrow(tables, meta)


def model_kind(trace):
    """Which model re-executes *trace*: ``("causal", None)``, or
    ``("sequence", why)`` for a trace without a causal model (imported from
    a QEMU log, or a covered part the causal model cannot take)."""
    why = _seq.why_sequence(trace)
    if why is None:
        try:
            _engine.model_of(trace)
        except ConfigError as e:
            if not getattr(trace, "_covered_part", False):
                raise
            why = f"the covered part has no causal model ({e})"
    return ("sequence", why) if why else ("causal", None)


def covered(trace):
    """The part of a trace its data covers, for re-execution.

    A trace whose rings dropped records is complete up to its first loss
    (the end of the losing thread's last record before it); a run that was
    killed, failed or aborted (``meta.json`` ``state``), or whose table was
    cut short, up to the earliest end of data among the threads that took
    the BQL or exited, leaving out a thread whose data ends more than
    :data:`FLUSH_NS` before the latest end (it was idle: a later flush
    would have written its records); for a trace imported from a log,
    which is written in one stream, up to the log's end.  Rows that end after that time are
    left out: an AIO request submitted but not completed, an exit not
    re-entered, a lock not yet released were not written either.

    Parameters
    ----------
    trace : Trace or str

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
    t = _trace(trace)
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
        why = {"running": "killed", "failed": "failed", "aborted": "aborted"}.get(state,
                                                                              "cut short")
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
            end = tab.column(b)
            end = end.fill_null(tab.column(a)) if end.null_count else end
            tab = tab.filter(pa.array(end.to_numpy() <= cut))
        elif name == "losses":
            tab = tab.slice(0, 0)
        if name == "exits" and tab.num_rows:
            # each vCPU's last exit before the cut ends its run, as a vCPU
            # that never re-entered does at a run's end
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
    part = Trace(tabs, meta, path=t.path)
    part._covered_part = True
    return part


def write(trace, path, force=False, compression=None):
    """Write a (predicted) trace as a trace directory, as ``kvmscope run``
    writes one: ``<table>.arrows`` Arrow IPC streams, ``meta.json`` and an
    empty ``console.log``.

    Parameters
    ----------
    trace : Trace
    path : str
        Missing, empty, or holding a trace (replaced only with *force*: its
        own files, nothing else).
    force : bool
    compression : {None, "lz4", "zstd"}

    Returns
    -------
    str
        *path*.
    """
    from ..config import check_output
    path = os.fspath(path)
    check_output(path, force)
    os.makedirs(path, exist_ok=True)
    opts = ipc.IpcWriteOptions(compression=compression)
    for name in TABLES:
        table = trace.arrow(name)
        tmp = os.path.join(path, table_file(name) + ".tmp")
        with pa.OSFile(tmp, "wb") as f, ipc.new_stream(f, table.schema, options=opts) as w:
            w.write_table(table, max_chunksize=1 << 16)
        os.replace(tmp, os.path.join(path, table_file(name)))
    with open(os.path.join(path, CONSOLE_FILE), "wb"):
        pass
    tmp = os.path.join(path, META_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(trace.meta, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(path, META_FILE))
    return path


def metrics(trace):
    """Figures of a run that a change moves (see :data:`METRICS`).

    ``exits_per_s`` and ``requests_per_s`` count over the vCPUs' span
    (first to last exit); ``bql_wait_ns`` is the wait of contended
    acquisitions (lock_stat's); request latency is an AIO request's submit
    to completion.  Missing values (no block requests) are NaN.

    Returns
    -------
    dict of str to float
    """
    t = _trace(trace)
    ex = t.exits
    lk = t.locks
    aio = t.aio
    x = ex["exit_ns"].to_numpy()
    span = float(x.max() - x.min()) if len(x) > 1 else float("nan")
    cont = lk["contended"].to_numpy()
    out = {
        "exits": float(len(ex)),
        "exits_per_s": len(ex) / span * 1e9 if span and span > 0 else float("nan"),
        "acquisitions": float(len(lk)),
        "bql_wait_ns": float(lk["wait_ns"].to_numpy()[cont].sum()),
        "contended_pct": 100.0 * cont.mean() if len(lk) else float("nan"),
        "hold_ns": float(lk["hold_ns"].sum()),
        "requests": float(len(aio)),
        "requests_per_s": len(aio) / span * 1e9 if len(aio) and span > 0 else float("nan"),
        "request_p50_ns": float(np.percentile(aio["total_ns"], 50)) if len(aio) else float("nan"),
        "request_p99_ns": float(np.percentile(aio["total_ns"], 99)) if len(aio) else float("nan"),
        "duration_ns": float(t.duration_ns),
    }
    return out


def callsite_figures(trace):
    """Per call site: ``acquisitions, contended, wait_ns`` (contended),
    ``hold_ns`` (total), ``hold_mean_ns``."""
    lk = _trace(trace).locks
    g = lk.groupby("callsite", observed=True)
    out = pd.DataFrame({
        "acquisitions": g.size(),
        "contended": g["contended"].sum(),
        "wait_ns": lk["wait_ns"].where(lk["contended"], 0).groupby(lk["callsite"],
                                                                   observed=True).sum(),
        "hold_ns": g["hold_ns"].sum(),
        "hold_mean_ns": g["hold_ns"].mean(),
    })
    out.index = out.index.astype(str)
    return out


def compare(recorded, predicted):
    """The recording's figures beside the prediction's.

    Parameters
    ----------
    recorded, predicted : Trace or str

    Returns
    -------
    (DataFrame, DataFrame)
        Run figures: ``metric, recorded, predicted, change, change_pct``
        (one row per :data:`METRICS`); per call site: ``callsite`` and
        ``acquisitions, wait_ns, hold_mean_ns`` each ``_recorded`` and
        ``_predicted``, plus ``wait_change_ns``, sorted by the recorded
        wait.
    """
    a, b = metrics(recorded), metrics(predicted)
    rows = []
    for k in METRICS:
        x, y = a[k], b[k]
        ch = y - x
        pct = 100.0 * ch / x if x and np.isfinite(x) else float("nan")
        rows.append({"metric": k, "recorded": x, "predicted": y, "change": ch, "change_pct": pct})
    runs = pd.DataFrame(rows)
    ca, cb = callsite_figures(recorded), callsite_figures(predicted)
    sites = pd.DataFrame(index=ca.index.union(cb.index))
    for col in ("acquisitions", "wait_ns", "hold_mean_ns"):
        sites[col + "_recorded"] = ca[col]
        sites[col + "_predicted"] = cb[col]
    sites = sites.fillna({"acquisitions_recorded": 0, "acquisitions_predicted": 0,
                          "wait_ns_recorded": 0, "wait_ns_predicted": 0})
    sites["wait_change_ns"] = sites["wait_ns_predicted"] - sites["wait_ns_recorded"]
    sites = sites.sort_values("wait_ns_recorded", ascending=False, kind="stable")
    sites.index.name = "callsite"
    return runs, sites.reset_index()


def rank(trace, factor=0.5, policy="barging", seed=None, lockless=True, progress=None):
    """What should we optimise: per call site, what halving its critical
    section (or scaling it by *factor*), and dispatching its device without
    the BQL, would buy.

    Parameters
    ----------
    trace : Trace or str
        A recording.
    factor : float
        Hold time factor tried at each call site (0.5: halved).
    lockless : bool
        Also try each device's call site without the BQL.
    progress : callable, optional
        Called with (done, total) after each re-execution.

    Returns
    -------
    DataFrame
        One row per (call site, fix): ``callsite, fix`` (``hold x0.5`` or
        ``lockless``), ``exits_per_s_gain_pct``, ``requests_per_s_gain_pct``
        (NaN without block requests), ``wait_removed_ns``,
        ``wait_removed_pct`` (of the recorded BQL wait), ``contended_pct``
        (predicted), ``acquisitions`` and ``hold_total_ns`` of the call site
        as recorded; sorted by guest progress gained, then wait removed.
    """
    if not 0 <= factor <= _engine.MAX_SCALE:
        raise ConfigError(f"factor {factor} out of range: use 0 .. {_engine.MAX_SCALE:g}")
    t, window = covered(trace)
    if window:
        warnings.warn(window["warning"], stacklevel=2)
    # the sequence model has no device map: hold changes only
    devices = _engine.model_of(t).devices if model_kind(t)[0] == "causal" else {}
    base = metrics(t)
    sites = callsite_figures(t)
    sites = sites[[not c.endswith(":unassigned") for c in sites.index]]
    if model_kind(t)[0] == "sequence":         # the BQL's call sites, not other mutexes'
        sites = sites[sites.index.isin(_seq.model_of(t).callsites)]
    jobs = []
    for cs in sites.index:
        jobs.append((cs, f"hold x{factor:g}", {"scale_hold": {cs: factor}}))
        dev = cs.split(":", 1)[1] if cs.startswith(("pio:", "mmio:")) else None
        if lockless and dev in devices:
            jobs.append((cs, "lockless", {"lockless": [dev]}))
    rows = []
    for k, (cs, fix, ch) in enumerate(jobs):      # one re-execution per fix
        m = metrics(_reexecute(t, window, policy, seed, ch))
        rows.append({
            "callsite": cs, "fix": fix,
            "exits_per_s_gain_pct": _pct(m["exits_per_s"], base["exits_per_s"]),
            "requests_per_s_gain_pct": _pct(m["requests_per_s"], base["requests_per_s"]),
            "wait_removed_ns": base["bql_wait_ns"] - m["bql_wait_ns"],
            "wait_removed_pct": (100.0 * (base["bql_wait_ns"] - m["bql_wait_ns"])
                                 / base["bql_wait_ns"]) if base["bql_wait_ns"] else float("nan"),
            "contended_pct": m["contended_pct"],
            "acquisitions": int(sites.loc[cs, "acquisitions"]),
            "hold_total_ns": int(sites.loc[cs, "hold_ns"]),
        })
        if progress:
            progress(k + 1, len(jobs))
    out = pd.DataFrame(rows, columns=["callsite", "fix", "exits_per_s_gain_pct",
                                      "requests_per_s_gain_pct", "wait_removed_ns",
                                      "wait_removed_pct", "contended_pct", "acquisitions",
                                      "hold_total_ns"])
    return out.sort_values(["exits_per_s_gain_pct", "wait_removed_ns"], ascending=False,
                           kind="stable").reset_index(drop=True)


def _pct(new, old):
    if not (np.isfinite(new) and np.isfinite(old)) or not old:
        return float("nan")
    return 100.0 * (new - old) / old
