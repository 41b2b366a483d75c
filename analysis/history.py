"""History of a run store: each call site's hold or wait statistic over the
runs, change points found with ``ruptures`` (PELT), filtered by effect size,
and a CI gate that fails when the newest runs start a regression.

Also the run-to-run variation of runs of one configuration, estimated from
the store, to judge a single new run against (:func:`variation`,
:func:`judge_pair`, :func:`judge_newest`).

Per-run statistics are computed per run partition, with pandas in this
process or on Dask (``scheduler="threads"``, ``"processes"`` or the address
of a ``distributed`` scheduler): the same function runs on each partition,
so both paths give the same numbers.
"""

import json
import math
import os

import numpy as np
import pandas as pd

from ..errors import KvmscopeError
from .sql import EXTRA, require
from .store import StoreError, config_key, order_runs  # noqa: F401

METRICS = ("hold", "wait")
STATS = ("p50", "p90", "p99", "mean", "total")
ALL_CALLSITES = "*"

#: Defaults of the change-point search and the gate (docs/runs.md for how
#: they were calibrated).
DEFAULTS = dict(penalty=4.0, min_size=3, threshold=0.05, min_delta_ns=100, recent=5,
                alpha=0.01)
#: Floor of the noise level (log scale) when a series barely varies (a
#: statistic that is a few clock ticks).
SIGMA_FLOOR = 0.01

_STAT_COLUMNS = ["run", "lock", "callsite", "count", "p50", "p90", "p99", "mean", "total"]


class HistoryError(KvmscopeError, ValueError):
    """A history that cannot be computed (bad option, unknown call site,
    missing dependency); one line."""


# --------------------------------------------------------------------------
# per-run statistics

def _empty_stats():
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        _STAT_COLUMNS, ["object", "object", "object", "int64", "float64", "float64",
                        "float64", "float64", "float64"])})


