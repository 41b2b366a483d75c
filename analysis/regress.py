"""Regression reports on lock hold and wait times: compare a baseline and a
candidate (one trace or a group of repeated runs each) per lock and per call
site, decide with a rank test, a bootstrap confidence interval and a
threshold, and run the ``kvmscope diff`` CI gate.

The decision rule (see docs/regress.md for why it does not cry wolf): a
lock or call site has *regressed* when all of these hold

1. both sides have at least ``min_count`` samples;
2. the two-sided Mann-Whitney U test (:func:`scipy.stats.mannwhitneyu`),
   Holm-corrected over every row compared, gives ``p < alpha``;
3. the lower bound of the ``1 - alpha`` bootstrap confidence interval of the
   relative change of the chosen statistic is above ``threshold``; the
   bootstrap resamples runs, then contiguous time blocks within each run, so
   the interval carries the variation between runs (and the slow drift
   within a run), not only the spread of pooled samples;
4. the lower bound of the absolute change is at least ``min_delta_ns``
   (differences of a few clock ticks are machine noise).

*Improved* is the mirror image.  Everything is vectorised (numpy arrays,
histograms of the distinct values, scipy.stats): no Python code runs per
record.
"""

import fnmatch
import math
import os
import warnings
import zlib

import numpy as np
import pandas as pd
from scipy import stats

from .. import units
from ..errors import ConfigError, KvmscopeError
from . import history, structdiff
from . import stats as _stats
from .trace import Trace

METRICS = ("hold", "wait")
STATS = ("p50", "p90", "p99", "mean", "total")
FORMATS = ("text", "markdown", "html", "json")
PERCENTILES = (50, 90, 99)

#: ``kvmscope diff`` exit statuses.
EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2

#: ``callsite`` of the row that pools every call site of a lock.
ALL_CALLSITES = "*"

#: Row statuses, in the order reports list them.
STATUSES = ("regressed", "improved", "new", "gone", "unchanged",
            "insufficient")

DEFAULTS = dict(metric="hold", stat="p50", threshold=0.10, min_delta_ns=100,
                alpha=0.05, min_count=30, resamples=2000, blocks=10, seed=0)

# Bootstrap histograms cap their distinct values (values are then rounded
# to 3 significant digits), and work on this many cells at a time.
_MAX_GRID = 4096
_CELLS = 1 << 21
# A run split into time blocks needs this many samples per block; shorter
# runs are resampled sample by sample (blocks of one).
_MIN_BLOCK = 20
# Hodges-Lehmann: exact over the pairs of distinct values up to this many
# pairs, else over 2^18 random pairs.
_MAX_PAIRS = 1 << 20


class DiffError(KvmscopeError, ValueError):
    """A comparison that cannot be made: bad option, unknown lock or call
    site, no runs.  The message is one line."""


# --------------------------------------------------------------------------
# options

def parse_threshold(text):
    """Parse a threshold: ``"10%"``, ``"10"`` (percent) or a float fraction
    (:func:`kvmscope.units.parse_percent`).

    Examples
    --------
    >>> parse_threshold("10%"), parse_threshold("2.5"), parse_threshold(0.1)
    (0.1, 0.025, 0.1)
    """
    try:
        return units.parse_percent(text, "threshold")
    except ConfigError as e:
        raise DiffError(str(e)) from None


def parse_ns(text):
    """Parse a duration >= 0 in ns with :func:`kvmscope.units.parse_duration`:
    ``"100"``, ``"100ns"``, ``"1.5us"``, ``"2ms"``.

    Examples
    --------
    >>> parse_ns("1.5us"), parse_ns(250), parse_ns("0")
    (1500, 250, 0)
    """
    try:
        value = units.parse_duration(text, name="min_delta_ns")
    except ConfigError as e:
        raise DiffError(str(e)) from None
    if value < 0:
        raise DiffError(f"bad duration {text!r} for min_delta_ns: must be "
                        ">= 0")
    return value


