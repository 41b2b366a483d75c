"""What if: re-execute a recorded trace under changed conditions and compare
the prediction with the recording (docs/whatif.md).

:func:`reexecute` returns the predicted run as a :class:`~kvmscope.analysis.Trace`
(every command and method works on it), :func:`write` stores it as a trace
directory, :func:`metrics` and :func:`compare` put figures of two runs side
by side (:func:`compare_many`: of one recording and several predictions), :func:`rank` answers "what should we optimise": the gain of halving
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
from ..traceformat import CONSOLE_FILE, META_FILE, TABLES, table_file
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



def _trace(trace):
    return trace if isinstance(trace, Trace) else Trace.load(trace)


def reexecute(trace, policy="barging", seed=None, **changes):
    """Re-execute a recorded trace under changed conditions.

    Parameters
    ----------
    trace : Trace or str
        A recording (``kvmscope run``, or imported from a QEMU log), or its
        directory.  A lossy or killed recording is re-executed up to where
        its data is complete (:func:`covered`), with a warning; a trace
        without a causal model with the sequence model
        (:mod:`~kvmscope.analysis.reexec_seq`: hold changes only).
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
        again, to the nanosecond.  ``cpus=N``: the host CPUs the predicted
        run's threads share (default: the recording host's, ``meta.json``
        ``host.cpus``; 0: a CPU per thread; causal model only).

    Returns
    -------
    Trace
        The predicted run; ``meta["replay"]`` says of what, with which
        changes and which model (``causal`` or ``sequence``).

    Raises
    ------
    ConfigError
        An unknown change, call site or device, a value out of range, a
        change the sequence model cannot take, or a trace with no part known
        to be complete (records lost at unknown times).

    Warns
    -----
    UserWarning
        The trace's data is incomplete: what is missing, and the part
        re-executed (``meta["replay"]["window"]`` of the prediction).

    Examples
    --------
    >>> from kvmscope.analysis import whatif
    >>> p = whatif.reexecute("traces/mixed-2vcpu", scale_hold={"pio:blk": 0.5})  # doctest: +SKIP
    >>> whatif.compare("traces/mixed-2vcpu", p)                                   # doctest: +SKIP
    """
    tables, meta = _seq.reexecute_any(_trace(trace), policy=policy, seed=seed, **changes)
    return Trace.from_arrow(tables, meta)


def covered(trace):
    """The part of a trace its data covers, for re-execution: ``(Trace,
    window)``; see :func:`kvmscope.analysis.reexec_seq.covered`."""
    return _seq.covered(_trace(trace))


def model_kind(trace):
    """``("causal", None)`` or ``("sequence", why)``; see
    :func:`kvmscope.analysis.reexec_seq.model_kind`."""
    return _seq.model_kind(_trace(trace))


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
        # Arrow streams, whatever layout the trace was read from
        json.dump({k: v for k, v in trace.meta.items() if k != "layout"}, f, indent=2,
                  default=str)
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


def compare_many(recorded, predictions):
    """The recording's figures beside several predictions of one change,
    typically one per seed (``kvmscope whatif --seeds N``): where the
    re-execution draws (``seed``), each draw is a possible outcome and the
    spread of the draws is the prediction's uncertainty.

    Parameters
    ----------
    recorded : Trace or str
    predictions : iterable of Trace or str
        Taken one at a time (a generator keeps one predicted run in memory).

    Returns
    -------
    (DataFrame, DataFrame)
        As :func:`compare`, with ``predicted`` the median over the
        predictions, ``predicted_min``, ``predicted_max`` their range and
        ``runs`` how many; per call site the medians.
    """
    rec = _trace(recorded)
    runs_all, sites_all = [], []
    for p in predictions:
        r, s_ = compare(rec, p)
        runs_all.append(r)
        sites_all.append(s_)
    if not runs_all:
        raise ConfigError("compare_many: no prediction given")
    pred = np.array([r["predicted"].to_numpy(dtype=float) for r in runs_all])
    runs = runs_all[0].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # all-NaN figures stay NaN
        runs["predicted"] = np.nanmedian(pred, axis=0)
        runs["predicted_min"] = np.nanmin(pred, axis=0)
        runs["predicted_max"] = np.nanmax(pred, axis=0)
    runs["change"] = runs["predicted"] - runs["recorded"]
    rec_v = runs["recorded"].to_numpy(dtype=float)
    runs["change_pct"] = np.where((rec_v != 0) & np.isfinite(rec_v),
                                  100.0 * runs["change"] / np.where(rec_v == 0, 1, rec_v), np.nan)
    runs["runs"] = len(runs_all)
    sites = pd.concat(sites_all).groupby("callsite", sort=False).median(numeric_only=True)
    sites["wait_change_ns"] = sites["wait_ns_predicted"] - sites["wait_ns_recorded"]
    sites = sites.sort_values("wait_ns_recorded", ascending=False, kind="stable")
    return runs, sites.reset_index()


def rank(trace, factor=0.5, policy="barging", seed=None, lockless=True, progress=None,
         cpus=None):
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
    cpus : int, optional
        Host CPUs the re-executions' threads share (see :func:`reexecute`).

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
        if cpus is not None:
            ch = dict(ch, cpus=cpus)
        m = metrics(Trace.from_arrow(*_seq.reexecute_covered(t, window, policy, seed, ch)))
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