def _rank(n, p):
    """0-based nearest-rank index, as kvmscope diff and report use."""
    return np.maximum((p * n + 99) // 100, 1) - 1


def _grouped(codes, values, ngroups):
    """count, p50, p90, p99, mean, total per group code."""
    order = np.lexsort((values, codes))
    v, c = values[order], codes[order]
    counts = np.bincount(c, minlength=ngroups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = {"count": counts}
    ok = counts > 0
    for p in (50, 90, 99):
        idx = np.where(ok, starts + _rank(counts, p), 0)
        out[f"p{p}"] = np.where(ok, v[idx] if len(v) else 0, np.nan).astype(np.float64)
    totals = np.bincount(c, weights=v.astype(np.float64), minlength=ngroups)
    out["total"] = totals
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean"] = totals / counts
    return out


def run_stats(run, path, metric="hold"):
    """Statistics of one run's lock records, per (lock, call site) and per
    lock (``callsite == "*"``).

    Parameters
    ----------
    run : str
        Run id, copied into the ``run`` column.
    path : str
        The run's ``locks.parquet``.
    metric : {"hold", "wait"}
        ``hold_ns`` of every acquisition, or ``wait_ns`` of contended ones.

    Returns
    -------
    pandas.DataFrame
        ``run, lock, callsite, count, p50, p90, p99, mean, total`` (ns;
        nearest-rank percentiles, as ``kvmscope diff``).
    """
    import pyarrow.parquet as pq
    start, end = ("request_ns", "acquired_ns") if metric == "wait" \
        else ("acquired_ns", "released_ns")
    df = pq.read_table(path, columns=["lock", "callsite", start, end, "contended"]).to_pandas()
    if metric == "wait":
        df = df[df["contended"].to_numpy()]
    if not len(df):
        return _empty_stats()
    values = df[end].to_numpy().astype(np.int64) - df[start].to_numpy().astype(np.int64)
    # Dictionary codes, not strings: no Python object per record.
    lock, site = df["lock"].astype("category"), df["callsite"].astype("category")
    lcode = lock.cat.codes.to_numpy().astype(np.int64)
    scode = site.cat.codes.to_numpy().astype(np.int64)
    locks, sites = [str(x) for x in lock.cat.categories], [str(x) for x in site.cat.categories]
    frames = []
    for per_site in (True, False):
        if per_site:
            codes, ngroups = lcode * len(sites) + scode, len(locks) * len(sites)
            names = [(lk, st) for lk in locks for st in sites]
        else:
            codes, ngroups = lcode, len(locks)
            names = [(lk, ALL_CALLSITES) for lk in locks]
        g = pd.DataFrame(_grouped(codes, values, ngroups))
        g.insert(0, "callsite", [n[1] for n in names])
        g.insert(0, "lock", [n[0] for n in names])
        frames.append(g[g["count"] > 0])
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "run", run)
    out["count"] = out["count"].astype(np.int64)
    out = out.sort_values(["lock", "callsite"], kind="stable").reset_index(drop=True)
    return out[_STAT_COLUMNS]


def _stats_part(item):
    run, path, metric = item
    return run_stats(run, path, metric)


def store_stats(store, metric="hold", runs=None, scheduler=None):
    """Per-run statistics of every run of *store* (or of *runs*).

    Parameters
    ----------
    store : Store
    metric : {"hold", "wait"}
    runs : list of str, optional
        Run ids (default: all).
    scheduler : str, optional
        None: pandas, one run after the other in this process.
        ``"threads"`` or ``"processes"``: Dask's local schedulers; any
        other value is the address of a ``distributed`` scheduler
        (``tcp://host:8786``).  Dask builds one partition per run and runs
        :func:`run_stats` on each.

    Returns
    -------
    pandas.DataFrame
        As :func:`run_stats`, every run.
    """
    if metric not in METRICS:
        raise HistoryError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    items = [(r, p, metric) for r, p in store.table_files("locks", runs)]
    if scheduler is None:
        parts = [_stats_part(i) for i in items]
    else:
        parts = [_dask_stats(items, scheduler)]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_stats()
    out = pd.concat(parts, ignore_index=True)
    for col in ("run", "lock", "callsite"):     # Dask may hand back Arrow strings
        out[col] = out[col].astype(object)
    return out.sort_values(["run", "lock", "callsite"]).reset_index(drop=True)[_STAT_COLUMNS]


def _dask_stats(items, scheduler):
    dd = require("dask.dataframe", "--scheduler")
    if not items:
        return _empty_stats()
    ddf = dd.from_map(_stats_part, items, meta=_empty_stats(), enforce_metadata=False)
    if scheduler in ("threads", "processes", "synchronous"):
        return ddf.compute(scheduler=scheduler)
    distributed = require("distributed", "--scheduler ADDRESS")
    try:
        client = distributed.Client(scheduler, timeout="5s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise HistoryError(f"cannot reach the Dask scheduler {scheduler}: "
                           f"{' '.join(str(e).split())[:200]}") from None
    try:
        return client.compute(ddf).result()
    finally:
        client.close()


# --------------------------------------------------------------------------
# series and change points

def series(store, metric="hold", stat="p50", callsite=None, lock=None, labels=None,
           order="time", scheduler=None, stats=None):
    """Each (lock, call site)'s statistic over the runs, in run order.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The runs (see :meth:`Store.runs`), and the long table ``lock,
        callsite, position, run, value, count``.
    """
    import fnmatch
    if stat not in STATS:
        raise HistoryError(f"unknown stat {stat!r}; one of {', '.join(STATS)}")
    runs = store.runs(labels=labels, order=order)
    if stats is None:
        stats = store_stats(store, metric, list(runs["run"]), scheduler)
    df = stats.merge(runs[["run", "position"]], on="run")
    for pats, col in ((callsite, "callsite"), (lock, "lock")):
        if not pats:
            continue
        pats = [pats] if isinstance(pats, str) else list(pats)
        names = sorted(set(df[col]) - {ALL_CALLSITES})
        keep = np.zeros(len(df), bool)
        for pat in pats:
            hit = df[col].map(lambda n, p=pat: n != ALL_CALLSITES and fnmatch.fnmatchcase(n, p))
            if not hit.any():
                raise HistoryError(f"unknown {col.replace('callsite', 'call site')} {pat!r} "
                                   f"(in the store: {', '.join(names) or 'none'})")
            keep |= hit.to_numpy()
        df = df[keep]
    df = df.assign(value=df[stat]).sort_values(["lock", "callsite", "position"])
    return runs, df[["lock", "callsite", "position", "run", "value", "count"]].reset_index(drop=True)


def noise_sigma(x):
    """Robust noise level of a series (log values): the MAD of successive
    differences over sqrt(2), which a level shift barely moves."""
    d = np.diff(np.asarray(x, np.float64))
    if len(d) < 2:
        return SIGMA_FLOOR
    mad = np.median(np.abs(d - np.median(d))) * 1.4826 / math.sqrt(2)
    return max(float(mad), SIGMA_FLOOR)


def change_points(values, penalty=DEFAULTS["penalty"], min_size=DEFAULTS["min_size"],
                  threshold=DEFAULTS["threshold"], min_delta_ns=DEFAULTS["min_delta_ns"]):
    """Change points of one series, with ``ruptures`` PELT.

    The series is put on the log scale (run-to-run variation is
    multiplicative) and divided by its robust noise level
    (:func:`noise_sigma`); PELT with the l2 cost and a penalty of
    ``penalty * log(n)`` segments it; then only the boundaries whose
    segments differ by at least *threshold* (relative, between the
    segments' medians) and *min_delta_ns* are kept.

    Parameters
    ----------
    values : array of float
        The statistic of each run, in run order (no NaN).

    Returns
    -------
    list of dict
        ``index`` (first run of the new segment), ``before``, ``after``
        (the segments' medians), ``change`` (``after / before - 1``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = 1000 * np.exp(rng.normal(0, 0.02, 60)) * np.r_[np.ones(30), 1.2 * np.ones(30)]
    >>> [c["index"] for c in change_points(v)]
    [30]
    """
    rpt = require("ruptures", "change-point detection")
    v = np.asarray(values, np.float64)
    n = len(v)
    if n < 2 * min_size:
        return []
    x = np.log(np.maximum(v, 1.0))
    sigma = noise_sigma(x)
    z = ((x - np.median(x)) / sigma).reshape(-1, 1)
    bkps = rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(z).predict(
        pen=penalty * math.log(n))
    bounds = [0] + [b for b in bkps if b < n] + [n]
    out = []
    for i in range(1, len(bounds) - 1):
        before = float(np.median(v[bounds[i - 1]:bounds[i]]))
        after = float(np.median(v[bounds[i]:bounds[i + 1]]))
        change = after / before - 1 if before > 0 else math.inf
        if abs(change) >= threshold and abs(after - before) >= min_delta_ns:
            out.append({"index": bounds[i], "before": before, "after": after,
                        "change": change})
    return out


def history(store, metric="hold", stat="p50", callsite=None, lock=None, labels=None,
            order="time", scheduler=None, penalty=DEFAULTS["penalty"],
            min_size=DEFAULTS["min_size"], threshold=DEFAULTS["threshold"],
            min_delta_ns=DEFAULTS["min_delta_ns"], recent=DEFAULTS["recent"],
            alpha=DEFAULTS["alpha"], min_count=30):
    """Follow each call site over the runs of a store and find change points.

    Parameters
    ----------
    store : Store
    metric, stat : str
        ``hold``/``wait``; ``p50``, ``p90``, ``p99``, ``mean``, ``total``.
    callsite, lock : str or list of str, optional
        Shell patterns; default every call site (and the lock rows ``*``).
    labels : dict, optional
        Only runs with these labels.
    order : str
        ``"time"`` or ``"label:KEY"``.
    scheduler : str, optional
        See :func:`store_stats`.
    penalty, min_size, threshold, min_delta_ns :
        See :func:`change_points`.
    recent : int
        The gate fails on a regression that starts in the newest *recent*
        runs.
    alpha : float
        Level of the newest-run check against the run-to-run variation.
    min_count : int
        Runs with fewer samples of a call site are left out of its series.

    Returns
    -------
    HistoryResult
    """
    for key, value, low in (("penalty", penalty, 0), ("min_size", min_size, 1),
                            ("recent", recent, 1)):
        if not value >= low:
            raise HistoryError(f"bad {key} {value!r}: must be >= {low}")
    runs, long = series(store, metric, stat, callsite, lock, labels, order, scheduler)
    long = long[long["count"] >= min_count]
    n_runs = len(runs)
    cps, pending = [], []
    for (lk, cs), g in long.groupby(["lock", "callsite"], sort=True):
        g = g.dropna(subset=["value"])
        values = g["value"].to_numpy()
        found = change_points(values, penalty, min_size, threshold, min_delta_ns)
        for c in found:
            row = g.iloc[c["index"]]
            cps.append({"lock": lk, "callsite": cs, "position": int(row["position"]),
                        "run": row["run"], **{k: c[k] for k in ("before", "after", "change")},
                        "recent": int(row["position"]) >= n_runs - recent})
        # The newest run against the runs of the current segment before it.
        # (a change point the newest run itself makes is not a segment start)
        start = max([c["index"] for c in found if c["index"] < len(values) - min_size],
                    default=0)
        if len(values) - start >= 4 and int(g["position"].iloc[-1]) == n_runs - 1:
            pending.append((lk, cs, g["run"].iloc[-1], values[start:]))
    newest = []
    for lk, cs, run, values in pending:     # Bonferroni over the series judged
        j = judge_newest(values, threshold=threshold, min_delta_ns=min_delta_ns,
                         alpha=alpha / len(pending))
        newest.append({"lock": lk, "callsite": cs, "run": run, **j})
    cp = pd.DataFrame(cps, columns=["lock", "callsite", "position", "run", "before", "after",
                                    "change", "recent"])
    names = dict(zip(runs["run"], runs["name"]))
    cp.insert(4, "name", cp["run"].map(names))
    nw = pd.DataFrame(newest, columns=["lock", "callsite", "run", "status", "value", "baseline",
                                       "change", "low", "high", "runs"])
    options = dict(metric=metric, stat=stat, callsite=callsite, lock=lock, order=order,
                   penalty=penalty, min_size=min_size, threshold=threshold,
                   min_delta_ns=min_delta_ns, recent=recent, alpha=alpha, min_count=min_count,
                   scheduler=scheduler)
    return HistoryResult(runs, long, cp, nw, options)


class HistoryResult:
    """What :func:`history` found.

    Attributes
    ----------
    runs : pandas.DataFrame
        The runs, in order.
    series : pandas.DataFrame
        ``lock, callsite, position, run, value, count``.
    change_points : pandas.DataFrame
        ``lock, callsite, position, run, name, before, after, change,
        recent``.
    newest : pandas.DataFrame
        The newest run of each series judged against the runs before it.
    regressions : pandas.DataFrame
        Change points that start a regression in the newest runs.
    exit_status : int
        1 when there is one (or the newest run alone regressed), else 0.
    """

    def __init__(self, runs, series_, cps, newest, options):
        self.runs, self.series, self.change_points = runs, series_, cps
        self.newest, self.options = newest, options
        self.regressions = cps[cps["recent"] & (cps["change"] > 0)].reset_index(drop=True)
        self.newest_regressed = newest[newest["status"] == "regressed"].reset_index(drop=True)

    @property
    def exit_status(self):
        return 1 if len(self.regressions) or len(self.newest_regressed) else 0

    def verdict(self):
        o = self.options
        what = f"{o['metric']} {o['stat']}"
        if self.exit_status:
            items = [f"{r.lock} {r.callsite} {what} {_ns(r.before)} -> {_ns(r.after)} "
                     f"({r.change:+.1%}) from run {r.position} ({r.name})"
                     for r in self.regressions.itertuples()]
            items += [f"{r.lock} {r.callsite} newest run {_ns(r.value)} vs {_ns(r.baseline)} "
                      f"({r.change:+.1%}, beyond the run-to-run variation of {r.runs} runs)"
                      for r in self.newest_regressed.itertuples()]
            return "REGRESSION: " + "; ".join(items)
        return (f"no regression in the newest {o['recent']} runs "
                f"({len(self.change_points)} change points over {len(self.runs)} runs)")

    def to_dict(self):
        def records(df):
            return json.loads(df.to_json(orient="records", date_format="iso"))
        return {"kvmscope_history": 1, "options": self.options,
                "runs": records(self.runs[["run", "name", "start_time", "position"]]),
                "change_points": records(self.change_points),
                "newest": records(self.newest), "series": records(self.series),
                "exit_status": self.exit_status, "verdict": self.verdict()}

    def plot(self, limit=8):
        """matplotlib Figure: each series with its change points marked
        (the call sites with change points first; at most *limit*)."""
        from matplotlib.figure import Figure
        keys = list(dict.fromkeys(zip(self.change_points["lock"],
                                      self.change_points["callsite"])))
        for k in self.series.groupby(["lock", "callsite"], sort=True).size() \
                .sort_values(ascending=False).index:
            if k not in keys:
                keys.append(k)
        keys = keys[:max(1, limit)]
        fig = Figure(figsize=(9, 2.2 * max(1, len(keys)) + 0.6), layout="constrained")
        axes = fig.subplots(max(1, len(keys)), 1, squeeze=False)[:, 0]
        o = self.options
        for ax, key in zip(axes, keys):
            g = self.series[(self.series["lock"] == key[0]) & (self.series["callsite"] == key[1])]
            ax.plot(g["position"], g["value"], "o-", ms=3, lw=0.8, color="0.35")
            for c in self.change_points[(self.change_points["lock"] == key[0])
                                        & (self.change_points["callsite"] == key[1])] \
                    .itertuples():
                color = "tab:red" if c.change > 0 else "tab:green"
                ax.axvline(c.position - 0.5, color=color, ls="--", lw=1.2)
                ax.annotate(f"{c.change:+.0%}", (c.position - 0.5, c.after), color=color,
                            xytext=(3, 3), textcoords="offset points", fontsize=8)
            ax.set_title(f"{key[0]} {key[1]}: {o['metric']} {o['stat']}", fontsize=9, loc="left")
            ax.set_ylabel("ns")
        axes[-1].set_xlabel(f"run ({'time' if o['order'] == 'time' else o['order']} order)")
        if not len(self.series):
            axes[0].text(0.5, 0.5, "no runs", ha="center", va="center",
                         transform=axes[0].transAxes)
        return fig


def _ns(v):
    from .. import units
    return units.format_duration(float(v))


# --------------------------------------------------------------------------
# run-to-run variation from the store

def _t(alpha, df):
    from scipy import stats
    return float(stats.t.ppf(1 - alpha / 2, df))


def judge_newest(values, threshold=0.10, min_delta_ns=100, alpha=0.01):
    """Judge the last value of a series against the ones before it.

    The earlier runs give the run-to-run variation (standard deviation of
    the log statistic, k - 1 degrees of freedom); the newest run regressed
    when the whole ``1 - alpha`` prediction interval of its change is above
    *threshold* and *min_delta_ns*.

    Returns
    -------
    dict
        ``status`` (regressed, improved, unchanged), ``value``,
        ``baseline`` (geometric mean of the earlier runs), ``change``,
        ``low``, ``high`` (interval of the change), ``runs``.
    """
    v = np.asarray(values, np.float64)
    return _judge(np.log(np.maximum(v[:-1], 1)), math.log(max(v[-1], 1)), 1,
                  threshold, min_delta_ns, alpha)


def _judge(base_logs, new_log, new_runs, threshold, min_delta_ns, alpha, sd=None,
           sd_df=None, base_log=None):
    k = len(base_logs)
    if sd is None:
        sd, sd_df = (float(np.std(base_logs, ddof=1)), k - 1) if k >= 2 else (math.nan, 0)
    mean = float(np.mean(base_logs)) if base_log is None else base_log
    base_n = k if base_log is None else 1
    out = {"value": math.exp(new_log), "baseline": math.exp(mean),
           "change": math.expm1(new_log - mean), "runs": sd_df + 1}
    if not sd_df or math.isnan(sd):
        out.update(status="unchanged", low=math.nan, high=math.nan)
        return out
    se = max(sd, SIGMA_FLOOR) * math.sqrt(1 / base_n + 1 / new_runs)
    t = _t(alpha, sd_df)
    d = new_log - mean
    low, high = math.expm1(d - t * se), math.expm1(d + t * se)
    base = math.exp(mean)
    status = "unchanged"
    if low > threshold and base * low >= min_delta_ns:
        status = "regressed"
    elif high < -threshold and -base * high >= min_delta_ns:
        status = "improved"
    out.update(status=status, low=low, high=high)
    return out


def store_interval(base_stats, new_stats, sd_log, runs, alpha=0.05):
    """Interval of the relative change of a statistic between two groups of
    runs (one run each, or more), with the run-to-run variation taken from
    a store instead of from the groups themselves.

    On the log scale: ``d = mean(log new) - mean(log base)``, the interval
    ``d +- t * sd_log * sqrt(1/k_base + 1/k_new)`` with ``t`` Student's
    ``1 - alpha/2`` quantile at ``runs - 1`` degrees of freedom (the store's
    runs estimated ``sd_log``).  For several rows, pass ``alpha / m``
    (Bonferroni): :func:`judge_pair` does.

    Parameters
    ----------
    base_stats, new_stats : sequence of float
        The statistic of each run of a side (ns).
    sd_log : float
        Standard deviation of the log statistic between runs (see
        :func:`variation`).
    runs : int
        Runs of the store it was estimated from (at least 2).

    Returns
    -------
    (float, float)
        Lower and upper bound of ``new / base - 1``.

    Examples
    --------
    >>> lo, hi = store_interval([1000], [1500], sd_log=0.05, runs=10)
    >>> round(lo, 2), round(hi, 2)
    (0.28, 0.76)
    """
    b = np.log(np.maximum(np.asarray(base_stats, np.float64), 1))
    n = np.log(np.maximum(np.asarray(new_stats, np.float64), 1))
    d = float(n.mean() - b.mean())
    se = max(float(sd_log), SIGMA_FLOOR) * math.sqrt(1 / len(b) + 1 / len(n))
    t = _t(alpha, int(runs) - 1)
    return math.expm1(d - t * se), math.expm1(d + t * se)


def variation(store, config, metric="hold", stat="p50", scheduler=None, min_count=30):
    """Run-to-run variation of the store's runs of one configuration.

    Parameters
    ----------
    store : Store
    config : dict
        ``meta.json`` ``config`` of the runs to match (settings that do not
        change timings, such as the output directory, are ignored).

    Returns
    -------
    pandas.DataFrame
        Per ``lock, callsite``: ``runs`` (k), ``mean_log``, ``sd_log`` (the
        standard deviation of the log statistic between runs, k - 1
        degrees of freedom), ``median_ns``.
    """
    runs = store.runs()
    key = config_key(config)
    same = [r for r, c in zip(runs["run"], runs["config"]) if config_key(json.loads(c)) == key]
    cols = ["lock", "callsite", "runs", "mean_log", "sd_log", "median_ns"]
    if not same:
        return pd.DataFrame(columns=cols)
    st = store_stats(store, metric, same, scheduler)
    st = st[st["count"] >= min_count]
    st = st.assign(log=np.log(np.maximum(st[stat].astype(np.float64), 1)))
    g = st.groupby(["lock", "callsite"], sort=True)
    out = pd.DataFrame({"runs": g.size(), "mean_log": g["log"].mean(),
                        "sd_log": g["log"].std(ddof=1), "median_ns": g[stat].median()})
    return out.reset_index()[cols]


def _trace_stats(trace, metric):
    """Per-(lock, call site) statistics of a loaded trace, as run_stats."""
    import tempfile
    import pyarrow.parquet as pq
    from . import convert as _convert
    t = _convert.enrich(trace.arrow("locks"), "locks", trace.arrow("threads"))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "locks.parquet")
        pq.write_table(t, p)
        return run_stats("", p, metric)