def _check_options(o):
    if o["metric"] not in METRICS:
        raise DiffError(f"unknown metric {o['metric']!r}; one of "
                        f"{', '.join(METRICS)}")
    if o["stat"] not in STATS:
        raise DiffError(f"unknown stat {o['stat']!r}; one of "
                        f"{', '.join(STATS)}")
    o["threshold"] = parse_threshold(o["threshold"])
    o["min_delta_ns"] = parse_ns(o["min_delta_ns"])
    if not 0 < float(o["alpha"]) < 1:
        raise DiffError(f"bad alpha {o['alpha']!r}: must be in (0, 1)")
    for key, low in (("min_count", 1), ("resamples", 100), ("blocks", 1)):
        if int(o[key]) < low:
            raise DiffError(f"bad {key} {o[key]!r}: must be >= {low}")
        o[key] = int(o[key])
    o["alpha"] = float(o["alpha"])
    o["seed"] = int(o["seed"])
    return o


# --------------------------------------------------------------------------
# inputs

def _is_trace_dir(path):
    return os.path.isfile(os.path.join(path, "meta.json"))


def load_runs(spec):
    """Load one side of a comparison as a list of traces.

    Parameters
    ----------
    spec : str, os.PathLike, Trace, or a sequence of them
        Trace directories or loaded traces.  A directory that is not a
        trace (no ``meta.json``) but holds trace directories stands for all
        of them, in name order: a group of repeated runs.

    Returns
    -------
    list of Trace

    Raises
    ------
    TraceError
        A trace cannot be read.
    DiffError
        No runs.

    Examples
    --------
    >>> runs = load_runs(["runs/base-1", "runs/base-2"])   # doctest: +SKIP
    >>> runs = load_runs("runs/base")    # each trace in it  # doctest: +SKIP
    """
    items = [spec] if isinstance(spec, (str, os.PathLike, Trace)) \
        else list(spec)
    runs = []
    for item in items:
        if isinstance(item, Trace):
            runs.append(item)
            continue
        path = os.fspath(item)
        if os.path.isdir(path) and not _is_trace_dir(path):
            inner = sorted(os.path.join(path, d) for d in os.listdir(path)
                           if _is_trace_dir(os.path.join(path, d)))
            if inner:
                runs.extend(Trace.load(p) for p in inner)
                continue
        runs.append(Trace.load(path))
    if not runs:
        raise DiffError("no runs given")
    return runs


def _match(patterns, names, what):
    """Names matching any of the glob *patterns*; an error names a pattern
    that matches nothing."""
    if not patterns:
        return set(names)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = set()
    for pat in patterns:
        hit = {n for n in names if fnmatch.fnmatchcase(n, pat)}
        if not hit:
            known = ", ".join(sorted(names)) or "none"
            raise DiffError(f"unknown {what} {pat!r} (in these traces: "
                            f"{known})")
        chosen |= hit
    return chosen


def _run_samples(trace, metric):
    """Per (lock, call site) and per lock: the run's samples in time order.

    Wait samples are the contended acquisitions only, as lock_stat counts
    them.  Returns ``{(lock, callsite): int64 array}``, with the lock's
    pooled row under ``(lock, ALL_CALLSITES)``.
    """
    df = trace.locks
    values = df[f"{metric}_ns"].to_numpy()
    keep = df["contended"].to_numpy() if metric == "wait" else None
    lock = df["lock"].cat.codes.to_numpy()
    site = df["callsite"].cat.codes.to_numpy()
    when = df["acquired_ns"].to_numpy()
    if keep is not None:
        values, lock, site, when = values[keep], lock[keep], site[keep], \
            when[keep]
    locks = df["lock"].cat.categories
    sites = df["callsite"].cat.categories
    out = {}
    order = np.lexsort((when, site, lock))
    v, lk, st = values[order], lock[order], site[order]
    cut = np.flatnonzero((lk[1:] != lk[:-1]) | (st[1:] != st[:-1])) + 1
    for s, e in zip(np.r_[0, cut], np.r_[cut, len(v)]):   # a loop over keys
        if s < e:
            out[(str(locks[lk[s]]), str(sites[st[s]]))] = v[s:e]
    by_lock = np.lexsort((when, lock))
    v, lk = values[by_lock], lock[by_lock]
    cut = np.flatnonzero(lk[1:] != lk[:-1]) + 1
    for s, e in zip(np.r_[0, cut], np.r_[cut, len(v)]):   # a loop over locks
        if s < e:
            out[(str(locks[lk[s]]), ALL_CALLSITES)] = v[s:e]
    return out


