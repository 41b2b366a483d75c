"""Structural diff: what a baseline and a candidate *do*, not how long it
takes: the call sites, bottom halves, timers, exit reasons and ports that
appeared, vanished or changed frequency beyond the run-to-run variation,
and how the waiting caused moved between critical sections.

Frequencies are counted per run and normalised by the run's exits (per
1000 exits: the guest's own progress, so that a slower candidate does not
look like a changed structure); a run without exits is normalised by its
duration (per second).  A frequency changed when, at once:

- the relative change is at least *threshold* (default 10%),
- the difference exceeds *z* (default 4) standard errors: counting noise
  (Poisson: the variance of a count is the count) and, with two runs or
  more on each side, the spread of the per-run values, whichever is
  larger.

The waiting-caused comparison (:func:`caused_shift`) says, per critical
section, its share of all the lock's contended wait on each side: a cost
that moved from one call site to another shows even when the total did
not change.
"""

import numpy as np
import pandas as pd

#: The kinds of things compared, in report order, and how each is named.
KINDS = ("callsite", "bh", "timer", "exit", "port")

_COLUMNS = ["kind", "name", "status", "base_per_run", "new_per_run", "base_rate", "new_rate",
            "unit", "rel_change", "z"]
_SHIFT = ["lock", "holder_callsite", "status", "base_caused_ns", "new_caused_ns",
          "base_pct", "new_pct", "shift_pct"]


def _counts(trace):
    """Per kind and name: how many times it happened in *trace*."""
    parts = []
    locks = trace.locks
    if len(locks):
        c = locks.groupby(["lock", "callsite"], observed=True).size()
        parts.append(pd.Series(c.to_numpy(), index=[("callsite", f"{l} {s}") for l, s in c.index]))
    bh = trace.frame("bh")
    if len(bh):
        c = bh["name"].astype(str).value_counts()
        parts.append(pd.Series(c.to_numpy(), index=[("bh", n) for n in c.index]))
    timers = trace.frame("timers")
    if len(timers):
        fired = timers[timers["fire_ns"].notna()] if "fire_ns" in timers else timers
        c = fired["name"].astype(str).value_counts()
        parts.append(pd.Series(c.to_numpy(), index=[("timer", n) for n in c.index]))
    exits = trace.exits
    if len(exits):
        c = exits["reason"].astype(str).value_counts()
        parts.append(pd.Series(c.to_numpy(), index=[("exit", n) for n in c.index]))
        io = exits[exits["reason"].astype(str).isin(["io", "mmio"])]
        if len(io):
            c = io.groupby([io["reason"].astype(str), io["addr"]]).size()
            parts.append(pd.Series(c.to_numpy(), index=[("port", f"{r} {int(a):#x}") for r, a in c.index]))
    if not parts:
        return pd.Series(dtype=float)
    return pd.concat(parts)


def _norm(trace):
    """The run's normaliser and its unit: exits / 1000, else seconds."""
    n = len(trace.exits)
    if n:
        return n / 1000.0, "per 1k exits"
    return max(trace.duration_ns, 1) / 1e9, "per s"