def judge_pair(base, new, store, metric="hold", stat="p50", threshold=0.10,
               min_delta_ns=100, alpha=0.05, min_count=30, min_runs=3):
    """Judge a single new run against a single baseline run, with the
    run-to-run variation estimated from the store's runs of the baseline's
    configuration.

    The change of each (lock, call site) statistic is judged on the log
    scale: its interval is ``d +- t * sd * sqrt(2)`` (two single runs), with
    ``sd`` the store's between-run standard deviation and ``t`` Student's
    quantile at ``1 - alpha / (2 m)`` with ``k - 1`` degrees of freedom
    (Bonferroni over the ``m`` rows).  A row regressed when the interval's
    lower bound is above *threshold* and *min_delta_ns*.  Rows with fewer
    than *min_runs* baseline runs in the store are not judged.

    Parameters
    ----------
    base, new : Trace
    store : Store

    Returns
    -------
    pandas.DataFrame
        ``lock, callsite, status, base_ns, new_ns, change, low, high,
        runs, sd_log``; sorted regressed first.
    """
    var = variation(store, base.meta.get("config") or {}, metric, stat, min_count=min_count)
    b = _trace_stats(base, metric)
    n = _trace_stats(new, metric)
    b = b[b["count"] >= min_count]
    n = n[n["count"] >= min_count]
    rows = b.merge(n, on=["lock", "callsite"], suffixes=("_b", "_n")) \
        .merge(var, on=["lock", "callsite"], how="left")
    judged = rows["runs"].fillna(0) >= min_runs
    m = max(int(judged.sum()), 1)
    out = []
    for r in rows.to_dict("records"):
        base_ns, new_ns = float(r[f"{stat}_b"]), float(r[f"{stat}_n"])
        if not (r["runs"] or 0) >= min_runs:
            out.append({"lock": r["lock"], "callsite": r["callsite"], "status": "no baseline",
                        "base_ns": base_ns, "new_ns": new_ns,
                        "change": new_ns / base_ns - 1 if base_ns else math.nan,
                        "low": math.nan, "high": math.nan, "runs": int(r["runs"] or 0),
                        "sd_log": math.nan})
            continue
        j = _judge([], math.log(max(new_ns, 1)), 1, threshold, min_delta_ns, alpha / m,
                   sd=float(r["sd_log"]), sd_df=int(r["runs"]) - 1,
                   base_log=math.log(max(base_ns, 1)))
        out.append({"lock": r["lock"], "callsite": r["callsite"], "status": j["status"],
                    "base_ns": base_ns, "new_ns": new_ns, "change": j["change"],
                    "low": j["low"], "high": j["high"], "runs": int(r["runs"]),
                    "sd_log": float(r["sd_log"])})
    df = pd.DataFrame(out, columns=["lock", "callsite", "status", "base_ns", "new_ns", "change",
                                    "low", "high", "runs", "sd_log"])
    rank = {"regressed": 0, "improved": 1, "unchanged": 2, "no baseline": 3}
    return df.sort_values(["status", "change"], key=lambda s: s.map(rank) if s.name == "status"
                          else -s).reset_index(drop=True)


__all__ = ["history", "change_points", "store_stats", "run_stats", "variation", "judge_pair",
           "judge_newest", "HistoryResult", "HistoryError", "EXTRA"]