def _names(traces):
    locks, sites = set(), set()
    for t in traces:
        locks.update(map(str, t.locks["lock"].cat.categories))
        sites.update(map(str, t.locks["callsite"].cat.categories))
    return locks, sites


# --------------------------------------------------------------------------
# statistics of one side

def _rank(n, p):
    """0-based index of the nearest-rank p-th percentile of n sorted values
    (integer arithmetic: 0.9 * 10 must give 9, not 10)."""
    return max((p * n + 99) // 100, 1) - 1


def _stat_of_sorted(v, stat, runs):
    n = len(v)
    if not n:
        return np.nan
    if stat == "mean":
        return float(v.mean())
    if stat == "total":
        return float(v.sum(dtype=np.int64)) / runs
    return float(v[_rank(n, int(stat[1:]))])


def _describe(side, prefix):
    """Pooled count, percentiles, max, mean and per-run total of a side."""
    v = np.sort(np.concatenate(side)) if side else np.zeros(0, np.int64)
    n = len(v)
    d = {f"{prefix}runs": len(side), f"{prefix}count": n}
    for p in PERCENTILES:
        d[f"{prefix}p{p}_ns"] = int(v[_rank(n, p)]) if n else None
    d[f"{prefix}max_ns"] = int(v[-1]) if n else None
    d[f"{prefix}mean_ns"] = float(v.mean()) if n else np.nan
    d[f"{prefix}total_ns"] = (float(v.sum(dtype=np.int64)) / len(side)
                              if side else np.nan)
    return v, d


def _round_sig(values, digits=3):
    """Round positive integers to *digits* significant digits."""
    v = np.asarray(values, dtype=np.float64)
    mag = np.floor(np.log10(np.maximum(np.abs(v), 1)))
    scale = 10.0 ** np.maximum(mag - (digits - 1), 0)
    return np.round(v / scale) * scale


def _grid(pooled):
    """Distinct values of a side, and whether they are rounded (to 3
    significant digits, when there are more than _MAX_GRID of them)."""
    u = np.unique(pooled)
    if len(u) <= _MAX_GRID:
        return u.astype(np.float64), False
    return np.unique(_round_sig(u)), True


def _blocks(run, blocks):
    """Block of each sample of a run: ``blocks`` contiguous time blocks when
    the run is long enough, else one block per sample (plain bootstrap)."""
    n = len(run)
    nb = blocks if n >= blocks * _MIN_BLOCK else n
    return (np.arange(n) * nb) // n, nb


def _bootstrap(side, stat, resamples, blocks, rng):
    """Bootstrap replicates of the side's statistic.

    Two levels: the runs are drawn with replacement, then the time blocks
    of each drawn run; a replicate is the statistic of the pooled samples.
    With one run only the second level remains.  Each block is summarised
    once (count and sum, or cumulative histogram over the side's distinct
    values), so that every replicate is one row of a matrix product.
    (:func:`scipy.stats.bootstrap` resamples the observations of each sample
    independently, one level, and would compute the statistic of every
    replicate from the samples: it fits neither design.)
    """
    k = len(side)
    split = [_blocks(r, blocks) for r in side]
    if stat in ("mean", "total"):
        per_block = np.vstack([np.column_stack([
            np.bincount(b, minlength=nb),
            np.bincount(b, weights=r.astype(np.float64), minlength=nb)])
            for r, (b, nb) in zip(side, split)])
        grid = None
        width = 2
    else:
        grid, rounded = _grid(np.concatenate(side))
        cum = []
        for r, (b, nb) in zip(side, split):     # a loop over runs
            codes = np.searchsorted(grid, _round_sig(r) if rounded else r)
            h = np.bincount(b * len(grid) + codes, minlength=nb * len(grid))
            cum.append(np.cumsum(h.reshape(nb, len(grid)), axis=1))
        per_block = np.vstack(cum).astype(np.float64)
        width = len(grid)
    out = np.empty(resamples)
    step = max(1, _CELLS // width)
    for s in range(0, resamples, step):     # a loop over chunks of replicates
        r = min(step, resamples - s)
        runs = (rng.multinomial(k, np.full(k, 1 / k), size=r) if k > 1
                else np.ones((r, 1), dtype=np.int64))
        # One weight per block: its draws times its run's draws.
        w = np.hstack([rng.multinomial(nb, np.full(nb, 1 / nb), size=r)
                       * runs[:, j:j + 1]
                       for j, (_, nb) in enumerate(split)]).astype(np.float64)
        agg = w @ per_block
        if grid is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[s:s + r] = (agg[:, 1] / agg[:, 0] if stat == "mean"
                                else agg[:, 1] / k)
            continue
        # agg is the cumulative histogram of each replicate.
        n = agg[:, -1].astype(np.int64)
        target = np.maximum((int(stat[1:]) * n + 99) // 100, 1)
        idx = np.minimum((agg < target[:, None]).sum(axis=1), width - 1)
        out[s:s + r] = np.where(n > 0, grid[idx], np.nan)
    return out


def _run_interval(base_stats, new_stats, alpha):
    """t interval of the relative change from per-run statistics.

    On the log scale (run-to-run variation is multiplicative): the pooled
    two-sample t interval of :func:`scipy.stats.ttest_ind`, with the
    between-run variance pooled over both sides and ``k_base + k_new - 2``
    degrees of freedom: with few runs the interval is wide, as it should
    be.  ``(nan, nan)`` when neither side has two runs.
    """
    x = np.log(np.maximum(np.asarray(base_stats, np.float64), 1))
    y = np.log(np.maximum(np.asarray(new_stats, np.float64), 1))
    if len(x) + len(y) < 3:
        return np.nan, np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Runs with identical statistics: a zero-width interval, not a
        # warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_ind(y, x).confidence_interval(1 - alpha)
    return math.expm1(ci.low), math.expm1(ci.high)


# --------------------------------------------------------------------------
# tests and effect sizes on pooled samples

def mann_whitney(base, new):
    """Two-sided Mann-Whitney U test of *new* against *base*, with Cliff's
    delta.

    :func:`scipy.stats.mannwhitneyu` with the normal approximation, tie
    correction and continuity correction (ties are the rule for
    clock-quantised durations; the exact method is for small tie-free
    samples only).

    Parameters
    ----------
    base, new : array of int

    Returns
    -------
    (u, p, delta) : tuple of float
        ``u`` counts pairs where *new* is larger (ties count half); ``p``
        the two-sided p-value; ``delta`` is Cliff's delta
        ``P(new > base) - P(new < base)`` in [-1, 1] (the rank-biserial
        correlation).

    Examples
    --------
    >>> u, p, d = mann_whitney(np.arange(100), np.arange(100) + 50)
    >>> p < 1e-6, round(d, 2)
    (True, 0.75)
    """
    n0, n1 = len(base), len(new)
    if not n0 or not n1:
        return np.nan, np.nan, np.nan
    res = stats.mannwhitneyu(new, base, alternative="two-sided",
                             method="asymptotic", use_continuity=True)
    u = float(res.statistic)
    p = float(res.pvalue)
    # No spread at all (every value equal): nothing to reject.
    return u, (1.0 if math.isnan(p) else p), 2 * u / (n0 * n1) - 1


def hodges_lehmann(base, new, rng=None):
    """Hodges-Lehmann shift: the median of all differences ``new - base``.

    Exact over the pairs of distinct values when there are at most 2^20 of
    them, else the median of 2^18 random pairs.

    Examples
    --------
    >>> hodges_lehmann(np.array([10, 20, 30]), np.array([110, 120, 130]))
    100.0
    """
    if not len(base) or not len(new):
        return np.nan
    u0, c0 = np.unique(base, return_counts=True)
    u1, c1 = np.unique(new, return_counts=True)
    if len(u0) * len(u1) <= _MAX_PAIRS:
        d = (u1[None, :].astype(np.float64) - u0[:, None]).ravel()
        w = np.outer(c0, c1).ravel().astype(np.float64)
        order = np.argsort(d, kind="stable")
        cw = np.cumsum(w[order])
        return float(d[order][np.searchsorted(cw, cw[-1] / 2)])
    rng = rng or np.random.default_rng(0)
    m = 1 << 18
    return float(np.median(rng.choice(new, m).astype(np.float64)
                           - rng.choice(base, m)))


def holm(pvalues):
    """Holm step-down adjustment of p-values (NaN stays NaN).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.minimum(1.0, p[order] * (m - np.arange(m)))
    out[order] = np.maximum.accumulate(adj)
    return out


# --------------------------------------------------------------------------
# comparison

def _seed(seed, key):
    """A generator per row, so a row's interval does not depend on which
    other rows were compared."""
    return np.random.default_rng([seed, zlib.crc32("\0".join(key).encode())])


def _compare_row(key, base, new, o):
    """Statistics, test and bootstrap of one (lock, call site)."""
    stat = o["stat"]
    base = [r for r in base if len(r)]
    new = [r for r in new if len(r)]
    bv, row = _describe(base, "base_")
    nv, d = _describe(new, "new_")
    row.update(d)
    row["base_stat_ns"] = _stat_of_sorted(bv, stat, max(len(base), 1))
    row["new_stat_ns"] = _stat_of_sorted(nv, stat, max(len(new), 1))
    row["delta_ns"] = row["new_stat_ns"] - row["base_stat_ns"]
    with np.errstate(divide="ignore", invalid="ignore"):
        row["rel_change"] = float(np.float64(row["new_stat_ns"])
                                  / row["base_stat_ns"] - 1)
    per_run = {}
    for side, runs in (("base", base), ("new", new)):
        per_run[side] = [_stat_of_sorted(np.sort(r), stat, 1) for r in runs]
        row[f"{side}_run_min_ns"] = min(per_run[side], default=np.nan)
        row[f"{side}_run_max_ns"] = max(per_run[side], default=np.nan)
    row.update(ci_low=np.nan, ci_high=np.nan, delta_ci_low_ns=np.nan,
               delta_ci_high_ns=np.nan, boot_ci_low=np.nan,
               boot_ci_high=np.nan, run_ci_low=np.nan, run_ci_high=np.nan,
               p_value=np.nan, cliffs_delta=np.nan, hl_shift_ns=np.nan, store_runs=0)
    if not len(bv) or not len(nv):
        row["status"] = "new" if len(nv) else "gone"
        row["reason"] = ("only in the candidate" if len(nv)
                         else "only in the baseline")
        return row
    if min(len(bv), len(nv)) < o["min_count"]:
        row["status"] = "insufficient"
        row["reason"] = (f"{min(len(bv), len(nv))} samples on one side, "
                         f"--min-count is {o['min_count']}")
        return row
    rng = _seed(o["seed"], key)
    _, p, delta = mann_whitney(bv, nv)
    row.update(p_value=p, cliffs_delta=delta,
               hl_shift_ns=hodges_lehmann(bv, nv, rng))
    b = _bootstrap(base, stat, o["resamples"], o["blocks"], rng)
    n = _bootstrap(new, stat, o["resamples"], o["blocks"], rng)
    a = o["alpha"] * 50                         # percent in each tail
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = n / b - 1
    rel = np.where(np.isnan(rel) & (n == b), 0.0, rel)  # 0 / 0: no change
    if np.isnan(rel).all() or np.isnan(n - b).all():
        lo = hi = dlo = dhi = np.nan
    else:
        lo, hi = np.nanpercentile(rel, [a, 100 - a])
        dlo, dhi = np.nanpercentile(n - b, [a, 100 - a])
    row.update(boot_ci_low=lo, boot_ci_high=hi)
    # With groups, the interval is also at least the run-level t interval,
    # which stays honest with 2 or 3 runs, where resampling runs is not.
    rlo, rhi = _run_interval(per_run["base"], per_run["new"], o["alpha"])
    if not np.isnan(rlo):
        row.update(run_ci_low=rlo, run_ci_high=rhi)
        base_stat = row["base_stat_ns"]
        lo, hi = min(lo, rlo), max(hi, rhi)
        dlo, dhi = min(dlo, base_stat * rlo), max(dhi, base_stat * rhi)
    # With a store, at least the interval its runs' variation gives.
    var = o.get("store_variation", {}).get(key)
    row["store_runs"] = var[1] if var else 0
    if var:
        slo, shi = history.store_interval(per_run["base"], per_run["new"], var[0], var[1],
                                          var[2])
        base_stat = row["base_stat_ns"]
        lo, hi = min(lo, slo), max(hi, shi)
        dlo, dhi = min(dlo, base_stat * slo), max(dhi, base_stat * shi)
    row.update(ci_low=lo, ci_high=hi, delta_ci_low_ns=dlo,
               delta_ci_high_ns=dhi)
    row["status"] = "pending"
    return row


def _store_variation(store, base, o, rows):
    """Per (lock, call site): ``(sd_log, runs, alpha)`` from the store's runs
    of *base*'s configuration, for rows it has 3 or more runs of."""
    from .store import Store
    st = store if isinstance(store, Store) else Store(store)
    var = history.variation(st, base.meta.get("config") or {}, o["metric"], o["stat"],
                            min_count=o["min_count"])
    alpha = o["alpha"] / max(rows, 1)               # Bonferroni over the rows
    return {(r.lock, r.callsite): (float(r.sd_log), int(r.runs), alpha)
            for r in var.itertuples() if r.runs >= 3 and np.isfinite(r.sd_log)}


def _p_text(p):
    return "<1e-300" if p < 1e-300 else f"{p:.2g}"


def _decide(table, o):
    """Holm-adjust the p-values and set each compared row's status and the
    reason for it."""
    table["p_adj"] = holm(table["p_value"].to_numpy())
    thr, floor, alpha = o["threshold"], o["min_delta_ns"], o["alpha"]
    status = table["status"].to_numpy(dtype=object).copy()
    reason = table["reason"].to_numpy(dtype=object).copy()
    for i, r in enumerate(table.to_dict("records")):   # a loop over rows
        if status[i] != "pending":
            continue
        ci = f"interval [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}]"
        up = r["ci_low"] > thr and r["delta_ci_low_ns"] >= floor
        down = r["ci_high"] < -thr and r["delta_ci_high_ns"] <= -floor
        p = _p_text(r["p_adj"])
        if not r["p_adj"] < alpha:
            status[i] = "unchanged"
            reason[i] = f"no significant shift (p_adj {p} >= {alpha:g})"
        elif up or down:
            status[i] = "regressed" if up else "improved"
            least = abs(r["delta_ci_low_ns"] if up else r["delta_ci_high_ns"])
            reason[i] = (f"{ci} beyond {'+' if up else '-'}{thr:.0%}, "
                         f"{'slower' if up else 'faster'} by at least "
                         f"{least:.0f} ns, p_adj {p}")
        elif r["ci_low"] > thr or r["ci_high"] < -thr:
            status[i] = "unchanged"
            reason[i] = (f"{ci} beyond the threshold, but the change may be "
                         f"under --min-delta {floor} ns")
        else:
            status[i] = "unchanged"
            reason[i] = f"{ci} reaches inside +-{thr:.0%}"
    table["status"], table["reason"] = status, reason
    return table


_COLUMNS = [
    "lock", "callsite", "level", "status", "reason", "metric", "stat",
    "base_runs", "new_runs", "base_count", "new_count",
    "base_stat_ns", "new_stat_ns", "delta_ns", "rel_change", "ci_low",
    "ci_high", "delta_ci_low_ns", "delta_ci_high_ns", "boot_ci_low",
    "boot_ci_high", "run_ci_low", "run_ci_high", "p_value", "p_adj",
    "cliffs_delta", "hl_shift_ns",
    "base_p50_ns", "new_p50_ns", "base_p90_ns", "new_p90_ns",
    "base_p99_ns", "new_p99_ns", "base_max_ns", "new_max_ns",
    "base_mean_ns", "new_mean_ns", "base_total_ns", "new_total_ns",
    "base_run_min_ns", "base_run_max_ns", "new_run_min_ns",
    "new_run_max_ns", "store_runs"]


def _notes(base, new, o):
    notes = []
    if (len(base) == 1 or len(new) == 1) and not o.get("store_rows"):
        notes.append(
            "one run on a side: the variation between runs cannot be "
            "measured, so the interval covers only the variation within a "
            "run (time blocks); record 3 or more runs per side for a CI "
            "gate")
    if o["metric"] == "wait":
        notes.append("wait times are over contended acquisitions only; "
                     "they depend on scheduling and vary more between runs "
                     "than hold times")

    def config(t):
        c = dict(t.meta.get("config") or {})
        for k in ("output", "console"):     # no effect on timings
            c.pop(k, None)
        return c
    for side, runs in (("baseline", base), ("candidate", new)):
        cfgs = [config(t) for t in runs]
        differ = sorted({k for c in cfgs for k in c
                         if any(x.get(k) != c.get(k) for x in cfgs)})
        if differ:
            notes.append(f"the {side} runs differ in config: "
                         f"{', '.join(differ)}")
    b, n = config(base[0]), config(new[0])
    differ = sorted(k for k in set(b) | set(n) if b.get(k) != n.get(k))
    if differ:
        notes.append("baseline and candidate differ in config: " + "; ".join(
            f"{k} {b.get(k)!r} -> {n.get(k)!r}" for k in differ))
    waits = {}
    for side, runs in (("baseline", base), ("candidate", new)):
        got = [w for w in (_stats.vcpu_cpu_wait_pct(t) for t in runs) if w is not None]
        waits[side] = float(np.median(got)) if len(got) == len(runs) else None
    if None not in waits.values() and \
            abs(waits["candidate"] - waits["baseline"]) >= _stats.CPU_WAIT_GAP_PCT:
        notes.append(f"the candidate's vCPUs waited for a CPU {waits['candidate']:.0f}% of the time "
                     f"they wanted one, the baseline's {waits['baseline']:.0f}% (meta.json stats.cpu): "
                     "the hosts were not equally busy, and timing differences may be theirs")
    for side, runs in (("baseline", base), ("candidate", new)):
        for t in runs:
            for w in t.warnings:
                notes.append(f"{side} {t.path or '(in memory)'}: {w}")
    return notes


def compare(base, new, *, metric="hold", stat="p50", threshold=0.10,
            min_delta_ns=100, alpha=0.05, min_count=30, lock=None,
            callsite=None, resamples=2000, blocks=10, seed=0, store=None):
    """Compare lock hold (or wait) times of a baseline and a candidate.

    Parameters
    ----------
    base, new : str, os.PathLike, Trace, or a sequence of them
        One trace or a group of repeated runs each (see :func:`load_runs`:
        a directory of trace directories is a group).
    metric : {"hold", "wait"}
        ``hold_ns`` of every acquisition, or ``wait_ns`` of contended ones.
    stat : {"p50", "p90", "p99", "mean", "total"}
        Statistic whose relative change is judged (``total``: per run).
    threshold : float or str
        Smallest relative change that counts: ``0.1``, ``"10%"``.
    min_delta_ns : int or str
        Smallest absolute change that counts: ``100``, ``"1us"``.
    alpha : float
        Significance level of the Holm-corrected Mann-Whitney test; the
        confidence interval is the two-sided ``1 - alpha`` one.
    min_count : int
        Fewer samples on a side: status ``insufficient``, not judged.
    lock, callsite : str or list of str, optional
        Only these locks / call sites (shell-style patterns).  A pattern
        that matches nothing raises :class:`DiffError`.
    resamples, blocks, seed : int
        Bootstrap replicates, time blocks per run, random seed (results are
        reproducible for a given seed).
    store : str, os.PathLike or Store, optional
        A run store holding earlier runs of the baseline's configuration:
        where it has 3 or more for a row, that row's interval is widened to
        cover the run-to-run variation they show
        (:func:`history.store_interval`, Bonferroni over the rows), so that
        single runs can be judged without false alarms.  A row it has too
        few runs for keeps the plain interval.

    Returns
    -------
    DiffResult
        ``.table`` has one row per lock (``callsite == "*"``) and per (lock,
        call site); ``.regressed`` and ``.exit_status`` give the verdict.
        ``.structure`` lists the call sites, bottom halves, timers, exit
        reasons and ports that appeared, vanished or changed frequency
        (:func:`structdiff.compare`); ``.caused`` how the waiting caused
        moved between critical sections (:func:`structdiff.caused_shift`).
        Neither changes the exit status.

    Raises
    ------
    TraceError
        A trace cannot be read.
    DiffError
        A bad option or filter.

    Examples
    --------
    >>> from kvmscope.analysis import diff
    >>> r = diff(["base1", "base2", "base3"], ["new1", "new2", "new3"],
    ...          stat="p90", threshold="5%")               # doctest: +SKIP
    >>> r.table[["lock", "callsite", "status", "rel_change"]]  # doctest: +SKIP
    >>> r.regressed, r.exit_status                         # doctest: +SKIP
    (True, 1)
    >>> open("diff.html", "w").write(r.to_html())          # doctest: +SKIP
    """
    o = _check_options(dict(
        metric=metric, stat=stat, threshold=threshold,
        min_delta_ns=min_delta_ns, alpha=alpha, min_count=min_count,
        resamples=resamples, blocks=blocks, seed=seed))
    base_runs, new_runs = load_runs(base), load_runs(new)
    locks, sites = _names(base_runs + new_runs)
    want_locks = _match(lock, locks, "lock")
    want_sites = _match(callsite, sites, "call site")
    samples = [[_run_samples(t, o["metric"]) for t in side]
               for side in (base_runs, new_runs)]
    keys = sorted({k for side in samples for run in side for k in run
                   if k[0] in want_locks
                   and (k[1] in want_sites or (k[1] == ALL_CALLSITES
                                               and callsite is None))})
    o["store_variation"] = _store_variation(store, base_runs[0], o, len(keys)) \
        if store is not None else {}
    empty = np.zeros(0, np.int64)
    rows, kept = [], {}
    for key in keys:                        # a loop over locks and call sites
        b = [run.get(key, empty) for run in samples[0]]
        n = [run.get(key, empty) for run in samples[1]]
        row = _compare_row(key, b, n, o)
        row.update(lock=key[0], callsite=key[1], metric=o["metric"],
                   stat=o["stat"],
                   level="lock" if key[1] == ALL_CALLSITES else "callsite")
        rows.append(row)
        kept[key] = ([r for r in b if len(r)], [r for r in n if len(r)])
    table = pd.DataFrame(rows, columns=_COLUMNS)
    if len(table):
        table = _decide(table, o)
        rank = table["status"].map({s: i for i, s in enumerate(STATUSES)})
        order = np.lexsort(((table["level"] == "lock").to_numpy(),
                            -table["rel_change"].fillna(-np.inf).to_numpy(),
                            rank.to_numpy()))
        table = table.iloc[order].reset_index(drop=True)
    for col in ("base_p50_ns", "new_p50_ns", "base_p90_ns", "new_p90_ns",
                "base_p99_ns", "new_p99_ns", "base_max_ns", "new_max_ns"):
        table[col] = table[col].astype("Int64")
    o.update(lock=lock, callsite=callsite,
             store=None if store is None else os.fspath(getattr(store, "path", store)))
    o["store_rows"] = sum(1 for v in o.pop("store_variation").values() if v)
    notes = _notes(base_runs, new_runs, o)
    if store is not None:
        notes.insert(0, f"run-to-run variation from the store {o['store']}: "
                        f"{o['store_rows']} of {len(table)} rows had 3 or more runs of the "
                        "baseline's configuration there, and their intervals cover it"
                        if o["store_rows"] else
                        f"the store {o['store']} holds fewer than 3 runs of the baseline's "
                        "configuration for every row: nothing was widened")
    from .regress_render import DiffResult
    return DiffResult(table, o, base_runs, new_runs, kept, notes,
                      structure=structdiff.compare(base_runs, new_runs),
                      caused=structdiff.caused_shift(base_runs, new_runs))