def compare(base, new, threshold=0.10, z=4.0):
    """Structural differences between two groups of runs.

    Parameters
    ----------
    base, new : list of Trace
    threshold : float
        Smallest relative change of a frequency that counts.
    z : float
        Standard errors a difference must exceed.

    Returns
    -------
    DataFrame
        One row per kind and name seen on either side: ``kind``
        (``callsite``, ``bh``, ``timer``, ``exit``, ``port``), ``name``,
        ``status`` (``appeared``, ``vanished``, ``more``, ``fewer``,
        ``same``), ``base_per_run, new_per_run`` (mean count per run),
        ``base_rate, new_rate`` (mean normalised frequency), ``unit``,
        ``rel_change`` (of the rate) and ``z`` (difference over its
        standard error).  Changed rows first (appeared, vanished, then by
        the size of the change).

    Examples
    --------
    >>> from kvmscope.analysis import structdiff
    >>> structdiff.compare([base], [new]).query("status != 'same'")  # doctest: +SKIP
    """
    sides = []
    units_seen = set()
    for runs in (base, new):
        counts = [_counts(t) for t in runs]
        norms = [_norm(t) for t in runs]
        units_seen |= {u for _, u in norms}
        sides.append((counts, np.array([n for n, _ in norms])))
    if units_seen == {"per 1k exits", "per s"}:
        # Mixed runs (some without exits): compare per second everywhere.
        sides = [(c, np.array([max(t.duration_ns, 1) / 1e9 for t in runs]))
                 for (c, _), runs in zip(sides, (base, new))]
        unit = "per s"
    else:
        unit = units_seen.pop() if units_seen else "per s"
    keys = sorted({k for counts, _ in sides for c in counts for k in c.index})
    rows = []
    for key in keys:                       # a loop over distinct names, not records
        stats = []
        for counts, norm in sides:
            c = np.array([float(x.get(key, 0.0)) for x in counts])
            rate = c / norm
            # Poisson counting error of the mean rate over the side's runs.
            poisson = np.sqrt(c.sum()) / norm.sum() if c.sum() else 0.0
            spread = rate.std(ddof=1) / np.sqrt(len(rate)) if len(rate) > 1 else 0.0
            stats.append((c.mean(), c.sum() / norm.sum(), max(poisson, spread), c.sum()))
        (bc, br, be, bsum), (nc, nr, ne, nsum) = stats
        se = np.hypot(be, ne)
        zval = abs(nr - br) / se if se > 0 else (np.inf if nr != br else 0.0)
        rel = (nr - br) / br if br else np.nan
        if bsum == 0 and nsum > 0:
            status = "appeared"
        elif nsum == 0 and bsum > 0:
            status = "vanished"
        elif zval >= z and abs(rel) >= threshold:
            status = "more" if nr > br else "fewer"
        else:
            status = "same"
        rows.append((key[0], key[1], status, bc, nc, br, nr, unit, rel, zval))
    out = pd.DataFrame(rows, columns=_COLUMNS)
    if out.empty:
        return out
    rank = out["status"].map({"appeared": 0, "vanished": 1, "more": 2, "fewer": 2, "same": 3})
    kind = out["kind"].map({k: i for i, k in enumerate(KINDS)})
    order = np.lexsort((out["name"].to_numpy(), -out["rel_change"].abs().fillna(0).to_numpy(),
                        kind.to_numpy(), rank.to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def caused_shift(base, new, min_shift_pct=5.0):
    """How the waiting caused moved between critical sections.

    Each side's :func:`blame.caused` tables are summed over its runs; a
    critical section's share is its caused wait over all the lock's
    contended wait on that side.

    Parameters
    ----------
    base, new : list of Trace
    min_shift_pct : float
        Shares that moved by at least this many percentage points are
        flagged ``grew`` or ``shrank``.

    Returns
    -------
    DataFrame
        ``lock, holder_callsite, status`` (``grew``, ``shrank``, ``same``),
        ``base_caused_ns, new_caused_ns`` (mean per run), ``base_pct,
        new_pct`` (share of the side's contended wait) and ``shift_pct``
        (percentage points), largest shift first.
    """
    sides = []
    for runs in (base, new):
        frames = [t.caused() for t in runs]
        frames = [f for f in frames if len(f)]
        if frames:
            c = pd.concat(frames).groupby(["lock", "holder_callsite"], sort=False)["caused_ns"].sum()
        else:
            c = pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=["lock", "holder_callsite"]))
        total = c.groupby(level="lock").transform("sum")
        sides.append((c / max(len(runs), 1), 100.0 * c / total.where(total > 0)))
    (bc, bp), (nc, np_) = sides
    idx = bc.index.union(nc.index)
    out = pd.DataFrame({
        "base_caused_ns": bc.reindex(idx).fillna(0).to_numpy(),
        "new_caused_ns": nc.reindex(idx).fillna(0).to_numpy(),
        "base_pct": bp.reindex(idx).fillna(0).to_numpy(),
        "new_pct": np_.reindex(idx).fillna(0).to_numpy(),
    }, index=idx).reset_index()
    if out.empty:
        return pd.DataFrame({c: [] for c in _SHIFT})
    out["shift_pct"] = out["new_pct"] - out["base_pct"]
    out["status"] = np.where(out["shift_pct"] >= min_shift_pct, "grew",
                             np.where(out["shift_pct"] <= -min_shift_pct, "shrank", "same"))
    out = out.iloc[np.argsort(-out["shift_pct"].abs().to_numpy(), kind="stable")]
    return out[_SHIFT].reset_index(drop=True)
